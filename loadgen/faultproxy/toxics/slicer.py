"""``slicer``: cut each chunk into pieces of about ``average_size`` bytes.

Toxiproxy's semantics: a chunk is halved recursively, each cut moved by up to
+/- ``size_variation`` bytes, until a piece is no more than ``average_size`` +
``size_variation`` bytes; a ``delay`` (microseconds) follows every piece, the last
one included, before the next piece or chunk.  Sizes are clamped so that no piece
is empty (Toxiproxy loops forever or panics on ``average_size`` 0; we pass such
chunks whole).
"""

from __future__ import annotations

from types import MappingProxyType

from loadgen.faultproxy.toxics.base import Chunk, Item, TcpToxic

__all__ = ["SlicerToxic"]


class SlicerToxic(TcpToxic):
    type_name = "slicer"
    defaults = MappingProxyType({"average_size": 0, "size_variation": 0, "delay": 0})
    integer_attributes = frozenset({"average_size", "size_variation"})

    _busy_until = float("-inf")

    def cuts(self, size: int) -> list[int]:
        """The piece sizes for a chunk of ``size`` bytes (they add up to ``size``)."""
        average = int(self.attributes["average_size"])
        variation = int(self.attributes["size_variation"])
        if average <= 0 or size <= 0:
            return [size] if size else []
        out: list[int] = []
        self._cut(0, size, average, variation, out)
        return out

    def _cut(self, start: int, end: int, average: int, variation: int, out: list[int]) -> None:
        if (end - start) - average <= variation:
            out.append(end - start)
            return
        shift = self.rng.randrange(2 * variation) - variation if variation > 0 else 0
        mid = min(end - 1, max(start + 1, start + (end - start) // 2 + shift))
        self._cut(start, mid, average, variation, out)
        self._cut(mid, end, average, variation, out)

    def _on_item(self, item: Item, now: float) -> None:
        t = max(now, self._busy_until)
        if not isinstance(item, Chunk):
            self._schedule(item, t)
            return
        delay_s = self._number("delay") / 1_000_000
        offset = 0
        for size in self.cuts(len(item.data)):
            part = item.data[offset : offset + size]
            offset += size
            self._schedule(Chunk(data=part, timestamp=t), t)
            t += delay_s
        self._busy_until = t
        if t > now:
            self.stats.held(t - now)
