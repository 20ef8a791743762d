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
from loadgen.faultproxy.toxics.base import Chunk, Close, Item, TcpToxic

__all__ = ["TimeoutToxic"]


class TimeoutToxic(TcpToxic):
    type_name = "timeout"
    defaults = MappingProxyType({"timeout": 0})

    _deadline: float | None = None

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

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and not self.terminal:
            self._deadline = None
            self._close(reset=False, at=now)
        super().handle_timer(now)

    def get_timer(self) -> float | None:
        queued = super().get_timer()
        if self._deadline is None or self.terminal:
            return queued
        return self._deadline if queued is None else min(queued, self._deadline)

    def on_removed(self) -> list[Item]:
        return [] if self.terminal else [Close(reset=False)]
