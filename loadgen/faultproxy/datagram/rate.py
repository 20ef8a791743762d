"""``rate``: a policer: datagrams over ``packets_per_second`` or ``bytes_per_second`` drop.

Attributes: ``packets_per_second`` (0 to 10000000, default 0 = no packet limit);
``bytes_per_second`` (0 to 10000000000, default 0 = no byte limit).  Nothing is queued
(a shaper would be ``latency``'s job): each limit is a token bucket holding one
second's worth of its rate, full at the start.  A datagram passes when the packet
bucket has a whole token and the byte bucket is not empty, then pays one packet and
its size in bytes; the byte bucket may go into debt, so a datagram larger than one
second's worth still passes now and then, and the long-run rate is the limit.
A datagram not selected (toxicity) neither pays nor is policed.
"""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import AttributeRule, DatagramToxic
from loadgen.faultproxy.model import AttrValue

__all__ = ["RateToxic"]

_EPSILON = 1e-9  # float times: 0.05 s at 10/s must make a whole token


class RateToxic(DatagramToxic):
    type_name = "rate"
    attribute_rules = (
        AttributeRule(
            name="packets_per_second", default=0, minimum=0, maximum=10_000_000, unit="packets/s"
        ),
        AttributeRule(
            name="bytes_per_second", default=0, minimum=0, maximum=10_000_000_000, unit="bytes/s"
        ),
    )

    _packets = 0.0
    _bytes = 0.0
    _last: float | None = None  # when the buckets were last filled

    def configure(self, attrs: Mapping[str, AttrValue], now: float) -> None:
        self.pps = float(attrs["packets_per_second"])
        self.bps = float(attrs["bytes_per_second"])
        # an update keeps the tokens, trimmed to the new bucket sizes
        self._packets = min(self._packets, self.pps)
        self._bytes = min(self._bytes, self.bps)

    def receive(self, datagram: bytes, now: float) -> None:
        if self._last is None:
            self._packets, self._bytes = self.pps, self.bps
        else:
            elapsed = max(0.0, now - self._last)
            self._packets = min(self.pps, self._packets + elapsed * self.pps)
            self._bytes = min(self.bps, self._bytes + elapsed * self.bps)
        self._last = now
        if (self.pps > 0 and self._packets < 1.0 - _EPSILON) or (
            self.bps > 0 and self._bytes <= 0.0
        ):
            self._drop(datagram)
            return
        if self.pps > 0:
            self._packets -= 1.0
        if self.bps > 0:
            self._bytes -= len(datagram)
        self._emit(datagram)
