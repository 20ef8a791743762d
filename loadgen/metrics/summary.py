"""The run summary, computed from Prometheus samples only.

Percentiles come from histogram buckets (mergeable across processes), never
from raw samples, and counters are the very values ``/metrics`` serves: a
single process reads its live registry (``samples_from_registry``), several
processes are merged from their expositions (``parse_exposition`` +
``merge``).  Summary shape (the JSON ``loadgen run`` prints)::

    sessions    {started, established, failed}
    channels    {dtls, cstp}                  established sessions by final channel
    phases      {phase: {p50, p95, p99, max}} seconds; None without observations
    failures    {"phase/reason": count}       non-zero counts only
    failure_ratio, dtls_fallback_ratio        0 when the denominator is 0
    echo        {sent, received, rtt_p50, rtt_p95}
    throughput  {tx_bytes, rx_bytes}
    generator   {cpu_seconds, peak_rss_bytes, saturated}   passed in
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from loadgen.failures import Phase, Reason
from loadgen.metrics.client import CHANNELS, DURATION_PHASES

__all__ = [
    "RSS_MAX",
    "SUMMARY_KEYS",
    "SampleKey",
    "Samples",
    "build_summary",
    "generator_from_samples",
    "histogram_quantile",
    "merge",
    "parse_exposition",
    "samples_from_registry",
]

#: (sample name, labels sorted by name)
SampleKey = tuple[str, tuple[tuple[str, str], ...]]

#: the largest per-process resident memory, kept by ``merge`` next to the sum
#: (a recording-rule style name: it is never exported by a process)
RSS_MAX = "process_resident_memory_bytes:max"

_STATS = ("p50", "p95", "p99", "max")
_QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _key(name: str, labels: Mapping[str, str]) -> SampleKey:
    return (name, tuple(sorted(labels.items())))


@dataclass(eq=True)
class Samples:
    """Flat sample values: ``{(name, sorted labels): value}``.

    ``_created`` samples (timestamps, not measurements) are left out.
    """

    values: dict[SampleKey, float] = field(default_factory=dict)

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self.values[_key(name, labels)] = value

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        return self.values.get(_key(name, labels))

    def select(self, name: str, **match: str) -> Iterator[tuple[dict[str, str], float]]:
        """Every sample called ``name`` whose labels include ``match``."""
        for (n, labels), v in self.values.items():
            if n == name:
                d = dict(labels)
                if all(d.get(k) == want for k, want in match.items()):
                    yield d, v

    def total(self, name: str, **match: str) -> float:
        """The sum over ``select(name, **match)`` (0 when nothing matches)."""
        return math.fsum(v for _, v in self.select(name, **match))

    def buckets(self, family: str, **match: str) -> list[tuple[float, float]]:
        """Cumulative ``(upper_bound, count)`` of a histogram, summed over the
        series matching ``match`` (PromQL: ``sum by (le)``)."""
        by_le: dict[float, float] = {}
        for labels, v in self.select(family + "_bucket", **match):
            le = float(labels["le"])
            by_le[le] = by_le.get(le, 0.0) + v
        return sorted(by_le.items())


def _add_families(out: Samples, families: Iterable[Metric]) -> Samples:
    for family in families:
        for s in family.samples:
            if s.name.endswith("_created") or getattr(s, "native_histogram", None) is not None:
                continue
            out.add(s.name, s.labels, float(s.value))
    return out


def samples_from_registry(registry: CollectorRegistry) -> Samples:
    """The values ``generate_latest(registry)`` would serve right now."""
    return _add_families(Samples(), registry.collect())


def parse_exposition(text: str) -> Samples:
    """Samples from a Prometheus text exposition (one process's /metrics)."""
    return _add_families(Samples(), text_string_to_metric_families(text))


# How to combine one sample across processes; everything else is summed
# (counters, histogram buckets/sum/count, *_active gauges, CPU seconds, fds).
_MERGE_MAX = frozenset(
    {"loadgen_generator_saturated", "loadgen_phase_duration_max_seconds", RSS_MAX}
)
_MERGE_MIN = frozenset({"process_start_time_seconds", "process_max_fds"})


def merge(samples_list: Iterable[Samples]) -> Samples:
    """Combine several processes' samples into one (see the rules above).

    Histograms merge by summing buckets, so every process must use the same
    bucket layout (they all run ``ClientMetrics``).  Resident memory is summed
    and its per-process maximum kept as ``RSS_MAX``.
    """
    out: dict[SampleKey, float] = {}
    for samples in samples_list:
        values = samples.values
        rss = values.get((RSS_MAX, ()), values.get(("process_resident_memory_bytes", ())))
        if rss is not None:
            values = {**values, (RSS_MAX, ()): rss}
        for key, v in values.items():
            name = key[0]
            old = out.get(key)
            if old is None:
                out[key] = v
            elif name in _MERGE_MAX or name.endswith("_info"):
                out[key] = max(old, v)
            elif name in _MERGE_MIN:
                out[key] = min(old, v)
            else:
                out[key] = old + v
    return Samples(out)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile (0..1) from cumulative ``(upper_bound, count)`` buckets.

    PromQL's ``histogram_quantile``: linear interpolation inside the bucket
    that holds rank ``q * total``, the first bucket starting at 0.  None when
    there are no observations or no ``+Inf`` bucket; when the rank falls in
    the ``+Inf`` bucket the highest finite bound is returned (a lower bound
    of the truth), and None if there is no finite bound at all.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, not {q}")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    # Counts are cumulative; repair non-monotonic input as PromQL does.
    counts: list[float] = []
    for _, c in ordered:
        counts.append(max(c, counts[-1]) if counts else c)
    total = counts[-1]
    if total <= 0 or len(ordered) < 2:
        return None
    rank = q * total
    # rank 0 lies at the start of the first non-empty bucket (avoids 0/0).
    i = next(j for j, c in enumerate(counts) if (c >= rank and c > 0))
    if i == len(ordered) - 1:
        return ordered[-2][0]
    upper = ordered[i][0]
    if i == 0 and upper <= 0:
        return upper
    lower, below = (ordered[i - 1][0], counts[i - 1]) if i > 0 else (0.0, 0.0)
    return lower + (upper - lower) * (rank - below) / (counts[i] - below)


def _count(v: float) -> int | float:
    """Counters are integral in practice; show them without ``.0`` in JSON."""
    return int(v) if v.is_integer() else v


def _highest_bound(buckets: list[tuple[float, float]]) -> float | None:
    """Upper bound of the highest non-empty bucket: the max when no gauge has it.

    Observations above every finite bound give the highest finite bound.
    """
    best: float | None = None
    prev = 0.0
    for le, c in buckets:
        if c > prev:
            best = le
        prev = max(prev, c)
    if best is not None and math.isinf(best):
        return max((le for le, _ in buckets if not math.isinf(le)), default=None)
    return best


def _phase_stats(samples: Samples, phase: str) -> dict[str, float | None]:
    buckets = samples.buckets("loadgen_phase_duration_seconds", phase=phase)
    if not buckets or buckets[-1][1] <= 0:
        return dict.fromkeys(_STATS)
    exact = samples.value("loadgen_phase_duration_max_seconds", phase=phase)
    if exact is not None and exact <= 0:
        exact = None  # an old or zero gauge: fall back to the buckets
    stats: dict[str, float | None] = {}
    for name, q in _QUANTILES:
        v = histogram_quantile(buckets, q)
        # Interpolation may overshoot the exact maximum; the truth never does.
        stats[name] = min(v, exact) if v is not None and exact is not None else v
    stats["max"] = exact if exact is not None else _highest_bound(buckets)
    return stats


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def build_summary(samples: Samples, *, generator: Mapping[str, Any]) -> dict[str, Any]:
    """The run summary (shape in the module docstring) from ``samples``."""
    started = samples.total("loadgen_sessions_started_total")
    failed = samples.total("loadgen_sessions_total", outcome="failed")
    failures: dict[str, int | float] = {}
    for labels, v in sorted(
        samples.select("loadgen_phase_failures_total"), key=lambda lv: sorted(lv[0].items())
    ):
        if v > 0:
            key = f"{labels['phase']}/{labels['reason']}"
            failures[key] = _count(failures.get(key, 0) + v)
    sent = samples.total("loadgen_echo_requests_total")
    rtt = samples.buckets("loadgen_echo_rtt_seconds")
    return {
        "sessions": {
            "started": _count(started),
            "established": _count(samples.total("loadgen_sessions_total", outcome="established")),
            "failed": _count(failed),
        },
        "channels": {
            ch: _count(samples.total("loadgen_sessions_final_channel_total", channel=ch))
            for ch in ("dtls", "cstp")
        },
        "phases": {p: _phase_stats(samples, p) for p in DURATION_PHASES},
        "failures": failures,
        "failure_ratio": _ratio(failed, started),
        "dtls_fallback_ratio": _ratio(
            samples.total("loadgen_dtls_fallbacks_total"),
            samples.total("loadgen_dtls_attempts_total"),
        ),
        "echo": {
            "sent": _count(sent),
            "received": _count(sent - samples.total("loadgen_echo_lost_total")),
            "rtt_p50": histogram_quantile(rtt, 0.5),
            "rtt_p95": histogram_quantile(rtt, 0.95),
        },
        "throughput": {
            f"{d}_bytes": _count(samples.total("loadgen_tunnel_bytes_total", direction=d))
            for d in ("tx", "rx")
        },
        "generator": {
            "cpu_seconds": generator.get("cpu_seconds"),
            "peak_rss_bytes": generator.get("peak_rss_bytes"),
            "saturated": generator.get("saturated"),
        },
    }


def generator_from_samples(samples: Samples, *, saturated: bool) -> dict[str, Any]:
    """``generator`` for merged processes: summed CPU, the largest RSS seen.

    The RSS is the largest *current* resident size at scrape time (Prometheus
    has no peak); a single process should use ``lag.generator_stats``.
    """
    cpu = samples.value("process_cpu_seconds_total")
    rss = samples.value(RSS_MAX)
    if rss is None:
        rss = samples.value("process_resident_memory_bytes")
    return {
        "cpu_seconds": cpu,
        "peak_rss_bytes": None if rss is None else int(rss),
        "saturated": saturated,
    }


def _summary_keys() -> frozenset[str]:
    keys = {
        "sessions.started",
        "sessions.established",
        "sessions.failed",
        "failure_ratio",
        "dtls_fallback_ratio",
        "echo.sent",
        "echo.received",
        "echo.rtt_p50",
        "echo.rtt_p95",
        "throughput.tx_bytes",
        "throughput.rx_bytes",
        "generator.cpu_seconds",
        "generator.peak_rss_bytes",
        "generator.saturated",
    }
    keys.update(f"channels.{ch}" for ch in CHANNELS)
    keys.update(f"phases.{p}.{s}" for p in DURATION_PHASES for s in _STATS)
    keys.update(f"failures.{p}/{r}" for p in Phase for r in Reason)
    return frozenset(keys)


#: every numeric leaf a threshold may name (``failures.*`` absent in a summary = 0)
SUMMARY_KEYS = _summary_keys()
