"""``loadgen run`` as users run it: real subprocesses against the reference gateway.

Each run is bounded and short (a few seconds of --duration).  The target is
the embedded gateway (no URL) or a gateway in this test process (a URL), whose
state shows what the sessions did: which users logged in, and that every
session said DISCONNECT 0xb0 (its cookie is gone, §5.4).  The summary's
counters must be the very values /metrics serves: equal, not approximately.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.server import Gateway
from loadgen.metrics.client import DURATION_PHASES
from loadgen.metrics.summary import build_summary, parse_exposition, samples_from_registry
from loadgen.proto.auth_server import AuthPolicy, UserSpec
from tests.helpers.gateway import gateway_process, start_gateway, url_of

#: no line wrapping in rich's output, so messages can be matched
ENV = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
STATS = {"p50", "p95", "p99", "max"}


def loadgen_run(
    *args: str, stdin: str = "", timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: {pid: command line}."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out[int(entry.name)] = cmdline
    return out


def gone(pid: int, cmdline: str) -> bool:
    try:
        now = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return True
    return now != cmdline  # the pid was reused by something else


def check_summary_shape(summary: dict[str, Any]) -> None:
    """Every key of the issue, with values of the right kind."""
    assert set(summary) == {
        "sessions",
        "channels",
        "phases",
        "failures",
        "failure_ratio",
        "dtls_fallback_ratio",
        "echo",
        "throughput",
        "generator",
    }
    assert set(summary["sessions"]) == {"started", "established", "failed"}
    assert set(summary["channels"]) == {"dtls", "cstp"}
    assert set(summary["phases"]) == set(DURATION_PHASES)
    assert "connect" in summary["phases"]
    for stats in summary["phases"].values():
        assert set(stats) == STATS
    assert isinstance(summary["failures"], dict)
    assert isinstance(summary["failure_ratio"], float)
    assert isinstance(summary["dtls_fallback_ratio"], float)
    assert set(summary["echo"]) == {"sent", "received", "rtt_p50", "rtt_p95"}
    assert set(summary["throughput"]) == {"tx_bytes", "rx_bytes"}
    assert set(summary["generator"]) == {"cpu_seconds", "peak_rss_bytes", "saturated"}


def read_json_when_written(path: Path, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout_s} s")


@contextmanager
def popen(args: Sequence[str], out: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgen", "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ENV,
            **kwargs,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# -- embedded gateway ---------------------------------------------------------------


def test_run_against_the_embedded_gateway_passes_and_writes_the_summary(
    tmp_path: Path,
) -> None:
    out = tmp_path / "summary.json"
    args = [
        "--sessions", "20", "--rate", "20", "--duration", "4", "--echo-every", "1",
        "--no-progress", "--summary", str(out),
        "--threshold", "failure_ratio<0.01",
        "--threshold", "phases.connect.p95<5s",
        "--threshold", "sessions.established>=20",
        "--threshold", "echo.received>0",
    ]  # fmt: skip
    started = time.monotonic()
    with popen(args, tmp_path / "out.txt") as proc:
        time.sleep(1.5)
        gateway = children_of(proc.pid)  # the embedded gateway, a child process
        code = proc.wait(timeout=60)
    elapsed = time.monotonic() - started
    text = (tmp_path / "out.txt").read_text()
    assert code == 0, text
    assert elapsed < 20  # bounded: 4 s of load, start-up and the DISCONNECTs
    summary = json.loads(out.read_text())
    check_summary_shape(summary)
    assert summary["sessions"] == {"started": 20, "established": 20, "failed": 0}
    assert summary["channels"]["dtls"] + summary["channels"]["cstp"] == 20
    assert summary["failures"] == {}
    assert summary["failure_ratio"] == 0.0
    for phase in ("tls", "group_select", "auth", "download", "cstp_connect", "connect"):
        stats = summary["phases"][phase]
        assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"], phase
    # the whole connect covers its phases
    assert summary["phases"]["connect"]["max"] >= summary["phases"]["tls"]["max"]
    echo = summary["echo"]
    assert echo["sent"] >= 20 and echo["received"] == echo["sent"]
    assert 0 < echo["rtt_p50"] <= echo["rtt_p95"]
    # echo requests and replies are the tunnel's traffic (84-byte IP packets)
    assert summary["throughput"]["tx_bytes"] == echo["sent"] * 84
    assert summary["throughput"]["rx_bytes"] == echo["received"] * 84
    gen = summary["generator"]
    assert gen["cpu_seconds"] > 0 and gen["peak_rss_bytes"] > 10 * 2**20
    assert gen["saturated"] in (True, False)
    for expr in ("failure_ratio<0.01", "phases.connect.p95<5s", "sessions.established>=20"):
        assert f"threshold {expr}: pass" in text
    # the embedded gateway did not outlive the run
    assert len(gateway) == 1 and "gateway" in next(iter(gateway.values()))
    assert all(gone(pid, cmd) for pid, cmd in gateway.items())


def test_a_failing_threshold_exits_1_and_still_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    r = loadgen_run(
        "--sessions", "3", "--rate", "30", "--duration", "1.5", "--no-progress",
        "--summary", str(out),
        "--threshold", "phases.connect.p95<1us",
        "--threshold", "failure_ratio<0.5",
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "threshold phases.connect.p95<1us: FAIL" in r.stdout
    assert "threshold failure_ratio<0.5: pass" in r.stdout
    summary = json.loads(out.read_text())
    assert summary["sessions"]["established"] == 3
    assert summary["phases"]["connect"]["p95"] > 1e-6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "phases.conect.p95<2s"], "unknown summary key 'phases.conect.p95'"),
        (["--threshold", "failure_ratio<<1"], "cannot parse threshold"),
        (["--threshold", "failures.auth/nope>0"], "unknown summary key"),
        (["--sessions", "0"], "--sessions must be at least 1"),
        (["--processes", "0"], "--processes must be at least 1"),
        (["--rate", "-1"], "--rate"),
        (["--duration", "soon"], "--duration"),
        (["--storm", "jitter=2"], "at=SECONDS is required"),
        (["--session-length", "forever"], "bad length"),
        (["--cafile", "/nonexistent"], "TLS options need a URL"),
        (["http://127.0.0.1:1/"], "must be https://"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2_before_any_traffic(args: list[str], message: str) -> None:
    started = time.monotonic()
    r = loadgen_run(*args, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert time.monotonic() - started < 15  # refused up front, not after a run


def test_a_bad_user_pattern_is_a_usage_error(tmp_path: Path) -> None:
    r = loadgen_run("--user", "bob", "--duration", "30", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "needs {n}" in r.stderr
    # the old spelling means the same, with a warning
    r = loadgen_run("--user-pattern", "bob", "--duration", "30", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "needs {n}" in r.stderr and "--user-pattern is deprecated" in r.stderr
    assert "Traceback" not in r.stderr


def test_too_few_identities_in_a_file_is_a_clear_error(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("alice:pw1\nbob:pw2\n")
    r = loadgen_run(
        "--credentials", str(users), "--sessions", "5", "--duration", "30", "--no-progress",
        "--summary", str(tmp_path / "summary.json"),
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "5 concurrent sessions need 5 unique users" in r.stderr
    assert "holds 2" in r.stderr
    assert "pw1" not in r.stdout + r.stderr  # never a password in a message
    assert not (tmp_path / "summary.json").exists()


# -- a gateway given by URL ---------------------------------------------------------


def test_url_run_with_cafile_pattern_and_stdin_password_metrics_equal_summary(
    tmp_path: Path,
) -> None:
    """Three known users, ten arrivals (u1 .. u10): 3 established, 7 refused.
    The summary's counters are the very values /metrics serves."""
    users = [arg for i in (1, 2, 3) for arg in ("--user", f"u{i}:s3cret")]
    port = free_port()
    out = tmp_path / "summary.json"
    with gateway_process(tmp_path / "gw", *users) as gw:
        args = [
            gw.url, "--cafile", str(gw.ca_path),
            "--user", "u{n}", "--password-stdin",
            "--arrival-rate", "10", "--sessions", "10", "--duration", "0.95",
            "--echo-every", "0.2", "--no-progress", "--summary", str(out),
            "--metrics-port", str(port), "--linger", "4",
            "--threshold", "sessions.established==3",
            "--threshold", "failures.auth/auth_rejected==7",
        ]  # fmt: skip
        with popen(args, tmp_path / "out.txt", stdin=subprocess.PIPE) as proc:
            assert proc.stdin is not None
            proc.stdin.write(b"s3cret\n")
            proc.stdin.close()
            summary = read_json_when_written(out, 30)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                exposition = resp.read().decode()
            code = proc.wait(timeout=30)
    text = (tmp_path / "out.txt").read_text()
    assert code == 0, text
    assert "s3cret" not in text
    check_summary_shape(summary)
    assert summary["sessions"] == {"started": 10, "established": 3, "failed": 7}
    assert summary["failures"] == {"auth/auth_rejected": 7}
    samples = parse_exposition(exposition)
    assert samples.value("loadgen_sessions_started_total") == 10
    assert samples.value("loadgen_sessions_total", outcome="established") == 3
    assert samples.value("loadgen_sessions_total", outcome="failed") == 7
    assert samples.value("loadgen_phase_failures_total", phase="auth", reason="auth_rejected") == 7
    assert samples.total("loadgen_phase_failures_total") == 7
    assert samples.total("loadgen_echo_requests_total") == summary["echo"]["sent"] > 0
    # and the whole summary, rebuilt from the scrape, is the one written
    assert build_summary(samples, generator=summary["generator"]) == summary


async def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


def _gateway_sessions(gw: Gateway, outcome: str) -> float | None:
    return samples_from_registry(gw.metrics.registry).value(
        "loadgen_gateway_sessions_total", outcome=outcome
    )


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigint_stops_cleanly_sessions_disconnect_summary_written(
    tmp_path: Path, processes: int
) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group): every session
    sends DISCONNECT 0xb0, the summary is written, the exit status is the
    thresholds' (documented: 0 all pass), long before --duration."""
    out = tmp_path / "summary.json"
    async with trio.open_nursery() as nursery:
        gw, ca = await start_gateway(nursery, tmp_path / "gw", GatewayConfig())
        argv = [
            sys.executable, "-m", "loadgen", "run", url_of(gw), "--cafile", str(ca),
            "--password", "x", "--sessions", "6", "--rate", "60", "--duration", "60",
            "--processes", str(processes), "--no-progress", "--summary", str(out),
            "--threshold", "sessions.established==6",
        ]  # fmt: skip
        with (tmp_path / "out.txt").open("wb") as log:
            proc = await trio.lowlevel.open_process(
                argv, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
            )
        try:
            await _wait_for(lambda: gw.tunnels_active == 6, 30, "6 tunnels")
            kids = children_of(proc.pid)
            # one process, or a parent and its two engine processes
            assert len(kids) == (0 if processes == 1 else 2)
            sent = trio.current_time()
            os.killpg(proc.pid, signal.SIGINT)
            with trio.fail_after(20):
                code = await proc.wait()
            took = trio.current_time() - sent
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = (tmp_path / "out.txt").read_text()
        assert code == 0, text
        assert took < 10, text
        assert "Traceback" not in text
        # every tunnel ended with DISCONNECT 0xb0: the gateway forgot every cookie
        await _wait_for(lambda: gw.tunnels_active == 0 and not gw.cookies_live, 5, "logouts")
        assert _gateway_sessions(gw, "established") == _gateway_sessions(gw, "closed") == 6
        nursery.cancel_scope.cancel()
    summary = json.loads(out.read_text())
    assert summary["sessions"] == {"started": 6, "established": 6, "failed": 0}
    assert summary["failures"] == {}
    assert "threshold sessions.established==6: pass" in text
    assert all(gone(pid, cmd) for pid, cmd in kids.items())


async def test_processes_split_sessions_with_distinct_identities(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    seen: set[str] = set()
    peak = 0
    async with trio.open_nursery() as nursery:
        gw, ca = await start_gateway(nursery, tmp_path / "gw", GatewayConfig())
        argv = [
            sys.executable, "-m", "loadgen", "run", url_of(gw), "--cafile", str(ca),
            "--user", "p{n}", "--password-stdin",
            "--sessions", "5", "--rate", "50", "--duration", "6", "--processes", "2",
            "--no-progress", "--summary", str(out),
        ]  # fmt: skip
        with (tmp_path / "out.txt").open("wb") as log:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=ENV
            )
        kids: dict[int, str] = {}
        try:
            assert proc.stdin is not None
            await proc.stdin.send_all(b"pw\n")
            await proc.stdin.aclose()
            with trio.fail_after(40):
                while proc.poll() is None:
                    seen.update(gw.tunnel_users())
                    peak = max(peak, gw.tunnels_active)
                    if not kids:
                        kids = {p: c for p, c in children_of(proc.pid).items() if "--worker" in c}
                    await trio.sleep(0.05)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        nursery.cancel_scope.cancel()
    text = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 0, text
    summary = json.loads(out.read_text())
    # 5 sessions split 3 + 2, each worker on its own slice of identities
    assert summary["sessions"] == {"started": 5, "established": 5, "failed": 0}
    assert seen == {"p1", "p2", "p3", "p4", "p5"}
    assert peak == 5
    assert sorted(c.split("--worker ")[1].split()[0] for c in kids.values()) == ["0/2", "1/2"]
    assert all(gone(pid, cmd) for pid, cmd in kids.items())
    check_summary_shape(summary)


async def test_users_file_identities_serve_again_after_their_session_ends(
    tmp_path: Path,
) -> None:
    """Exactly N users for N sessions, sessions shorter than the run: each
    replacement takes a released identity (the run used to crash here)."""
    users = tmp_path / "users.txt"
    users.write_text("".join(f"a{i}:pw{i}\n" for i in (1, 2, 3)))
    policy = AuthPolicy(users={f"a{i}": UserSpec(password=f"pw{i}") for i in (1, 2, 3)})
    out = tmp_path / "summary.json"
    peak = 0
    async with trio.open_nursery() as nursery:
        gw, ca = await start_gateway(nursery, tmp_path / "gw", GatewayConfig(auth=policy))
        argv = [
            sys.executable, "-m", "loadgen", "run", url_of(gw), "--cafile", str(ca),
            "--credentials", str(users), "--sessions", "3", "--rate", "30",
            "--session-length", "0.3", "--duration", "2", "--echo-every", "0",
            "--no-progress", "--summary", str(out), "--threshold", "failure_ratio==0",
        ]  # fmt: skip
        with (tmp_path / "out.txt").open("wb") as log:
            proc = await trio.lowlevel.open_process(
                argv, stdout=log, stderr=subprocess.STDOUT, env=ENV
            )
        try:
            with trio.fail_after(40):
                while proc.poll() is None:
                    names = gw.tunnel_users()
                    assert len(names) == len(set(names)), names  # never shared while live
                    peak = max(peak, len(names))
                    await trio.sleep(0.02)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        nursery.cancel_scope.cancel()
    text = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 0, text
    summary = json.loads(out.read_text())
    assert summary["sessions"]["started"] >= 9
    assert summary["sessions"]["failed"] == 0
    assert peak <= 3


def test_udp_echo_and_think_time(tmp_path: Path) -> None:
    summary_path = tmp_path / "s.json"
    proc = loadgen_run(
        "--sessions",
        "5",
        "--rate",
        "10",
        "--duration",
        "3",
        "--echo-every",
        "0.3",
        "--echo-udp",
        "--think-time",
        "uniform:0-0.2",
        "--summary",
        str(summary_path),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(summary_path.read_text())
    # UDP echo (port 7) is answered by the gateway's data plane, through DTLS
    assert summary["echo"]["sent"] >= 10
    assert summary["echo"]["received"] == summary["echo"]["sent"]
    assert summary["channels"]["dtls"] == 5


def test_a_refusing_gateway_does_not_become_a_retry_storm(tmp_path: Path) -> None:
    """Closed-model replacements of failed sessions stay under --rate."""
    port = free_port()
    summary_path = tmp_path / "s.json"
    proc = loadgen_run(
        f"https://127.0.0.1:{port}/",
        "--insecure",
        "--password",
        "x",
        "--sessions",
        "50",
        "--rate",
        "20",
        "--duration",
        "3",
        "--summary",
        str(summary_path),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(summary_path.read_text())
    started = summary["sessions"]["started"]
    # 3 s at 20/s plus at most one second of catch-up burst
    assert 40 <= started <= 20 * 3 + 20 + 1
    assert summary["failures"] == {"tls/refused": started}
