"""``latency``: hold each selected datagram ``latency`` ms, +/- up to ``jitter`` ms.

Attributes (Toxiproxy's names and units): ``latency`` (ms, 0 to 600000, default 0),
``jitter`` (ms, 0 to 600000, default 0); the delay is drawn uniformly in
``[latency - jitter, latency + jitter]``, floored at 0.  Order is kept (contract item
3): a datagram whose draw is shorter than its predecessor's waits for it, as on a
single path, so jitter shows as delay variation, never as reordering.
"""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import AttributeRule, DatagramToxic
from loadgen.faultproxy.model import AttrValue

__all__ = ["LatencyToxic"]


class LatencyToxic(DatagramToxic):
    type_name = "latency"
    attribute_rules = (
        AttributeRule(name="latency", default=0, minimum=0, maximum=600_000, unit="ms"),
        AttributeRule(name="jitter", default=0, minimum=0, maximum=600_000, unit="ms"),
    )

    def configure(self, attrs: Mapping[str, AttrValue], now: float) -> None:
        self.latency_s = float(attrs["latency"]) / 1000.0
        self.jitter_s = float(attrs["jitter"]) / 1000.0

    def receive(self, datagram: bytes, now: float) -> None:
        delay_s = self.latency_s
        if self.jitter_s > 0:
            delay_s = max(0.0, delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s))
        self._hold_until(datagram, now + delay_s, now)
