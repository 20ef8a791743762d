"""``slow_close``: data flows untouched; the end of the stream waits ``delay`` ms.

Both ends are delayed: the source's EOF (passed on as a half-close) and a close
requested by a toxic earlier in the chain.
"""

from __future__ import annotations

from types import MappingProxyType

from loadgen.faultproxy.toxics.base import Chunk, Item, TcpToxic

__all__ = ["SlowCloseToxic"]


class SlowCloseToxic(TcpToxic):
    type_name = "slow_close"
    defaults = MappingProxyType({"delay": 0})

    def _on_item(self, item: Item, now: float) -> None:
        if isinstance(item, Chunk):
            self._schedule(item, now)
            return
        delay_s = self._number("delay") / 1000
        at = self._schedule(item, max(now, self._last_release) + delay_s)
        if at > now:
            self.stats.held(at - now)
