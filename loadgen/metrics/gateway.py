"""Metrics of the reference gateway (``loadgen_gateway_*``).

| metric | type | labels |
|---|---|---|
| loadgen_gateway_connections_active | gauge | |
| loadgen_gateway_sessions_active | gauge | channel = cstp, dtls |
| loadgen_gateway_sessions_total | counter | outcome = established, closed, rejected |
| loadgen_gateway_handshakes_total | counter | protocol = tls, dtls; result = ok, failed |
| loadgen_gateway_auth_failures_total | counter | reason = wrong_password, ... |
| loadgen_gateway_bytes_total | counter | channel, direction = rx, tx |
| loadgen_gateway_packets_total | counter | channel, direction |
| loadgen_gateway_dropped_total | counter | reason (closed set, see DROP_REASONS) |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.process_collector import ProcessCollector

__all__ = ["DROP_REASONS", "GatewayMetrics"]

CHANNELS = ("cstp", "dtls")
DIRECTIONS = ("rx", "tx")
#: why the gateway refused or discarded something from a client
DROP_REASONS = (
    "tls_handshake",  # garbage before TLS, failed handshakes
    "http_malformed",  # bad request line, huge headers, broken framing
    "http_not_found",
    "xml_malformed",
    "cookie_rejected",
    "max_sessions",
    "cstp_malformed",
    "stalled",  # a client that stopped mid-request
    "not_for_gateway",  # tunnel packets not addressed to the gateway's echo services
    "dtls_garbage",
    "dtls_unknown_session",
    "dtls_too_soon",
)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, *, process: bool = False) -> None:
        self.registry = registry
        if process:
            ProcessCollector(registry=registry)
        self.connections_active = Gauge(
            "loadgen_gateway_connections_active", "TLS connections open", registry=registry
        )
        self.sessions_active = Gauge(
            "loadgen_gateway_sessions_active",
            "Tunnels up, by the channel their data uses",
            ["channel"],
            registry=registry,
        )
        self.sessions = Counter(
            "loadgen_gateway_sessions",
            "Tunnels by outcome",
            ["outcome"],
            registry=registry,
        )
        self.handshakes = Counter(
            "loadgen_gateway_handshakes",
            "TLS and DTLS handshakes by result",
            ["protocol", "result"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "loadgen_gateway_auth_failures",
            "Refused logins by reason",
            ["reason"],
            registry=registry,
        )
        self.bytes = Counter(
            "loadgen_gateway_bytes",
            "Tunnel payload bytes (IP packets) by channel and direction",
            ["channel", "direction"],
            registry=registry,
        )
        self.packets = Counter(
            "loadgen_gateway_packets",
            "Tunnel IP packets by channel and direction",
            ["channel", "direction"],
            registry=registry,
        )
        self.dropped = Counter(
            "loadgen_gateway_dropped",
            "Refused or discarded client input by reason",
            ["reason"],
            registry=registry,
        )
        # Pre-create every label set so dashboards see zeros, not gaps.
        for ch in CHANNELS:
            self.sessions_active.labels(ch)
            for d in DIRECTIONS:
                self.bytes.labels(ch, d)
                self.packets.labels(ch, d)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for outcome in ("established", "closed", "rejected"):
            self.sessions.labels(outcome)
