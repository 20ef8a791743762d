"""How one client option is shown, read and checked: ``Spec``, and its converters and checks.

A spec names the option (``--NAME`` in the CLI, ``--vpn-NAME`` in Locust),
says which front ends show it and why not the others, converts text to a
value and checks values however they arrive: typed as a command line or a
Locust web form gives them, or as a Locust master forwards them and the
sidecar receives them.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadgen.pins import parse_pin

__all__ = [
    "LOCUST_PREFIX",
    "MAX_ECHO_BYTES",
    "MAX_ECHO_COUNT",
    "MAX_SECONDS",
    "MIN_ECHO_BYTES",
    "Alias",
    "Front",
    "OptionError",
    "Spec",
    "dest_of",
    "flag_of",
]

#: Locust's options share one namespace with other plugins: ours carry this prefix
LOCUST_PREFIX = "vpn-"
#: bounds of any duration option: beyond an hour is a typo, not a test plan
MAX_SECONDS = 3600.0
#: an echo probe carries its id and send time; beyond, it would not fit a 1500 B tunnel MTU
MIN_ECHO_BYTES = 16
MAX_ECHO_BYTES = 1400
MAX_ECHO_COUNT = 10_000


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


def text(value: Any) -> str:
    """30.0 as 30, 0.2 as 0.2: exact, and as a user would write it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True, kw_only=True)
class Spec:
    """How one option is shown, read and checked."""

    #: the option's name: ``--NAME`` in the CLI, ``--vpn-NAME`` in Locust
    name: str
    help: str
    group: str
    #: text to value; None: a flag (present: True)
    convert: Callable[[str], Any] | None = None
    #: raises ValueError for a bad value, however it came
    check: Callable[[Any], None] | None = None
    #: value to text, as ``convert`` reads it back
    show: Callable[[Any], str] = text
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
    #: an environment variable that also sets it (a secret kept off the command line)
    env_var: str | None = None
    #: given once per value (``--form-entry A --form-entry B``); the field is a tuple
    repeat: bool = False

    @property
    def is_flag(self) -> bool:
        return self.convert is None

    def parse(self, raw: str) -> Any:
        assert self.convert is not None
        value = self.convert(raw)
        self.validate(value)
        return value

    def parse_all(self, raws: Any) -> Any:
        """A repeated option's values, each converted, then checked together."""
        value = tuple(self.convert(r) if isinstance(r, str) else r for r in raws)  # type: ignore[misc]
        self.validate(value)
        return value

    def validate(self, value: Any) -> None:
        if self.check is not None and value is not None:
            self.check(value)

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


# -- converters: text to value ----------------------------------------------------------


def number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return value


def integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a whole number") from None


def names(raw: str) -> tuple[str, ...]:
    """``A:B:C``, as openconnect and ocserv write cipher lists."""
    return tuple(n.strip() for n in raw.split(":") if n.strip())


def show_names(values: tuple[str, ...]) -> str:
    return ":".join(values)


def seconds_list(raw: str) -> tuple[float, ...]:
    try:
        return tuple(number(t) for t in raw.split(","))
    except ValueError:
        raise ValueError("a schedule is comma-separated seconds, e.g. 0,1,3,7,15,31") from None


def show_seconds_list(values: tuple[float, ...]) -> str:
    return ",".join(text(v) for v in values)


# -- checks: a value, however it came ------------------------------------------------------


def positive_seconds(value: float) -> None:
    if not (value > 0 and value <= MAX_SECONDS):
        raise ValueError(f"must be a positive number of seconds, at most {MAX_SECONDS:g}")


def seconds(value: float) -> None:
    if not (value >= 0 and value <= MAX_SECONDS):
        raise ValueError(f"must be 0 or more seconds, at most {MAX_SECONDS:g}")


def port(value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError("must be a port in 1..65535")


def port_or_off(value: int) -> None:
    if not 0 <= value < 65536:
        raise ValueError("must be a port in 1..65535 (0: off)")


def echo_count(value: int) -> None:
    if not 0 <= value <= MAX_ECHO_COUNT:
        raise ValueError(f"must be 0 to {MAX_ECHO_COUNT}")


def echo_size(value: int) -> None:
    if not MIN_ECHO_BYTES <= value <= MAX_ECHO_BYTES:
        raise ValueError(f"must be {MIN_ECHO_BYTES} to {MAX_ECHO_BYTES} bytes")


def known_names(known: tuple[str, ...]) -> Callable[[tuple[str, ...]], None]:
    def check(values: tuple[str, ...]) -> None:
        unknown = [n for n in values if n not in known]
        if not values or unknown:
            what = ", ".join(unknown) or "(none given)"
            raise ValueError(f"unknown cipher {what}; known: {':'.join(known)}")

    return check


def schedule(times: tuple[float, ...]) -> None:
    if (
        len(times) < 2
        or times[0] != 0
        or list(times) != sorted(set(times))
        or not all(math.isfinite(t) and t <= MAX_SECONDS for t in times)
    ):
        raise ValueError("a schedule starts at 0 and increases, e.g. 0,1,3,7,15,31")


def pin(value: str) -> None:
    parse_pin(value)


def ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def one_of(choices: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")

    return check


def not_empty(value: str) -> None:
    if not value:
        raise ValueError("cannot be empty")


def form_entries(values: tuple[str, ...]) -> None:
    from loadgen.proto.auth import parse_form_entry

    for value in values:
        parse_form_entry(value)
