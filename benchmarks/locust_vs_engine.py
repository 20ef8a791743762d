"""The Locust path against the engine alone: connect rate and per-user cost, side by side.

    python -m benchmarks.locust_vs_engine [--users 1000] [--hold 10] [--repeat 3] [--json FILE]

Both paths drive the same kind of target, ``loadgen gateway`` on 127.0.0.1 with
its default configuration (two groups and a profile: all six phases), one fresh
gateway per run, and both are watched the same way, through the ``loadgen_*``
metrics they serve (polled every 0.25 s):

* ``engine``: ``loadgen run URL --sessions N --rate 100000 --duration D
  --echo-every E``: every session due at once, one echo every E s each;
* ``locust``: ``locust -f benchmarks/_locust_holder.py --headless -u N -r N -t Ds``
  (a VpnUser with wait_time = between(2E/3, 4E/3) and one self.vpn.echo(count=1)
  task, E passed in ``LOADGEN_BENCH_ECHO_EVERY_S``): one worker
  process (the local runner) and its engine sidecar, the same traffic as the
  engine's, so Locust's own greenlets and its ``events.request`` handling are
  part of the cost.  E is ``--echo-every`` (default 3 s).

Connect rate = N / (time from the first session started to the last one
established).  CPU per connect counts every process of the path (Locust
and its sidecar; or the engine) over that time.  After every session is up
the run holds for ``--hold`` seconds: the CPU cores and the resident memory
per user of the path while it holds give the most users one worker can
take, which is the least of three bounds: open files (one process holds at
most about 9,900 DTLS sessions here), one core at the measured hold CPU,
and memory.  Figures are medians over ``--repeat`` runs; the ratio column
is Locust over engine (goal: at least 0.80 for the rate).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks._util import (
    BenchmarkError,
    Column,
    ReferenceGateway,
    free_port,
    machine_info,
    median,
    num,
    print_table,
    proc_cpu_s,
    proc_rss_kib,
    scrape,
    spawn,
)
from loadgen import lifecycle
from loadgen.lifecycle import Child

__all__ = ["PathResult", "main", "run_path"]

POLL_S = 0.25
#: the Locust path's locustfile, and how it learns E; not imported here: it imports
#: Locust, whose gevent monkey-patching would change this process
HOLDER = Path(__file__).with_name("_locust_holder.py")
ECHO_EVERY_ENV = "LOADGEN_BENCH_ECHO_EVERY_S"
#: sessions one process can hold (hard limit of 20,000 open files, two per DTLS session)
FD_BOUND = 9_900


@dataclass(frozen=True)
class PathResult:
    path: str
    users: int
    established: int
    failed: int
    rate: float
    cpu_ms_per_connect: float
    hold_cores: float
    rss_kib_per_user: float
    most_users: int


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the sidecar runs in a session of its own)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def _cpu(pids: Callable[[], list[int]]) -> float:
    total = 0.0
    for pid in pids():
        try:
            total += proc_cpu_s(pid)
        except OSError:
            continue
    return total


def _rss_kib(pids: Callable[[], list[int]]) -> int:
    total = 0
    for pid in pids():
        try:
            total += proc_rss_kib(pid)
        except (OSError, BenchmarkError):
            continue
    return total


def run_path(path: str, users: int, hold_s: float, echo_every_s: float) -> PathResult:
    duration = 120
    with ReferenceGateway() as gw, tempfile.TemporaryDirectory(prefix="bench-lve-") as tmp:
        port = free_port()
        log = Path(tmp) / "log"
        env = None
        if path == "engine":
            argv = [sys.executable, "-m", "loadgen", "run", gw.url, "--cafile", gw.ca]
            argv += ["--sessions", str(users), "--rate", "100000", "--duration", str(duration)]
            argv += ["--echo-every", str(echo_every_s), "--metrics-port", str(port)]
            argv += ["--no-progress", "--password-stdin"]
        else:
            # the same password as the engine's (the gateway takes any)
            env = dict(os.environ, LOADGEN_VPN_PASSWORD="x", **{ECHO_EVERY_ENV: str(echo_every_s)})
            argv = [sys.executable, "-m", "locust", "-f", str(HOLDER), "--headless"]
            argv += ["-u", str(users), "-r", str(users), "-t", f"{duration}s", "--host", gw.url]
            argv += ["--vpn-cafile", gw.ca, "--vpn-metrics-port", str(port), "--only-summary"]
        with log.open("wb") as out:
            child = spawn(
                path,
                argv,
                stdin=subprocess.PIPE if path == "engine" else subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                stop_signal=signal.SIGINT,
                stop_grace_s=30.0,
            )
        try:
            if child.stdin is not None:  # the engine's password (the gateway takes any)
                child.stdin.write(b"x\n")
                child.stdin.close()
            return _watch(path, child, port=port, users=users, hold_s=hold_s, log=log)
        finally:
            child.stop()


def _watch(
    path: str, proc: Child, *, port: int, users: int, hold_s: float, log: Path
) -> PathResult:
    def pids() -> list[int]:
        return _descendants(proc.pid)

    deadline = time.monotonic() + 180
    first: tuple[float, float] | None = None  # (time, CPU) when the first session started
    up: tuple[float, float] | None = None
    established = failed = 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(f"{path} exited early: {log.read_text()[-1500:]}")
        samples = scrape([port])
        now = time.monotonic()
        if samples is not None:
            started = samples.total("loadgen_sessions_started_total")
            established = samples.total("loadgen_sessions_total", outcome="established")
            failed = samples.total("loadgen_sessions_total", outcome="failed")
            if first is None and started > 0:
                first = (now, _cpu(pids))
            if established + failed >= users:
                up = (now, _cpu(pids))
                break
        time.sleep(POLL_S)
    if first is None or up is None:
        raise BenchmarkError(f"{path}: not every session ended up: {log.read_text()[-1500:]}")
    span = up[0] - first[0]
    # hold: every session up, echo traffic running
    time.sleep(1.0)
    c0, t0 = _cpu(pids), time.monotonic()
    time.sleep(hold_s)
    cores = (_cpu(pids) - c0) / (time.monotonic() - t0)
    rss = _rss_kib(pids) / users
    by_cpu = int(users / cores) if cores > 0 else FD_BOUND
    return PathResult(
        path=path,
        users=users,
        established=int(established),
        failed=int(failed),
        rate=established / span if span > 0 else 0.0,
        cpu_ms_per_connect=(up[1] - first[1]) / max(1.0, established) * 1000,
        hold_cores=cores,
        rss_kib_per_user=rss,
        most_users=min(FD_BOUND, by_cpu, int(16 * 1024 * 1024 / rss)),
    )


def _report(results: list[PathResult]) -> None:
    def med(path: str, key: str) -> float:
        return median([float(getattr(r, key)) for r in results if r.path == path])

    rows = []
    for key, title, fmt in (
        ("established", "established (of users)", "{:.0f}"),
        ("failed", "failed", "{:.0f}"),
        ("rate", "connect rate (sessions/s)", "{:.0f}"),
        ("cpu_ms_per_connect", "CPU per connect (ms)", "{:.2f}"),
        ("hold_cores", "CPU while holding (cores)", "{:.3f}"),
        ("rss_kib_per_user", "memory per user (KiB)", "{:.1f}"),
        ("most_users", "most users per worker", "{:.0f}"),
    ):
        engine, locust = med("engine", key), med("locust", key)
        ratio = f"{locust / engine:.2f}" if engine else "-"
        rows.append([title, fmt.format(engine), fmt.format(locust), ratio])
    print_table(
        [
            Column(title="figure"),
            num("engine alone"),
            num("Locust path"),
            num("Locust / engine"),
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000, help="sessions per run (default 1000)")
    p.add_argument("--hold", type=float, default=10.0, help="seconds held after all are up")
    p.add_argument("--repeat", type=int, default=3, help="runs per path (default 3)")
    p.add_argument(
        "--echo-every", type=float, default=3.0, help="seconds between echoes per user (3)"
    )
    p.add_argument("--json", type=Path, help="write the raw results here")
    args = p.parse_args(argv)
    if args.hold < 3 * args.echo_every:
        p.error("--hold must span at least three echo periods (3 x --echo-every)")
    if not 1 <= args.users <= FD_BOUND:
        p.error(f"--users must be in 1..{FD_BOUND} (one process)")
    lifecycle.exit_on_sigterm()
    print(machine_info())
    print(f"{args.users} users, one echo every {args.echo_every:g} s each, held {args.hold:g} s")
    results: list[PathResult] = []
    try:
        for i in range(args.repeat):
            for path in ("engine", "locust"):
                r = run_path(path, args.users, args.hold, args.echo_every)
                print(
                    f"run {i + 1} {path}: {r.established}/{r.users} up, {r.rate:.0f}/s, "
                    f"{r.cpu_ms_per_connect:.2f} ms CPU/connect, {r.hold_cores:.3f} cores "
                    f"holding, {r.rss_kib_per_user:.1f} KiB/user",
                    flush=True,
                )
                results.append(r)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        lifecycle.stop_all()
    _report(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
