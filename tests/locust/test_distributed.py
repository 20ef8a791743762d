"""Locust's distributed mode: one master and two workers on loopback, plain ``locust``.

The master starts the embedded gateway (no ``--host``); its URL and CA
reach the workers with the spawn message.  Each worker's sidecar serves its
metrics on the base port plus the worker index, the master lists them in
the ``--prometheus-sd`` file, and the users split evenly: each sidecar's own
counters show its half, and the master's stats show the sum.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from loadgen.metrics.summary import parse_exposition
from tests.helpers.locust_run import (
    PHASES,
    ROOT,
    free_port_block,
    free_ports,
    kill_tagged,
    locust_argv,
    locust_env,
    new_tag,
    run_locust,
    scrape,
    stats_rows,
    wait_none_left,
)

USERS = 10


def _established(text: str) -> float:
    return parse_exposition(text).total("loadgen_sessions_total", outcome="established")


def test_master_and_two_workers_split_users_and_aggregate(tmp_path: Path) -> None:
    tag = new_tag("lgdist")
    (master_port,) = free_ports(1)
    metrics_base = free_port_block(2)
    sd = tmp_path / "sd.json"
    prefix = tmp_path / "out"
    master_argv = [
        *locust_argv(),
        "-f",
        "scenarios/connect.py",
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        str(master_port),
        "--expect-workers",
        "2",
        "--headless",
        "-u",
        str(USERS),
        "-r",
        "10",
        "-t",
        "20s",
        "--csv",
        str(prefix),
        "--only-summary",
        "--vpn-metrics-port",
        str(metrics_base),
        "--prometheus-sd",
        str(sd),
    ]
    worker_argv = [
        *locust_argv(),
        "-f",
        "scenarios/connect.py",
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(master_port),
    ]
    env = locust_env(tag)
    logs = [tmp_path / f"{name}.log" for name in ("master", "worker0", "worker1")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                master_argv, cwd=ROOT, env=env, stdout=logs[0].open("wb"), stderr=subprocess.STDOUT
            )
        )
        time.sleep(1.0)  # the master binds before the workers knock
        for log in logs[1:]:
            procs.append(
                subprocess.Popen(
                    worker_argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
                )
            )

        def tails() -> str:
            return "\n".join(f"== {p.name}\n{p.read_text()[-2500:]}" for p in logs if p.exists())

        # both sidecars appear in the service discovery file, on base + index
        deadline = time.monotonic() + 60
        targets: list[str] = []
        while time.monotonic() < deadline:
            if sd.exists():
                groups = json.loads(sd.read_text())
                targets = sorted(t for g in groups for t in g["targets"])
                if len(targets) == 2:
                    break
            assert procs[0].poll() is None, tails()
            time.sleep(0.2)
        assert targets == [f"127.0.0.1:{metrics_base}", f"127.0.0.1:{metrics_base + 1}"], tails()
        workers = sorted(g["labels"]["worker"] for g in json.loads(sd.read_text()))
        assert workers == ["0", "1"]

        # each sidecar holds its own half of the users
        per_worker = [0.0, 0.0]
        while time.monotonic() < deadline:
            per_worker = [_established(scrape(f"http://{t}/metrics")) for t in targets]
            if sum(per_worker) >= USERS:
                break
            time.sleep(0.5)
        assert per_worker == [USERS / 2, USERS / 2], (per_worker, tails())

        assert procs[0].wait(timeout=90) == 0, tails()
        for p in procs[1:]:
            assert p.wait(timeout=30) == 0, tails()
        assert json.loads(sd.read_text()) == []  # emptied when the run ended
        rows = stats_rows(prefix)
        connect = {r["Name"]: r for r in rows if r["Type"] == "connect"}
        assert sorted(connect) == sorted(PHASES), tails()
        for name in PHASES:
            assert int(connect[name]["Request Count"]) == USERS, connect[name]
        assert any(r["Type"] == "echo" for r in rows)
        assert all(r["Failure Count"] == "0" for r in rows), rows
        assert wait_none_left(tag, 10.0) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        kill_tagged(tag)


def test_processes_two_split_users_and_list_both_sidecars(tmp_path: Path) -> None:
    """``--processes 2``: Locust forks two workers under a master in one command."""
    metrics_base = free_port_block(2)
    sd = tmp_path / "sd.json"
    prefix = tmp_path / "out"
    proc = run_locust(
        [
            *["-f", "scenarios/connect.py", "--processes", "2", "--headless", "-u", "6", "-r", "6"],
            *["-t", "12s", "--csv", str(prefix), "--only-summary"],
            *["--vpn-metrics-port", str(metrics_base), "--prometheus-sd", str(sd)],
        ],
        tag=new_tag("lgproc"),
        timeout_s=90,
    )
    # each sidecar said where it served (base + worker index) ...
    for worker in (0, 1):
        url = f"engine sidecar {worker} metrics: http://127.0.0.1:{metrics_base + worker}/metrics"
        assert url in proc.stderr, proc.stderr[-3000:]
    # ... and the SD file, which listed them during the run, is emptied at the end
    # (a stale list would read as targets down)
    assert json.loads(sd.read_text()) == []
    rows = stats_rows(prefix)
    connect = {r["Name"]: int(r["Request Count"]) for r in rows if r["Type"] == "connect"}
    assert connect == dict.fromkeys(PHASES, 6), connect
    assert all(r["Failure Count"] == "0" for r in rows), rows
