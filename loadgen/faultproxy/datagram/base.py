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
   A held datagram is forwarded when the toxic is removed (``flush``), never lost.
   An update keeps what is held (held datagrams keep their release times).
5. **Bounded.** A toxic holds at most :data:`MAX_HELD` datagrams; beyond that it drops
   and the drop is counted against it (memory stays bounded under a flood).
6. **Deterministic.** A toxic reads neither the clock nor a random source: ``now``
   (seconds, the caller's monotonic clock) is an argument and the seeded ``rng`` is
   given at construction (the chain's, which also draws the toxicity), so the same
   code runs in the proxy and, exactly, in tests under trio's MockClock.

The driver contract is the one TCP toxics follow too (:mod:`loadgen.faultproxy.toxic`;
one instance per flow and direction): ``receive(datagram, now)`` takes one selected
datagram; ``handle_timer(now)`` releases what is due; ``get_timer()`` tells when
something held becomes due; ``take_output()`` returns what left, in order;
``flush()`` empties the toxic on removal.  Drops and holds go to ``stats``.

Attribute units are in the attribute names' documentation (milliseconds for times,
percent for probabilities); every attribute has a default; an unknown attribute or a
value out of range is an ``ApiError(400)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from loadgen.faultproxy.model import ApiError, AttrValue
from loadgen.faultproxy.toxic import Toxic

__all__ = [
    "MAX_HELD",
    "AttributeRule",
    "DatagramToxic",
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


class DatagramToxic(Toxic[bytes]):
    """A datagram toxic instance for one flow and one direction.

    Subclasses set ``type_name`` and ``attribute_rules``, read their attributes in
    :meth:`configure` and decide in :meth:`receive`, using :meth:`_emit`,
    :meth:`_hold_until` or :meth:`_drop`.  The base keeps the output list and a FIFO
    of held datagrams whose release times never decrease (contract item 3).
    """

    attribute_rules: ClassVar[tuple[AttributeRule, ...]] = ()

    @staticmethod
    def size_of(item: bytes) -> int:
        return len(item)

    @classmethod
    def check(cls, attrs: Mapping[str, AttrValue]) -> dict[str, AttrValue]:
        return check_attributes(cls.type_name, cls.attribute_rules, attrs)

    # update (the base's): new attributes, and what is held stays held (contract item 4)

    def _drop(self, datagram: bytes) -> None:
        self.stats.dropped(len(datagram))

    def _hold_until(self, datagram: bytes, due: float, now: float) -> None:
        """Hold ``datagram`` until ``due`` or until everything held before it is out."""
        if len(self._queue) >= MAX_HELD:
            self._drop(datagram)
            return
        if self._queue:
            due = max(due, self._queue[-1][0])  # order kept: never before an earlier one
        elif due <= now:
            self._emit(datagram)
            return
        self._enqueue(datagram, due)
        self.stats.held(max(0.0, due - now))
