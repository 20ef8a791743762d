"""``timeout``: nothing gets through; the connection closes ``timeout`` ms later.

Toxiproxy's semantics: the clock starts when the toxic starts on the connection
(when either is created, and again when the toxic is updated); data is dropped
(counted); ``timeout`` 0 never closes, the data is dropped until the toxic goes.
Removing the toxic closes the connection (Toxiproxy's ``Cleanup``): bytes were
lost, so the stream cannot go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from loadgen.faultproxy.model import AttrValue
from loadgen.faultproxy.toxics.base import Chunk, Close, DeadlineToxic, Item

__all__ = ["TimeoutToxic"]


class TimeoutToxic(DeadlineToxic):
    type_name = "timeout"
    defaults = MappingProxyType({"timeout": 0})
    close_with_reset = False

    def configure(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        super().configure(attributes, now)
        timeout_s = self._number("timeout") / 1000
        self._deadline = now + timeout_s if timeout_s > 0 else None

    def _on_item(self, item: Item, now: float) -> None:
        if isinstance(item, Chunk):
            self.stats.dropped(len(item.data))
            return
        self._schedule(item, now)  # the source ended: pass it on
        self.terminal = True

    def on_removed(self) -> list[Item]:
        return [] if self.terminal else [Close(reset=False)]
