"""``blackhole``: drop every selected datagram (no attributes).

A UDP block in both directions is two toxics, one on each stream.
"""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import DatagramToxic
from loadgen.faultproxy.model import AttrValue

__all__ = ["BlackholeToxic"]


class BlackholeToxic(DatagramToxic):
    type_name = "blackhole"

    def configure(self, attrs: Mapping[str, AttrValue], now: float) -> None:
        pass

    def receive(self, datagram: bytes, now: float) -> None:
        self._drop(datagram)
