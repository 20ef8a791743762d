"""``limit_data``: close the connection once ``bytes`` bytes went through.

Toxiproxy's semantics: the count is per connection and direction and survives
updates of the toxic; the chunk that crosses the limit is cut at it (the rest is
dropped and counted) and the connection closes right after it.  With ``bytes`` 0
the first data closes the connection.
"""

from __future__ import annotations

from types import MappingProxyType

from loadgen.faultproxy.toxics.base import Chunk, Item, TcpToxic

__all__ = ["LimitDataToxic"]


class LimitDataToxic(TcpToxic):
    type_name = "limit_data"
    defaults = MappingProxyType({"bytes": 0})
    integer_attributes = frozenset({"bytes"})

    transmitted = 0

    def _on_item(self, item: Item, now: float) -> None:
        if not isinstance(item, Chunk):
            self._schedule(item, now)
            self.terminal = True
            return
        limit = int(self.attributes["bytes"])
        remaining = max(0, limit - self.transmitted)
        data = item.data
        if len(data) > remaining:
            self.stats.dropped(len(data) - remaining)
            data = data[:remaining]
        if data:
            self._schedule(Chunk(data=data, timestamp=item.timestamp), now)
            self.transmitted += len(data)
        if limit - self.transmitted <= 0:
            self._close(reset=False, at=now)
