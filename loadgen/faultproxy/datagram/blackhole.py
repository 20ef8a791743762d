"""``blackhole``: drop every selected datagram (no attributes).

A UDP block in both directions is two toxics, one on each stream.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import DROP, DatagramToxic, Verdict
from loadgen.faultproxy.model import AttrValue

__all__ = ["BlackholeToxic"]


class BlackholeToxic(DatagramToxic):
    type_name = "blackhole"

    def _configure(self, attrs: Mapping[str, AttrValue]) -> None:
        pass

    def receive(self, datagram: bytes, now: float, rng: random.Random) -> Verdict:
        return DROP
