"""What sessions need from one set of client options, built once.

``SessionProfile`` turns a checked ``ClientOptions`` and a gateway URL into
the shared SSL context, the base ``SessionConfig`` every session of the set
starts from, and the echo plan.  ``loadgen connect``, ``loadgen run`` and the
Locust sidecar (once per option set it is sent) all build their sessions
from one, so an option means the same in each.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass
from ipaddress import IPv4Address

from loadgen.engine.dtls import DtlsOptions
from loadgen.engine.session import SessionConfig
from loadgen.engine.tls import TlsOptions, build_client_context, parse_pin
from loadgen.engine.url import parse_gateway_url
from loadgen.options import ClientOptions, DownloadMode

__all__ = ["EchoPlan", "SessionProfile", "dtls_options", "tls_options"]


@dataclass(frozen=True, kw_only=True)
class EchoPlan:
    """One echo burst: ``count`` probes ``spacing_s`` apart, each waited for ``timeout_s``."""

    count: int
    spacing_s: float
    timeout_s: float
    payload_bytes: int
    #: None: the gateway's tunnel address
    target: IPv4Address | None
    udp: bool
    #: seconds between bursts of a load run's session (0: none)
    every_s: float

    @classmethod
    def from_options(cls, opts: ClientOptions) -> EchoPlan:
        return cls(
            count=opts.echo_count,
            spacing_s=opts.echo_spacing_s,
            timeout_s=opts.echo_timeout_s,
            payload_bytes=opts.echo_size,
            target=None if opts.echo_target is None else IPv4Address(opts.echo_target),
            udp=opts.echo_udp,
            every_s=opts.echo_every_s,
        )


def tls_options(opts: ClientOptions) -> TlsOptions:
    return TlsOptions(
        cafile=opts.cafile,
        servername=opts.servername,
        pin=parse_pin(opts.servercert) if opts.servercert else None,
        insecure=opts.insecure,
    )


def dtls_options(opts: ClientOptions) -> DtlsOptions | None:
    """None with ``--no-dtls``: no X-DTLS-* header at all."""
    if opts.no_dtls:
        return None
    ciphers, ciphers12 = opts.offers()
    return DtlsOptions(
        ciphers=ciphers,
        ciphers12=ciphers12,
        schedule_s=opts.dtls_schedule,
        reattempt_s=opts.dtls_reattempt_s,
        host=opts.dtls_host,
        port=opts.dtls_port,
    )


class SessionProfile:
    """The options of many sessions against one gateway.

    Raises ValueError for a bad URL and OSError or ssl.SSLError when the CA
    file cannot be loaded: the test's configuration, reported before any
    traffic.
    """

    def __init__(self, opts: ClientOptions, url: str) -> None:
        self.options = opts
        self.tls = tls_options(opts)
        self.ssl_context: ssl.SSLContext = build_client_context(self.tls)
        self.base = SessionConfig(
            url=parse_gateway_url(url),
            username=opts.username(1),
            password=opts.password or "",
            group=opts.group,
            tls=self.tls,
            user_agent=opts.user_agent,
            hostname=opts.hostname,
            timeout_s=opts.timeout_s,
            download=DownloadMode(opts.download),
            dtls=dtls_options(opts),
        )
        self.echo = EchoPlan.from_options(opts)

    def config(
        self,
        *,
        username: str,
        password: str | None,
        group: str | None,
        hostname: str,
        source_ip: str | None = None,
    ) -> SessionConfig:
        """One session's configuration; a None password or group: the options' own."""
        return dataclasses.replace(
            self.base,
            username=username,
            password=self.base.password if password is None else password,
            group=group or self.base.group,
            hostname=hostname,
            source_ip=source_ip,
        )
