"""The run summary: percentiles from mergeable buckets, counters as /metrics serves them."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.summary import (
    RSS_MAX,
    SUMMARY_KEYS,
    Samples,
    build_summary,
    generator_from_samples,
    histogram_quantile,
    merge,
    parse_exposition,
    samples_from_registry,
)

INF = math.inf
GEN = {"cpu_seconds": 1.5, "peak_rss_bytes": 123456, "saturated": False}

# --- histogram_quantile -------------------------------------------------------------

HAND = [(0.1, 10.0), (0.2, 30.0), (0.5, 40.0), (INF, 40.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1 + 0.1 * (10 / 20)),  # rank 20 in (0.1, 0.2]: 10 of its 20
        (0.95, 0.2 + 0.3 * (8 / 10)),  # rank 38 in (0.2, 0.5]: 8 of its 10
        (0.25, 0.1 * (10 / 10) + 0.1 * 0 / 20),  # rank 10: top of the first bucket
        (0.1, 0.1 * (4 / 10)),  # first bucket starts at 0
        (1.0, 0.5),
        (0.0, 0.0),
    ],
)
def test_quantile_interpolation(q: float, expected: float) -> None:
    assert histogram_quantile(HAND, q) == pytest.approx(expected)


def test_quantile_order_of_input_does_not_matter() -> None:
    assert histogram_quantile(list(reversed(HAND)), 0.5) == pytest.approx(0.15)


def test_quantile_empty() -> None:
    assert histogram_quantile([], 0.5) is None
    assert histogram_quantile([(0.1, 0.0), (1.0, 0.0), (INF, 0.0)], 0.5) is None


def test_quantile_all_in_inf_bucket_gives_highest_finite_bound() -> None:
    assert histogram_quantile([(0.1, 0.0), (1.0, 0.0), (INF, 7.0)], 0.5) == 1.0
    assert histogram_quantile([(0.1, 0.0), (1.0, 0.0), (INF, 7.0)], 0.0) == 1.0


def test_quantile_only_inf_bucket() -> None:
    assert histogram_quantile([(INF, 5.0)], 0.5) is None


def test_quantile_single_finite_bucket() -> None:
    assert histogram_quantile([(2.0, 4.0), (INF, 4.0)], 0.5) == pytest.approx(1.0)
    assert histogram_quantile([(2.0, 4.0), (INF, 4.0)], 0.75) == pytest.approx(1.5)
    # half of the observations above the bound
    assert histogram_quantile([(2.0, 2.0), (INF, 4.0)], 0.9) == 2.0


def test_quantile_without_inf_bucket_is_undefined() -> None:
    assert histogram_quantile([(0.1, 1.0), (0.2, 2.0)], 0.5) is None


def test_quantile_nonpositive_first_bound() -> None:
    assert histogram_quantile([(-1.0, 5.0), (1.0, 10.0), (INF, 10.0)], 0.2) == -1.0


def test_quantile_repairs_non_monotonic_counts() -> None:
    # PromQL's ensureMonotonic: the dip at 0.5 is lifted to 30; rank 15 of 30
    assert histogram_quantile([(0.1, 10.0), (0.2, 30.0), (0.5, 29.0), (INF, 30.0)], 0.5) == (
        pytest.approx(0.1 + 0.1 * 5 / 20)
    )


def test_quantile_range_checked() -> None:
    with pytest.raises(ValueError):
        histogram_quantile(HAND, 1.5)
    with pytest.raises(ValueError):
        histogram_quantile(HAND, -0.1)


# --- one process: the summary equals /metrics ---------------------------------------


def drive(m: ClientMetrics) -> None:
    for _ in range(5):
        m.session_started()
        m.channel_change(None, "connecting")
    for s in (0.012, 0.018, 0.3):
        m.observe_phase("tls", s)
    for s in (0.4, 0.7, 1.3):
        m.observe_phase("connect", s)
        m.session_outcome("established")
    m.failure("auth", "auth_rejected")
    m.failure("tls", "timeout")
    m.session_outcome("failed")
    m.session_outcome("failed")
    m.channel_change("connecting", "dtls")
    m.channel_change("connecting", "cstp")
    m.dtls_attempt()
    m.dtls_attempt()
    m.dtls_fallback("timeout")
    m.session_final_channel("dtls")
    m.session_final_channel("cstp")
    m.session_final_channel("cstp")
    m.echo("dtls", 0.0015)
    m.echo("dtls", None)
    m.echo("cstp", 0.003)
    m.traffic("dtls", "tx", 10, 1000)
    m.traffic("cstp", "tx", 1, 84)
    m.traffic("dtls", "rx", 9, 900)


def test_registry_samples_equal_exposition() -> None:
    reg = CollectorRegistry()
    drive(ClientMetrics(reg, process=False))
    live = samples_from_registry(reg)
    served = parse_exposition(generate_latest(reg).decode())
    assert live == served
    assert live.value("loadgen_sessions_started_total") == 5
    assert not any(name.endswith("_created") for name, _ in live.values)


def test_registry_samples_equal_exposition_with_process_collector() -> None:
    reg = CollectorRegistry()
    drive(ClientMetrics(reg))
    live = samples_from_registry(reg)
    served = parse_exposition(generate_latest(reg).decode())
    ours = {k: v for k, v in live.values.items() if k[0].startswith("loadgen_")}
    assert ours == {k: v for k, v in served.values.items() if k[0].startswith("loadgen_")}
    assert {k[0] for k in live.values} == {k[0] for k in served.values}


def exposed(text: str, sample: str, **labels: str) -> float:
    """A value read straight from the text, independently of summary.py."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_summary_counters_are_the_served_values() -> None:
    reg = CollectorRegistry()
    drive(ClientMetrics(reg, process=False))
    text = generate_latest(reg).decode()
    s = build_summary(samples_from_registry(reg), generator=GEN)
    assert s["sessions"] == {
        "started": exposed(text, "loadgen_sessions_started_total"),
        "established": exposed(text, "loadgen_sessions_total", outcome="established"),
        "failed": exposed(text, "loadgen_sessions_total", outcome="failed"),
    }
    assert s["sessions"] == {"started": 5, "established": 3, "failed": 2}
    assert s["channels"] == {"dtls": 1, "cstp": 2}
    assert s["failures"] == {"auth/auth_rejected": 1, "tls/timeout": 1}
    assert s["failure_ratio"] == pytest.approx(2 / 5)
    assert s["dtls_fallback_ratio"] == pytest.approx(1 / 2)
    assert s["echo"]["sent"] == exposed(text, "loadgen_echo_requests_total") == 3
    assert s["echo"]["received"] == 2
    assert s["throughput"] == {"tx_bytes": 1084, "rx_bytes": 900}
    assert s["generator"] == GEN
    # tls: 0.012, 0.018 in (0.01, 0.02], 0.3 in (0.2, 0.5]; p50 rank 1.5 -> 0.01 + 0.01 * 1.5/2
    assert s["phases"]["tls"]["p50"] == pytest.approx(0.0175)
    assert s["phases"]["tls"]["max"] == 0.3
    assert s["phases"]["connect"]["max"] == 1.3
    assert s["phases"]["auth"] == {"p50": None, "p95": None, "p99": None, "max": None}
    # echo: 0.0015 in (0.001, 0.002], 0.003 in (0.002, 0.005]; p50 rank 1 -> 0.002
    assert s["echo"]["rtt_p50"] == pytest.approx(0.002)
    assert s["echo"]["rtt_p95"] == pytest.approx(0.002 + 0.003 * 0.9)


def test_summary_shape_and_json() -> None:
    reg = CollectorRegistry()
    drive(ClientMetrics(reg, process=False))
    s = build_summary(samples_from_registry(reg), generator={**GEN, "extra": 1})
    assert list(s) == ["sessions", "channels", "phases", "failures", "failure_ratio",
                       "dtls_fallback_ratio", "echo", "throughput", "generator"]  # fmt: skip
    assert set(s["phases"]) == {"tls", "group_select", "auth", "download", "cstp_connect",
                                "dtls", "connect"}  # fmt: skip
    assert set(s["echo"]) == {"sent", "received", "rtt_p50", "rtt_p95"}
    assert set(s["generator"]) == {"cpu_seconds", "peak_rss_bytes", "saturated"}
    json.dumps(s, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere


def test_summary_of_nothing() -> None:
    reg = CollectorRegistry()
    ClientMetrics(reg, process=False)
    s = build_summary(samples_from_registry(reg), generator=GEN)
    assert s["sessions"] == {"started": 0, "established": 0, "failed": 0}
    assert s["failure_ratio"] == 0.0
    assert s["dtls_fallback_ratio"] == 0.0
    assert s["failures"] == {}
    assert s["echo"] == {"sent": 0, "received": 0, "rtt_p50": None, "rtt_p95": None}
    assert s["phases"]["connect"]["p95"] is None
    json.dumps(s, allow_nan=False)


def test_quantiles_capped_by_the_exact_max() -> None:
    reg = CollectorRegistry()
    m = ClientMetrics(reg, process=False)
    for _ in range(9):
        m.observe_phase("download", 0.011)  # bucket (0.01, 0.02]
    m.observe_phase("download", 0.019)
    p = build_summary(samples_from_registry(reg), generator=GEN)["phases"]["download"]
    assert p["p50"] == pytest.approx(0.015)  # interpolation, below the max
    assert p["p99"] == p["max"] == 0.019  # 0.0199 interpolated, but nothing exceeded 0.019


def test_max_falls_back_to_buckets_without_gauge() -> None:
    text = "\n".join(
        [
            "# TYPE loadgen_phase_duration_seconds histogram",
            'loadgen_phase_duration_seconds_bucket{le="0.1",phase="tls"} 1',
            'loadgen_phase_duration_seconds_bucket{le="0.5",phase="tls"} 3',
            'loadgen_phase_duration_seconds_bucket{le="1.0",phase="tls"} 3',
            'loadgen_phase_duration_seconds_bucket{le="+Inf",phase="tls"} 3',
            'loadgen_phase_duration_seconds_bucket{le="0.1",phase="auth"} 0',
            'loadgen_phase_duration_seconds_bucket{le="1.0",phase="auth"} 0',
            'loadgen_phase_duration_seconds_bucket{le="+Inf",phase="auth"} 2',
            "",
        ]
    )
    s = build_summary(parse_exposition(text), generator=GEN)
    assert s["phases"]["tls"]["max"] == 0.5
    assert s["phases"]["auth"]["max"] == 1.0  # above every bound: the highest finite one
    assert s["phases"]["auth"]["p50"] == 1.0


# --- several processes --------------------------------------------------------------


def process_a() -> str:
    reg = CollectorRegistry()
    m = ClientMetrics(reg, process=False)
    for _ in range(3):
        m.session_started()
        m.observe_phase("connect", 0.015)
    m.session_started()
    m.observe_phase("connect", 0.3)
    m.channel_change(None, "dtls")
    m.channel_change(None, "dtls")
    m.dtls_attempt()
    m.echo("cstp", 0.0015)
    m.echo("cstp", 0.0015)
    m.echo("dtls", 0.004)
    m.echo("dtls", 0.004)
    m.failure("tls", "refused")
    m.traffic("dtls", "tx", 3, 300)
    return generate_latest(reg).decode()


def process_b() -> str:
    reg = CollectorRegistry()
    m = ClientMetrics(reg, process=False)
    m.session_started()
    m.observe_phase("connect", 0.015)
    for s in (0.8, 0.8, 0.8, 0.99):
        m.session_started()
        m.observe_phase("connect", s)
    m.channel_change(None, "dtls")
    m.channel_change(None, "cstp")
    m.dtls_attempt()
    m.dtls_attempt()
    m.dtls_fallback("alert")
    m.echo("dtls", 0.0004)
    m.echo("dtls", None)
    m.failure("tls", "refused")
    m.failure("auth", "timeout")
    m.set_saturated(True)
    m.traffic("cstp", "tx", 2, 200)
    return generate_latest(reg).decode()


def test_merge_sums_counters_and_buckets() -> None:
    a, b = parse_exposition(process_a()), parse_exposition(process_b())
    merged = merge([a, b])
    assert merged.value("loadgen_sessions_started_total") == 9
    assert merged.value("loadgen_sessions_active", channel="dtls") == 3
    assert merged.value("loadgen_sessions_active", channel="cstp") == 1
    assert merged.value("loadgen_generator_saturated") == 1
    assert merged.value("loadgen_phase_duration_max_seconds", phase="connect") == 0.99
    assert merged.value("loadgen_phase_duration_seconds_bucket", phase="connect", le="0.02") == 4
    assert merged.value("loadgen_phase_duration_seconds_count", phase="connect") == 9
    assert merged.value("loadgen_phase_duration_seconds_sum", phase="connect") == pytest.approx(
        4 * 0.015 + 0.3 + 3 * 0.8 + 0.99
    )

    s = build_summary(merged, generator=GEN)
    assert s["sessions"]["started"] == 9
    assert s["failures"] == {"auth/timeout": 1, "tls/refused": 2}
    assert s["dtls_fallback_ratio"] == pytest.approx(1 / 3)
    assert s["throughput"]["tx_bytes"] == 500
    # connect, summed buckets: 4 in (0.01, 0.02], 1 in (0.2, 0.5], 4 in (0.5, 1.0]; total 9
    connect = s["phases"]["connect"]
    assert connect["p50"] == pytest.approx(0.2 + 0.3 * (4.5 - 4) / 1)  # rank 4.5
    assert connect["p95"] == pytest.approx(0.5 + 0.5 * (8.55 - 5) / 4)  # rank 8.55
    assert connect["p99"] == pytest.approx(0.5 + 0.5 * (8.91 - 5) / 4)  # rank 8.91
    assert connect["max"] == 0.99
    # not the mean of per-process medians
    pa = build_summary(a, generator=GEN)["phases"]["connect"]["p50"]
    pb = build_summary(b, generator=GEN)["phases"]["connect"]["p50"]
    assert connect["p50"] != pytest.approx((pa + pb) / 2)
    # echo, summed over channels and processes: <=0.0005: 1, <=0.002: 3, <=0.005: 5
    assert s["echo"]["sent"] == 6
    assert s["echo"]["received"] == 5
    assert s["echo"]["rtt_p50"] == pytest.approx(0.001 + 0.001 * (2.5 - 1) / 2)
    assert s["echo"]["rtt_p95"] == pytest.approx(0.002 + 0.003 * (4.75 - 3) / 2)


def test_merge_of_one_is_identity_and_merge_is_associative() -> None:
    a, b = parse_exposition(process_a()), parse_exposition(process_b())
    assert merge([a]) == a
    again = merge([merge([a, b]), a])
    assert again.value("loadgen_sessions_started_total") == 4 + 5 + 4
    assert again == merge([a, b, a])


PROC = """# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total {cpu}
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes {rss}
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
# TYPE process_open_fds gauge
process_open_fds {fds}
"""


def test_merge_process_metrics() -> None:
    one = parse_exposition(PROC.format(cpu=2.5, rss=100e6, start=1000.0, fds=40))
    two = parse_exposition(PROC.format(cpu=1.25, rss=300e6, start=990.0, fds=60))
    merged = merge([one, two])
    assert merged.value("process_cpu_seconds_total") == 3.75
    assert merged.value("process_resident_memory_bytes") == 400e6
    assert merged.value(RSS_MAX) == 300e6
    assert merged.value("process_start_time_seconds") == 990.0
    assert merged.value("process_open_fds") == 100
    three = parse_exposition(PROC.format(cpu=1.0, rss=200e6, start=995.0, fds=1))
    assert merge([merged, three]).value(RSS_MAX) == 300e6
    gen = generator_from_samples(merged, saturated=True)
    assert gen == {"cpu_seconds": 3.75, "peak_rss_bytes": 300_000_000, "saturated": True}


def test_samples_helpers() -> None:
    s = Samples()
    s.add("x_total", {"b": "2", "a": "1"}, 3.0)
    s.add("x_total", {"a": "1", "b": "3"}, 4.0)
    assert s.value("x_total", a="1", b="2") == 3.0
    assert s.value("x_total", a="1") is None
    assert s.total("x_total", a="1") == 7.0
    assert s.total("x_total", b="3") == 4.0
    assert s.total("missing") == 0.0


def test_summary_keys_cover_the_summary() -> None:
    reg = CollectorRegistry()
    drive(ClientMetrics(reg, process=False))
    s = build_summary(samples_from_registry(reg), generator=GEN)

    def leaves(node: object, prefix: str = "") -> set[str]:
        if isinstance(node, dict):
            out: set[str] = set()
            for k, v in node.items():
                out |= leaves(v, f"{prefix}{k}.")
            return out
        return {prefix[:-1]}

    assert leaves(s) <= SUMMARY_KEYS
    assert leaves({k: v for k, v in s.items() if k != "failures"}) == {
        k for k in SUMMARY_KEYS if not k.startswith("failures.")
    }
    assert "phases.connect.p95" in SUMMARY_KEYS
    assert "failures.tunnel/terminated" in SUMMARY_KEYS
