"""``loadgen run`` with 200 sessions against the real ocserv 1.1.6, in the test's private netns.

The command is run as a user would run it (a subprocess, password on stdin).  While it
holds its sessions, ocserv itself must list every one of them (``occtl show users``);
after the run, the summary must show every session established on DTLS with no failure
and every echo answered, and the ``/metrics`` exposition scraped during ``--linger``
must hold exactly the summary's counters (both are the same registry, architecture.md,
Metrics: the summary is computed from Prometheus samples only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.lab.ocserv import OcservConfig, OcservServer
from loadgen.metrics.summary import Samples, parse_exposition
from tests.interop.test_ocserv_connect import _require_ocserv

pytestmark = pytest.mark.interop

SESSIONS = 200
RATE = 50
DURATION_S = 20
ECHO_INTERVAL_S = 2
LINGER_S = 5
PASSWORD = "load-test-pw"
#: ``loadgen run`` numbers pattern users from 1 (PatternFeeder's default ``first``)
USERS = [f"user{n}" for n in range(1, SESSIONS + 1)]
#: the run itself takes DURATION_S + LINGER_S plus start-up and logouts
RUN_TIMEOUT_S = DURATION_S + LINGER_S + 30


@pytest.fixture(scope="module")
def ocserv() -> Iterator[OcservServer]:
    _require_ocserv()
    config = OcservConfig(
        users=dict.fromkeys(USERS, PASSWORD),
        # a distinct address per session (see OcservConfig.predictable_ips)
        predictable_ips=False,
    )
    with OcservServer(config) as server:
        yield server


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return parse_exposition(resp.read().decode())
    except OSError:
        return None


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or half written
    return summary


def _counters(samples: Samples) -> dict[str, float]:
    """The summary's counters, read straight from the exposition's samples."""
    sent = samples.total("loadgen_echo_requests_total")
    return {
        "started": samples.total("loadgen_sessions_started_total"),
        "established": samples.total("loadgen_sessions_total", outcome="established"),
        "failed": samples.total("loadgen_sessions_total", outcome="failed"),
        "echo_sent": sent,
        "echo_received": sent - samples.total("loadgen_echo_lost_total"),
    }


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_run_200_sessions(ocserv: OcservServer, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    port = _free_tcp_port()
    argv = [
        *[sys.executable, "-m", "loadgen", "run", ocserv.url],
        *["--cafile", str(ocserv.ca_path), "--user", "user{n}", "--password-stdin"],
        *["--sessions", str(SESSIONS), "--rate", str(RATE), "--duration", str(DURATION_S)],
        *["--echo-every", str(ECHO_INTERVAL_S), "--summary", str(summary_path)],
        *["--metrics-port", str(port), "--linger", str(LINGER_S), "--no-progress"],
    ]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as fout, err.open("w") as ferr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=fout,
            stderr=ferr,
            text=True,
            env=dict(os.environ, COLUMNS="200"),
        )
    try:
        assert proc.stdin is not None
        proc.stdin.write(PASSWORD + "\n")
        proc.stdin.close()
        start = time.monotonic()
        deadline = start + RUN_TIMEOUT_S

        # 1. every session up: the client's gauge, then ocserv's own list
        held = False
        while not held and time.monotonic() < deadline and proc.poll() is None:
            live = _scrape(port)
            if live is not None:
                up = live.total("loadgen_sessions_active", channel="dtls") + live.total(
                    "loadgen_sessions_active", channel="cstp"
                )
                held = up == SESSIONS
            if not held:
                time.sleep(0.25)
        assert held, f"never {SESSIONS} sessions up at once; stderr:\n{err.read_text()[-3000:]}"
        users = ocserv.occtl("show", "users")
        assert isinstance(users, list)
        names = {u["Username"] for u in users}
        assert names == set(USERS), sorted(set(USERS) ^ names)[:10]
        # distinct tunnel addresses, one per session
        assert len({u["IPv4"] for u in users}) == SESSIONS

        # 2. the summary is written before the linger: scrape /metrics during the linger
        summary = None
        while summary is None and time.monotonic() < deadline and proc.poll() is None:
            summary = _read_summary(summary_path)
            if summary is None:
                time.sleep(0.1)
        assert summary is not None, f"no summary; stderr:\n{err.read_text()[-3000:]}"
        scraped = _scrape(port)
        assert scraped is not None, "/metrics not served during --linger"

        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _stop(proc)
    assert code == 0, err.read_text()[-3000:]
    elapsed = time.monotonic() - start
    assert elapsed < DURATION_S + LINGER_S + 20, elapsed

    sessions, echo = summary["sessions"], summary["echo"]
    assert sessions == {"started": SESSIONS, "established": SESSIONS, "failed": 0}
    assert summary["failures"] == {}
    assert summary["failure_ratio"] == 0
    assert summary["channels"] == {"dtls": SESSIONS, "cstp": 0}
    assert summary["dtls_fallback_ratio"] == 0
    # about one echo per session every ECHO_INTERVAL_S over the hold, every one answered
    assert echo["sent"] >= SESSIONS * (DURATION_S - SESSIONS / RATE) // ECHO_INTERVAL_S // 2
    assert echo["received"] == echo["sent"]
    assert echo["rtt_p50"] is not None and echo["rtt_p50"] < 0.5

    # the exposition served during the linger holds exactly the summary's counters
    assert _counters(scraped) == {
        "started": sessions["started"],
        "established": sessions["established"],
        "failed": sessions["failed"],
        "echo_sent": echo["sent"],
        "echo_received": echo["received"],
    }
    # ... and the run ended cleanly: every session closed, none left active
    assert scraped.total("loadgen_sessions_total", outcome="closed") == SESSIONS
    assert scraped.total("loadgen_sessions_active") == 0
    assert scraped.total("loadgen_tunnel_bytes_total", direction="rx") > 0
