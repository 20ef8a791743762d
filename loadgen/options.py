"""The client options: one declarative table, rendered into every front end.

``ClientOptions`` is the table: one field per option, its ``Spec`` (flag, help,
parser, check, the front ends that show it) in the field's metadata.  From it
come the options of ``loadgen connect`` and ``loadgen run`` (argparse) and the
``--vpn-*`` options of a Locust run; every front end reads its command line
back through ``from_namespace``, so a value means the same everywhere and a
bad one is the same clear error, named as that front end spells the option.
The engine turns a ``ClientOptions`` into the sessions' configuration
(``loadgen.engine.profile``); the Locust sidecar receives it once per option
set.

Adding a client option is one field here plus its use.  A front end that does
not show an option, or a default that differs on one, says why in the spec
(``why``, ``default_why``): a test holds every front end to the table.

Pure: no trio, no sockets (the gevent side of Locust imports this module).
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, cast

from loadgen.engine.feeder import FeederError, check_user_pattern
from loadgen.pins import parse_pin
from loadgen.proto.dtls import (
    DEFAULT_RETRANSMIT_SCHEDULE_S,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
)

__all__ = [
    "DEFAULT_DTLS12_OFFER",
    "DEFAULT_DTLS_OFFER",
    "DEFAULT_USER_AGENT",
    "LOCUST_PREFIX",
    "Alias",
    "ClientOptions",
    "DownloadMode",
    "Front",
    "OptionError",
    "Spec",
    "add_arguments",
    "dest_of",
    "flag_of",
    "from_namespace",
    "namespace_keys",
    "specs",
    "to_argv",
]

log = logging.getLogger("loadgen.options")

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
#: Locust's options share one namespace with other plugins: ours carry this prefix
LOCUST_PREFIX = "vpn-"
#: bounds of any duration option: beyond an hour is a typo, not a test plan
MAX_SECONDS = 3600.0
#: an echo probe carries its id and send time; beyond, it would not fit a 1500 B tunnel MTU
MIN_ECHO_BYTES = 16
MAX_ECHO_BYTES = 1400
MAX_ECHO_COUNT = 10_000


class DownloadMode(enum.StrEnum):
    #: a second TLS connection, as AnyConnect's downloader does (seed, phase 4)
    NEW_CONNECTION = "new-connection"
    SAME_CONNECTION = "same-connection"
    OFF = "off"


class Front(enum.Flag):
    """The front ends a client option can appear in."""

    CONNECT = enum.auto()
    RUN = enum.auto()
    LOCUST = enum.auto()
    ALL = CONNECT | RUN | LOCUST


class OptionError(ValueError):
    """A bad option value; the message names the option as the front end spells it."""


@dataclass(frozen=True, kw_only=True)
class Alias:
    """A deprecated spelling, kept working with a warning."""

    #: without the Locust prefix: ``echo-interval`` is ``--vpn-echo-interval`` in Locust
    name: str
    fronts: Front


@dataclass(frozen=True, kw_only=True)
class Spec:
    """How one option is shown, read and checked."""

    #: the option's name: ``--NAME`` in the CLI, ``--vpn-NAME`` in Locust
    name: str
    help: str
    group: str
    #: text to value; None: a flag (present: True)
    parse: Callable[[str], Any] | None = None
    #: a typed value (forwarded by Locust's master, received by the sidecar) checked
    check: Callable[[Any], None] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    #: the one-letter form in the CLI (``-u``)
    short: str | None = None
    fronts: Front = Front.ALL
    #: why the option is missing from some front end (required then)
    why: str | None = None
    #: a front end whose default differs from the field's, and why
    defaults: Mapping[Front, Any] = field(default_factory=dict)
    default_why: str | None = None
    aliases: tuple[Alias, ...] = ()
    secret: bool = False
    #: Locust only: an environment variable that also sets it
    env_var: str | None = None
    #: value to text, as ``parse`` reads it back
    show: Callable[[Any], str] = field(default_factory=lambda: _text)

    def flag(self, front: Front) -> str:
        return flag_of(self.name, front)

    def dest(self, front: Front) -> str:
        return dest_of(self.name, front)


def flag_of(name: str, front: Front) -> str:
    """``--timeout`` in the CLI, ``--vpn-timeout`` in Locust."""
    return f"--{LOCUST_PREFIX}{name}" if front is Front.LOCUST else f"--{name}"


def dest_of(name: str, front: Front) -> str:
    """Where argparse (and Locust) keep option ``name``: ``vpn_dtls_port``."""
    return flag_of(name, front).lstrip("-").replace("-", "_")



# -- parsers and checks -----------------------------------------------------------


def _positive(value: float) -> None:
    if not (value > 0 and value <= MAX_SECONDS):
        raise ValueError(f"must be a positive number of seconds, at most {MAX_SECONDS:g}")


def _non_negative(value: float) -> None:
    if not (value >= 0 and value <= MAX_SECONDS):
        raise ValueError(f"must be 0 or more seconds, at most {MAX_SECONDS:g}")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _checked(convert: Callable[[str], Any], check: Callable[[Any], None]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = convert(text)
        check(value)
        return value

    return parse


def _port(value: int | None) -> None:
    if value is not None and not 0 < value < 65536:
        raise ValueError("must be a port in 1..65535")


def _metrics_port(value: int | None) -> None:
    if value is not None and not 0 <= value < 65536:
        raise ValueError("must be a port in 1..65535 (0: off)")


def _echo_count(value: int) -> None:
    if not 0 <= value <= MAX_ECHO_COUNT:
        raise ValueError(f"must be 0 to {MAX_ECHO_COUNT}")


def _echo_size(value: int) -> None:
    if not MIN_ECHO_BYTES <= value <= MAX_ECHO_BYTES:
        raise ValueError(f"must be {MIN_ECHO_BYTES} to {MAX_ECHO_BYTES} bytes")


def _cipher_list(known: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(":") if n.strip())
        _ciphers_known(known)(names)
        return names

    return parse


def _ciphers_known(known: tuple[str, ...]) -> Callable[[tuple[str, ...] | None], None]:
    def check(names: tuple[str, ...] | None) -> None:
        if names is None:
            return
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            what = ", ".join(unknown) or "(none given)"
            raise ValueError(f"unknown cipher {what}; known: {':'.join(known)}")

    return check


def _schedule(text: str) -> tuple[float, ...]:
    try:
        times = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise ValueError("a schedule is comma-separated seconds, e.g. 0,1,3,7,15,31") from None
    _schedule_ok(times)
    return times


def _schedule_ok(times: tuple[float, ...]) -> None:
    if (
        len(times) < 2
        or times[0] != 0
        or list(times) != sorted(set(times))
        or not all(math.isfinite(t) and t <= MAX_SECONDS for t in times)
    ):
        raise ValueError("a schedule starts at 0 and increases, e.g. 0,1,3,7,15,31")


def _pin(text: str) -> str:
    _pin_ok(text)
    return text


def _pin_ok(text: str | None) -> None:
    if text is not None:
        parse_pin(text)


def _ipv4(text: str) -> str:
    _ipv4_ok(text)
    return text


def _ipv4_ok(text: str | None) -> None:
    if text is not None:
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv4 address") from None


def _choice(choices: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")

    return check


def _text(value: Any) -> str:
    """30.0 as 30, 0.2 as 0.2: exact, and as a user would write it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _seconds_list(values: tuple[float, ...]) -> str:
    return ",".join(_text(v) for v in values)


def _names(values: tuple[str, ...]) -> str:
    return ":".join(values)


def _user(value: str) -> None:
    if not value:
        raise ValueError("a user name cannot be empty")


_DOWNLOADS = tuple(m.value for m in DownloadMode)
_DISCONNECTS = ("logout", "keep")
_ONE_SESSION = "connect runs one session"
_ECHO_RUN_WHY = (
    "a load run's echo rate is sessions x count / --echo-every: one probe per period, "
    "sent at once, keeps that rate what --echo-every says"
)


def _spec(**kwargs: Any) -> dict[str, Spec]:
    return {"spec": Spec(**kwargs)}


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """Every client option, checked.  Build with ``from_namespace`` (or keywords)."""

    # -- credentials
    user: str = field(
        default="user{n}",
        metadata=_spec(
            name="user",
            short="-u",
            group="credentials",
            parse=str,
            check=_user,
            metavar="NAME",
            help="user name; {n} makes it unique per session (e.g. load{n}: load1, load2, "
            "...; loadgen connect uses n=1)",
            aliases=(Alias(name="user-pattern", fronts=Front.RUN | Front.LOCUST),),
        ),
    )
    password: str | None = field(
        default=None,
        repr=False,
        metadata=_spec(
            name="password",
            group="credentials",
            parse=str,
            secret=True,
            env_var="LOADGEN_VPN_PASSWORD",
            help="password of every user (visible in the process list: prefer "
            "--password-stdin, or LOADGEN_VPN_PASSWORD for Locust); without a URL the "
            "embedded gateway's password",
        ),
    )
    password_stdin: bool = field(
        default=False,
        metadata=_spec(
            name="password-stdin",
            group="credentials",
            fronts=Front.CONNECT | Front.RUN,
            why="Locust has no stdin to read it from: LOADGEN_VPN_PASSWORD does that job",
            help="read the password from the first line of stdin",
        ),
    )
    credentials: str | None = field(
        default=None,
        metadata=_spec(
            name="credentials",
            group="credentials",
            parse=str,
            metavar="FILE",
            fronts=Front.RUN | Front.LOCUST,
            why=f"{_ONE_SESSION}: --user and --password name it",
            aliases=(Alias(name="users-file", fronts=Front.RUN),),
            help="file of user:password[:group] lines (or CSV with a username,password[,group]"
            " header) instead of --user; each process or worker takes its own slice",
        ),
    )
    group: str | None = field(
        default=None,
        metadata=_spec(
            name="group",
            short="-g",
            group="credentials",
            parse=str,
            metavar="NAME",
            help="tunnel group to select, by name or alias",
        ),
    )
    # -- TLS
    cafile: str | None = field(
        default=None,
        metadata=_spec(
            name="cafile",
            group="TLS",
            parse=str,
            metavar="PEM",
            help="PEM file of CA certificates to trust instead of the system store",
        ),
    )
    servername: str | None = field(
        default=None,
        metadata=_spec(
            name="servername",
            group="TLS",
            parse=str,
            metavar="NAME",
            help="name for SNI and certificate verification when it differs from the URL's host",
        ),
    )
    servercert: str | None = field(
        default=None,
        metadata=_spec(
            name="servercert",
            group="TLS",
            parse=_pin,
            check=_pin_ok,
            metavar="PIN",
            help="accept only this server certificate: pin-sha256:BASE64 (SHA-256 of the "
            "public key, as openconnect prints) or sha1:HEX (SHA-1 of the certificate, as "
            "AnyConnect); replaces CA verification",
        ),
    )
    insecure: bool = field(
        default=False,
        metadata=_spec(
            name="insecure", group="TLS", help="do not verify the server certificate at all"
        ),
    )
    # -- session
    timeout_s: float = field(
        default=30.0,
        metadata=_spec(
            name="timeout",
            group="session",
            parse=_checked(_number, _positive),
            check=_positive,
            metavar="S",
            help="bound for each of phases 1 to 5, in seconds; DTLS is bounded by its schedule",
        ),
    )
    user_agent: str = field(
        default=DEFAULT_USER_AGENT,
        metadata=_spec(
            name="user-agent",
            group="session",
            parse=str,
            metavar="TEXT",
            help="User-Agent; ASA and ocserv treat an AnyConnect one as AnyConnect",
        ),
    )
    hostname: str = field(
        default="loadgen-1",
        metadata=_spec(
            name="hostname",
            group="session",
            parse=str,
            metavar="NAME",
            fronts=Front.CONNECT,
            why="load runs give every session a unique X-CSTP-Hostname "
            "(loadgen-RUN-PROCESS-N, protocol.md §4.1)",
            help="X-CSTP-Hostname",
        ),
    )
    download: str = field(
        default=DownloadMode.NEW_CONNECTION.value,
        metadata=_spec(
            name="download",
            group="session",
            parse=str,
            check=_choice(_DOWNLOADS),
            choices=_DOWNLOADS,
            help="profile download: on a new TLS connection as AnyConnect does, on the same "
            "connection, or off",
        ),
    )
    disconnect: str = field(
        default="logout",
        metadata=_spec(
            name="disconnect",
            group="session",
            parse=str,
            check=_choice(_DISCONNECTS),
            choices=_DISCONNECTS,
            help="at the end: logout sends DISCONNECT 0xb0 (the cookie dies); keep sends an "
            "empty DISCONNECT (the gateway keeps the cookie for a reconnect)",
        ),
    )
    # -- DTLS
    no_dtls: bool = field(
        default=False,
        metadata=_spec(
            name="no-dtls",
            group="DTLS",
            help="offer no DTLS: no X-DTLS-* headers, the tunnel stays on CSTP (TLS)",
        ),
    )
    dtls_ciphers: tuple[str, ...] | None = field(
        default=None,
        metadata=_spec(
            name="dtls-ciphers",
            group="DTLS",
            parse=_cipher_list(KNOWN_DTLS_CIPHERS),
            check=_ciphers_known(KNOWN_DTLS_CIPHERS),
            show=_names,
            metavar="LIST",
            help="X-DTLS-CipherSuite offer, colon-separated (default "
            f"{':'.join(DEFAULT_DTLS_OFFER)}); given alone, X-DTLS12-CipherSuite is not sent",
        ),
    )
    dtls12_ciphers: tuple[str, ...] | None = field(
        default=None,
        metadata=_spec(
            name="dtls12-ciphers",
            group="DTLS",
            parse=_cipher_list(KNOWN_DTLS12_CIPHERS),
            check=_ciphers_known(KNOWN_DTLS12_CIPHERS),
            show=_names,
            metavar="LIST",
            help="X-DTLS12-CipherSuite offer, colon-separated (default "
            f"{':'.join(DEFAULT_DTLS12_OFFER)}); given alone, X-DTLS-CipherSuite is not sent",
        ),
    )
    dtls_schedule: tuple[float, ...] = field(
        default=DEFAULT_RETRANSMIT_SCHEDULE_S,
        metadata=_spec(
            name="dtls-schedule",
            group="DTLS",
            parse=_schedule,
            check=_schedule_ok,
            show=_seconds_list,
            metavar="S,S,...",
            help="ClientHello send times in seconds; the last is when DTLS is given up for "
            "CSTP (AnyConnect's schedule)",
        ),
    )
    dtls_reattempt_s: float = field(
        default=60.0,
        metadata=_spec(
            name="dtls-reattempt",
            group="DTLS",
            parse=_checked(_number, _non_negative),
            check=_non_negative,
            metavar="S",
            help="seconds between DTLS attempts after a fallback, as openconnect (0: never)",
        ),
    )
    dtls_host: str | None = field(
        default=None,
        metadata=_spec(
            name="dtls-host",
            group="DTLS",
            parse=str,
            metavar="HOST",
            help="send DTLS to this host instead of the gateway's (e.g. a fault proxy)",
        ),
    )
    dtls_port: int | None = field(
        default=None,
        metadata=_spec(
            name="dtls-port",
            group="DTLS",
            parse=_checked(_integer, _port),
            check=_port,
            metavar="PORT",
            help="send DTLS to this port instead of X-DTLS-Port",
        ),
    )
    # -- echo through the tunnel
    echo_count: int = field(
        default=3,
        metadata=_spec(
            name="echo-count",
            group="echo",
            parse=_checked(_integer, _echo_count),
            check=_echo_count,
            metavar="N",
            defaults={Front.RUN: 1},
            default_why=_ECHO_RUN_WHY,
            aliases=(
                Alias(name="echo", fronts=Front.CONNECT),
                Alias(name="echo-burst", fronts=Front.RUN),
            ),
            help="echo requests per burst (0: none)",
        ),
    )
    echo_spacing_s: float = field(
        default=0.2,
        metadata=_spec(
            name="echo-spacing",
            group="echo",
            parse=_checked(_number, _non_negative),
            check=_non_negative,
            metavar="S",
            defaults={Front.RUN: 0.0},
            default_why=_ECHO_RUN_WHY,
            aliases=(Alias(name="echo-interval", fronts=Front.CONNECT | Front.LOCUST),),
            help="seconds between the echo requests of one burst",
        ),
    )
    echo_every_s: float = field(
        default=5.0,
        metadata=_spec(
            name="echo-every",
            group="echo",
            parse=_checked(_number, _non_negative),
            check=_non_negative,
            metavar="S",
            fronts=Front.RUN,
            why="connect sends one burst; Locust paces echoes with the scenario's wait_time",
            aliases=(Alias(name="echo-interval", fronts=Front.RUN),),
            help="seconds between the echo bursts of each session (0: none)",
        ),
    )
    echo_timeout_s: float = field(
        default=2.0,
        metadata=_spec(
            name="echo-timeout",
            group="echo",
            parse=_checked(_number, _positive),
            check=_positive,
            metavar="S",
            help="seconds to wait for each echo reply (and each DPD probe of loadgen connect)",
        ),
    )
    echo_size: int = field(
        default=56,
        metadata=_spec(
            name="echo-size",
            group="echo",
            parse=_checked(_integer, _echo_size),
            check=_echo_size,
            metavar="BYTES",
            help="echo payload size",
        ),
    )
    echo_target: str | None = field(
        default=None,
        metadata=_spec(
            name="echo-target",
            group="echo",
            parse=_ipv4,
            check=_ipv4_ok,
            metavar="IP",
            help="echo destination (default: the gateway's tunnel address, the first host of "
            "the assigned network)",
        ),
    )
    echo_udp: bool = field(
        default=False,
        metadata=_spec(
            name="echo-udp",
            group="echo",
            help="UDP datagrams to the target's echo port 7 instead of ICMP echo",
        ),
    )
    # -- metrics
    metrics_port: int | None = field(
        default=None,
        metadata=_spec(
            name="metrics-port",
            group="metrics",
            parse=_checked(_integer, _metrics_port),
            check=_metrics_port,
            metavar="P",
            fronts=Front.RUN | Front.LOCUST,
            why=f"{_ONE_SESSION} and prints its figures",
            defaults={Front.LOCUST: 9646},
            default_why="every Locust sidecar serves its metrics, so that each worker can be "
            "scraped; a run serves them when asked",
            help="serve Prometheus metrics on this port (processes and Locust sidecars: plus "
            "their index; 0: off)",
        ),
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata=_spec(
            name="metrics-host",
            group="metrics",
            parse=str,
            metavar="ADDR",
            fronts=Front.RUN | Front.LOCUST,
            why=f"{_ONE_SESSION} and prints its figures",
            help="address the metrics listen on",
        ),
    )

    def __post_init__(self) -> None:
        for spec, f in _SPECS_AND_FIELDS:
            value = getattr(self, f.name)
            if spec.check is not None and value is not None:
                try:
                    spec.check(value)
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

    def username(self, n: int) -> str:
        """The user name of session ``n`` (``{n}`` replaced; a plain name as it is)."""
        return self.user.format(n=n) if "{n" in self.user else self.user

    def offers(self) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        """The two DTLS offers as sent: neither given means both defaults, as
        AnyConnect sends; one given alone means the other header is not sent."""
        if self.dtls_ciphers is None and self.dtls12_ciphers is None:
            return DEFAULT_DTLS_OFFER, DEFAULT_DTLS12_OFFER
        return self.dtls_ciphers, self.dtls12_ciphers

    def without_secrets(self) -> ClientOptions:
        return replace(self, password=None)


def _spec_of(f: Any) -> Spec:
    return cast(Spec, f.metadata["spec"])


_SPECS_AND_FIELDS = tuple((_spec_of(f), f) for f in fields(ClientOptions))


def specs(front: Front | None = None) -> Iterator[tuple[str, Spec]]:
    """(field name, spec) of every option, or of those ``front`` shows."""
    for spec, f in _SPECS_AND_FIELDS:
        if front is None or front in spec.fronts:
            yield f.name, spec


def default_of(name: str, front: Front) -> Any:
    """The default of field ``name`` on ``front``."""
    for spec, f in _SPECS_AND_FIELDS:
        if f.name == name:
            return _front_default(spec, f, front)
    raise KeyError(name)


def _front_default(spec: Spec, f: Any, front: Front) -> Any:
    if front in spec.defaults:
        return spec.defaults[front]
    assert f.default is not MISSING
    return f.default


# -- rendering --------------------------------------------------------------------------


def add_arguments(parser: Any, front: Front) -> None:
    """Add every option ``front`` shows to ``parser`` (argparse, or Locust's parser).

    Values stay text until ``from_namespace`` reads them: Locust forwards a
    master's options to its workers as they are, so one reader serves both.
    """
    groups: dict[str, Any] = {}
    for name, spec in specs(front):
        default = default_of(name, front)
        target = parser
        if front is not Front.LOCUST and hasattr(parser, "add_argument_group"):
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            target = groups[spec.group]
        help_text = spec.help
        if spec.parse is not None and default is not None and not spec.secret:
            help_text += f" (default {spec.show(default)})"
        flags = [spec.flag(front)]
        if spec.short and front is not Front.LOCUST:
            flags.insert(0, spec.short)
        kwargs: dict[str, Any] = {"dest": spec.dest(front), "help": help_text}
        if spec.parse is None:
            kwargs["action"] = "store_true"
            kwargs["default"] = False
        else:
            kwargs["metavar"] = spec.metavar
            kwargs["choices"] = spec.choices
            # Locust's web UI shows the default in a text field; argparse keeps None
            # for "not given"
            kwargs["default"] = _locust_default(spec, default) if front is Front.LOCUST else None
        if front is Front.LOCUST:
            if spec.env_var:
                kwargs["env_var"] = spec.env_var
            if spec.secret:
                # is_secret only masks the field: the page would still carry the value
                kwargs["is_secret"] = True
                kwargs["include_in_web_ui"] = False
        target.add_argument(*flags, **kwargs)
        for alias in spec.aliases:
            if front in alias.fronts:
                alias_kwargs = dict(kwargs, dest=_alias_dest(alias, front))
                alias_kwargs["help"] = argparse.SUPPRESS
                alias_kwargs.pop("env_var", None)
                alias_kwargs["default"] = False if spec.parse is None else None
                target.add_argument(flag_of(alias.name, front), **alias_kwargs)


def _locust_default(spec: Spec, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return spec.show(value)
    return value


def to_argv(opts: ClientOptions, front: Front) -> list[str]:
    """The command line that gives ``opts`` on ``front`` (what differs from the
    defaults), secrets left out: how a parent hands its options to children."""
    argv: list[str] = []
    for spec, f in _SPECS_AND_FIELDS:
        if front not in spec.fronts or spec.secret:
            continue
        value = getattr(opts, f.name)
        if value == _front_default(spec, f, front):
            continue
        if spec.parse is None:
            if value:
                argv.append(spec.flag(front))
        elif value is not None:
            argv += [spec.flag(front), spec.show(value)]
    return argv


def _alias_dest(alias: Alias, front: Front) -> str:
    return "deprecated_" + dest_of(alias.name, front)


def namespace_keys(front: Front) -> tuple[str, ...]:
    """Every attribute ``from_namespace`` reads for ``front`` (its options and old spellings)."""
    keys = []
    for _, spec in specs(front):
        keys.append(spec.dest(front))
        keys += [_alias_dest(a, front) for a in spec.aliases if front in a.fronts]
    return tuple(keys)


# -- reading --------------------------------------------------------------------------


def from_namespace(
    namespace: Any, front: Front, *, warn: Callable[[str], None] | None = None
) -> ClientOptions:
    """The options ``front`` parsed into ``namespace`` (None: all defaults), checked.

    Text values are parsed; typed ones (a Locust master forwards values as
    they are) are checked.  A deprecated spelling works, with a warning.
    Raises OptionError naming the option as ``front`` spells it.
    """
    values: dict[str, Any] = {}
    for spec, f in _SPECS_AND_FIELDS:
        if front not in spec.fronts:
            continue
        default = _front_default(spec, f, front)
        raw = _given(namespace, spec.dest(front), spec, front, default)
        for alias in spec.aliases:
            if front not in alias.fronts:
                continue
            old = _given(namespace, _alias_dest(alias, front), spec, front, None)
            if old is None:
                continue
            old_flag, new_flag = flag_of(alias.name, front), spec.flag(front)
            if raw is not None:
                raise OptionError(f"give {new_flag} or its old spelling {old_flag}, not both")
            (warn or _warn)(f"{old_flag} is deprecated: use {new_flag}")
            raw = old
        if raw is None:
            continue
        values[f.name] = _value(spec, raw, front)
    try:
        opts = ClientOptions(**{**_front_defaults(front), **values})
    except OptionError as exc:
        # the table's checks name the CLI spelling; say it as this front end does
        raise OptionError(_respell(str(exc), front)) from None
    _check_together(opts, front)
    return opts


def _given(namespace: Any, dest: str, spec: Spec, front: Front, default: Any) -> Any:
    """The value given for ``dest``, or None when it was not given (Locust keeps
    the default it showed, which counts as not given)."""
    value = getattr(namespace, dest, None) if namespace is not None else None
    if value is None or value == "" or (spec.parse is None and value is False):
        return None
    if front is Front.LOCUST and value == _locust_default(spec, default):
        return None
    return value


def _value(spec: Spec, raw: Any, front: Front) -> Any:
    if spec.parse is None:
        return bool(raw)
    try:
        if isinstance(raw, str):
            return spec.parse(raw)
        value = tuple(raw) if isinstance(raw, list) else raw
        if spec.check is not None:
            spec.check(value)
        return value
    except (ValueError, TypeError) as exc:
        shown = "(hidden)" if spec.secret else None
        detail = shown or str(exc)
        raise OptionError(f"{spec.flag(front)}: {detail}") from None


def _front_defaults(front: Front) -> dict[str, Any]:
    return {f.name: spec.defaults[front] for spec, f in _SPECS_AND_FIELDS if front in spec.defaults}


def _respell(message: str, front: Front) -> str:
    if front is not Front.LOCUST:
        return message
    for _, spec in specs():
        cli = spec.flag(Front.CONNECT)
        if message.startswith(cli + ":"):
            return spec.flag(front) + message[len(cli) :]
    return message


def _check_together(opts: ClientOptions, front: Front) -> None:
    """What no single option can check."""

    def flag(name: str) -> str:
        return flag_of(name, front)

    if opts.servercert is not None and opts.insecure:
        raise OptionError(f"{flag('servercert')} and {flag('insecure')} contradict each other")
    if opts.password is not None and opts.password_stdin:
        raise OptionError(f"give either {flag('password')} or {flag('password-stdin')}, not both")
    if opts.credentials is None:
        try:
            # many sessions need a unique user each, or the gateway evicts one
            check_user_pattern(opts.user, need_n=front is not Front.CONNECT)
        except FeederError as exc:
            raise OptionError(f"{flag('user')}: {exc}") from None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
