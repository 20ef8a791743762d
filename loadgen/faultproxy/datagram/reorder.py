"""``reorder``: hold a selected datagram until ``gap`` later datagrams have passed.

Attributes: ``gap`` (datagrams, integer 1 to 1000, default 1); ``delay`` (ms, 1 to
600000, default 100): the longest a datagram is held, so a quiet flow never keeps one.

One datagram is held at a time: a datagram that arrives while another is held is
never held itself; every later datagram, selected or not, counts towards the gap.
With ``toxicity`` 1 and ``gap`` 1 the flow ``1 2 3 4`` leaves as ``2 1 4 3``.  When
``delay`` expires first the held datagram leaves then, behind whatever already passed.
"""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import AttributeRule, DatagramToxic
from loadgen.faultproxy.model import AttrValue

__all__ = ["ReorderToxic"]


class ReorderToxic(DatagramToxic):
    type_name = "reorder"
    attribute_rules = (
        AttributeRule(name="gap", default=1, minimum=1, maximum=1000, integer=True),
        AttributeRule(name="delay", default=100, minimum=1, maximum=600_000, unit="ms"),
    )

    _waiting = 0  # later datagrams still to pass before the held one leaves

    def configure(self, attrs: Mapping[str, AttrValue], now: float) -> None:
        self.gap = int(attrs["gap"])
        self.delay_s = float(attrs["delay"]) / 1000.0
        if self._queue:
            self._waiting = min(self._waiting, self.gap)

    def receive(self, datagram: bytes, now: float) -> None:
        if not self._queue:
            self._waiting = self.gap
            self._enqueue(datagram, now + self.delay_s)
            self.stats.held(0.0)  # the release waits for later datagrams: no planned delay
            return
        self._emit(datagram)
        self.bypassed(now)

    def bypassed(self, now: float) -> None:
        # every later datagram counts towards the gap, selected or not
        if self._queue:
            self._waiting -= 1
            if self._waiting <= 0:
                self._out.append(self._queue.popleft()[1])  # still held_bytes: moved only
