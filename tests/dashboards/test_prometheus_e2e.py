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
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.dashboards.dashboards import (
    DASHBOARD_FILES,
    DASHBOARDS,
    Query,
    dashboard_queries,
    fill,
    recording_rules,
)
from tests.helpers.gateway import gateway_process

pytestmark = pytest.mark.interop

#: the load: sessions churn (uniform lengths) so that starts, ends and fallbacks keep coming
RUN_S = 36
FAULT_AT_S, FAULT_END_S = 10.0, 21.0
SCRAPE = "1s"
#: Grafana's $__rate_interval is max($__interval + scrape, 4 x scrape): 4 s here
RATE_INTERVAL = "5s"
HTTP_TIMEOUT_S = 5.0
#: env proxies must never see loopback requests
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (scripts/install --test installs it)")
    return path


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with _HTTP.open(req, timeout=HTTP_TIMEOUT_S) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


def _wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: process exited {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError, urllib.error.URLError), _HTTP.open(url, timeout=1.0) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"{url} not ready after {timeout_s} s: {_tail(log)}")


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


@contextlib.contextmanager
def _process(argv: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process, stopped (SIGTERM, then SIGKILL) however the test ends."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            stdout=kw.pop("stdout", out),
            stderr=out,
            stdin=subprocess.DEVNULL,
            text=True,
            **kw,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _read_line(stream: IO[str], marker: str, proc: subprocess.Popen[str], log: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            pytest.fail(f"exited before printing {marker!r}: {_tail(log)}")
        if marker in line:
            return line.strip()
    pytest.fail(f"no {marker!r} within 20 s: {_tail(log)}")


def _prometheus_config(
    tmp: Path, *, engine: str, gateway: str, faultproxy: str
) -> tuple[Path, dict[str, Any]]:
    """The shipped prometheus.yml with only targets, paths and intervals changed."""
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=SCRAPE, scrape_timeout=SCRAPE, evaluation_interval=SCRAPE
    )
    config["rule_files"] = [str(DASHBOARDS / f) for f in config["rule_files"]]
    sd = tmp / "sd"
    sd.mkdir()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (fsd,) = jobs["loadgen"]["file_sd_configs"]
    (pattern,) = fsd["files"]
    fsd["files"] = [str(tmp / pattern)]
    fsd["refresh_interval"] = SCRAPE
    # what `locust --prometheus-sd` or an operator writes for `loadgen run --metrics-port`
    (sd / "engines.json").write_text(
        json.dumps([{"targets": [engine], "labels": {"runner": "loadgen-run"}}])
    )
    jobs["loadgen-gateway"]["static_configs"][0]["targets"] = [gateway]
    jobs["loadgen-faultproxy"]["static_configs"][0]["targets"] = [faultproxy]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def _query_range(base: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    answer = _http("GET", f"{base}/api/v1/query_range?{params}")
    assert answer["status"] == "success", (expr, answer)
    result = answer["data"]["result"]
    assert isinstance(result, list)
    return result


def _query(base: str, expr: str, at: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "time": at})
    answer = _http("GET", f"{base}/api/v1/query?{params}")
    assert answer["status"] == "success", (expr, answer)
    assert answer["data"]["resultType"] == "vector", (expr, answer)
    # an instant vector as a range result with one point per series
    return [{"metric": s["metric"], "values": [s["value"]]} for s in answer["data"]["result"]]


def _total(base: str, expr: str, at: float) -> float:
    result = _query(base, expr, at)
    assert len(result) == 1, (expr, result)
    return float(result[0]["values"][0][1])


def _finite(result: list[dict[str, Any]]) -> int:
    return sum(
        1 for series in result for _, value in series["values"] if math.isfinite(float(value))
    )


def test_every_dashboard_query_and_rule_returns_data(tmp_path: Path) -> None:
    prometheus_bin = _need("prometheus")
    t_begin = time.monotonic()
    prom_port, gw_metrics, engine_metrics, api_port = (_free_port() for _ in range(4))
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
            )
        )
        fp_log = tmp_path / "faultproxy.log"
        fp = stack.enter_context(
            _process(
                [*loadgen, "faultproxy", "--host", "127.0.0.1", "--port", str(api_port)],
                fp_log,
                stdout=subprocess.PIPE,
                env=env,
            )
        )
        assert fp.stdout is not None
        banner = _read_line(fp.stdout, "faultproxy API:", fp, fp_log)
        api = banner.split("faultproxy API:", 1)[1].strip().rstrip("/")
        tls = _http(
            "POST",
            f"{api}/proxies",
            {"name": "vpn_tls", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{gw.port}"},
        )
        dtls = _http(
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
        prom_log = tmp_path / "prometheus.log"
        prom = stack.enter_context(
            _process(
                [
                    prometheus_bin,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                prom_log,
                env=env,
            )
        )
        base = f"http://127.0.0.1:{prom_port}"
        _wait_http(f"{base}/-/ready", prom, prom_log, 30)

        run_log = tmp_path / "run.log"
        t_start = time.time()
        run = stack.enter_context(
            _process(
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
                    "--echo-interval",
                    "1",
                    "--echo-timeout",
                    "1",
                    "--metrics-port",
                    str(engine_metrics),
                    "--linger",
                    "60",
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
        _http(
            "POST",
            f"{api}/proxies/vpn_dtls/toxics",
            {"name": "udp_block", "type": "blackhole", "stream": "upstream"},
        )
        _http(
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
        _http("DELETE", f"{api}/proxies/vpn_dtls/toxics/udp_block")
        _http("DELETE", f"{api}/proxies/vpn_tls/toxics/slow")

        # the run ends by itself; its metrics linger for the last scrapes
        deadline = time.monotonic() + RUN_S + 30
        while "keeping /metrics up" not in _tail(run_log) and time.monotonic() < deadline:
            assert run.poll() is None, _tail(run_log)
            time.sleep(0.5)
        assert "keeping /metrics up" in _tail(run_log), _tail(run_log)
        time.sleep(3)  # two more scrapes and rule evaluations
        t_end = time.time()

        summary_path = tmp_path / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

        targets = _http("GET", f"{base}/api/v1/targets")["data"]["activeTargets"]
        by_job = {t["labels"]["job"]: t for t in targets}
        assert set(by_job) == {"loadgen", "loadgen-gateway", "loadgen-faultproxy"}, targets
        for target in targets:
            assert target["health"] == "up", target

        rules = _http("GET", f"{base}/api/v1/rules")["data"]["groups"]
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
        assert run.poll() is None, _tail(run_log)  # still lingering: no crash
        assert fp.poll() is None and prom.poll() is None
    assert time.monotonic() - t_begin < 150


def _sleep_until(t: float, proc: subprocess.Popen[str], log: Path) -> None:
    while (left := t - time.time()) > 0:
        if proc.poll() is not None:
            pytest.fail(f"loadgen run exited {proc.returncode} early: {_tail(log)}")
        time.sleep(min(left, 0.5))
