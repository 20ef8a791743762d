"""TCP toxics, one module per toxic (Toxiproxy's layout), and their registry.

| type | attributes (Toxiproxy's names, units, zero defaults) |
|---|---|
| ``latency`` | ``latency`` ms, ``jitter`` ms |
| ``bandwidth`` | ``rate`` KB/s (0: no limit) |
| ``slow_close`` | ``delay`` ms |
| ``timeout`` | ``timeout`` ms (0: never close) |
| ``reset_peer`` | ``timeout`` ms |
| ``slicer`` | ``average_size`` bytes, ``size_variation`` bytes, ``delay`` microseconds |
| ``limit_data`` | ``bytes`` |
| ``hello_delay`` (ours) | ``delay`` ms |

The contract every TCP toxic keeps is in :mod:`loadgen.faultproxy.toxics.base`.
"""

from __future__ import annotations

from loadgen.faultproxy.model import ApiError, AttrValue, ToxicSpec
from loadgen.faultproxy.toxics.bandwidth import BandwidthToxic
from loadgen.faultproxy.toxics.base import TcpToxic
from loadgen.faultproxy.toxics.hello_delay import HelloDelayToxic
from loadgen.faultproxy.toxics.latency import LatencyToxic
from loadgen.faultproxy.toxics.limit_data import LimitDataToxic
from loadgen.faultproxy.toxics.reset_peer import ResetPeerToxic
from loadgen.faultproxy.toxics.slicer import SlicerToxic
from loadgen.faultproxy.toxics.slow_close import SlowCloseToxic
from loadgen.faultproxy.toxics.timeout import TimeoutToxic

__all__ = ["TCP_TOXICS", "check_tcp_toxic"]

TCP_TOXICS: dict[str, type[TcpToxic]] = {
    cls.type_name: cls
    for cls in (
        LatencyToxic,
        BandwidthToxic,
        SlowCloseToxic,
        TimeoutToxic,
        ResetPeerToxic,
        SlicerToxic,
        LimitDataToxic,
        HelloDelayToxic,
    )
}


def check_tcp_toxic(toxic: ToxicSpec) -> ToxicSpec:
    """The toxic with its type's defaults filled in; ApiError(400) if the type is not a
    TCP toxic, or an attribute is unknown, negative or not a whole number of bytes."""
    cls = TCP_TOXICS.get(toxic.type)
    if cls is None:
        raise ApiError(400, "invalid toxic type")
    attributes: dict[str, AttrValue] = dict(cls.defaults)
    for key, value in toxic.attributes.items():
        if key not in cls.defaults:
            raise ApiError(400, f"bad request body: unknown attribute {key!r} for {toxic.type}")
        if value < 0:
            raise ApiError(400, f"bad request body: attribute {key} must not be negative")
        if key in cls.integer_attributes and value != int(value):
            raise ApiError(400, f"bad request body: attribute {key} must be a whole number")
        attributes[key] = int(value) if key in cls.integer_attributes else value
    return ToxicSpec(
        name=toxic.name,
        type=toxic.type,
        stream=toxic.stream,
        toxicity=toxic.toxicity,
        attributes=attributes,
    )
