"""The table: ``ClientOptions``, one field per client option, its ``Spec`` in the field.

Adding a client option is one field here plus its use.  A front end that
does not show it, or a default that differs on one, says why in the spec
(``why``, ``default_why``): tests/test_options.py holds every front end to
this table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

from loadgen.options import spec as s
from loadgen.options.spec import Alias, Front, OptionError, Spec
from loadgen.proto.dtls import (
    DEFAULT_RETRANSMIT_SCHEDULE_S,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_DTLS12_OFFER",
    "DEFAULT_DTLS_OFFER",
    "DEFAULT_USER_AGENT",
    "ClientOptions",
    "DownloadMode",
    "default_of",
    "fill_pattern",
    "specs",
]

#: An AnyConnect-looking agent gets the same treatment from ASA and ocserv (§2.2).
DEFAULT_USER_AGENT = "AnyConnect Linux_64 4.10.07061"
#: Legacy names we implement, best first (X-DTLS-CipherSuite, protocol.md §7.3).
#: No PSK-NEGOTIATE: it needs a TLS exporter that the ssl module lacks.
DEFAULT_DTLS_OFFER = ("OC-DTLS1_2-AES256-GCM", "OC-DTLS1_2-AES128-GCM", "AES256-SHA", "AES128-SHA")
#: What AnyConnect offers for DTLS 1.2 (X-DTLS12-CipherSuite), minus DHE.
DEFAULT_DTLS12_OFFER = (
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
    "AES256-SHA",
    "AES128-SHA",
)


class DownloadMode(enum.StrEnum):
    #: a second TLS connection, as AnyConnect's downloader does (seed, phase 4)
    NEW_CONNECTION = "new-connection"
    SAME_CONNECTION = "same-connection"
    OFF = "off"


T = TypeVar("T")


def fill_pattern(pattern: str, n: int, user: str) -> str:
    """``{n}`` and ``{user}`` replaced; other braces are left as they are (file names)."""
    return pattern.replace("{n}", str(n)).replace("{user}", user)


_DOWNLOADS = tuple(m.value for m in DownloadMode)
_DISCONNECTS = ("logout", "keep")
_TOKEN_MODES = ("hotp", "totp")
_TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
_ONE_SESSION = "connect runs one session"
_ECHO_RUN_WHY = (
    "a load run's echo rate is sessions x count / --echo-every: one probe per period, "
    "sent at once, keeps that rate what --echo-every says"
)


def option(default: T, name: str, group: str, help: str, **kwargs: Any) -> T:
    """A field of the table: its default and its ``Spec``."""
    spec = Spec(name=name, group=group, help=help, **kwargs)
    return field(default=default, repr=not spec.secret, metadata={"spec": spec})


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """Every client option, checked however it was built (``from_namespace``, keywords,
    a sidecar frame)."""

    # -- credentials
    user: str = option(
        "user{n}",
        "user",
        "credentials",
        "user name; {n} makes it unique per session (e.g. load{n}: load1, load2, ...; "
        "loadgen connect uses n=1)",
        convert=str,
        check=s.not_empty,
        short="-u",
        metavar="NAME",
        aliases=(Alias(name="user-pattern", fronts=Front.RUN | Front.LOCUST),),
    )
    password: str | None = option(
        None,
        "password",
        "credentials",
        "password of every user (visible in the process list: prefer --password-stdin or "
        "LOADGEN_VPN_PASSWORD); without a URL the embedded gateway's password",
        convert=str,
        secret=True,
        env_var="LOADGEN_VPN_PASSWORD",
    )
    password_stdin: bool = option(
        False,
        "password-stdin",
        "credentials",
        "read the password from the first line of stdin",
        fronts=Front.CONNECT | Front.RUN,
        why="Locust has no stdin to read it from: LOADGEN_VPN_PASSWORD does that job",
    )
    credentials: str | None = option(
        None,
        "credentials",
        "credentials",
        "file of user:password[:group] lines (or CSV with a username,password[,group] "
        "header) instead of --user; each process or worker takes its own slice",
        convert=str,
        metavar="FILE",
        fronts=Front.RUN | Front.LOCUST,
        why=f"{_ONE_SESSION}: --user and --password name it",
        aliases=(Alias(name="users-file", fronts=Front.RUN),),
    )
    group: str | None = option(
        None,
        "group",
        "credentials",
        "tunnel group to select, by name or alias",
        convert=str,
        short="-g",
        metavar="NAME",
    )
    certificate: str | None = option(
        None,
        "certificate",
        "credentials",
        "client certificate (PEM, or PKCS#12), presented when the gateway asks for one; "
        "{n} or {user} in the name give each identity its own (e.g. certs/{user}.pem)",
        convert=str,
        short="-c",
        metavar="FILE",
    )
    sslkey: str | None = option(
        None,
        "sslkey",
        "credentials",
        "private key of --certificate (PEM; default: in the certificate file); {n} and "
        "{user} as in --certificate",
        convert=str,
        short="-k",
        metavar="FILE",
    )
    key_password: str | None = option(
        None,
        "key-password",
        "credentials",
        "password of the key or the PKCS#12 file (visible in the process list: prefer "
        "LOADGEN_VPN_KEY_PASSWORD)",
        convert=str,
        secret=True,
        env_var="LOADGEN_VPN_KEY_PASSWORD",
    )
    token_mode: str | None = option(
        None,
        "token-mode",
        "credentials",
        "answer a second factor (one-time password prompt, secondary_password, challenge) "
        "with codes of this soft token: hotp (RFC 4226) or totp (RFC 6238)",
        convert=str,
        check=s.one_of(_TOKEN_MODES),
        choices=_TOKEN_MODES,
    )
    token_secret: str | None = option(
        None,
        "token-secret",
        "credentials",
        "the token's secret as openconnect reads it: base32:SECRET, 0xHEX or plain text, "
        "optionally after sha256: or sha512:, HOTP with ,COUNTER at the end (or "
        "LOADGEN_VPN_TOKEN_SECRET; per identity: the credentials file's token_secret column)",
        convert=str,
        secret=True,
        env_var="LOADGEN_VPN_TOKEN_SECRET",
    )
    form_entry: tuple[str, ...] = option(
        (),
        "form-entry",
        "credentials",
        "FORM:FIELD=VALUE: the value of a login form field, FORM being the form's auth id "
        "(e.g. main:secondary_password=VALUE); FIELD=VALUE fills it in any form; repeatable",
        convert=str,
        check=s.form_entries,
        metavar="FORM:FIELD=VALUE",
        secret=True,
        repeat=True,
        env_var="LOADGEN_VPN_FORM_ENTRY",
    )
    # -- TLS
    cafile: str | None = option(
        None,
        "cafile",
        "TLS",
        "PEM file of CA certificates to trust instead of the system store",
        convert=str,
        metavar="PEM",
    )
    servername: str | None = option(
        None,
        "servername",
        "TLS",
        "name for SNI and certificate verification when it differs from the URL's host",
        convert=str,
        metavar="NAME",
    )
    servercert: str | None = option(
        None,
        "servercert",
        "TLS",
        "accept only this server certificate: pin-sha256:BASE64 (SHA-256 of the public key, "
        "as openconnect prints) or sha1:HEX (SHA-1 of the certificate, as AnyConnect); "
        "replaces CA verification",
        convert=str,
        check=s.pin,
        metavar="PIN",
    )
    insecure: bool = option(False, "insecure", "TLS", "do not verify the server certificate at all")
    tls_ciphers: str | None = option(
        None,
        "tls-ciphers",
        "TLS",
        "OpenSSL cipher string for TLS 1.2 and below (TLS 1.3 suites cannot be set from "
        "Python); default: what AnyConnect offers, ECDHE and RSA key exchange, AES-GCM and "
        "AES-CBC with SHA-1 or SHA-2",
        convert=str,
        check=s.not_empty,
        metavar="LIST",
    )
    tls_min_version: str | None = option(
        None,
        "tls-min-version",
        "TLS",
        "lowest TLS version offered: 1.0, 1.1, 1.2 or 1.3 (default 1.2; below it needs "
        "--allow-insecure-crypto)",
        convert=str,
        check=s.one_of(_TLS_VERSIONS),
        choices=_TLS_VERSIONS,
    )
    tls_max_version: str | None = option(
        None,
        "tls-max-version",
        "TLS",
        "highest TLS version offered (default 1.3)",
        convert=str,
        check=s.one_of(_TLS_VERSIONS),
        choices=_TLS_VERSIONS,
    )
    allow_insecure_crypto: bool = option(
        False,
        "allow-insecure-crypto",
        "TLS",
        "allow TLS 1.0 and 1.1 and OpenSSL security level 0 (SHA-1 signatures, small keys) "
        "for old gateways, as openconnect's option",
    )
    # -- session
    timeout_s: float = option(
        30.0,
        "timeout",
        "session",
        "bound for each of phases 1 to 5, in seconds; DTLS is bounded by its schedule",
        convert=s.number,
        check=s.positive_seconds,
        metavar="S",
    )
    user_agent: str = option(
        DEFAULT_USER_AGENT,
        "user-agent",
        "session",
        "User-Agent; ASA and ocserv treat an AnyConnect one as AnyConnect",
        convert=str,
        metavar="TEXT",
    )
    hostname: str = option(
        "loadgen-1",
        "hostname",
        "session",
        "X-CSTP-Hostname",
        convert=str,
        metavar="NAME",
        fronts=Front.CONNECT,
        why="load runs give every session a unique X-CSTP-Hostname (loadgen-RUN-PROCESS-N, "
        "protocol.md §4.1)",
    )
    download: str = option(
        DownloadMode.NEW_CONNECTION.value,
        "download",
        "session",
        "profile download: on a new TLS connection as AnyConnect does, on the same "
        "connection, or off",
        convert=str,
        check=s.one_of(_DOWNLOADS),
        choices=_DOWNLOADS,
    )
    disconnect: str = option(
        "logout",
        "disconnect",
        "session",
        "at the end: logout sends DISCONNECT 0xb0 (the cookie dies); keep sends an empty "
        "DISCONNECT (the gateway keeps the cookie for a reconnect)",
        convert=str,
        check=s.one_of(_DISCONNECTS),
        choices=_DISCONNECTS,
    )
    # -- DTLS
    no_dtls: bool = option(
        False,
        "no-dtls",
        "DTLS",
        "offer no DTLS: no X-DTLS-* headers, the tunnel stays on CSTP (TLS)",
    )
    dtls_ciphers: tuple[str, ...] | None = option(
        None,
        "dtls-ciphers",
        "DTLS",
        "X-DTLS-CipherSuite offer, colon-separated (default "
        f"{':'.join(DEFAULT_DTLS_OFFER)}); given alone, X-DTLS12-CipherSuite is not sent",
        convert=s.names,
        check=s.known_names(KNOWN_DTLS_CIPHERS),
        show=s.show_names,
        metavar="LIST",
    )
    dtls12_ciphers: tuple[str, ...] | None = option(
        None,
        "dtls12-ciphers",
        "DTLS",
        "X-DTLS12-CipherSuite offer, colon-separated (default "
        f"{':'.join(DEFAULT_DTLS12_OFFER)}); given alone, X-DTLS-CipherSuite is not sent",
        convert=s.names,
        check=s.known_names(KNOWN_DTLS12_CIPHERS),
        show=s.show_names,
        metavar="LIST",
    )
    dtls_schedule: tuple[float, ...] = option(
        DEFAULT_RETRANSMIT_SCHEDULE_S,
        "dtls-schedule",
        "DTLS",
        "ClientHello send times in seconds; the last is when DTLS is given up for CSTP "
        "(AnyConnect's schedule)",
        convert=s.seconds_list,
        check=s.schedule,
        show=s.show_seconds_list,
        metavar="S,S,...",
    )
    dtls_reattempt_s: float = option(
        60.0,
        "dtls-reattempt",
        "DTLS",
        "seconds between DTLS attempts after a fallback, as openconnect (0: never)",
        convert=s.number,
        check=s.seconds,
        metavar="S",
    )
    dtls_host: str | None = option(
        None,
        "dtls-host",
        "DTLS",
        "send DTLS to this host instead of the gateway's (e.g. a fault proxy)",
        convert=str,
        metavar="HOST",
    )
    dtls_port: int | None = option(
        None,
        "dtls-port",
        "DTLS",
        "send DTLS to this port instead of X-DTLS-Port",
        convert=s.integer,
        check=s.port,
        metavar="PORT",
    )
    # -- echo through the tunnel
    echo_count: int = option(
        3,
        "echo-count",
        "echo",
        "echo requests per burst (0: none)",
        convert=s.integer,
        check=s.echo_count,
        metavar="N",
        defaults={Front.RUN: 1},
        default_why=_ECHO_RUN_WHY,
        aliases=(
            Alias(name="echo", fronts=Front.CONNECT),
            Alias(name="echo-burst", fronts=Front.RUN),
        ),
    )
    echo_spacing_s: float = option(
        0.2,
        "echo-spacing",
        "echo",
        "seconds between the echo requests of one burst",
        convert=s.number,
        check=s.seconds,
        metavar="S",
        defaults={Front.RUN: 0.0},
        default_why=_ECHO_RUN_WHY,
        aliases=(Alias(name="echo-interval", fronts=Front.CONNECT | Front.LOCUST),),
    )
    echo_every_s: float = option(
        5.0,
        "echo-every",
        "echo",
        "seconds between the echo bursts of each session (0: none)",
        convert=s.number,
        check=s.seconds,
        metavar="S",
        fronts=Front.RUN,
        why="connect sends one burst; Locust paces echoes with the scenario's wait_time",
        aliases=(Alias(name="echo-interval", fronts=Front.RUN),),
    )
    echo_timeout_s: float = option(
        2.0,
        "echo-timeout",
        "echo",
        "seconds to wait for each echo reply (and each DPD probe of loadgen connect)",
        convert=s.number,
        check=s.positive_seconds,
        metavar="S",
    )
    echo_size: int = option(
        56,
        "echo-size",
        "echo",
        "echo payload size",
        convert=s.integer,
        check=s.echo_size,
        metavar="BYTES",
    )
    echo_target: str | None = option(
        None,
        "echo-target",
        "echo",
        "echo destination (default: the gateway's tunnel address, the first host of the "
        "assigned network)",
        convert=str,
        check=s.ipv4,
        metavar="IP",
    )
    echo_udp: bool = option(
        False,
        "echo-udp",
        "echo",
        "UDP datagrams to the target's echo port 7 instead of ICMP echo",
    )
    # -- metrics
    metrics_port: int | None = option(
        None,
        "metrics-port",
        "metrics",
        "serve Prometheus metrics on this port (processes and Locust sidecars: plus their "
        "index; 0: off)",
        convert=s.integer,
        check=s.port_or_off,
        metavar="P",
        fronts=Front.RUN | Front.LOCUST,
        why=f"{_ONE_SESSION} and prints its figures",
        defaults={Front.LOCUST: 9646},
        default_why="every Locust sidecar serves its metrics, so that each worker can be "
        "scraped; a run serves them when asked",
    )
    metrics_host: str = option(
        "127.0.0.1",
        "metrics-host",
        "metrics",
        "address the metrics listen on",
        convert=str,
        metavar="ADDR",
        fronts=Front.RUN | Front.LOCUST,
        why=f"{_ONE_SESSION} and prints its figures",
    )

    def __post_init__(self) -> None:
        for name, spec in specs():
            try:
                spec.validate(getattr(self, name))
            except ValueError as exc:
                raise OptionError(f"{spec.flag(Front.CONNECT)}: {exc}") from None

    # -- derived ------------------------------------------------------------------

    @property
    def logout(self) -> bool:
        return self.disconnect == "logout"

    @property
    def tls_given(self) -> bool:
        """Trust options that make sense only for a gateway the user names."""
        return bool(self.cafile or self.servercert or self.insecure or self.servername)

    def certificate_files(self, n: int, user: str) -> tuple[str | None, str | None]:
        """--certificate and --sslkey of identity ``n`` named ``user`` ({n}, {user} filled)."""
        return (
            None if self.certificate is None else fill_pattern(self.certificate, n, user),
            None if self.sslkey is None else fill_pattern(self.sslkey, n, user),
        )

    def username(self, n: int) -> str:
        """The user name of session ``n`` (``{n}`` replaced; a plain name as it is)."""
        return self.user.format(n=n) if "{n" in self.user else self.user

    def offers(self) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        """The two DTLS offers as sent: neither given means both defaults, as
        AnyConnect sends; one given alone means the other header is not sent."""
        if self.dtls_ciphers is None and self.dtls12_ciphers is None:
            return DEFAULT_DTLS_OFFER, DEFAULT_DTLS12_OFFER
        return self.dtls_ciphers, self.dtls12_ciphers


_TABLE: tuple[tuple[str, Spec, Any], ...] = tuple(
    (f.name, cast(Spec, f.metadata["spec"]), f.default) for f in fields(ClientOptions)
)


def specs(front: Front | None = None) -> list[tuple[str, Spec]]:
    """(field name, spec) of every option, or of those ``front`` shows."""
    return [(name, spec) for name, spec, _ in _TABLE if front is None or front in spec.fronts]


def default_of(name: str, front: Front) -> Any:
    """The default of field ``name`` on ``front``."""
    for field_name, spec, default in _TABLE:
        if field_name == name:
            return spec.defaults.get(front, default)
    raise KeyError(name)


#: every option at its default: where code outside the front ends needs one
DEFAULTS = ClientOptions()
