"""``duplicate``: send a selected datagram more than once.

Attributes: ``percentage`` (percent, 0 to 100, default 100): the chance that a
selected datagram is duplicated; ``copies`` (integer, 1 to 10, default 1): how many
extra copies follow the original, back to back.  So with the defaults every selected
datagram leaves ``1 + copies`` = 2 times.  Nothing is held and order is kept (the
copies of one datagram come before the next datagram).
"""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import AttributeRule, DatagramToxic
from loadgen.faultproxy.model import AttrValue

__all__ = ["DuplicateToxic"]


class DuplicateToxic(DatagramToxic):
    type_name = "duplicate"
    attribute_rules = (
        AttributeRule(name="percentage", default=100, minimum=0, maximum=100, unit="percent"),
        AttributeRule(name="copies", default=1, minimum=1, maximum=10, integer=True),
    )

    def configure(self, attrs: Mapping[str, AttrValue], now: float) -> None:
        self.probability = float(attrs["percentage"]) / 100.0
        self.copies = int(attrs["copies"])

    def receive(self, datagram: bytes, now: float) -> None:
        n = 1 + self.copies if self.rng.random() < self.probability else 1
        for _ in range(n):
            self._emit(datagram)
