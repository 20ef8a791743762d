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

from loadgen.engine.certs import ClientCertificate, ContextCache
from loadgen.engine.dtls import DtlsOptions
from loadgen.engine.session import SessionConfig
from loadgen.engine.tls import TlsOptions, build_client_context, parse_pin
from loadgen.engine.tokens import TokenBank
from loadgen.engine.url import parse_gateway_url
from loadgen.options import ClientOptions, DownloadMode
from loadgen.proto.auth import parse_form_entry
from loadgen.proto.otp import TokenMode, parse_token_secret

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
        ciphers=opts.tls_ciphers,
        min_version=opts.tls_min_version,
        max_version=opts.tls_max_version,
        allow_insecure_crypto=opts.allow_insecure_crypto,
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

    Raises ValueError for a bad URL, options that need each other, or a
    certificate that cannot be loaded (``CertificateError``), and OSError or
    ssl.SSLError when the CA file cannot be loaded: the test's configuration,
    reported before any traffic.

    A certificate named with ``{n}`` or ``{user}`` (or one per identity in a
    credentials file) is loaded when its identity first connects; contexts are
    cached per certificate (``contexts``, LRU-bounded).
    """

    def __init__(self, opts: ClientOptions, url: str, *, max_contexts: int = 4096) -> None:
        self.options = opts
        self.tls = tls_options(opts)
        if opts.sslkey is not None and opts.certificate is None:
            raise ValueError("--sslkey needs --certificate")
        if opts.token_secret is not None and opts.token_mode is None:
            raise ValueError("--token-secret needs --token-mode (hotp or totp)")
        if opts.token_mode is not None and opts.token_secret is None and opts.credentials is None:
            raise ValueError(
                "--token-mode needs --token-secret (or a credentials file's token_secret column)"
            )
        self.contexts = ContextCache(lambda: build_client_context(self.tls), max_contexts)
        self.tokens = None if opts.token_mode is None else TokenBank(TokenMode(opts.token_mode))
        if self.tokens is not None and opts.token_secret is not None:
            # a bad secret is the test's configuration: say so before any traffic
            parse_token_secret(opts.token_secret, mode=self.tokens.mode)
        shared = opts.certificate is not None and not _per_identity(opts)
        cert = self.certificate(1, opts.username(1)) if shared else None
        #: the context of sessions without a certificate of their own
        self.ssl_context: ssl.SSLContext = self.contexts.get(cert)
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
            has_certificate=opts.certificate is not None,
            form_entries=tuple(parse_form_entry(e) for e in opts.form_entry),
        )
        self.echo = EchoPlan.from_options(opts)

    def certificate(
        self,
        n: int,
        user: str,
        *,
        certificate: str | None = None,
        sslkey: str | None = None,
        key_password: str | None = None,
    ) -> ClientCertificate | None:
        """Identity ``n``'s certificate: its own (a credentials file's columns) or the
        options' pattern filled in; None without either."""
        if certificate is None:
            certificate, sslkey = self.options.certificate_files(n, user)
        if certificate is None:
            return None
        return ClientCertificate(
            certificate=certificate,
            sslkey=sslkey,
            key_password=key_password if key_password is not None else self.options.key_password,
        )

    def identity(
        self,
        n: int,
        user: str,
        *,
        certificate: str | None = None,
        sslkey: str | None = None,
        key_password: str | None = None,
        token_secret: str | None = None,
    ) -> tuple[ssl.SSLContext, dict[str, object]]:
        """The TLS context and the SessionConfig fields of identity ``n`` (``user``):
        its certificate and its token.  Raises CertificateError or ValueError."""
        cert = self.certificate(
            n, user, certificate=certificate, sslkey=sslkey, key_password=key_password
        )
        fields: dict[str, object] = {}
        ctx = self.ssl_context
        if cert is not None:
            ctx = self.contexts.get(cert)
            fields["has_certificate"] = True
        secret = token_secret if token_secret is not None else self.options.token_secret
        if self.tokens is not None and secret is not None:
            fields["token"] = self.tokens.for_user(user, secret)
        return ctx, fields

    def config(
        self,
        *,
        username: str,
        password: str | None,
        group: str | None,
        hostname: str,
        source_ip: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> SessionConfig:
        """One session's configuration; a None password or group: the options' own."""
        return dataclasses.replace(
            self.base,
            username=username,
            password=self.base.password if password is None else password,
            group=group or self.base.group,
            hostname=hostname,
            source_ip=source_ip,
            **(extra or {}),  # type: ignore[arg-type]
        )


def _per_identity(opts: ClientOptions) -> bool:
    return any(
        "{n}" in name or "{user}" in name for name in (opts.certificate or "", opts.sslkey or "")
    )
