"""A chain of TCP toxics for one connection and direction (Toxiproxy's ToxicLink).

Items enter at the head (:meth:`ToxicChain.feed`), each toxic passes what it releases
to the next one, and what leaves the last toxic waits in :meth:`take_output` for the
writer.  Toxics can be added (at the end), updated (in place, keeping their
per-connection state) and removed while data flows: a removed toxic's held items go
on to the next toxic at once (the contract's rule 1).  Toxicity is drawn per
connection, when a toxic meets the chain and when it is updated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from loadgen.faultproxy.model import ApiError, ToxicSpec
from loadgen.faultproxy.toxics import new_tcp_toxic
from loadgen.faultproxy.toxics.base import Item, TcpToxic, ToxicStats, item_size

__all__ = ["ToxicChain"]


@dataclass(eq=False, kw_only=True)
class _Stage:
    spec: ToxicSpec
    toxic: TcpToxic
    active: bool


class ToxicChain:
    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        stats_for: Callable[[str], ToxicStats] | None = None,
    ) -> None:
        """``stats_for(toxic_type)``: where each toxic reports drops and delays."""
        self._rng = rng if rng is not None else random.Random()
        self._stats_for = stats_for
        self._stages: list[_Stage] = []
        self._out: list[Item] = []
        #: bytes fed so far: a toxic added later knows whether the stream has started
        self.fed_bytes = 0

    # -- toxic changes --------------------------------------------------------------

    def add(self, spec: ToxicSpec, now: float) -> None:
        toxic = new_tcp_toxic(
            spec,
            now=now,
            rng=self._rng,
            stats=self._stats_for(spec.type) if self._stats_for else None,
            fresh=self.fed_bytes == 0,
        )
        active = self._rng.random() < spec.toxicity
        self._stages.append(_Stage(spec=spec, toxic=toxic, active=active))

    def update(self, spec: ToxicSpec, now: float) -> None:
        i = self._index(spec.name)
        stage = self._stages[i]
        stage.spec = spec
        stage.toxic.reconfigure(spec.attributes, now)
        active = self._rng.random() < spec.toxicity
        if stage.active and not active:
            self._push(i + 1, stage.toxic.flush(), now)
        stage.active = active
        self._push(i + 1, [], now)  # the new attributes may release items now

    def remove(self, name: str, now: float) -> None:
        i = self._index(name)
        stage = self._stages.pop(i)
        if stage.active:
            self._push(i, stage.toxic.flush() + stage.toxic.on_removed(), now)

    def names(self) -> list[str]:
        return [s.spec.name for s in self._stages]

    # -- data -----------------------------------------------------------------------

    def feed(self, item: Item, now: float) -> None:
        self.fed_bytes += item_size(item)
        self._push(0, [item], now)

    def advance(self, now: float) -> None:
        """Run the timers that are due."""
        self._push(0, [], now)

    def get_timer(self) -> float | None:
        timers = [t for s in self._stages if s.active and (t := s.toxic.get_timer()) is not None]
        return min(timers) if timers else None

    def take_output(self) -> list[Item]:
        out, self._out = self._out, []
        return out

    @property
    def held_bytes(self) -> int:
        return sum(s.toxic.held_bytes for s in self._stages) + sum(map(item_size, self._out))

    def _push(self, start: int, items: list[Item], now: float) -> None:
        for stage in self._stages[start:]:
            if not stage.active:
                continue
            for item in items:
                stage.toxic.receive(item, now)
            stage.toxic.handle_timer(now)
            items = stage.toxic.take_output()
        self._out.extend(items)

    def _index(self, name: str) -> int:
        for i, stage in enumerate(self._stages):
            if stage.spec.name == name:
                return i
        raise ApiError(404, "toxic not found")
