"""The real Prometheus finds Locust's engine sidecars through the ``--prometheus-sd`` file.

Prometheus 2.x from Debian runs the shipped prometheus.yml (only intervals and paths
changed: the ``loadgen`` job's file_sd still reads ``sd/*.json`` next to the config, the
static jobs are dropped, there is no gateway or fault proxy to scrape here).  Plain
``locust -f scenarios/connect.py --processes 2`` with no ``--host`` (the embedded
gateway) writes ``sd/locust.json``; each worker's sidecar serves ``loadgen_*`` on the
base port plus its worker index.  While the run holds its six tunnels, Prometheus must
scrape both sidecars (``up == 1``), see all six sessions established, and keep the
workers apart by the SD file's ``worker`` label (three sessions each).  Every wait is
bounded; after the run no process of it is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dashboards.dashboards import (
    child_process,
    http_json,
    instant_query,
    prometheus,
    prometheus_config,
    tail,
)
from tests.helpers.locust_run import (
    ROOT,
    free_port_block,
    kill_tagged,
    locust_argv,
    locust_env,
    new_tag,
    stats_rows,
    wait_none_left,
)

pytestmark = [
    pytest.mark.interop,
]

USERS = 6
RUN = "25s"
#: bounds for waits only (generous for a loaded shared 2-core machine)
SEEN_S = 45.0
EXIT_S = 60.0


def _values(base: str, expr: str) -> dict[str, float]:
    """An instant query's result as ``{worker label or "": value}``."""
    return {s["metric"].get("worker", ""): float(s["value"][1]) for s in instant_query(base, expr)}


def _wait_for(
    what: str, check: Callable[[], bool], deadline: float, alive: Callable[[], str | None]
) -> None:
    while time.monotonic() < deadline:
        if (dead := alive()) is not None:
            pytest.fail(f"waiting for {what}: {dead}")
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"not within {SEEN_S} s: {what}")


def test_prometheus_scrapes_both_locust_sidecars_via_sd_file(tmp_path: Path) -> None:
    tag = new_tag("lgpromsd")
    metrics_base = free_port_block(2)
    config_path, config = prometheus_config(tmp_path, {})
    assert [job["job_name"] for job in config["scrape_configs"]] == ["loadgen"]
    sd_file = tmp_path / "sd" / "locust.json"
    prefix = tmp_path / "out"
    env = {**locust_env(tag), "NO_PROXY": "*"}
    argv = [
        *locust_argv(),
        *["-f", "scenarios/connect.py", "--processes", "2", "--headless"],
        *["-u", str(USERS), "-r", str(USERS), "-t", RUN],
        *["--vpn-metrics-port", str(metrics_base), "--prometheus-sd", str(sd_file)],
        *["--csv", str(prefix), "--only-summary"],
    ]
    locust_log = tmp_path / "locust.log"
    try:
        with (
            prometheus(tmp_path, config_path, env={**os.environ, "NO_PROXY": "*"}) as (base, prom),
            child_process(argv, locust_log, cwd=ROOT, env=env) as run,
        ):

            def alive() -> str | None:
                if prom.poll() is not None:
                    return (
                        f"prometheus exited {prom.returncode}: {tail(tmp_path / 'prometheus.log')}"
                    )
                if run.poll() is not None:
                    return f"locust exited {run.returncode}: {tail(locust_log)}"
                return None

            def both_up() -> bool:
                return _values(base, 'count(up{job="loadgen"} == 1)') == {"": 2.0}

            def all_established() -> bool:
                expr = 'sum(loadgen_sessions_total{outcome="established"})'
                return _values(base, expr) == {"": float(USERS)}

            def split_by_worker() -> bool:
                expr = "sum by (worker) (loadgen_sessions_started_total)"
                return _values(base, expr) == {"0": USERS / 2, "1": USERS / 2}

            deadline = time.monotonic() + SEEN_S
            _wait_for("both sidecars up", both_up, deadline, alive)
            _wait_for(f"{USERS} sessions established", all_established, deadline, alive)
            _wait_for("3 sessions started on each worker", split_by_worker, deadline, alive)

            # one series per worker, labelled from the SD file; scraped where it says
            per_worker = _values(base, "count by (worker) (loadgen_sessions_started_total)")
            assert per_worker == {"0": 1.0, "1": 1.0}, per_worker
            groups = json.loads(sd_file.read_text())
            assert sorted((g["labels"]["worker"], g["targets"]) for g in groups) == [
                ("0", [f"127.0.0.1:{metrics_base}"]),
                ("1", [f"127.0.0.1:{metrics_base + 1}"]),
            ], groups
            targets = http_json("GET", f"{base}/api/v1/targets")["data"]["activeTargets"]
            scraped = sorted(
                (t["labels"]["worker"], t["labels"]["runner"], t["scrapeUrl"], t["health"])
                for t in targets
            )
            assert scraped == [
                (str(i), "locust", f"http://127.0.0.1:{metrics_base + i}/metrics", "up")
                for i in range(2)
            ], targets

            # the run ends by itself, cleanly
            try:
                code = run.wait(timeout=EXIT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"locust still running {EXIT_S} s later: {tail(locust_log)}")
            assert code == 0, tail(locust_log)
        rows = stats_rows(prefix)
        assert rows and all(r["Failure Count"] == "0" for r in rows), rows
        assert wait_none_left(tag, 15.0) == []
    finally:
        kill_tagged(tag)
