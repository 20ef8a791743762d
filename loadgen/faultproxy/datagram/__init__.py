"""Datagram toxics: per-packet faults for UDP proxies, one module per toxic type.

The written contract is in :mod:`loadgen.faultproxy.datagram.base`; the chain that
runs a stream's toxics in order, sans-IO, is :mod:`loadgen.faultproxy.chain`.

| type | attributes (units, defaults) |
|---|---|
| blackhole | none |
| loss | percentage (percent, 100) |
| latency | latency (ms, 0), jitter (ms, 0) |
| hello_delay | delay (ms, 1000) |
| duplicate | percentage (percent, 100), copies (extra copies, 1) |
| reorder | gap (datagrams, 1), delay (ms, 100) |
| rate | packets_per_second (0 = no limit), bytes_per_second (0 = no limit) |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from loadgen.faultproxy.datagram.base import DatagramToxic
from loadgen.faultproxy.datagram.blackhole import BlackholeToxic
from loadgen.faultproxy.datagram.duplicate import DuplicateToxic
from loadgen.faultproxy.datagram.hello_delay import HelloDelayToxic
from loadgen.faultproxy.datagram.latency import LatencyToxic
from loadgen.faultproxy.datagram.loss import LossToxic
from loadgen.faultproxy.datagram.rate import RateToxic
from loadgen.faultproxy.datagram.reorder import ReorderToxic
from loadgen.faultproxy.model import ApiError, ToxicSpec

__all__ = ["DATAGRAM_TOXICS", "check_datagram_toxic"]

DATAGRAM_TOXICS: Mapping[str, type[DatagramToxic]] = MappingProxyType(
    {
        cls.type_name: cls
        for cls in (
            BlackholeToxic,
            LossToxic,
            LatencyToxic,
            HelloDelayToxic,
            DuplicateToxic,
            ReorderToxic,
            RateToxic,
        )
    }
)


def _toxic_class(type_name: str) -> type[DatagramToxic]:
    cls = DATAGRAM_TOXICS.get(type_name)
    if cls is None:
        known = ", ".join(sorted(DATAGRAM_TOXICS))
        raise ApiError(400, f"toxic: unknown type {type_name} for a UDP proxy (known: {known})")
    return cls


def check_datagram_toxic(spec: ToxicSpec) -> ToxicSpec:
    """``spec`` with its type's defaults filled in; ApiError(400) on a bad type or attribute."""
    cls = _toxic_class(spec.type)
    return replace(spec, attributes=cls.check(spec.attributes))
