"""The fault proxy's data model: proxy and toxic specs, API errors, and the runtime contract.

The JSON shapes are Toxiproxy v2's, so that Toxiproxy clients (``toxiproxy-python``
first) drive this proxy unchanged:

- proxy: ``{"name", "listen", "upstream", "enabled", "toxics": [...]}``
- toxic: ``{"name", "type", "stream", "toxicity", "attributes": {...}}``, with
  Toxiproxy's defaults: ``stream`` downstream, ``toxicity`` 1.0, name ``<type>_<stream>``.
- error: ``{"error": "...", "status": N}``.

A proxy whose ``listen`` and ``upstream`` start with ``udp://`` relays datagrams;
any other proxy relays a TCP byte stream.  Both kinds implement
:class:`ProxyRuntime`, which the API registry drives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import trio

from loadgen.proto.errors import BadPacketError

__all__ = [
    "DOWNSTREAM",
    "STREAMS",
    "UDP_SCHEME",
    "UPSTREAM",
    "ApiError",
    "ProxyRuntime",
    "ProxySpec",
    "ToxicSpec",
    "is_udp",
    "parse_host_port",
]

UPSTREAM = "upstream"  # client -> server
DOWNSTREAM = "downstream"  # server -> client
STREAMS = (UPSTREAM, DOWNSTREAM)
UDP_SCHEME = "udp://"

#: attribute values are numbers; Toxiproxy's are all integers, ours allow floats
AttrValue = int | float


class ApiError(BadPacketError):
    """An HTTP API error with Toxiproxy's status code (400, 404, 409, 500)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def is_udp(address: str) -> bool:
    return address.startswith(UDP_SCHEME)


def parse_host_port(address: str, *, listen: bool) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as (host, port); ApiError(400) if malformed.

    An empty host means every interface when listening (Go's ``net.Listen`` reading,
    as Toxiproxy has it); port 0 picks a free port and is only valid for ``listen``.
    ``address`` is quoted in errors as the caller gave it (with any ``udp://``).
    """
    shown = address
    if is_udp(address):
        address = address[len(UDP_SCHEME) :]
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ApiError(400, f"proxy: {shown!r} needs host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not (0 if listen else 1) <= port <= 65535:
        raise ApiError(400, f"proxy: bad port in {shown!r}")
    if not host:
        if not listen:
            raise ApiError(400, f"proxy: upstream {shown!r} needs a host")
        host = "0.0.0.0"
    return host, port


@dataclass(frozen=True, kw_only=True)
class ToxicSpec:
    """One toxic as the API sees it; ``attributes`` are already validated and complete."""

    name: str
    type: str
    stream: str = DOWNSTREAM
    toxicity: float = 1.0
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_json_untrusted(cls, obj: object) -> ToxicSpec:
        """A new toxic from a request body; attributes are checked later by the runtime."""
        if not isinstance(obj, dict):
            raise ApiError(400, "toxic: expected a JSON object")
        type_ = obj.get("type")
        if not isinstance(type_, str) or not type_:
            raise ApiError(400, "toxic: missing type")
        stream = obj.get("stream", DOWNSTREAM)
        if stream not in STREAMS:
            raise ApiError(400, f"toxic: stream must be {UPSTREAM} or {DOWNSTREAM}")
        name = obj.get("name") or f"{type_}_{stream}"
        if not isinstance(name, str):
            raise ApiError(400, "toxic: name must be a string")
        toxicity = _toxicity(obj.get("toxicity", 1.0))
        return cls(
            name=name,
            type=type_,
            stream=stream,
            toxicity=toxicity,
            attributes=_attributes(obj.get("attributes", {})),
        )

    def updated_untrusted(self, obj: object) -> ToxicSpec:
        """This toxic with a PATCH body applied (attributes merged; type and stream kept)."""
        if not isinstance(obj, dict):
            raise ApiError(400, "toxic: expected a JSON object")
        new = self
        if "toxicity" in obj:
            new = replace(new, toxicity=_toxicity(obj["toxicity"]))
        if "attributes" in obj:
            merged = dict(new.attributes)
            merged.update(_attributes(obj["attributes"]))
            new = replace(new, attributes=merged)
        return new


def _toxicity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, "toxic: toxicity must be a number")
    if not _finite(value) or not 0.0 <= float(value) <= 1.0:
        raise ApiError(400, "toxic: toxicity must be between 0 and 1")
    return float(value)


def _finite(value: int | float) -> bool:
    """JSON integers are unbounded: one beyond a float's range is not a finite number
    here (math.isfinite and float() raise OverflowError on it)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _attributes(value: object) -> dict[str, AttrValue]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "toxic: attributes must be an object")
    out: dict[str, AttrValue] = {}
    for key, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v):
            raise ApiError(400, f"toxic: attribute {key} must be a number")
        out[str(key)] = v
    return out


@dataclass(frozen=True, kw_only=True)
class ProxySpec:
    """A proxy as created through the API or ``--config`` (Toxiproxy's populate format)."""

    name: str
    listen: str
    upstream: str
    enabled: bool = True

    @classmethod
    def from_json_untrusted(cls, obj: object) -> ProxySpec:
        if not isinstance(obj, dict):
            raise ApiError(400, "proxy: expected a JSON object")
        name, listen, upstream = obj.get("name"), obj.get("listen"), obj.get("upstream")
        for key, val in (("name", name), ("listen", listen), ("upstream", upstream)):
            if not isinstance(val, str) or not val:
                raise ApiError(400, f"proxy: missing {key}")
        assert isinstance(name, str) and isinstance(listen, str) and isinstance(upstream, str)
        if is_udp(listen) != is_udp(upstream):
            raise ApiError(400, "proxy: listen and upstream must both be udp:// or both TCP")
        enabled = obj.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ApiError(400, "proxy: enabled must be true or false")
        return cls(name=name, listen=listen, upstream=upstream, enabled=enabled)


class ProxyRuntime(Protocol):
    """What a running proxy (TCP or UDP) offers the registry.

    ``serve`` binds ``listen``, reports the bound address (``host:port``, with the
    ``udp://`` prefix for datagram proxies) through ``task_status.started``, and relays
    until cancelled; cancelling it closes the listener and drops every connection or
    flow (this is how a disabled proxy drops its connections).  Toxic changes apply to
    open connections too, and follow the toxic contract: data in flight inside a
    removed toxic is forwarded, not lost.
    """

    def check_toxic(self, toxic: ToxicSpec) -> ToxicSpec:
        """The toxic with its type's default attributes filled in; ApiError(400) if the
        type is unknown for this kind of proxy or an attribute is unknown or out of range."""
        ...

    async def serve(
        self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    def add_toxic(self, toxic: ToxicSpec) -> None: ...

    def update_toxic(self, toxic: ToxicSpec) -> None: ...

    def remove_toxic(self, name: str) -> None: ...
