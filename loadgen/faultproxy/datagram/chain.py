"""One stream's datagram toxics in order, as a sans-IO machine (aioquic's driver contract).

The proxy keeps one chain per flow and direction and drives it with::

    chain.receive(datagram, now)        # a datagram arrived
    chain.datagrams_to_send(now)        # what leaves the last toxic by now, in order
    chain.get_timer()                   # when to call datagrams_to_send again
    chain.events()                      # drops and holds, for the metrics

Toxics run in the order they were added (Toxiproxy's order).  For each datagram and
each toxic the chain draws the toxicity (per packet, contract item 1); a datagram the
toxic does not select goes straight on to the next one.  Removing a toxic feeds what
it holds into the toxics after it (contract item 4).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from loadgen.faultproxy.datagram import new_datagram_toxic
from loadgen.faultproxy.datagram.base import DatagramToxic
from loadgen.faultproxy.model import ToxicSpec

__all__ = ["DatagramChain", "DatagramDropped", "DatagramHeld", "ToxicEvent"]


@dataclass(frozen=True, kw_only=True)
class DatagramDropped:
    toxic_type: str
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class DatagramHeld:
    toxic_type: str
    delay_s: float


ToxicEvent = DatagramDropped | DatagramHeld


class DatagramChain:
    """The toxics of one stream of one flow; ``rng`` draws toxicity and the toxics' dice."""

    def __init__(self, specs: Iterable[ToxicSpec] = (), *, rng: random.Random) -> None:
        self._rng = rng
        self._toxics: list[DatagramToxic] = [new_datagram_toxic(s) for s in specs]
        self._out: list[bytes] = []
        self._events: list[ToxicEvent] = []

    @property
    def names(self) -> list[str]:
        return [t.spec.name for t in self._toxics]

    def add(self, spec: ToxicSpec) -> None:
        self._toxics.append(new_datagram_toxic(spec))

    def update(self, spec: ToxicSpec) -> None:
        self._toxics[self._index(spec.name)].update(spec)

    def remove(self, name: str, now: float) -> None:
        """Remove a toxic; what it holds goes on through the toxics after it."""
        i = self._index(name)
        self.datagrams_ready(now)
        released = self._toxics.pop(i).release()
        for datagram in released:
            self._feed(i, datagram, now)

    def receive(self, datagram: bytes, now: float) -> None:
        self.datagrams_ready(now)  # what fell due first goes first
        self._feed(0, datagram, now)

    def datagrams_ready(self, now: float) -> None:
        """Move every datagram due by ``now`` on through the chain."""
        for i, toxic in enumerate(self._toxics):
            if (timer := toxic.get_timer()) is not None and timer <= now:
                for datagram in toxic.datagrams_to_send(now):
                    self._feed(i + 1, datagram, now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        self.datagrams_ready(now)
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        timers = [t for toxic in self._toxics if (t := toxic.get_timer()) is not None]
        return min(timers) if timers else None

    @property
    def held_count(self) -> int:
        return sum(t.held_count for t in self._toxics)

    def events(self) -> list[ToxicEvent]:
        """Drops and holds since the last call."""
        out, self._events = self._events, []
        return out

    def _index(self, name: str) -> int:
        for i, toxic in enumerate(self._toxics):
            if toxic.spec.name == name:
                return i
        raise KeyError(name)

    def _feed(self, i: int, datagram: bytes, now: float) -> None:
        if i >= len(self._toxics):
            self._out.append(datagram)
            return
        toxic = self._toxics[i]
        if self._selected(toxic.spec.toxicity):
            verdict = toxic.receive(datagram, now, self._rng)
            if verdict.dropped:
                self._events.append(
                    DatagramDropped(toxic_type=toxic.type_name, size_bytes=len(datagram))
                )
            elif verdict.held_s is not None:
                self._events.append(
                    DatagramHeld(toxic_type=toxic.type_name, delay_s=verdict.held_s)
                )
        else:
            self._feed(i + 1, datagram, now)
            toxic.bypassed(now)
        for out in toxic.datagrams_to_send(now):
            self._feed(i + 1, out, now)

    def _selected(self, toxicity: float) -> bool:
        if toxicity >= 1.0:
            return True
        return toxicity > 0.0 and self._rng.random() < toxicity
