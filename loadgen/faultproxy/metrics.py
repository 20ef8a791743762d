"""Metrics of the fault proxy (``loadgen_faultproxy_*``), served at ``/metrics`` on the API port.

| metric | type | labels |
|---|---|---|
| loadgen_faultproxy_bytes_total | counter | proxy, direction |
| loadgen_faultproxy_datagrams_total | counter | proxy, direction (UDP proxies) |
| loadgen_faultproxy_connections_total | counter | proxy (TCP connections, UDP flows) |
| loadgen_faultproxy_connections_active | gauge | proxy |
| loadgen_faultproxy_dropped_datagrams_total | counter | proxy, direction, toxic |
| loadgen_faultproxy_dropped_bytes_total | counter | proxy, direction, toxic |
| loadgen_faultproxy_delayed_total | counter | proxy, direction, toxic (chunks or datagrams held) |
| loadgen_faultproxy_delay_seconds_total | counter | proxy, direction, toxic (delay added) |
| loadgen_faultproxy_toxics_active | gauge | proxy, toxic |
| loadgen_faultproxy_overload_dropped_total | counter | proxy, direction, cause (own limits) |

``direction`` is ``upstream`` (client to server) or ``downstream``; ``toxic`` is the
toxic's type, never its free-form name; addresses are never labels.  A proxy's
``toxics_active`` children stay at 0 after its toxics go, so a dashboard can shade
fault windows; deleting the proxy removes all its series.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

from loadgen.faultproxy.model import STREAMS

__all__ = ["OVERLOAD_CAUSES", "FaultProxyMetrics"]

OVERLOAD_CAUSES = ("max_flows", "queue_full", "max_connections")

_PROXY = ("proxy",)
_DIRECTION = ("proxy", "direction")
_TOXIC = ("proxy", "direction", "toxic")


class FaultProxyMetrics:
    """The fault proxy's metrics on their own registry (``registry``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        counter, gauge = self._counter, self._gauge
        self.bytes = counter("bytes", "Bytes relayed", _DIRECTION)
        self.datagrams = counter("datagrams", "Datagrams relayed", _DIRECTION)
        self.connections_total = counter(
            "connections", "TCP connections accepted or UDP flows opened", _PROXY
        )
        self.connections_active = gauge("connections_active", "TCP connections or UDP flows open")
        self.dropped_datagrams = counter("dropped_datagrams", "Datagrams dropped by a toxic")
        self.dropped_bytes = counter("dropped_bytes", "Bytes dropped by a toxic")
        self.delayed = counter("delayed", "Chunks or datagrams held back by a toxic")
        self.delay_seconds = counter("delay_seconds", "Delay added by toxics")
        self.toxics_active = gauge(
            "toxics_active", "Toxics in place (shade fault windows with it)", ("proxy", "toxic")
        )
        self.overload_dropped = counter(
            "overload_dropped",
            "Datagrams the proxy dropped at its own limits (not a toxic's doing)",
            ("proxy", "direction", "cause"),
        )
        #: the series with the labels proxy, direction, toxic
        self._by_toxic = (
            self.dropped_datagrams,
            self.dropped_bytes,
            self.delayed,
            self.delay_seconds,
        )
        # toxic types seen per proxy, to remove their series with the proxy
        self._types: dict[str, set[str]] = {}

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = _TOXIC) -> Counter:
        return Counter(f"loadgen_faultproxy_{name}", doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...] = _PROXY) -> Gauge:
        return Gauge(f"loadgen_faultproxy_{name}", doc, labels, registry=self.registry)

    def proxy_added(self, proxy: str) -> None:
        """Create the proxy's series up front so that dashboards see zeros, not gaps."""
        self._types.setdefault(proxy, set())
        self.connections_total.labels(proxy)
        self.connections_active.labels(proxy)
        for d in STREAMS:
            self.bytes.labels(proxy, d)
            self.datagrams.labels(proxy, d)
            for cause in OVERLOAD_CAUSES:
                self.overload_dropped.labels(proxy, d, cause)

    def proxy_removed(self, proxy: str) -> None:
        for metric in (self.connections_total, self.connections_active):
            _remove(metric, proxy)
        for d in STREAMS:
            for metric in (self.bytes, self.datagrams):
                _remove(metric, proxy, d)
            for cause in OVERLOAD_CAUSES:
                _remove(self.overload_dropped, proxy, d, cause)
            for t in self._types.get(proxy, ()):
                for metric in self._by_toxic:
                    _remove(metric, proxy, d, t)
        for t in self._types.pop(proxy, ()):
            _remove(self.toxics_active, proxy, t)

    def toxic_added(self, proxy: str, toxic_type: str) -> None:
        self._seen(proxy, toxic_type)
        self.toxics_active.labels(proxy, toxic_type).inc()

    def toxic_removed(self, proxy: str, toxic_type: str) -> None:
        self.toxics_active.labels(proxy, toxic_type).dec()

    def connection_opened(self, proxy: str) -> None:
        self.connections_total.labels(proxy).inc()
        self.connections_active.labels(proxy).inc()

    def connection_closed(self, proxy: str) -> None:
        self.connections_active.labels(proxy).dec()

    def relayed(self, proxy: str, direction: str, size_bytes: int, *, datagram: bool) -> None:
        self.bytes.labels(proxy, direction).inc(size_bytes)
        if datagram:
            self.datagrams.labels(proxy, direction).inc()

    def dropped(
        self, proxy: str, direction: str, toxic_type: str, size_bytes: int, *, datagram: bool
    ) -> None:
        self._seen(proxy, toxic_type)
        self.dropped_bytes.labels(proxy, direction, toxic_type).inc(size_bytes)
        if datagram:
            self.dropped_datagrams.labels(proxy, direction, toxic_type).inc()

    def overload(self, proxy: str, direction: str, cause: str) -> None:
        """A datagram dropped because of ``max_flows`` or a full per-flow queue."""
        self.overload_dropped.labels(proxy, direction, cause).inc()

    def held(self, proxy: str, direction: str, toxic_type: str, delay_s: float) -> None:
        self._seen(proxy, toxic_type)
        self.delayed.labels(proxy, direction, toxic_type).inc()
        self.delay_seconds.labels(proxy, direction, toxic_type).inc(delay_s)

    def _seen(self, proxy: str, toxic_type: str) -> None:
        types = self._types.setdefault(proxy, set())
        if toxic_type not in types:
            types.add(toxic_type)
            self.toxics_active.labels(proxy, toxic_type)
            for d in STREAMS:
                for metric in self._by_toxic:
                    metric.labels(proxy, d, toxic_type)


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
