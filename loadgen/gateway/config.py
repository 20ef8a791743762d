"""The reference gateway's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from loadgen.proto.auth_policy import AuthPolicy
from loadgen.proto.personality import DEFAULT_PERSONALITY, personality_for
from loadgen.proto.personality.base import TunnelSettings

__all__ = ["GatewayConfig"]


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0
    #: which gateway to behave as (``loadgen.proto.personality``)
    personality: str = DEFAULT_PERSONALITY
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
    #: X-DTLS-CipherSuite names the gateway accepts, best first; None: the personality's table
    dtls_ciphers: tuple[str, ...] | None = None
    #: X-DTLS12-CipherSuite names, best first; None: the personality's table
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

    def __post_init__(self) -> None:
        personality_for(self.personality)  # ValueError for a name nobody registered

    @property
    def gateway_address(self) -> IPv4Address:
        return next(self.pool.hosts())

    def tunnel_settings(self) -> TunnelSettings:
        """What the CONNECT answers are made of."""
        return TunnelSettings(
            server_name=self.server_name,
            mtu=self.mtu,
            dtls_mtu=self.dtls_mtu,
            dpd_s=self.dpd_s,
            keepalive_s=self.keepalive_s,
            dns=self.dns,
            dtls=self.dtls,
            dtls_ciphers=self.dtls_ciphers,
            dtls12_ciphers=self.dtls12_ciphers,
            max_sessions=self.max_sessions,
        )
