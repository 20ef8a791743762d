"""The TCP toxic contract, and the base class every TCP toxic builds on.

A TCP toxic sits on one direction (``stream``) of one proxied connection and sees
that direction's bytes as a sequence of items: :class:`Chunk` (bytes read from the
source, stamped with the time they were read), then one :data:`EOF` (the source
half-closed) or a :class:`Close` (a toxic upstream in the chain closes the
connection).  Toxics are chained in the order they were added, as Toxiproxy's
``ToxicStub`` chains are; the first one gets the bytes as read, the last one hands
them to the writer.

The toxic code is sans-IO in the aioquic way: the chain calls ``receive(item, now)``
and ``handle_timer(now)``, asks ``get_timer()`` when it next needs a call, and takes
what is ready with ``take_output()``.  ``now`` is trio's clock in the proxy and the
mock clock in tests, so every toxic is deterministic under test.

The contract (Toxiproxy's CREATING_TOXICS.md, the same promises):

1. Forward in-flight data when interrupted: when a toxic is removed (or stops
   applying to a connection), ``flush()`` returns everything it holds, in order,
   and the chain passes that on to the next toxic at once; an update
   (``reconfigure``) releases what is held too, as Toxiproxy's interrupt does
   (``hello_delay`` moves its release time instead).  Nothing is lost.
2. Pass EOF on: an :data:`EOF` or :class:`Close` received goes out after the data
   received before it.  A toxic that closes the connection itself (``timeout``,
   ``reset_peer``, ``limit_data``) emits a :class:`Close`, after which it is
   *terminal* and drops whatever still arrives.
3. Never drop bytes unless dropping is the toxic's job (``timeout``, ``reset_peer``,
   the excess of ``limit_data``); every dropped byte is counted (``stats.dropped``).
4. Keep order: items leave in the order they came, whatever their delays.
5. Toxicity is decided per connection (``rng.random() < toxicity`` when the toxic
   meets the connection, and again when the toxic is updated), as Toxiproxy does
   for TCP; a toxic that does not apply to a connection passes it through untouched.

Attributes have Toxiproxy's names and units and are validated by the registry in
``loadgen.faultproxy.toxics`` before a toxic is built.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from loadgen.faultproxy.model import AttrValue

__all__ = [
    "EOF",
    "Chunk",
    "Close",
    "EndOfStream",
    "Item",
    "NullStats",
    "TcpToxic",
    "ToxicStats",
    "item_size",
]


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """Bytes of the stream; ``timestamp`` is when they were read (or last released)."""

    data: bytes
    timestamp: float


@dataclass(frozen=True)
class EndOfStream:
    """The source half-closed its side: pass it on as a half-close (FIN)."""


@dataclass(frozen=True, kw_only=True)
class Close:
    """Close the whole connection (both sockets); ``reset`` closes with RST."""

    reset: bool = False


EOF: Final = EndOfStream()

Item = Chunk | EndOfStream | Close


def item_size(item: Item) -> int:
    return len(item.data) if isinstance(item, Chunk) else 0


class ToxicStats(Protocol):
    """Where a toxic reports what it does to the data (metrics by proxy, direction, type)."""

    def dropped(self, size_bytes: int) -> None: ...

    def held(self, delay_s: float) -> None: ...


class NullStats:
    """Stats that go nowhere (tests, and toxics built for validation only)."""

    def dropped(self, size_bytes: int) -> None:
        pass

    def held(self, delay_s: float) -> None:
        pass


class TcpToxic:
    """Base class: a queue of held items released in order at their times.

    Subclasses set ``type_name`` and ``defaults`` (Toxiproxy's attributes with its
    zero defaults), read their attributes in :meth:`configure`, and decide in
    :meth:`_on_item` when each item leaves, through :meth:`_schedule`.
    """

    type_name: ClassVar[str]
    #: attribute -> default value (Toxiproxy's zero values)
    defaults: ClassVar[Mapping[str, AttrValue]]
    #: attributes that must be whole numbers (sizes in bytes)
    integer_attributes: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        attributes: Mapping[str, AttrValue],
        *,
        now: float,
        rng: random.Random | None = None,
        stats: ToxicStats | None = None,
        fresh: bool = True,
    ) -> None:
        """``fresh``: the connection has carried no data in this direction yet."""
        self.rng = rng if rng is not None else random.Random()
        self.stats: ToxicStats = stats if stats is not None else NullStats()
        self.fresh = fresh
        self.terminal = False
        self._queue: deque[tuple[float, Item]] = deque()
        self._out: list[Item] = []
        #: bytes in _queue and _out, kept as they move (read on every chunk the proxy reads)
        self._held = 0
        self._last_release = float("-inf")
        self.attributes: dict[str, AttrValue] = dict(self.defaults)
        self.configure(attributes, now)

    # -- what the chain calls -------------------------------------------------------

    def configure(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        """New attribute values (an API update); per-connection state is kept."""
        self.attributes = {**self.defaults, **attributes}

    def reconfigure(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        """An API update: Toxiproxy interrupts the toxic and restarts it with the new
        attributes, and the interrupted toxic forwards what it holds; so do we."""
        self._out = self.flush()
        self._held = sum(map(item_size, self._out))
        self.configure(attributes, now)

    def receive(self, item: Item, now: float) -> None:
        if self.terminal:
            # after our own Close nothing goes further; count what is lost
            if isinstance(item, Chunk):
                self.stats.dropped(len(item.data))
            return
        self._on_item(item, now)

    def handle_timer(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            self._out.append(self._queue.popleft()[1])

    def get_timer(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def take_output(self) -> list[Item]:
        out, self._out = self._out, []
        self._held -= sum(map(item_size, out))
        return out

    def flush(self) -> list[Item]:
        """Everything held, in order, released now (contract rule 1)."""
        out = self.take_output() + [item for _, item in self._queue]
        self._queue.clear()
        self._held = 0
        self._last_release = float("-inf")
        return out

    def on_removed(self) -> list[Item]:
        """Items to send after :meth:`flush` when the toxic is removed (usually none)."""
        return []

    @property
    def held_bytes(self) -> int:
        return self._held

    # -- for subclasses -------------------------------------------------------------

    def _on_item(self, item: Item, now: float) -> None:
        """Default: pass through at once (after anything held)."""
        self._schedule(item, now)

    def _schedule(self, item: Item, at: float) -> float:
        """Release ``item`` at ``at``, never before an item scheduled earlier."""
        at = max(at, self._last_release)
        self._last_release = at
        self._queue.append((at, item))
        self._held += item_size(item)
        return at

    def _close(self, *, reset: bool, at: float) -> None:
        self._schedule(Close(reset=reset), at)
        self.terminal = True

    def _number(self, key: str) -> float:
        return float(self.attributes[key])
