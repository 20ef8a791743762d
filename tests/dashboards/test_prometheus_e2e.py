"""Every dashboard query and every recording rule returns data from a real Prometheus.

A short load with a fault window, all on loopback (the test process lives in a private
network namespace, tests/conftest.py): the reference gateway, the fault proxy in front of
it (a TCP proxy for TLS/CSTP, a udp:// proxy for DTLS), ``loadgen run`` through the fault
proxy, and Prometheus 2.42 from Debian with the shipped prometheus.yml (only targets,
paths and intervals changed) and the shipped rules.  During the run a UDP blackhole and a
TCP latency toxic are added, then removed (the fault window): sessions that start inside
it fall back to CSTP, DTLS echoes are lost, the gateway refuses some logins
(``--reject-ratio``), so that every panel has something to show.  Then each PromQL
expression of each dashboard, with the dashboard variables filled in, goes to
``/api/v1/query_range`` and must return at least one finite value.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any

import pytest

from tests.dashboards.dashboards import (
    DASHBOARD_FILES,
    SCRAPE,
    Query,
    child_process,
    dashboard_queries,
    fill,
    free_port,
    http_json,
    instant_query,
    prometheus,
    prometheus_config,
    recording_rules,
    tail,
)
from tests.helpers.gateway import gateway_process

pytestmark = pytest.mark.interop

#: the load: sessions churn (uniform lengths) so that starts, ends and fallbacks keep coming
RUN_S = 36
FAULT_AT_S, FAULT_END_S = 10.0, 21.0
#: Grafana's $__rate_interval is max($__interval + scrape, 4 x scrape): 4 s here
RATE_INTERVAL = "5s"
#: bounds for waits only, generous for a loaded shared 2-core machine: reaching one
#: fails the test, but nothing is asserted about how fast the machine was
START_S = 60.0


def _read_line(stream: IO[str], marker: str, proc: subprocess.Popen[str], log: Path) -> str:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            pytest.fail(f"exited before printing {marker!r}: {tail(log)}")
        if marker in line:
            return line.strip()
    pytest.fail(f"no {marker!r} within {START_S} s: {tail(log)}")


def _prometheus_config(
    tmp: Path, *, engine: str, gateway: str, faultproxy: str
) -> tuple[Path, dict[str, Any]]:
    """The shipped prometheus.yml with only targets, paths and intervals changed."""
    path, config = prometheus_config(
        tmp, {"loadgen-gateway": [gateway], "loadgen-faultproxy": [faultproxy]}
    )
    # what `locust --prometheus-sd` or an operator writes for `loadgen run --metrics-port`
    (tmp / "sd" / "engines.json").write_text(
        json.dumps([{"targets": [engine], "labels": {"runner": "loadgen-run"}}])
    )
    return path, config


def _query_range(base: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    answer = http_json("GET", f"{base}/api/v1/query_range?{params}")
    assert answer["status"] == "success", (expr, answer)
    result = answer["data"]["result"]
    assert isinstance(result, list)
    return result


def _query(base: str, expr: str, at: float) -> list[dict[str, Any]]:
    # an instant vector as a range result with one point per series
    return [{"metric": s["metric"], "values": [s["value"]]} for s in instant_query(base, expr, at)]


def _total(base: str, expr: str, at: float) -> float:
    result = _query(base, expr, at)
    assert len(result) == 1, (expr, result)
    return float(result[0]["values"][0][1])


def _finite(result: list[dict[str, Any]]) -> int:
    return sum(
        1 for series in result for _, value in series["values"] if math.isfinite(float(value))
    )


def test_every_dashboard_query_and_rule_returns_data(tmp_path: Path) -> None:
    gw_metrics, engine_metrics, api_port = (free_port() for _ in range(3))
    loadgen = [sys.executable, "-m", "loadgen"]
    env = {**os.environ, "NO_PROXY": "*"}
    with contextlib.ExitStack() as stack:
        gw = stack.enter_context(
            gateway_process(
                tmp_path / "gateway",
                "--metrics-port",
                str(gw_metrics),
                "--dpd",
                "5",
                "--reject-ratio",
                "0.1",
                start_timeout_s=START_S,
            )
        )
        fp_log = tmp_path / "faultproxy.log"
        fp = stack.enter_context(
            child_process(
                [*loadgen, "faultproxy", "--host", "127.0.0.1", "--port", str(api_port)],
                fp_log,
                stdout=subprocess.PIPE,
                env=env,
            )
        )
        assert fp.stdout is not None
        banner = _read_line(fp.stdout, "faultproxy API:", fp, fp_log)
        api = banner.split("faultproxy API:", 1)[1].strip().rstrip("/")
        tls = http_json(
            "POST",
            f"{api}/proxies",
            {"name": "vpn_tls", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{gw.port}"},
        )
        dtls = http_json(
            "POST",
            f"{api}/proxies",
            {
                "name": "vpn_dtls",
                "listen": "udp://127.0.0.1:0",
                "upstream": f"udp://127.0.0.1:{gw.port}",
            },
        )
        tls_port = int(tls["listen"].rsplit(":", 1)[1])
        dtls_port = int(dtls["listen"].rsplit(":", 1)[1])
        assert tls_port and dtls_port

        config_path, _ = _prometheus_config(
            tmp_path,
            engine=f"127.0.0.1:{engine_metrics}",
            gateway=f"127.0.0.1:{gw_metrics}",
            faultproxy=api.removeprefix("http://"),
        )
        base, prom = stack.enter_context(prometheus(tmp_path, config_path, env=env))

        run_log = tmp_path / "run.log"
        t_start = time.time()
        run = stack.enter_context(
            child_process(
                [
                    *loadgen,
                    "run",
                    f"https://127.0.0.1:{tls_port}/",
                    "--cafile",
                    str(gw.ca_path),
                    "--dtls-host",
                    "127.0.0.1",
                    "--dtls-port",
                    str(dtls_port),
                    "--dtls-schedule",
                    "0,1,2,3",
                    "--sessions",
                    "16",
                    "--rate",
                    "8",
                    "--session-length",
                    "uniform:6-12",
                    "--duration",
                    str(RUN_S),
                    "--password",
                    "any",  # the reference gateway accepts any
                    "--echo-every",
                    "1",
                    "--echo-timeout",
                    "1",
                    "--metrics-port",
                    str(engine_metrics),
                    "--linger",
                    # outlives the queries below even on a slow machine; the end of the
                    # test stops it (SIGTERM)
                    "600",
                    "--no-progress",
                    "--summary",
                    str(tmp_path / "summary.json"),
                ],
                run_log,
                env=env,
            )
        )
        # the fault window: DTLS blackholed client to gateway, TLS/CSTP delayed
        _sleep_until(t_start + FAULT_AT_S, run, run_log)
        http_json(
            "POST",
            f"{api}/proxies/vpn_dtls/toxics",
            {"name": "udp_block", "type": "blackhole", "stream": "upstream"},
        )
        http_json(
            "POST",
            f"{api}/proxies/vpn_tls/toxics",
            {
                "name": "slow",
                "type": "latency",
                "stream": "downstream",
                "attributes": {"latency": 30},
            },
        )
        _sleep_until(t_start + FAULT_END_S, run, run_log)
        http_json("DELETE", f"{api}/proxies/vpn_dtls/toxics/udp_block")
        http_json("DELETE", f"{api}/proxies/vpn_tls/toxics/slow")

        # the run ends by itself; its metrics linger for the last scrapes
        deadline = time.monotonic() + RUN_S + 120
        while "keeping /metrics up" not in tail(run_log) and time.monotonic() < deadline:
            assert run.poll() is None, tail(run_log)
            time.sleep(0.5)
        assert "keeping /metrics up" in tail(run_log), tail(run_log)
        time.sleep(3)  # two more scrapes and rule evaluations
        t_end = time.time()

        summary_path = tmp_path / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

        targets = http_json("GET", f"{base}/api/v1/targets")["data"]["activeTargets"]
        by_job = {t["labels"]["job"]: t for t in targets}
        assert set(by_job) == {"loadgen", "loadgen-gateway", "loadgen-faultproxy"}, targets
        for target in targets:
            assert target["health"] == "up", target

        rules = http_json("GET", f"{base}/api/v1/rules")["data"]["groups"]
        for group in rules:
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule

        # every dashboard query, variables filled as Grafana does with "All" selected
        values = {
            "datasource": "unused",
            "job": ".*",
            "instance": ".*",
            "fault_job": ".*",
            "fault_instance": ".*",
            "proxy": ".*",
            "__rate_interval": RATE_INTERVAL,
            "__interval": SCRAPE,
            "__range": f"{math.ceil(t_end - t_start)}s",
        }
        queries: list[Query] = [q for n in DASHBOARD_FILES for q in dashboard_queries(n)]
        queries += [
            Query(dashboard="rules/recording.yml", where=f"record {record}", expr=record)
            for record, _ in recording_rules()
        ]
        empty = []
        for q in queries:
            expr = fill(q.expr, values)
            if q.instant:
                result = _query(base, expr, t_end)
            else:
                result = _query_range(base, expr, t_start, t_end)
            if _finite(result) == 0:
                empty.append(f"{q.dashboard} {q.where}: {expr} -> {result!r:.200}")
        assert not empty, (
            f"{len(empty)} of {len(queries)} queries returned no data:\n"
            + "\n".join(empty)
            + f"\nsummary: {json.dumps(summary)[:1500]}"
        )

        # the fault window is visible where the dashboards look for it
        window = _query_range(
            base, "sum by (proxy, toxic) (loadgen_faultproxy_toxics_active) > 0", t_start, t_end
        )
        assert {s["metric"]["toxic"] for s in window} == {"blackhole", "latency"}
        # ... and the fault had the effects the panels are there to show
        assert _total(base, "sum(loadgen_dtls_fallbacks_total)", t_end) >= 1, summary
        assert _total(base, 'sum(loadgen_echo_lost_total{channel="dtls"})', t_end) >= 1, summary
        assert _total(base, "sum(loadgen_faultproxy_dropped_datagrams_total)", t_end) >= 1
        assert _total(base, "sum(loadgen_faultproxy_delayed_total)", t_end) >= 1
        assert _total(base, 'sum(loadgen_phase_failures_total{reason="auth_rejected"})', t_end) >= 1
        assert _total(base, "sum(loadgen_gateway_auth_failures_total)", t_end) >= 1
        assert run.poll() is None, tail(run_log)  # still lingering: no crash
        assert fp.poll() is None and prom.poll() is None


def _sleep_until(t: float, proc: subprocess.Popen[str], log: Path) -> None:
    while (left := t - time.time()) > 0:
        if proc.poll() is not None:
            pytest.fail(f"loadgen run exited {proc.returncode} early: {tail(log)}")
        time.sleep(min(left, 0.5))
