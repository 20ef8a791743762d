"""Threshold grammar, key validation and evaluation against a summary."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.summary import SUMMARY_KEYS, build_summary, samples_from_registry
from loadgen.metrics.thresholds import (
    Threshold,
    ThresholdError,
    ThresholdResult,
    evaluate,
    parse_threshold,
    validate,
)


@pytest.mark.parametrize(
    ("text", "key", "op", "value"),
    [
        ("phases.connect.p95<2s", "phases.connect.p95", "<", 2.0),
        ("phases.tls.p99 <= 250ms", "phases.tls.p99", "<=", 0.25),
        ("echo.rtt_p95<800us", "echo.rtt_p95", "<", 0.0008),
        ("failure_ratio<1%", "failure_ratio", "<", 0.01),
        ("dtls_fallback_ratio <= 0.5%", "dtls_fallback_ratio", "<=", 0.005),
        ("sessions.failed==0", "sessions.failed", "==", 0.0),
        ("sessions.established >= 1e3", "sessions.established", ">=", 1000.0),
        ("  echo.received > 10  ", "echo.received", ">", 10.0),
        ("generator.saturated != 1", "generator.saturated", "!=", 1.0),
        ("throughput.rx_bytes>.5", "throughput.rx_bytes", ">", 0.5),
        ("failures.auth/timeout<=3", "failures.auth/timeout", "<=", 3.0),
        ("failure_ratio > -1", "failure_ratio", ">", -1.0),
        ("phases.connect.max < 1.5 s", "phases.connect.max", "<", 1.5),
    ],
)
def test_grammar(text: str, key: str, op: str, value: float) -> None:
    t = parse_threshold(text)
    assert (t.key_path, t.op) == (key, op)
    assert t.value == pytest.approx(value)
    assert t.expr == text.strip()
    assert t == Threshold(key, op, t.value)  # the spelling is not part of equality
    validate([t])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "phases.connect.p95",
        "phases.connect.p95 < ",
        "< 2s",
        "phases.connect.p95 =< 2s",
        "phases.connect.p95 = 2s",
        "phases.connect.p95 << 2s",
        "phases.connect.p95 < 2 h",
        "phases.connect.p95 < 2sec",
        "phases.connect.p95 < two",
        "phases.connect.p95 < 2s extra",
        "phases..connect < 2s",
        "phases.connect.p95 < nan",
        "phases.connect.p95 < inf",
        "1phase < 2",
    ],
)
def test_grammar_errors(text: str) -> None:
    with pytest.raises(ThresholdError, match="cannot parse"):
        parse_threshold(text)


def test_threshold_error_is_a_usage_error() -> None:
    assert issubclass(ThresholdError, ValueError)


@pytest.mark.parametrize(
    "key",
    [
        "phases.connect.p95",
        "failure_ratio",
        "dtls_fallback_ratio",
        "echo.rtt_p95",
        "sessions.failed",
        "channels.dtls",
        "generator.peak_rss_bytes",
        "failures.tunnel/terminated",
    ],
)
def test_validate_known_keys(key: str) -> None:
    validate([parse_threshold(f"{key} < 1")])


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("phases.conect.p95 < 2s", "phases.connect.p95"),
        ("phases.connect.p90 < 2s", None),
        ("phases.tunnel.p95 < 2s", None),  # tunnel has no duration
        ("phases.connect < 2s", None),  # not a leaf
        ("failure_rate < 1%", "failure_ratio"),
        ("failures.auth/bored < 1", None),
        ("echo < 1", None),
    ],
)
def test_validate_unknown_keys(text: str, hint: str | None) -> None:
    with pytest.raises(ThresholdError, match="unknown summary key") as info:
        validate([parse_threshold("sessions.failed == 0"), parse_threshold(text)])
    if hint is not None:
        assert hint in str(info.value)


def test_validate_against_custom_keys() -> None:
    validate([parse_threshold("a.b < 1")], {"a.b"})
    with pytest.raises(ThresholdError):
        validate([parse_threshold("failure_ratio < 1")], {"a.b"})
    assert "failure_ratio" in SUMMARY_KEYS


def summary() -> dict[str, object]:
    reg = CollectorRegistry()
    m = ClientMetrics(reg, process=False)
    for _ in range(4):
        m.session_started()
    for s in (0.4, 0.6, 3.0):
        m.observe_phase("connect", s)
        m.session_outcome("established")
    m.session_outcome("failed")
    m.failure("auth", "timeout")
    m.echo("cstp", 0.003)
    return build_summary(
        samples_from_registry(reg),
        generator={"cpu_seconds": 1.0, "peak_rss_bytes": 10, "saturated": False},
    )


def results(*texts: str) -> list[ThresholdResult]:
    return evaluate([parse_threshold(t) for t in texts], summary())


def test_evaluate() -> None:
    r = results(
        "sessions.failed == 1",
        "failure_ratio < 20%",
        "failure_ratio <= 25%",
        "phases.connect.max < 2s",
        "phases.connect.max >= 3000ms",
        "generator.saturated == 0",
        "failures.auth/timeout >= 1",
        "failures.tls/refused == 0",
        "echo.sent != 1",
    )
    assert [x.passed for x in r] == [True, False, True, False, True, True, True, True, False]
    assert r[1].actual == pytest.approx(0.25)
    assert r[7].actual == 0.0  # absent failure keys count zero
    assert r[0].expr == "sessions.failed == 1"
    assert "passed" in r[0].message and "failed" in r[1].message
    assert "0.25" in r[1].message


def test_evaluate_missing_data_fails_clearly() -> None:
    (r,) = results("phases.auth.p95 < 2s")
    assert r.actual is None
    assert not r.passed
    assert "no value" in r.message and "phases.auth.p95" in r.message
    (r,) = results("echo.rtt_p95 < 1s")
    assert r.passed and r.actual == pytest.approx(0.002 + 0.003 * 0.95)


def test_evaluate_operator_boundaries() -> None:
    s = {"x": 2.0}
    ops = {"<": False, "<=": True, ">": False, ">=": True, "==": True, "!=": False}
    for op, want in ops.items():
        (r,) = evaluate([parse_threshold(f"x {op} 2")], s)
        assert r.passed is want, op
