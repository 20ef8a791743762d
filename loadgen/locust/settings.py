"""The ``--vpn-*`` options of a Locust run, and ``VpnSettings``, the checked form of them.

Locust parses the options (``events.init_command_line_parser``) and forwards
them from the master to every worker with each spawn message; every process
turns them into ``VpnSettings`` where they are used, so a bad value is one
clear error at start, never a failure per user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadgen.engine.feeder import FeederError, PatternFeeder, load_credentials
from loadgen.engine.tls import parse_pin
from loadgen.proto.dtls import KNOWN_DTLS12_CIPHERS, KNOWN_DTLS_CIPHERS

__all__ = ["DEFAULT_METRICS_PORT", "VpnSettings", "add_options", "check_files", "settings_for"]

DEFAULT_METRICS_PORT = 9646


def _ciphers(text: str, known: tuple[str, ...], option: str) -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in text.split(":") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{option}: unknown cipher {unknown[0]}; known: {':'.join(known)}")
    return names or None


@dataclass(frozen=True, kw_only=True)
class VpnSettings:
    """The ``--vpn-*`` options, checked."""

    user_pattern: str = "user{n}"
    #: user:password[:group] lines (or CSV); each worker takes its own slice
    credentials_file: str | None = None
    password: str = field(default="loadgen", repr=False)
    group: str | None = None
    cafile: str | None = None
    insecure: bool = False
    servername: str | None = None
    #: pin-sha256:BASE64 or sha1:HEX; replaces CA trust
    servercert: str | None = None
    dtls: bool = True
    dtls_ciphers: tuple[str, ...] | None = None
    dtls12_ciphers: tuple[str, ...] | None = None
    echo_count: int = 3
    echo_interval_s: float = 0.2
    echo_timeout_s: float = 2.0
    timeout_s: float = 30.0
    dtls_host: str | None = None
    dtls_port: int | None = None
    dtls_reattempt_s: float | None = None
    #: base port of the sidecars' metrics (plus the worker index); None: not served
    metrics_port: int | None = DEFAULT_METRICS_PORT
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_options(cls, options: Any) -> VpnSettings:
        """From ``environment.parsed_options`` (None: the defaults); ValueError when bad."""

        def opt(name: str, default: Any) -> Any:
            value = getattr(options, name, None)
            return default if value is None or value == "" else value

        settings = cls(
            user_pattern=str(opt("vpn_user_pattern", "user{n}")),
            credentials_file=opt("vpn_credentials", None),
            password=str(opt("vpn_password", "loadgen")),
            group=opt("vpn_group", None),
            cafile=opt("vpn_cafile", None),
            insecure=bool(opt("vpn_insecure", False)),
            servername=opt("vpn_servername", None),
            servercert=opt("vpn_servercert", None),
            dtls=not opt("vpn_no_dtls", False),
            dtls_ciphers=_ciphers(
                str(opt("vpn_dtls_ciphers", "")), KNOWN_DTLS_CIPHERS, "--vpn-dtls-ciphers"
            ),
            dtls12_ciphers=_ciphers(
                str(opt("vpn_dtls12_ciphers", "")), KNOWN_DTLS12_CIPHERS, "--vpn-dtls12-ciphers"
            ),
            echo_count=int(opt("vpn_echo_count", 3)),
            echo_interval_s=float(opt("vpn_echo_interval", 0.2)),
            echo_timeout_s=float(opt("vpn_echo_timeout", 2.0)),
            timeout_s=float(opt("vpn_timeout", 30.0)),
            dtls_host=opt("vpn_dtls_host", None),
            dtls_port=_optional_int(opt("vpn_dtls_port", None)),
            dtls_reattempt_s=_optional_float(opt("vpn_dtls_reattempt", None)),
            metrics_port=_optional_int(opt("vpn_metrics_port", DEFAULT_METRICS_PORT)) or None,
            metrics_host=str(opt("vpn_metrics_host", "127.0.0.1")),
        )
        if settings.echo_count < 1 or settings.echo_interval_s < 0:
            raise ValueError("--vpn-echo-count must be >= 1 and --vpn-echo-interval >= 0")
        if settings.dtls_port is not None and not 0 < settings.dtls_port < 65536:
            raise ValueError("--vpn-dtls-port must be in 1..65535")
        if settings.dtls_reattempt_s is not None and not 0 < settings.dtls_reattempt_s <= 3600:
            raise ValueError("--vpn-dtls-reattempt must be in (0, 3600]")
        if settings.metrics_port is not None and not 0 < settings.metrics_port < 65536:
            raise ValueError("--vpn-metrics-port must be in 1..65535 (0: off)")
        if settings.echo_timeout_s <= 0 or settings.timeout_s <= 0:
            raise ValueError("--vpn-echo-timeout and --vpn-timeout must be positive")
        if settings.servercert is not None:
            try:
                parse_pin(settings.servercert)
            except ValueError as exc:
                raise ValueError(f"--vpn-servercert: {exc}") from None
            if settings.insecure:
                raise ValueError("--vpn-servercert and --vpn-insecure contradict each other")
        try:
            PatternFeeder(settings.user_pattern, password=settings.password)
        except FeederError as exc:
            raise ValueError(f"--vpn-user-pattern: {exc}") from None
        return settings


def _optional_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def add_options(parser: Any, **_kwargs: Any) -> None:
    add = parser.add_argument
    add("--vpn-user-pattern", default="user{n}", help="user names, {n} unique per user")
    add(
        "--vpn-credentials",
        default="",
        help="file of user:password[:group] lines (or CSV username,password,group) instead "
        "of the pattern; each worker takes its own slice",
    )
    add(
        "--vpn-password",
        default="loadgen",
        env_var="LOADGEN_VPN_PASSWORD",
        is_secret=True,
        # is_secret only masks the field: the page would still carry the value
        include_in_web_ui=False,
        help="password of every user (or LOADGEN_VPN_PASSWORD)",
    )
    add("--vpn-group", default="", help="tunnel group to select, by name or alias")
    add("--vpn-cafile", default="", help="PEM CA file for the gateway certificate")
    add("--vpn-insecure", action="store_true", help="do not verify the gateway certificate")
    add("--vpn-servername", default="", help="TLS server name to send and check")
    add(
        "--vpn-servercert",
        default="",
        help="accept only this gateway certificate: pin-sha256:BASE64 or sha1:HEX",
    )
    add("--vpn-no-dtls", action="store_true", help="offer no DTLS; tunnels stay on CSTP")
    add("--vpn-dtls-ciphers", default="", help="X-DTLS-CipherSuite offer, colon-separated")
    add("--vpn-dtls12-ciphers", default="", help="X-DTLS12-CipherSuite offer, colon-separated")
    add("--vpn-echo-count", type=int, default=3, help="ICMP echo requests per burst")
    add("--vpn-echo-interval", type=float, default=0.2, help="seconds between echo requests")
    add("--vpn-echo-timeout", type=float, default=2.0, help="seconds to wait for each reply")
    add("--vpn-timeout", type=float, default=30.0, help="bound for each connect phase, seconds")
    add("--vpn-dtls-host", default="", help="send DTLS here instead of the gateway's host")
    add("--vpn-dtls-port", type=int, default=None, help="and to this port (a fault proxy)")
    add(
        "--vpn-dtls-reattempt",
        type=float,
        default=None,
        help="seconds between DTLS re-attempts after a fallback (default 60)",
    )
    add(
        "--vpn-metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="each engine sidecar serves Prometheus metrics on this port plus its "
        f"worker index (default {DEFAULT_METRICS_PORT}; 0: off)",
    )
    add("--vpn-metrics-host", default="127.0.0.1", help="address the sidecars' metrics bind")
    add(
        "--prometheus-sd",
        default="",
        help="write a Prometheus file_sd JSON file listing every sidecar's metrics",
    )


# -- per process state ------------------------------------------------------------------


#: options (the --vpn-* values) -> settings: users ask at every connect and echo
_CACHE: dict[tuple[tuple[str, Any], ...], VpnSettings] = {}
_CACHE_MAX = 64


def settings_for(options: Any) -> VpnSettings:
    """``VpnSettings.from_options``, computed once per distinct set of values."""
    values = vars(options) if options is not None else {}
    # no sort: a namespace keeps its order; another order only costs one cache entry
    key = tuple((k, v) for k, v in values.items() if k.startswith("vpn_"))
    try:
        found = _CACHE.get(key)
    except TypeError:  # an unhashable value: no caching
        return VpnSettings.from_options(options)
    if found is None:
        found = VpnSettings.from_options(options)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = found
    return found


def check_files(settings: VpnSettings) -> None:
    """Read what the settings name (once, at start): ValueError with a clear message."""
    if settings.credentials_file:
        try:
            load_credentials(settings.credentials_file)  # an empty file is refused too
        except FeederError as exc:
            raise ValueError(f"--vpn-credentials: {exc}") from None
