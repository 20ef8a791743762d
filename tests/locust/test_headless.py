"""Plain headless Locust against the embedded gateway, and the no-orphan guarantee.

Each test marks the child processes it causes with a unique tag
(``LOADGEN_LOCUST_TAG``; it appears on the sidecar's and the gateway's
command lines) so ``pgrep -f`` finds exactly them.  Traffic stays on
loopback: the embedded gateway listens on 127.0.0.1.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from loadgen.locust.protocol import Disconnect as DisconnectCommand
from loadgen.locust.protocol import (
    Disconnected,
    FrameDecoder,
    Message,
    SidecarReady,
    encode_message,
)
from tests.helpers.locust_run import (
    PHASES,
    ROOT,
    SECRET,
    kill_tagged,
    locust_argv,
    locust_env,
    new_tag,
    run_locust,
    stats_rows,
    tagged,
    wait_none_left,
)


def test_headless_run_reports_every_phase_and_leaves_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "out"
    proc = run_locust(
        [
            *["-f", "scenarios/connect.py", "--headless", "-u", "20", "-r", "10", "-t", "15s"],
            *["--vpn-metrics-port", "0", "--csv", str(prefix), "--only-summary"],
        ],
        tag=new_tag("lgtest"),
    )
    log = proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = stats_rows(prefix)
    connect = {r["Name"]: r for r in rows if r["Type"] == "connect"}
    echo = [r for r in rows if r["Type"] == "echo"]
    assert sorted(connect) == sorted(PHASES), log
    for name in PHASES:
        assert int(connect[name]["Request Count"]) == 20, (name, connect[name])
    assert echo, log
    assert {r["Name"] for r in echo} <= {"dtls", "cstp"}
    assert sum(int(r["Request Count"]) for r in echo) >= 20
    for row in rows:
        assert row["Failure Count"] == "0", row
    with (tmp_path / "out_failures.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == []
    # the password never reaches Locust's output or its reports
    assert SECRET not in proc.stdout + proc.stderr
    assert all(SECRET not in p.read_text() for p in tmp_path.glob("out_*.csv"))


def test_children_exit_when_locust_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves Locust no chance to clean up: the sidecar (stdin EOF,
    parent pid) and the gateway (--exit-with-parent) must go by themselves."""
    tag = f"lgkill{uuid.uuid4().hex[:12]}"
    argv = [
        *locust_argv(),
        "-f",
        "scenarios/connect.py",
        "--headless",
        "-u",
        "5",
        "-r",
        "5",
        "-t",
        "60s",
        "--vpn-metrics-port",
        "0",
        "--only-summary",
    ]
    locust = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=locust_env(tag),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "locust.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while len(tagged(tag)) < 2 and time.monotonic() < deadline:
            assert locust.poll() is None, (tmp_path / "locust.log").read_text()[-3000:]
            time.sleep(0.2)
        found = tagged(tag)
        assert any("loadgen.locust.sidecar" in line for line in found), found
        assert any("loadgen gateway" in line for line in found), found
        assert not any(SECRET in line for line in found)
        locust.send_signal(signal.SIGKILL)
        locust.wait(timeout=10)
        assert wait_none_left(tag, 15.0) == []
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait(timeout=10)
        kill_tagged(tag)


# -- the sidecar on its own -----------------------------------------------------------------


def _read(proc: subprocess.Popen[bytes], decoder: FrameDecoder) -> Message | None:
    assert proc.stdout is not None
    for _ in range(1000):  # bounded
        message = decoder.next_message_untrusted()
        if message is not None:
            return message
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            return None
        decoder.receive_data(data)
    return None


def _sidecar(tag: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadgen.locust.sidecar",
            "--parent-pid",
            str(os.getpid()),
            "--tag",
            tag,
        ],
        cwd=ROOT,
        env=locust_env(tag),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def test_sidecar_answers_and_exits_on_eof() -> None:
    tag = f"lgeof{uuid.uuid4().hex[:12]}"
    proc = _sidecar(tag)
    try:
        decoder = FrameDecoder()
        ready = _read(proc, decoder)
        assert isinstance(ready, SidecarReady) and ready.pid == proc.pid
        assert proc.stdin is not None
        # a disconnect for a session it never had is answered, not an error
        proc.stdin.write(encode_message(DisconnectCommand(seq=5, id=42)))
        proc.stdin.flush()
        assert _read(proc, decoder) == Disconnected(seq=5, id=42)
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_sidecar_exits_on_a_hostile_frame() -> None:
    tag = f"lgbad{uuid.uuid4().hex[:12]}"
    proc = _sidecar(tag)
    try:
        decoder = FrameDecoder()
        assert isinstance(_read(proc, decoder), SidecarReady)
        assert proc.stdin is not None
        proc.stdin.write(b"\xff\xff\xff\xff garbage")
        proc.stdin.flush()
        # the stream cannot be resynchronised: it stops, and says nothing more
        assert _read(proc, decoder) is None
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
