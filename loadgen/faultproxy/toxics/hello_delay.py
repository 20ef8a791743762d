"""``hello_delay`` (ours): hold the first data of each connection for ``delay`` ms.

On the ``upstream`` stream the first data of a TLS connection is the ClientHello, on
``downstream`` the ServerHello: holding it delays the handshake without slowing the
session that follows.  The first chunk starts the clock; it and everything after it
wait until ``delay`` ms have passed, then leave in order, and the toxic lets
everything through from then on.  A toxic added to a connection that already
carried data in its direction does nothing to it (the hello has gone).  Updating
``delay`` while holding moves the release time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from loadgen.faultproxy.model import AttrValue
from loadgen.faultproxy.toxics.base import Chunk, Item, TcpToxic

__all__ = ["HelloDelayToxic"]


class HelloDelayToxic(TcpToxic):
    type_name = "hello_delay"
    defaults = MappingProxyType({"delay": 0})

    _first_at: float | None = None
    _release_at: float | None = None

    def configure(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        super().configure(attributes, now)
        if self._first_at is not None and self._release_at is not None:
            # still holding: everything held leaves at the new time
            self._release_at = self._first_at + self._number("delay") / 1000
            self._queue = type(self._queue)((self._release_at, i) for _, i in self._queue)
            self._last_release = self._release_at

    def update(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        self.configure(attributes, now)  # keep holding, until the new release time

    def _on_item(self, item: Item, now: float) -> None:
        if not self.fresh:
            self._schedule(item, now)
            return
        if self._first_at is None and isinstance(item, Chunk):
            self._first_at = now
            self._release_at = now + self._number("delay") / 1000
            self.stats.held(self._release_at - now)
        self._schedule(item, self._release_at if self._release_at is not None else now)

    # no timer of its own: while it holds, every held item is queued at _release_at

    def handle_timer(self, now: float) -> None:
        if self._release_at is not None and now >= self._release_at:
            self._release_at = None
            self.fresh = False  # the hello went: from now on everything flows
        super().handle_timer(now)

    def flush(self) -> list[Item]:
        self._release_at = None
        self.fresh = False
        return super().flush()
