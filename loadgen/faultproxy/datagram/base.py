"""The datagram toxic contract, and the base class every datagram toxic builds on.

Toxiproxy's toxics work on a byte stream (CREATING_TOXICS.md); a datagram toxic works on
whole datagrams and decides per packet.  The written contract:

1. **Per packet.** A toxic sees one datagram at a time, as opaque bytes (any content,
   up to 65535 bytes, hostile or not; a toxic never fails on content).  ``toxicity``
   is the probability that a datagram is *selected*; a datagram not selected bypasses
   the toxic untouched (so with ``toxicity`` < 1 a delaying toxic may be overtaken by
   the datagrams it did not select: the guarantees below are about selected ones).
2. **No EOF.** Datagrams have no end of stream; a flow just goes idle and expires.
3. **Order kept** among the datagrams a toxic passes, unless reordering is its job
   (``reorder``); a delaying toxic never lets a later selected datagram overtake an
   earlier one.
4. **Nothing lost unless dropping is the job** (``blackhole``, ``loss``, ``rate``).
   A held datagram is forwarded when the toxic is removed (``release``), never lost.
   An update keeps what is held (held datagrams keep their release times).
5. **Bounded.** A toxic holds at most :data:`MAX_HELD` datagrams; beyond that it drops
   and the drop is counted against it (memory stays bounded under a flood).
6. **Deterministic.** A toxic reads neither the clock nor a random source: ``now``
   (seconds, the caller's monotonic clock) and ``rng`` are arguments, so the same code
   runs in the proxy and, exactly, in tests under trio's MockClock.

The driver contract (aioquic-like, one instance per flow and direction):
``receive(datagram, now, rng) -> Verdict`` takes one selected datagram;
``datagrams_to_send(now)`` returns what leaves the toxic by ``now``, in order;
``get_timer()`` tells when something held becomes due; ``release()`` empties it on removal.

Attribute units are in the attribute names' documentation (milliseconds for times,
percent for probabilities); every attribute has a default; an unknown attribute or a
value out of range is an ``ApiError(400)``.
"""

from __future__ import annotations

import abc
import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from loadgen.faultproxy.model import ApiError, AttrValue, ToxicSpec

__all__ = [
    "DROP",
    "MAX_HELD",
    "PASS",
    "AttributeRule",
    "DatagramToxic",
    "Verdict",
    "check_attributes",
]

#: most datagrams one toxic instance holds at once (contract item 5)
MAX_HELD = 4096


@dataclass(frozen=True, kw_only=True)
class AttributeRule:
    """One attribute of a toxic type: its default, its closed range and its unit."""

    name: str
    default: AttrValue
    minimum: float
    maximum: float
    integer: bool = False
    unit: str = ""


def check_attributes(
    type_name: str, rules: tuple[AttributeRule, ...], attrs: Mapping[str, AttrValue]
) -> dict[str, AttrValue]:
    """``attrs`` checked against ``rules``, defaults filled in; ApiError(400) otherwise."""
    known = {r.name: r for r in rules}
    for key in attrs:
        if key not in known:
            raise ApiError(400, f"toxic {type_name}: unknown attribute {key}")
    out: dict[str, AttrValue] = {}
    for rule in rules:
        value = attrs.get(rule.name, rule.default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"toxic {type_name}: {rule.name} must be a number")
        if not math.isfinite(value) or not rule.minimum <= value <= rule.maximum:
            raise ApiError(
                400,
                f"toxic {type_name}: {rule.name} must be between "
                f"{_num(rule.minimum)} and {_num(rule.maximum)}{rule.unit and ' ' + rule.unit}",
            )
        if rule.integer:
            if value != int(value):
                raise ApiError(400, f"toxic {type_name}: {rule.name} must be an integer")
            value = int(value)
        out[rule.name] = value
    return out


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What a toxic did with one datagram (for metrics; the bytes flow through the queue)."""

    dropped: bool = False
    #: set when the datagram is held back: the planned hold in seconds (0.0 when the
    #: release depends on later datagrams, as for ``reorder``)
    held_s: float | None = None


PASS = Verdict()
DROP = Verdict(dropped=True)


class DatagramToxic(abc.ABC):
    """A datagram toxic instance for one flow and one direction.

    Subclasses set ``type_name`` and ``attribute_rules``, read their attributes in
    :meth:`_configure` and decide in :meth:`receive`, using :meth:`_pass`,
    :meth:`_hold_until` or returning :data:`DROP`.  The base keeps the output list and
    a FIFO of held datagrams whose release times never decrease (contract item 3).
    """

    type_name: ClassVar[str]
    attribute_rules: ClassVar[tuple[AttributeRule, ...]] = ()

    def __init__(self, spec: ToxicSpec) -> None:
        self._out: list[bytes] = []
        self._held: deque[tuple[float, bytes]] = deque()
        self._init_state()
        self.spec = spec
        self._configure(self.check(spec.attributes))

    @classmethod
    def check(cls, attrs: Mapping[str, AttrValue]) -> dict[str, AttrValue]:
        return check_attributes(cls.type_name, cls.attribute_rules, attrs)

    def update(self, spec: ToxicSpec) -> None:
        """New attributes or toxicity; what is held stays held (contract item 4)."""
        self.spec = spec
        self._configure(self.check(spec.attributes))

    def _init_state(self) -> None:
        """Set up per-flow state before the first :meth:`_configure` (optional)."""
        return

    @abc.abstractmethod
    def _configure(self, attrs: Mapping[str, AttrValue]) -> None:
        """Read the checked, complete attributes."""

    @abc.abstractmethod
    def receive(self, datagram: bytes, now: float, rng: random.Random) -> Verdict:
        """Take one selected datagram at ``now`` (seconds)."""

    def bypassed(self, now: float) -> None:
        """A datagram not selected went past this toxic (only ``reorder`` cares)."""
        return

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything that leaves the toxic by ``now``, in order."""
        while self._held and self._held[0][0] <= now:
            self._out.append(self._held.popleft()[1])
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When the next held datagram becomes due, or None."""
        return self._held[0][0] if self._held else None

    def release(self) -> list[bytes]:
        """Everything in the toxic, in order: called when it is removed (contract item 4)."""
        out = self._out + [d for _, d in self._held]
        self._out = []
        self._held.clear()
        return out

    @property
    def held_count(self) -> int:
        return len(self._held)

    def _pass(self, datagram: bytes) -> Verdict:
        self._out.append(datagram)
        return PASS

    def _hold_until(self, datagram: bytes, due: float, now: float) -> Verdict:
        """Hold ``datagram`` until ``due`` or until everything held before it is out."""
        if len(self._held) >= MAX_HELD:
            return DROP
        if self._held:
            due = max(due, self._held[-1][0])  # order kept: never before an earlier one
        if due <= now and not self._held:
            return self._pass(datagram)
        self._held.append((due, datagram))
        return Verdict(held_s=max(0.0, due - now))
