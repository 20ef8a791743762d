"""The TCP toxic contract, and the base classes every TCP toxic builds on.

A TCP toxic sits on one direction (``stream``) of one proxied connection and sees
that direction's bytes as a sequence of items: :class:`Chunk` (bytes read from the
source, stamped with the time they were read), then one :data:`EOF` (the source
half-closed) or a :class:`Close` (a toxic upstream in the chain closes the
connection).  Toxics are chained in the order they were added, as Toxiproxy's
``ToxicStub`` chains are; the first one gets the bytes as read, the last one hands
them to the writer.

TCP toxics follow the driver contract of :mod:`loadgen.faultproxy.toxic` (``receive``,
``handle_timer``, ``get_timer``, ``take_output``; ``now`` is an argument, the seeded
``rng`` is given at construction), so every toxic is deterministic under test.

The contract (Toxiproxy's CREATING_TOXICS.md, the same promises):

1. Forward in-flight data when interrupted: when a toxic is removed (or stops
   applying to a connection), ``flush()`` returns everything it holds, in order,
   and the chain passes that on to the next toxic at once; an update
   (``update``) releases what is held too, as Toxiproxy's interrupt does
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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from loadgen.faultproxy.model import AttrValue
from loadgen.faultproxy.toxic import Toxic

__all__ = [
    "EOF",
    "Chunk",
    "Close",
    "DeadlineToxic",
    "EndOfStream",
    "Item",
    "TcpToxic",
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


class TcpToxic(Toxic[Item]):
    """Base class: every item is scheduled, and released in order at its time.

    Subclasses set ``type_name`` and ``defaults`` (Toxiproxy's attributes with its
    zero defaults), read their attributes in :meth:`configure`, and decide in
    :meth:`_on_item` when each item leaves, through :meth:`_schedule`.
    """

    #: attribute -> default value (Toxiproxy's zero values)
    defaults: ClassVar[Mapping[str, AttrValue]]
    #: attributes that must be whole numbers (sizes in bytes)
    integer_attributes: ClassVar[frozenset[str]] = frozenset()

    terminal = False
    _last_release = float("-inf")

    size_of = staticmethod(item_size)

    def configure(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        self.attributes: dict[str, AttrValue] = {**self.defaults, **attributes}

    def update(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        """Toxiproxy interrupts the toxic and restarts it with the new attributes, and
        the interrupted toxic forwards what it holds; so do we."""
        held = self.flush()
        self._out = held
        self._held = sum(map(item_size, held))
        self.configure(attributes, now)

    def receive(self, item: Item, now: float) -> None:
        if self.terminal:
            # after our own Close nothing goes further; count what is lost
            if isinstance(item, Chunk):
                self.stats.dropped(len(item.data))
            return
        self._on_item(item, now)

    def flush(self) -> list[Item]:
        """Everything held, in order, released now (contract rule 1)."""
        self._last_release = float("-inf")
        return super().flush()

    # -- for subclasses -------------------------------------------------------------

    def _on_item(self, item: Item, now: float) -> None:
        """Default: pass through at once (after anything held)."""
        self._schedule(item, now)

    def _schedule(self, item: Item, at: float) -> float:
        """Release ``item`` at ``at``, never before an item scheduled earlier."""
        at = max(at, self._last_release)
        self._last_release = at
        self._queue.append((at, item))  # _enqueue, inline: this runs for every chunk
        self._held += item_size(item)
        return at

    def _close(self, *, reset: bool, at: float) -> None:
        self._schedule(Close(reset=reset), at)
        self.terminal = True

    def _number(self, key: str) -> float:
        return float(self.attributes[key])


class DeadlineToxic(TcpToxic):
    """A toxic that closes the connection when its ``_deadline`` comes (``timeout``,
    ``reset_peer``); subclasses set ``_deadline`` and ``close_with_reset``."""

    #: close with RST (``reset_peer``) rather than FIN
    close_with_reset: ClassVar[bool]

    _deadline: float | None = None

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and not self.terminal:
            self._deadline = None
            self._close(reset=self.close_with_reset, at=now)
        super().handle_timer(now)

    def get_timer(self) -> float | None:
        queued = super().get_timer()
        if self._deadline is None or self.terminal:
            return queued
        return self._deadline if queued is None else min(queued, self._deadline)
