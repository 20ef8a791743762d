"""ClientMetrics against the catalogue in architecture.md (Metrics)."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from loadgen.failures import FallbackReason, Phase, Reason
from loadgen.metrics.client import ClientMetrics

# The catalogue, written out by hand: (family name, type, label names).
CATALOGUE = {
    "loadgen_phase_duration_seconds": ("histogram", ("phase",)),
    "loadgen_phase_duration_max_seconds": ("gauge", ("phase",)),
    "loadgen_phase_failures": ("counter", ("phase", "reason")),
    "loadgen_sessions_started": ("counter", ()),
    "loadgen_sessions": ("counter", ("outcome",)),
    "loadgen_sessions_active": ("gauge", ("channel",)),
    "loadgen_sessions_final_channel": ("counter", ("channel",)),
    "loadgen_dtls_attempts": ("counter", ()),
    "loadgen_dtls_fallbacks": ("counter", ("reason",)),
    "loadgen_dtls_retransmits": ("counter", ()),
    "loadgen_echo_rtt_seconds": ("histogram", ("channel",)),
    "loadgen_echo_requests": ("counter", ("channel",)),
    "loadgen_echo_lost": ("counter", ("channel",)),
    "loadgen_tunnel_bytes": ("counter", ("channel", "direction")),
    "loadgen_tunnel_packets": ("counter", ("channel", "direction")),
    "loadgen_event_loop_lag_seconds": ("histogram", ()),
    "loadgen_generator_saturated": ("gauge", ()),
    "loadgen_reconnect_duration_seconds": ("histogram", ()),
    "loadgen_token_waits": ("counter", ()),
    "loadgen_token_wait_seconds": ("counter", ()),
}
PHASE_LE = ["0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1.0",
            "2.0", "5.0", "10.0", "20.0", "30.0", "60.0", "+Inf"]  # fmt: skip
ECHO_LE = ["0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05",
           "0.1", "0.2", "0.5", "1.0", "2.0", "5.0", "+Inf"]  # fmt: skip
DURATION_PHASES = {"tls", "group_select", "auth", "download", "cstp_connect", "dtls", "connect"}


def label_values(registry: CollectorRegistry, sample: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for f in registry.collect()
        for s in f.samples
        if s.name == sample and label in s.labels
    }


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(reg: CollectorRegistry) -> ClientMetrics:
    return ClientMetrics(reg, process=False)


def test_exactly_the_catalogue(reg: CollectorRegistry, m: ClientMetrics) -> None:
    fams = {f.name: f for f in reg.collect()}
    assert set(fams) == set(CATALOGUE)
    for name, (typ, labels) in CATALOGUE.items():
        fam = fams[name]
        assert fam.type == typ, name
        sample_labels = {tuple(k for k in s.labels if k != "le") for s in fam.samples}
        assert sample_labels == {labels}, name
        assert all(s.name.startswith(name) for s in fam.samples)


def test_exposed_names_follow_prometheus_conventions(
    reg: CollectorRegistry, m: ClientMetrics
) -> None:
    text = generate_latest(reg).decode()
    for name, (typ, _) in CATALOGUE.items():
        if typ == "counter":
            assert f"\n{name}_total" in text
        if typ == "histogram":
            assert name.endswith("_seconds")
    # the names the architecture table lists verbatim
    for exposed in ("loadgen_phase_failures_total", "loadgen_sessions_started_total",
                    "loadgen_sessions_total", "loadgen_dtls_attempts_total",
                    "loadgen_dtls_fallbacks_total", "loadgen_dtls_retransmits_total",
                    "loadgen_echo_requests_total", "loadgen_echo_lost_total",
                    "loadgen_tunnel_bytes_total", "loadgen_tunnel_packets_total",
                    "loadgen_sessions_final_channel_total"):  # fmt: skip
        assert f"\n{exposed}" in text, exposed


def test_label_sets_are_precreated_and_closed(reg: CollectorRegistry, m: ClientMetrics) -> None:
    assert label_values(reg, "loadgen_phase_duration_seconds_count", "phase") == DURATION_PHASES
    assert label_values(reg, "loadgen_phase_duration_max_seconds", "phase") == DURATION_PHASES
    assert label_values(reg, "loadgen_phase_failures_total", "phase") == {str(p) for p in Phase}
    assert label_values(reg, "loadgen_phase_failures_total", "reason") == {str(r) for r in Reason}
    n_failures = sum(
        1 for f in reg.collect() for s in f.samples if s.name == "loadgen_phase_failures_total"
    )
    assert n_failures == len(Phase) * len(Reason)
    assert label_values(reg, "loadgen_sessions_total", "outcome") == {
        "established",
        "failed",
        "closed",
    }
    assert label_values(reg, "loadgen_sessions_active", "channel") == {"connecting", "cstp", "dtls"}
    assert label_values(reg, "loadgen_sessions_final_channel_total", "channel") == {"cstp", "dtls"}
    assert label_values(reg, "loadgen_dtls_fallbacks_total", "reason") == {
        str(r) for r in FallbackReason
    }
    assert {"timeout", "alert", "icmp_unreachable", "dpd"} <= label_values(
        reg, "loadgen_dtls_fallbacks_total", "reason"
    )
    for sample in ("loadgen_echo_rtt_seconds_count", "loadgen_echo_requests_total",
                   "loadgen_echo_lost_total", "loadgen_tunnel_bytes_total",
                   "loadgen_tunnel_packets_total"):  # fmt: skip
        assert label_values(reg, sample, "channel") == {"cstp", "dtls"}, sample
    for sample in ("loadgen_tunnel_bytes_total", "loadgen_tunnel_packets_total"):
        assert label_values(reg, sample, "direction") == {"tx", "rx"}
    # everything starts at zero
    for f in reg.collect():
        for s in f.samples:
            if not s.name.endswith("_created"):
                assert s.value == 0.0, s


def test_buckets(reg: CollectorRegistry, m: ClientMetrics) -> None:
    def les(sample: str, **labels: str) -> list[str]:
        return [
            s.labels["le"]
            for f in reg.collect()
            for s in f.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    assert les("loadgen_phase_duration_seconds_bucket", phase="connect") == PHASE_LE
    assert les("loadgen_reconnect_duration_seconds_bucket") == PHASE_LE
    assert les("loadgen_echo_rtt_seconds_bucket", channel="dtls") == ECHO_LE
    lag = les("loadgen_event_loop_lag_seconds_bucket")
    assert lag[-1] == "+Inf" and float(lag[0]) <= 0.001 and float(lag[-2]) >= 1.0


def test_engine_calls(reg: CollectorRegistry, m: ClientMetrics) -> None:
    v = reg.get_sample_value
    m.session_started()
    m.session_started()
    m.channel_change(None, "connecting")
    m.channel_change(None, "connecting")
    m.observe_phase(Phase.TLS, 0.03)
    m.observe_phase("tls", 0.012)
    m.observe_phase(Phase.CONNECT, 1.5)
    m.failure(Phase.AUTH, Reason.AUTH_REJECTED)
    m.session_outcome("failed")
    m.channel_change("connecting", None)
    m.dtls_attempt()
    m.dtls_retransmits(3)
    m.dtls_fallback(FallbackReason.TIMEOUT)
    m.channel_change("connecting", "cstp")
    m.session_outcome("established")
    m.echo("cstp", 0.004)
    m.echo("cstp", None)
    m.traffic("cstp", "tx", 2, 168)
    m.traffic("cstp", "rx", 1, 84)
    m.reconnect(2.5)
    m.observe_lag(0.0003)
    m.set_saturated(True)
    m.session_final_channel("cstp")

    assert v("loadgen_sessions_started_total") == 2
    assert v("loadgen_sessions_active", {"channel": "connecting"}) == 0
    assert v("loadgen_sessions_active", {"channel": "cstp"}) == 1
    assert v("loadgen_sessions_active", {"channel": "dtls"}) == 0
    assert v("loadgen_phase_duration_seconds_count", {"phase": "tls"}) == 2
    assert v("loadgen_phase_duration_seconds_sum", {"phase": "tls"}) == pytest.approx(0.042)
    assert v("loadgen_phase_duration_seconds_bucket", {"phase": "tls", "le": "0.02"}) == 1
    assert v("loadgen_phase_duration_max_seconds", {"phase": "tls"}) == 0.03
    assert v("loadgen_phase_duration_max_seconds", {"phase": "connect"}) == 1.5
    assert v("loadgen_phase_duration_max_seconds", {"phase": "auth"}) == 0
    assert v("loadgen_phase_failures_total", {"phase": "auth", "reason": "auth_rejected"}) == 1
    assert v("loadgen_sessions_total", {"outcome": "failed"}) == 1
    assert v("loadgen_sessions_total", {"outcome": "established"}) == 1
    assert v("loadgen_dtls_attempts_total") == 1
    assert v("loadgen_dtls_retransmits_total") == 3
    assert v("loadgen_dtls_fallbacks_total", {"reason": "timeout"}) == 1
    assert v("loadgen_echo_requests_total", {"channel": "cstp"}) == 2
    assert v("loadgen_echo_lost_total", {"channel": "cstp"}) == 1
    assert v("loadgen_echo_rtt_seconds_count", {"channel": "cstp"}) == 1
    assert v("loadgen_echo_rtt_seconds_bucket", {"channel": "cstp", "le": "0.005"}) == 1
    assert v("loadgen_echo_rtt_seconds_bucket", {"channel": "cstp", "le": "0.002"}) == 0
    assert v("loadgen_tunnel_bytes_total", {"channel": "cstp", "direction": "tx"}) == 168
    assert v("loadgen_tunnel_packets_total", {"channel": "cstp", "direction": "tx"}) == 2
    assert v("loadgen_tunnel_bytes_total", {"channel": "cstp", "direction": "rx"}) == 84
    assert v("loadgen_reconnect_duration_seconds_count") == 1
    assert v("loadgen_event_loop_lag_seconds_count") == 1
    assert v("loadgen_generator_saturated") == 1
    assert v("loadgen_sessions_final_channel_total", {"channel": "cstp"}) == 1
    m.set_saturated(False)
    assert v("loadgen_generator_saturated") == 0


def test_max_gauge_only_grows(reg: CollectorRegistry, m: ClientMetrics) -> None:
    for s in (0.2, 0.9, 0.1, 0.5):
        m.observe_phase("dtls", s)
    assert reg.get_sample_value("loadgen_phase_duration_max_seconds", {"phase": "dtls"}) == 0.9


def test_unknown_label_values_are_rejected(m: ClientMetrics) -> None:
    with pytest.raises(KeyError):
        m.observe_phase("tunnel", 1.0)  # failure phase only, no duration
    with pytest.raises(KeyError):
        m.failure("auth", "wrong_password")
    with pytest.raises(KeyError):
        m.channel_change(None, "udp")
    with pytest.raises(KeyError):
        m.traffic("dtls", "up", 1, 1)
    with pytest.raises(KeyError):
        m.dtls_fallback("bored")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ProcessCollector reads /proc")
def test_process_collector_default_on() -> None:
    reg = CollectorRegistry()
    ClientMetrics(reg)
    assert reg.get_sample_value("process_cpu_seconds_total") is not None
    assert (reg.get_sample_value("process_resident_memory_bytes") or 0) > 0
    off = CollectorRegistry()
    ClientMetrics(off, process=False)
    assert off.get_sample_value("process_cpu_seconds_total") is None


def test_two_engines_in_one_process() -> None:
    a, b = ClientMetrics(CollectorRegistry(), process=False), ClientMetrics(CollectorRegistry())
    a.session_started()
    assert a.registry.get_sample_value("loadgen_sessions_started_total") == 1
    assert b.registry.get_sample_value("loadgen_sessions_started_total") == 0
