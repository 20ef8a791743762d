"""One stream's toxics in order, as a sans-IO machine: the chain both proxies drive.

A proxy keeps one chain per connection (TCP) or flow (UDP) and direction, and drives
it with the toxics' own contract (:mod:`loadgen.faultproxy.toxic`)::

    chain.receive(item, now)      # an item (chunk, EOF; or a datagram) arrived
    chain.handle_timer(now)       # time has come to now: what is due moves on
    chain.get_timer()             # when to call handle_timer again
    chain.take_output()           # what left the last toxic, in order
    chain.events()                # drops and holds (unless they go to ``stats_for``)

Toxics run in the order they were added (Toxiproxy's ``ToxicLink``): what one toxic
releases goes on to the next at once.  Toxics can be added (at the end), updated in place
(keeping their per-stream state) and removed while data flows; a removed toxic's held
items go on to the toxics after it (both contracts' "nothing lost").

The two kinds differ in one thing, toxicity (the probability that a toxic applies):
:class:`TcpChain` draws it per connection, when a toxic meets the chain and again
when it is updated (Toxiproxy's semantics); :class:`DatagramChain` draws it per
datagram, and a datagram not selected goes past the toxic untouched (a datagram toxic
may let a datagram pass what it holds, so what falls due in it goes on before a
datagram that arrives at the same time).  Both draws and the toxics' own dice come
from the chain's seeded ``rng``.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from loadgen.faultproxy.datagram import DATAGRAM_TOXICS
from loadgen.faultproxy.datagram.base import DatagramToxic
from loadgen.faultproxy.model import ApiError, ToxicSpec
from loadgen.faultproxy.toxic import Toxic, ToxicStats
from loadgen.faultproxy.toxics import TCP_TOXICS
from loadgen.faultproxy.toxics.base import Item, TcpToxic

__all__ = ["DataDropped", "DataHeld", "DatagramChain", "TcpChain", "ToxicChain", "ToxicEvent"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class DataDropped:
    """A toxic dropped bytes (one datagram, or part of the stream)."""

    toxic_type: str
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class DataHeld:
    """A toxic held a chunk or datagram back for ``delay_s`` (0.0: until later data)."""

    toxic_type: str
    delay_s: float


ToxicEvent = DataDropped | DataHeld


@dataclass(frozen=True)
class _Recorder:
    """A toxic's stats, as events of the chain."""

    events: list[ToxicEvent]
    toxic_type: str

    def dropped(self, size_bytes: int) -> None:
        self.events.append(DataDropped(toxic_type=self.toxic_type, size_bytes=size_bytes))

    def held(self, delay_s: float) -> None:
        self.events.append(DataHeld(toxic_type=self.toxic_type, delay_s=delay_s))


@dataclass(eq=False, kw_only=True)
class _Stage(Generic[T]):
    spec: ToxicSpec
    toxic: Toxic[T]
    #: the toxic applies to this connection (always, when toxicity is drawn per item)
    active: bool


class ToxicChain(abc.ABC, Generic[T]):
    """The toxics of one stream of one connection or flow."""

    #: toxicity drawn for every item (datagrams) rather than once per connection (TCP)
    per_item: ClassVar[bool]
    #: the toxic types of this kind, by name
    _types: Mapping[str, type[Toxic[T]]]

    def __init__(
        self,
        specs: Iterable[ToxicSpec] = (),
        *,
        rng: random.Random | None = None,
        now: float = 0.0,
        stats_for: Callable[[str], ToxicStats] | None = None,
    ) -> None:
        """``specs``: the toxics in place when the connection or flow opens, at ``now``
        (every spec of this chain is checked by its kind's ``check_*_toxic`` first);
        ``stats_for(toxic_type)``: where each toxic reports its drops and holds (the
        proxies: straight into the metrics, no event built per chunk); by default they
        are kept as events for :meth:`events`."""
        self._rng = rng if rng is not None else random.Random()
        self._stages: list[_Stage[T]] = []
        self._out: list[T] = []
        self._events: list[ToxicEvent] = []
        self._stats_for = stats_for if stats_for is not None else self._recorder
        #: bytes received so far: a toxic added later knows whether the stream has started
        self.received_bytes = 0
        for spec in specs:
            self.add(spec, now)

    @staticmethod
    @abc.abstractmethod
    def _size_of(item: T) -> int: ...

    # -- toxic changes --------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [s.spec.name for s in self._stages]

    def add(self, spec: ToxicSpec, now: float) -> None:
        toxic = self._types[spec.type](
            spec.attributes,
            now=now,
            rng=self._rng,
            stats=self._stats_for(spec.type),
            fresh=self.received_bytes == 0,
        )
        self._stages.append(_Stage(spec=spec, toxic=toxic, active=self._applies(spec)))

    def update(self, spec: ToxicSpec, now: float) -> None:
        """New attributes or toxicity for the toxic named ``spec.name``."""
        self.handle_timer(now)
        i = self._index(spec.name)
        stage = self._stages[i]
        stage.spec = spec
        stage.toxic.update(spec.attributes, now)
        active = self._applies(spec)
        if stage.active and not active:
            stage.active = False
            self._push(i + 1, stage.toxic.flush(), now)
            return
        stage.active = active
        self._push(i, [], now)  # the update may have released items

    def remove(self, name: str, now: float) -> None:
        """Remove a toxic; what it holds goes on through the toxics after it."""
        self.handle_timer(now)
        i = self._index(name)
        stage = self._stages.pop(i)
        if stage.active:
            self._push(i, stage.toxic.flush() + stage.toxic.on_removed(), now)

    # -- data -----------------------------------------------------------------------

    def receive(self, item: T, now: float) -> None:
        self.received_bytes += self._size_of(item)
        self._push(0, [item], now)

    def handle_timer(self, now: float) -> None:
        """Move everything due by ``now`` on through the chain."""
        self._push(0, [], now)

    def get_timer(self) -> float | None:
        timers = [t for s in self._stages if s.active and (t := s.toxic.get_timer()) is not None]
        return min(timers) if timers else None

    def take_output(self) -> list[T]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[ToxicEvent]:
        """Drops and holds since the last call."""
        if not self._events:
            return []
        out = self._events.copy()
        self._events.clear()  # in place: the toxics' recorders hold this list
        return out

    @property
    def held_bytes(self) -> int:
        """Bytes inside the toxics and waiting in the output."""
        held = 0
        for stage in self._stages:
            held += stage.toxic.held_bytes
        return held + sum(map(self._size_of, self._out)) if self._out else held

    @property
    def held_count(self) -> int:
        """Items waiting for their release time in the toxics."""
        return sum(s.toxic.held_count for s in self._stages)

    # -- internals ------------------------------------------------------------------

    def _recorder(self, toxic_type: str) -> ToxicStats:
        return _Recorder(self._events, toxic_type)

    def _applies(self, spec: ToxicSpec) -> bool:
        """The toxicity draw for the whole connection (none when it is drawn per item)."""
        return self.per_item or self._rng.random() < spec.toxicity

    def _push(self, start: int, items: list[T], now: float) -> None:
        per_item = self.per_item
        for stage in self._stages[start:] if start else self._stages:
            if not stage.active:
                continue
            toxic = stage.toxic
            if per_item and items:
                items = self._per_item(stage, items, now)
            else:
                for item in items:
                    toxic.receive(item, now)
            toxic.handle_timer(now)
            out = toxic.take_output()
            if per_item and items:
                items += out  # a fresh list from _per_item
            else:
                items = out
        if items:
            self._out.extend(items)

    def _per_item(self, stage: _Stage[T], items: list[T], now: float) -> list[T]:
        """Each item through one toxic, or past it when the toxicity draw says so; what
        passes it at once is returned (what it emits is left in its output)."""
        toxic, toxicity, rng = stage.toxic, stage.spec.toxicity, self._rng
        passed: list[T] = []
        for item in items:
            toxic.handle_timer(now)  # what fell due goes before what arrives now
            # no draw at toxicity 0 or 1, so a seed's trace depends on neither
            if toxicity >= 1.0 or (toxicity > 0.0 and rng.random() < toxicity):
                toxic.receive(item, now)
            else:
                passed += toxic.take_output()
                passed.append(item)
                toxic.bypassed(now)
        return passed

    def _index(self, name: str) -> int:
        for i, stage in enumerate(self._stages):
            if stage.spec.name == name:
                return i
        raise ApiError(404, "toxic not found")


class TcpChain(ToxicChain[Item]):
    """The TCP toxics of one direction of one connection (toxicity per connection)."""

    per_item = False
    _types = TCP_TOXICS
    _size_of = staticmethod(TcpToxic.size_of)


class DatagramChain(ToxicChain[bytes]):
    """The datagram toxics of one direction of one flow (toxicity per datagram)."""

    per_item = True
    _types = DATAGRAM_TOXICS
    _size_of = staticmethod(DatagramToxic.size_of)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """aioquic's spelling: :meth:`handle_timer` then :meth:`take_output`."""
        self.handle_timer(now)
        return self.take_output()
