"""``loss``: drop each selected datagram with probability ``percentage`` / 100.

Attributes: ``percentage`` (percent, 0 to 100, default 100).  The loss rate seen on
the wire is ``toxicity * percentage / 100``; with the default either knob alone sets
it (``toxicity: 0.2`` or ``percentage: 20``).
"""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import AttributeRule, DatagramToxic
from loadgen.faultproxy.model import AttrValue

__all__ = ["LossToxic"]


class LossToxic(DatagramToxic):
    type_name = "loss"
    attribute_rules = (
        AttributeRule(name="percentage", default=100, minimum=0, maximum=100, unit="percent"),
    )

    def configure(self, attrs: Mapping[str, AttrValue], now: float) -> None:
        self.probability = float(attrs["percentage"]) / 100.0

    def receive(self, datagram: bytes, now: float) -> None:
        if self.rng.random() < self.probability:
            self._drop(datagram)
        else:
            self._emit(datagram)
