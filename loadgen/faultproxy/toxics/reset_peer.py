"""``reset_peer``: on the first data, wait ``timeout`` ms, then reset the connection.

Toxiproxy's semantics: the first item in this direction (data, or the source's EOF)
starts the clock and is dropped, like everything after it; when the clock runs out
both sockets close with RST (``SO_LINGER`` 0).  ``timeout`` 0 resets at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from loadgen.faultproxy.model import AttrValue
from loadgen.faultproxy.toxics.base import Chunk, DeadlineToxic, Item

__all__ = ["ResetPeerToxic"]


class ResetPeerToxic(DeadlineToxic):
    type_name = "reset_peer"
    defaults = MappingProxyType({"timeout": 0})
    close_with_reset = True

    _triggered_at: float | None = None

    def configure(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        super().configure(attributes, now)
        if self._triggered_at is not None and not self.terminal:
            self._deadline = self._triggered_at + self._number("timeout") / 1000

    def _on_item(self, item: Item, now: float) -> None:
        if isinstance(item, Chunk):
            self.stats.dropped(len(item.data))
        if self._triggered_at is None:
            self._triggered_at = now
            self._deadline = now + self._number("timeout") / 1000
