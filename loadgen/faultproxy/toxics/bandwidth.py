"""``bandwidth``: at most ``rate`` KB/s (1 KB = 1000 bytes, as Toxiproxy counts).

A chunk leaves once the link would have carried it: at ``rate`` KB/s, bytes cost
``1 / (rate * 1000)`` s each, counted from when the previous chunk left or from now
if the link was idle (idle time earns no credit).  A chunk longer than 100 ms of
traffic (``rate * 100`` bytes) is cut into 100 ms pieces, as Toxiproxy does, so
the reader sees a steady trickle.  ``rate`` 0 means no limit.
"""

from __future__ import annotations

from types import MappingProxyType

from loadgen.faultproxy.toxics.base import Chunk, Item, TcpToxic

__all__ = ["BandwidthToxic"]

_PIECE_S = 0.1


class BandwidthToxic(TcpToxic):
    type_name = "bandwidth"
    defaults = MappingProxyType({"rate": 0})

    def _on_item(self, item: Item, now: float) -> None:
        rate_kbps = self._number("rate")
        if not isinstance(item, Chunk) or rate_kbps <= 0:
            self._schedule(item, now)
            return
        bytes_per_s = rate_kbps * 1000
        piece = max(1, int(bytes_per_s * _PIECE_S))
        t = max(now, self._last_release)
        data = item.data
        for offset in range(0, len(data), piece):
            part = data[offset : offset + piece]
            t += len(part) / bytes_per_s
            self._schedule(Chunk(data=part, timestamp=t), t)
        if t > now:
            self.stats.held(t - now)
