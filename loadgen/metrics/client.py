"""Metrics of the load engine's synthetic clients (``loadgen_*``).

| metric | type | labels |
|---|---|---|
| loadgen_phase_duration_seconds | histogram | phase = every Phase but tunnel (DURATION_PHASES) |
| loadgen_phase_duration_max_seconds | gauge | phase (the exact maximum; merged as max) |
| loadgen_phase_failures_total | counter | phase (every Phase), reason (every Reason) |
| loadgen_sessions_started_total | counter | |
| loadgen_sessions_total | counter | outcome = established, failed, closed |
| loadgen_sessions_active | gauge | channel = connecting, cstp, dtls |
| loadgen_sessions_final_channel_total | counter | channel = cstp, dtls |
| loadgen_dtls_attempts_total | counter | |
| loadgen_dtls_fallbacks_total | counter | reason (every FallbackReason) |
| loadgen_dtls_retransmits_total | counter | |
| loadgen_echo_rtt_seconds | histogram | channel = cstp, dtls |
| loadgen_echo_requests_total | counter | channel |
| loadgen_echo_lost_total | counter | channel |
| loadgen_tunnel_bytes_total | counter | channel, direction = tx, rx |
| loadgen_tunnel_packets_total | counter | channel, direction |
| loadgen_event_loop_lag_seconds | histogram | |
| loadgen_generator_saturated | gauge | (0 or 1) |
| loadgen_reconnect_duration_seconds | histogram | |
| loadgen_token_waits_total | counter | |
| loadgen_token_wait_seconds_total | counter | |
| process_* | ProcessCollector | (CPU, memory, fds; on by default) |

Label values come only from ``loadgen.failures`` and the tuples below
(architecture.md, Metrics).  Every label set is created up front so that
dashboards see zeros instead of gaps.  The engine's hot path calls the small
methods at the bottom; each is a dict lookup on a pre-bound child plus the
prometheus-client call.  An unknown label value raises ``KeyError``: label
sets are closed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from loadgen.failures import FallbackReason, Phase, Reason

__all__ = [
    "ACTIVE_CHANNELS",
    "CHANNELS",
    "DIRECTIONS",
    "DURATION_PHASES",
    "ECHO_BUCKETS",
    "LAG_BUCKETS",
    "OUTCOMES",
    "PHASE_BUCKETS",
    "ClientMetrics",
]

#: phases with a duration histogram; ``tunnel`` is a failure phase only
DURATION_PHASES: tuple[str, ...] = tuple(str(p) for p in Phase if p is not Phase.TUNNEL)
OUTCOMES = ("established", "failed", "closed")
#: the data channels of a tunnel
CHANNELS = ("cstp", "dtls")
#: where an active session is: still connecting, or up on one data channel
ACTIVE_CHANNELS = ("connecting", "cstp", "dtls")
DIRECTIONS = ("tx", "rx")

#: 1 ms to 60 s (architecture.md, Metrics)
PHASE_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
#: 100 us to 5 s (architecture.md, Metrics)
ECHO_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
#: a healthy trio loop wakes within a millisecond; 100 ms and more means saturation
LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


class ClientMetrics:
    """The engine's metrics, built on ``registry`` (one per engine)."""

    def __init__(self, registry: CollectorRegistry, *, process: bool = True) -> None:
        self.registry = registry
        if process:
            # A load generator must show its own saturation (architecture.md).
            ProcessCollector(registry=registry)
        self.phase_duration = Histogram(
            "loadgen_phase_duration_seconds",
            "Duration of each connection phase, from the session's scheduled start for connect",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        self.phase_duration_max = Gauge(
            "loadgen_phase_duration_max_seconds",
            "Longest duration seen for each connection phase",
            ["phase"],
            registry=registry,
        )
        self.phase_failures = Counter(
            "loadgen_phase_failures",
            "Session failures by phase and reason",
            ["phase", "reason"],
            registry=registry,
        )
        self.sessions_started = Counter(
            "loadgen_sessions_started", "Sessions started", registry=registry
        )
        self.sessions = Counter(
            "loadgen_sessions", "Sessions by outcome", ["outcome"], registry=registry
        )
        self.sessions_active = Gauge(
            "loadgen_sessions_active",
            "Sessions in progress: connecting, or up on their data channel",
            ["channel"],
            registry=registry,
        )
        self.sessions_final_channel = Counter(
            "loadgen_sessions_final_channel",
            "Established sessions by the data channel they ended up on",
            ["channel"],
            registry=registry,
        )
        self.dtls_attempts = Counter(
            "loadgen_dtls_attempts", "DTLS channel attempts", registry=registry
        )
        self.dtls_fallbacks = Counter(
            "loadgen_dtls_fallbacks",
            "DTLS given up for CSTP, by reason (an outcome, not a failure)",
            ["reason"],
            registry=registry,
        )
        self.dtls_retransmissions = Counter(
            "loadgen_dtls_retransmits", "DTLS handshake flights retransmitted", registry=registry
        )
        self.echo_rtt = Histogram(
            "loadgen_echo_rtt_seconds",
            "Round-trip time of tunnel echo probes",
            ["channel"],
            buckets=ECHO_BUCKETS,
            registry=registry,
        )
        self.echo_requests = Counter(
            "loadgen_echo_requests", "Tunnel echo probes sent", ["channel"], registry=registry
        )
        self.echo_lost = Counter(
            "loadgen_echo_lost", "Tunnel echo probes never answered", ["channel"], registry=registry
        )
        self.tunnel_bytes = Counter(
            "loadgen_tunnel_bytes",
            "Tunnel payload bytes (IP packets) by channel and direction",
            ["channel", "direction"],
            registry=registry,
        )
        self.tunnel_packets = Counter(
            "loadgen_tunnel_packets",
            "Tunnel IP packets by channel and direction",
            ["channel", "direction"],
            registry=registry,
        )
        self.event_loop_lag = Histogram(
            "loadgen_event_loop_lag_seconds",
            "How late the trio loop woke a sleeping monitor task",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.generator_saturated = Gauge(
            "loadgen_generator_saturated",
            "1 while the load generator is saturated (CPU or event-loop lag), else 0",
            registry=registry,
        )
        self.reconnect_duration = Histogram(
            "loadgen_reconnect_duration_seconds",
            "Time from a lost tunnel to the re-established one (reconnect storms)",
            buckets=PHASE_BUCKETS,
            registry=registry,
        )

        self.token_waits = Counter(
            "loadgen_token_waits",
            "Logins that waited for a fresh TOTP step (one code per identity and step)",
            registry=registry,
        )
        self.token_wait = Counter(
            "loadgen_token_wait_seconds",
            "Seconds logins waited for a fresh TOTP step",
            registry=registry,
        )

        # Pre-bound children: dashboards see zeros, and the hot path skips labels().
        self._phase = {p: self.phase_duration.labels(p) for p in DURATION_PHASES}
        self._phase_max = {p: self.phase_duration_max.labels(p) for p in DURATION_PHASES}
        self._phase_max_s = dict.fromkeys(DURATION_PHASES, 0.0)
        self._failures = {
            str(p): {str(r): self.phase_failures.labels(p, r) for r in Reason} for p in Phase
        }
        self._outcome = {o: self.sessions.labels(o) for o in OUTCOMES}
        self._active = {c: self.sessions_active.labels(c) for c in ACTIVE_CHANNELS}
        self._final = {c: self.sessions_final_channel.labels(c) for c in CHANNELS}
        self._fallback = {str(r): self.dtls_fallbacks.labels(r) for r in FallbackReason}
        self._rtt = {c: self.echo_rtt.labels(c) for c in CHANNELS}
        self._echo_req = {c: self.echo_requests.labels(c) for c in CHANNELS}
        self._echo_lost = {c: self.echo_lost.labels(c) for c in CHANNELS}
        self._bytes = {c: {d: self.tunnel_bytes.labels(c, d) for d in DIRECTIONS} for c in CHANNELS}
        self._packets = {
            c: {d: self.tunnel_packets.labels(c, d) for d in DIRECTIONS} for c in CHANNELS
        }

    # -- called by the engine ------------------------------------------------------

    def observe_phase(self, phase: str, seconds: float) -> None:
        """A phase (or the whole ``connect``) completed in ``seconds``."""
        self._phase[phase].observe(seconds)
        if seconds > self._phase_max_s[phase]:
            self._phase_max_s[phase] = seconds
            self._phase_max[phase].set(seconds)

    def failure(self, phase: str, reason: str) -> None:
        self._failures[phase][reason].inc()

    def session_started(self) -> None:
        self.sessions_started.inc()

    def session_outcome(self, outcome: str) -> None:
        """``established``, ``failed`` or ``closed``."""
        self._outcome[outcome].inc()

    def channel_change(self, old: str | None, new: str | None) -> None:
        """Move one session between active states (None: not active)."""
        if old is not None:
            self._active[old].dec()
        if new is not None:
            self._active[new].inc()

    def session_final_channel(self, channel: str) -> None:
        """Once per established session, at its end or at the run's end."""
        self._final[channel].inc()

    def dtls_attempt(self) -> None:
        self.dtls_attempts.inc()

    def dtls_fallback(self, reason: str) -> None:
        self._fallback[reason].inc()

    def dtls_retransmits(self, n: int) -> None:
        self.dtls_retransmissions.inc(n)

    def echo(self, channel: str, rtt_s: float | None) -> None:
        """One echo probe finished: answered after ``rtt_s``, or lost (None)."""
        self._echo_req[channel].inc()
        if rtt_s is None:
            self._echo_lost[channel].inc()
        else:
            self._rtt[channel].observe(rtt_s)

    def traffic(self, channel: str, direction: str, packets: int, bytes_: int) -> None:
        self._packets[channel][direction].inc(packets)
        self._bytes[channel][direction].inc(bytes_)

    def reconnect(self, seconds: float) -> None:
        self.reconnect_duration.observe(seconds)

    def token_waited(self, seconds: float) -> None:
        self.token_waits.inc()
        self.token_wait.inc(seconds)

    def observe_lag(self, seconds: float) -> None:
        self.event_loop_lag.observe(seconds)

    def set_saturated(self, saturated: bool) -> None:
        self.generator_saturated.set(1.0 if saturated else 0.0)
