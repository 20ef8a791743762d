"""Running real Locust in tests: argv, a tagged environment, the stats CSV, orphan checks.

Each test marks the child processes it causes with a unique tag
(``LOADGEN_LOCUST_TAG``; it appears on the sidecar's and the gateway's
command lines) so ``pgrep -f`` finds exactly them.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from loadgen.locust.client import TAG_ENV

ROOT = Path(__file__).resolve().parents[2]
PHASES = ["tls", "group_select", "auth", "download", "cstp_connect", "dtls", "connect"]
SECRET = f"pw-{uuid.uuid4().hex}"


def new_tag(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def locust_argv() -> list[str]:
    exe = shutil.which("locust")
    return [exe] if exe else [sys.executable, "-m", "locust"]


def locust_env(tag: str) -> dict[str, str]:
    env = dict(os.environ)
    env[TAG_ENV] = tag
    env["LOADGEN_VPN_PASSWORD"] = SECRET
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tagged(tag: str) -> list[str]:
    """The processes whose command line holds ``tag`` (``pgrep``: procps, installed by
    ``scripts/install --test``; without it this fails, it never skips)."""
    proc = subprocess.run(
        ["pgrep", "-af", tag], capture_output=True, text=True, timeout=10, check=False
    )
    return [line for line in proc.stdout.splitlines() if line.strip()]


def wait_none_left(tag: str, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    left = tagged(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = tagged(tag)
    return left


def kill_tagged(tag: str) -> None:
    """Cleanup for a failed test only: end what this test started, by pid."""
    for line in tagged(tag):
        pid = int(line.split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_locust(
    args: list[str], *, tag: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``locust ARGS`` in the repository, to its end; then no tagged process may be left
    (asserted), and whatever is left is killed in any case."""
    try:
        proc = subprocess.run(
            [*locust_argv(), *args],
            cwd=ROOT,
            env=env if env is not None else locust_env(tag),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert wait_none_left(tag, 10.0) == []
        return proc
    finally:
        kill_tagged(tag)


def stats_rows(prefix: Path) -> list[dict[str, str]]:
    """The rows of ``<prefix>_stats.csv`` but the Aggregated one."""
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["Name"] != "Aggregated"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (consecutive is not promised)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_block(n: int, start: int = 20000, stop: int = 30000) -> int:
    """A base port with ``n`` consecutive free ports on 127.0.0.1."""
    for base in range(start, stop, n):
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


def scrape(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return str(resp.read().decode())
