"""The driver contract every toxic follows, TCP and datagram alike, and their common base.

A toxic is one fault on one direction (``stream``) of one TCP connection or UDP flow.
It is sans-IO in the aioquic way, driven by its chain
(:mod:`loadgen.faultproxy.chain`) through four calls:

- ``receive(item, now)``: one item arrives (a TCP :class:`~.toxics.base.Chunk`, EOF or
  Close; or one datagram's bytes);
- ``handle_timer(now)``: time has come to ``now``; what falls due moves to the output;
- ``get_timer()``: when the toxic next needs ``handle_timer``, or None;
- ``take_output()``: what has left the toxic, in order.

and, for changes through the API, ``update(attributes, now)`` (new attribute values),
``flush()`` (everything held, in order, now: the toxic is removed or stops applying)
and ``on_removed()`` (what to send after that flush).

The toxic reads neither the clock nor a random source: ``now`` is an argument (trio's
clock in the proxy, the mock clock or a plain number in tests), and the seeded
``rng`` is given at construction, shared with its chain, so a seed repeats a run
exactly.  What a toxic does to the data (bytes dropped, items held back) it reports to
``stats``, given at construction too.  Toxicity is the chain's business, not the
toxic's: what each kind promises about it, and about order, loss and end of stream,
is written in :mod:`loadgen.faultproxy.toxics.base` (TCP, Toxiproxy's contract) and
:mod:`loadgen.faultproxy.datagram.base` (per packet).
"""

from __future__ import annotations

import abc
import random
from collections import deque
from collections.abc import Mapping
from typing import ClassVar, Generic, Protocol, TypeVar

from loadgen.faultproxy.model import AttrValue

__all__ = ["NullStats", "Toxic", "ToxicStats"]

T = TypeVar("T")


class ToxicStats(Protocol):
    """Where a toxic reports what it does to the data (the chain turns it into events)."""

    def dropped(self, size_bytes: int) -> None: ...

    def held(self, delay_s: float) -> None: ...


class NullStats:
    """Stats that go nowhere (tests, and toxics built for validation only)."""

    def dropped(self, size_bytes: int) -> None:
        pass

    def held(self, delay_s: float) -> None:
        pass


class Toxic(abc.ABC, Generic[T]):
    """Base of every toxic: a FIFO of held items with their release times, and an output.

    Subclasses set ``type_name``, read their attributes in :meth:`configure` and decide
    in :meth:`receive`; they hold items in ``_queue`` (release times never decreasing,
    so :meth:`handle_timer` releases in order) and emit through :meth:`_emit`.
    ``held_bytes`` counts what is in the queue and the output, kept as items move (the
    proxies read it on every chunk or datagram).
    """

    type_name: ClassVar[str]

    def __init__(
        self,
        attributes: Mapping[str, AttrValue],
        *,
        now: float,
        rng: random.Random | None = None,
        stats: ToxicStats | None = None,
        fresh: bool = True,
    ) -> None:
        """``attributes``: checked and complete; ``fresh``: nothing has gone through
        this stream yet (a toxic added to a stream that already carried data knows)."""
        self.rng = rng if rng is not None else random.Random()
        self.stats: ToxicStats = stats if stats is not None else NullStats()
        self.fresh = fresh
        self._queue: deque[tuple[float, T]] = deque()
        self._out: list[T] = []
        self._held = 0
        self.configure(attributes, now)

    @staticmethod
    @abc.abstractmethod
    def size_of(item: T) -> int:
        """Bytes of one item (0 for a TCP end of stream)."""

    # -- the driver contract ----------------------------------------------------------

    @abc.abstractmethod
    def configure(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        """Read the (checked, complete) attributes; per-stream state is kept."""

    def update(self, attributes: Mapping[str, AttrValue], now: float) -> None:
        """An API update of the attributes (each kind says what happens to held items)."""
        self.configure(attributes, now)

    @abc.abstractmethod
    def receive(self, item: T, now: float) -> None:
        """Take one item at ``now`` (seconds)."""

    def bypassed(self, now: float) -> None:
        """An item the toxic did not select went past it (per-packet toxicity only)."""
        return

    def handle_timer(self, now: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= now:
            self._out.append(queue.popleft()[1])

    def get_timer(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def take_output(self) -> list[T]:
        out, self._out = self._out, []
        if out:
            self._held -= sum(map(self.size_of, out))
        return out

    def flush(self) -> list[T]:
        """Everything held, in order, released now."""
        out = self.take_output() + [item for _, item in self._queue]
        self._queue.clear()
        self._held = 0
        return out

    def on_removed(self) -> list[T]:
        """Items to send after :meth:`flush` when the toxic is removed (usually none)."""
        return []

    @property
    def held_bytes(self) -> int:
        return self._held

    @property
    def held_count(self) -> int:
        """Items waiting for their release time."""
        return len(self._queue)

    # -- for subclasses ---------------------------------------------------------------

    def _emit(self, item: T) -> None:
        """Out at once, past anything held (the caller decides that this is allowed)."""
        self._out.append(item)
        self._held += self.size_of(item)

    def _enqueue(self, item: T, at: float) -> None:
        """Hold ``item`` until ``at``; the caller keeps release times in order."""
        self._queue.append((at, item))
        self._held += self.size_of(item)
