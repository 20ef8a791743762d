"""The reference gateway's settings and its address pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from loadgen.proto.auth_server import AuthPolicy

__all__ = ["AddressPool", "GatewayConfig", "PoolExhaustedError"]


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0
    #: tunnel addresses; the gateway's own address is the first host
    pool: IPv4Network = field(default_factory=lambda: IPv4Network("10.200.0.0/16"))
    #: X-CSTP-MTU
    mtu: int = 1406
    #: X-DTLS-MTU; None: the same as ``mtu``
    dtls_mtu: int | None = None
    dpd_s: int = 90
    keepalive_s: int = 32400
    dns: tuple[IPv4Address, ...] = ()
    dtls: bool = True
    #: X-DTLS-CipherSuite names the gateway accepts, best first; None: ocserv's table
    dtls_ciphers: tuple[str, ...] | None = None
    #: X-DTLS12-CipherSuite names, best first; None: ocserv master's table
    dtls12_ciphers: tuple[str, ...] | None = None
    auth: AuthPolicy = field(default_factory=AuthPolicy)
    #: cookie lifetime after a temporary disconnect (ocserv: cookie-timeout)
    cookie_timeout_s: float = 120.0
    max_sessions: int | None = None
    delay_tls_ms: int = 0
    delay_auth_ms: int = 0
    delay_connect_ms: int = 0
    #: a client silent this long in the middle of HTTP is cut (slowloris)
    request_timeout_s: float = 30.0
    handshake_timeout_s: float = 10.0
    server_name: str = "loadgen gateway"

    @property
    def gateway_address(self) -> IPv4Address:
        return next(self.pool.hosts())


class PoolExhaustedError(Exception):
    pass


class AddressPool:
    """Tunnel addresses: the first host is the gateway's, the rest lent to sessions."""

    def __init__(self, network: IPv4Network) -> None:
        hosts = network.hosts()
        self.gateway = next(hosts)
        self._hosts = hosts
        self._free: list[IPv4Address] = []
        self.netmask = network.netmask

    def allocate(self) -> IPv4Address:
        if self._free:
            return self._free.pop()
        try:
            return next(self._hosts)
        except StopIteration:
            raise PoolExhaustedError("the address pool is exhausted") from None

    def release(self, address: IPv4Address) -> None:
        self._free.append(address)
