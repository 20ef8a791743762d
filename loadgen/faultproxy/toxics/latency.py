"""``latency``: every chunk arrives ``latency`` ms (+/- ``jitter`` ms) after it was read.

Toxiproxy's semantics: the delay counts from when the chunk was read (its timestamp),
so a stream of chunks is shifted by the latency, not slowed down by it; chunks keep
their order, so a smaller jitter draw never overtakes a larger one.  The jitter is
uniform in [-jitter, +jitter) as Go's ``rand.Int63n(2*jitter) - jitter``.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from loadgen.faultproxy.toxics.base import Chunk, Item, TcpToxic

__all__ = ["LatencyToxic"]


class LatencyToxic(TcpToxic):
    type_name = "latency"
    defaults = MappingProxyType({"latency": 0, "jitter": 0})

    def _delay_s(self) -> float:
        delay_ms = self._number("latency")
        jitter_ms = self._number("jitter")
        if jitter_ms > 0:
            delay_ms += self.rng.random() * 2 * jitter_ms - jitter_ms
        return max(0.0, delay_ms) / 1000

    def _on_item(self, item: Item, now: float) -> None:
        if not isinstance(item, Chunk):
            self._schedule(item, now)  # EOF leaves right after the data before it
            return
        at = max(now, item.timestamp + self._delay_s(), self._last_release)
        # stamp the release time, so that a second latency toxic adds to this one
        self._schedule(replace(item, timestamp=at), at)
        if at > now:
            self.stats.held(at - now)
