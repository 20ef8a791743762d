"""Load models: when sessions start, how long they last, when they storm back.

Pure: no trio, no clock, no random source of its own.  The swarm passes
``now`` (any monotonic clock in seconds, e.g. ``trio.current_time()``) and a
random generator (``random.Random(seed)`` in tests).

Scheduling contract (``Scheduler.next_start``), the same for every model:

* a time ``t <= now``: one start is DUE and handed out by this call (a second
  call returns the next one).  The swarm starts exactly one session, counts it
  in ``active`` before it asks again, and records ``t`` as the session's
  SCHEDULED start.  Latency is measured from ``t``, not from the moment the
  session really started, so a generator that falls behind shows the delay in
  its figures instead of hiding it (no coordinated omission,
  architecture.md, Metrics).  ``now - t`` is the start's lateness: report it
  (``ScheduledStart.lateness_s``); a growing lateness means the generator
  itself saturates.
* a time ``t > now``: nothing is due; ask again at ``t`` or when a session
  ends, whichever comes first.  Nothing is consumed.
* ``None``: nothing will be due until a session ends; when ``exhausted`` is
  also true, nothing will ever be due again.

``take_due`` wraps that loop for the swarm.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ClosedModel",
    "DueStarts",
    "ExponentialLength",
    "FixedLength",
    "LengthDistribution",
    "OpenModel",
    "Rng",
    "ScheduledStart",
    "Scheduler",
    "StormMode",
    "StormPlan",
    "UniformLength",
    "UntilEnd",
    "parse_length",
    "parse_seconds",
    "parse_think_time",
    "take_due",
]


class Rng(Protocol):
    """What we need of a random generator; ``random.Random`` has it."""

    def random(self) -> float: ...
    def uniform(self, a: float, b: float) -> float: ...
    def expovariate(self, lambd: float) -> float: ...


# -- schedulers ---------------------------------------------------------------


class Scheduler(Protocol):
    """When to start sessions (see the module docstring for the contract)."""

    @property
    def exhausted(self) -> bool: ...

    def next_start(self, now: float, active: int) -> float | None: ...


def _check_rate(name: str, value: float) -> None:
    if not (value > 0):  # also refuses NaN
        raise ValueError(f"{name} must be > 0 sessions per second, got {value!r}")


class ClosedModel:
    """Keep ``target_sessions`` active: ramp up at ``ramp_rate_per_s``, then
    start a replacement as soon as one ends.

    Ramp start k (0-based) is scheduled at ``start_s + k / ramp_rate_per_s``;
    a replacement is scheduled at the ``now`` it was asked for (the swarm asks
    when a session ends).  ``ramp_rate_per_s=math.inf`` starts all at once.
    ``start_s=None`` anchors the schedule at the first ``next_start`` call.
    """

    def __init__(
        self, target_sessions: int, ramp_rate_per_s: float, *, start_s: float | None = None
    ) -> None:
        if target_sessions < 0:
            raise ValueError(f"target_sessions must be >= 0, got {target_sessions}")
        _check_rate("ramp_rate_per_s", ramp_rate_per_s)
        self.target_sessions = target_sessions
        self.ramp_rate_per_s = ramp_rate_per_s
        self._start_s = start_s
        self._ramped = 0  # ramp starts handed out so far

    @property
    def exhausted(self) -> bool:
        return False

    def next_start(self, now: float, active: int) -> float | None:
        if self._start_s is None:
            self._start_s = now
        if active < min(self._ramped, self.target_sessions):
            return now  # a session ended: replace it at once
        if self._ramped >= self.target_sessions:
            return None
        due = self._start_s + self._ramped / self.ramp_rate_per_s
        if due <= now:
            self._ramped += 1
        return due


class OpenModel:
    """Arrivals at ``arrival_rate_per_s`` whatever the number of active sessions.

    Fixed intervals (arrival k at ``start_s + k / rate``) without ``rng``; a
    Poisson process (exponential gaps drawn from ``rng``) with it.  After
    ``max_sessions`` arrivals in total the model is exhausted (None: never).
    ``max_active`` is an optional safety cap (file descriptors): while that
    many are active the next arrival waits, keeping its scheduled time, so the
    wait shows up as lateness and latency rather than vanishing.
    """

    def __init__(
        self,
        arrival_rate_per_s: float,
        max_sessions: int | None = None,
        *,
        max_active: int | None = None,
        rng: Rng | None = None,
        start_s: float | None = None,
    ) -> None:
        _check_rate("arrival_rate_per_s", arrival_rate_per_s)
        if math.isinf(arrival_rate_per_s):
            raise ValueError("arrival_rate_per_s must be finite")
        if max_sessions is not None and max_sessions < 0:
            raise ValueError(f"max_sessions must be >= 0, got {max_sessions}")
        if max_active is not None and max_active < 1:
            raise ValueError(f"max_active must be >= 1, got {max_active}")
        self.arrival_rate_per_s = arrival_rate_per_s
        self.max_sessions = max_sessions
        self.max_active = max_active
        self._rng = rng
        self._start_s = start_s
        self._issued = 0
        self._next: float | None = None

    @property
    def exhausted(self) -> bool:
        return self.max_sessions is not None and self._issued >= self.max_sessions

    def _arrival(self, start_s: float) -> float:
        if self._rng is None:
            return start_s + self._issued / self.arrival_rate_per_s
        prev = start_s if self._next is None else self._next
        return prev + self._rng.expovariate(self.arrival_rate_per_s)

    def next_start(self, now: float, active: int) -> float | None:
        if self._start_s is None:
            self._start_s = now
        if self.exhausted:
            return None
        if self._next is None:
            self._next = self._arrival(self._start_s)
        due = self._next
        if due > now:
            return due
        if self.max_active is not None and active >= self.max_active:
            return None
        self._issued += 1
        self._next = None if self.exhausted else self._arrival(self._start_s)
        return due


@dataclass(frozen=True, kw_only=True)
class ScheduledStart:
    """A start handed out by a scheduler, kept with the time it was asked for."""

    scheduled_s: float
    #: the ``now`` at which it was handed out
    released_s: float

    @property
    def lateness_s(self) -> float:
        return max(0.0, self.released_s - self.scheduled_s)


@dataclass(frozen=True, kw_only=True)
class DueStarts:
    starts: list[ScheduledStart]
    #: ask again at this time (or when a session ends); None: only when one ends
    wake_s: float | None
    exhausted: bool


def take_due(scheduler: Scheduler, now: float, active: int, *, limit: int = 1000) -> DueStarts:
    """Every start due at ``now`` (at most ``limit``, so one call stays short).

    Each start is counted as active for the next question, as the contract
    asks.  When ``limit`` cut the batch, ``wake_s`` is ``now``: call again.
    """
    starts: list[ScheduledStart] = []
    while len(starts) < limit:
        t = scheduler.next_start(now, active + len(starts))
        if t is None or t > now:
            return DueStarts(starts=starts, wake_s=t, exhausted=scheduler.exhausted)
        starts.append(ScheduledStart(scheduled_s=t, released_s=now))
    return DueStarts(starts=starts, wake_s=now, exhausted=scheduler.exhausted)


# -- durations ----------------------------------------------------------------

_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")


def parse_seconds(text: str) -> float:
    """A duration such as ``"30"``, ``"1.5"``, ``"250ms"``, ``"5m"``, ``"1h"`` (>= 0)."""
    m = _NUMBER.fullmatch(text.lower())
    if m is None or m.group(2) not in _UNITS:
        raise ValueError(
            f"{text!r} is not a duration: a number of seconds >= 0, optionally with ms, s, m or h"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


class LengthDistribution(Protocol):
    """A session length or think time; ``None``: until the end of the run."""

    def sample(self, rng: Rng) -> float | None: ...


@dataclass(frozen=True)
class FixedLength:
    seconds: float

    def __post_init__(self) -> None:
        if not (0 <= self.seconds < math.inf):
            raise ValueError(f"a fixed length must be finite and >= 0, got {self.seconds!r}")

    def sample(self, rng: Rng) -> float:
        return self.seconds


@dataclass(frozen=True)
class ExponentialLength:
    mean_s: float

    def __post_init__(self) -> None:
        if not (0 < self.mean_s < math.inf):
            raise ValueError(f"an exponential mean must be finite and > 0, got {self.mean_s!r}")

    def sample(self, rng: Rng) -> float:
        return rng.expovariate(1.0 / self.mean_s)


@dataclass(frozen=True)
class UniformLength:
    lo_s: float
    hi_s: float

    def __post_init__(self) -> None:
        if not (0 <= self.lo_s <= self.hi_s < math.inf):
            raise ValueError(
                f"a uniform length needs 0 <= lo <= hi (finite), got {self.lo_s!r}-{self.hi_s!r}"
            )

    def sample(self, rng: Rng) -> float:
        return rng.uniform(self.lo_s, self.hi_s)


@dataclass(frozen=True)
class UntilEnd:
    def sample(self, rng: Rng) -> float | None:
        return None


_LENGTH_FORMS = '"300", "5m", "exp:60", "uniform:30-90" or "until-end"'


def parse_length(text: str, *, allow_until_end: bool = True) -> LengthDistribution:
    """A session length from the command line: ``"300"`` (fixed, units as in
    ``parse_seconds``), ``"exp:60"`` (exponential with that mean),
    ``"uniform:30-90"``, ``"until-end"``."""
    spec = text.strip().lower()
    forms = _LENGTH_FORMS if allow_until_end else _LENGTH_FORMS.replace(' or "until-end"', "")
    try:
        if spec == "until-end":
            if not allow_until_end:
                raise ValueError("until-end is not allowed here")
            return UntilEnd()
        kind, sep, arg = spec.partition(":")
        if not sep:
            return FixedLength(parse_seconds(spec))
        if kind == "exp":
            return ExponentialLength(parse_seconds(arg))
        if kind == "uniform":
            lo, dash, hi = arg.partition("-")
            if not dash:
                raise ValueError("uniform needs LO-HI")
            return UniformLength(parse_seconds(lo), parse_seconds(hi))
        raise ValueError(f"unknown distribution {kind!r}")
    except ValueError as exc:
        raise ValueError(f"bad length {text!r}: {exc}; use {forms}") from None


def parse_think_time(text: str) -> LengthDistribution:
    """A think time (pause between actions): like ``parse_length`` without until-end."""
    return parse_length(text, allow_until_end=False)


# -- reconnect storm ----------------------------------------------------------


class StormMode(enum.StrEnum):
    #: reconnect with the session cookie (new TLS + CONNECT, no auth)
    COOKIE = "cookie"
    #: authenticate again from phase 1
    REAUTH = "reauth"


@dataclass(frozen=True, kw_only=True)
class StormPlan:
    """Every tunnel drops ``at_s`` seconds into the run.  Each session waits
    ``storm_delay`` (uniform in ``[0, jitter_s]``) and reconnects; a failed
    attempt n (1-based) is retried after ``retry_delay(n)``, exponential from
    ``backoff_s``, at most ``retries`` times.  ``jitter_s=0`` is the worst
    case: everybody comes back in the same instant."""

    at_s: float
    jitter_s: float = 0.0
    backoff_s: float = 1.0
    retries: int = 3
    mode: StormMode = StormMode.COOKIE

    def __post_init__(self) -> None:
        for name in ("at_s", "jitter_s", "backoff_s"):
            value = getattr(self, name)
            if not (0 <= value < math.inf):
                raise ValueError(f"storm {name} must be finite and >= 0, got {value!r}")
        if self.retries < 0:
            raise ValueError(f"storm retries must be >= 0, got {self.retries}")

    def storm_delay(self, rng: Rng) -> float:
        """From the drop to this session's first reconnect attempt."""
        return rng.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0

    def retry_delay(self, attempt: int) -> float:
        """Before retry ``attempt`` (1 = the first retry): backoff, 2x backoff, 4x ..."""
        if attempt < 1:
            raise ValueError(f"retry attempts count from 1, got {attempt}")
        return float(self.backoff_s * 2 ** (attempt - 1))

    @classmethod
    def parse(cls, text: str) -> StormPlan:
        """``"at=30,jitter=2,backoff=1,retries=3,mode=reauth"``; ``at`` is
        required, durations as in ``parse_seconds``, mode ``cookie`` (default)
        or ``reauth``."""
        keys = ("at", "jitter", "backoff", "retries", "mode")
        fields: dict[str, str] = {}
        for item in _items(text):
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or not value.strip():
                raise ValueError(f"bad storm plan {text!r}: {item!r} is not KEY=VALUE")
            if key not in keys:
                raise ValueError(
                    f"bad storm plan {text!r}: unknown key {key!r} ({', '.join(keys)})"
                )
            if key in fields:
                raise ValueError(f"bad storm plan {text!r}: {key!r} given twice")
            fields[key] = value.strip()
        if "at" not in fields:
            raise ValueError(f"bad storm plan {text!r}: at=SECONDS is required")
        mode = fields.get("mode", "cookie").lower()
        if mode not in {m.value for m in StormMode}:
            raise ValueError(f"bad storm plan {text!r}: mode must be cookie or reauth")
        retries = fields.get("retries", "3")
        if not retries.isdecimal():
            raise ValueError(f"bad storm plan {text!r}: retries must be a whole number >= 0")
        try:
            return cls(
                at_s=parse_seconds(fields["at"]),
                jitter_s=parse_seconds(fields.get("jitter", "0")),
                backoff_s=parse_seconds(fields.get("backoff", "1")),
                retries=int(retries),
                mode=StormMode(mode),
            )
        except ValueError as exc:
            raise ValueError(f"bad storm plan {text!r}: {exc}") from None


def _items(text: str) -> Iterator[str]:
    for item in text.split(","):
        if item.strip():
            yield item.strip()
