"""``loadgen run --processes N``: N engine processes, one merged summary.

One process holds at most about 9,900 DTLS sessions here (20,000 file
descriptors, a TCP and a UDP socket each), so larger runs split the sessions
and the start rate across child processes.  Each child takes its own slice of
identities (``--worker k/N``), reports its status as JSON lines for the
progress display, and leaves its final Prometheus exposition in a file; the
summary is computed from the merged histograms and counters, never from raw
samples.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.live import Live

from loadgen.cli.common import against_target
from loadgen.cli.progress import Progress, print_summary
from loadgen.lifecycle import ChildSpec, TrioChild, open_child
from loadgen.metrics.summary import build_summary, generator_from_samples, merge, parse_exposition
from loadgen.metrics.thresholds import Threshold, evaluate
from loadgen.options import ClientOptions, Front, secrets_env, to_argv

__all__ = ["run_parent"]


def _child_argv(
    args: argparse.Namespace, opts: ClientOptions, url: str, *, k: int, n: int, exposition: Path
) -> list[str]:
    """Engine process ``k`` of ``n``: the parent's options, its share of the load."""
    argv = [
        sys.executable,
        "-m",
        "loadgen",
        "run",
        url,
        *to_argv(opts, Front.RUN),
        # the password (or none: a credentials file) goes through stdin
        "--password-stdin",
        *["--duration", str(args.duration), "--session-length", args.session_length],
        *["--reconnect", args.reconnect, "--seed", str(args.seed)],
        *["--worker", f"{k}/{n}", "--exposition", str(exposition), "--no-progress"],
        # the sessions split exactly: the first ones take one more
        *["--sessions", str(args.sessions // n + (1 if k < args.sessions % n else 0))],
        *["--rate", str(args.rate / n)],
    ]
    for flag, value in (
        ("--storm", args.storm),
        ("--source-ip", args.source_ip),
        ("--think-time", args.think_time),
    ):
        if value is not None:
            argv += [flag, value]
    if args.arrival_rate is not None:
        argv += ["--arrival-rate", str(args.arrival_rate / n)]
    return argv


def run_parent(args: argparse.Namespace, opts: ClientOptions, thresholds: list[Threshold]) -> int:
    return trio.run(against_target, args.url, opts, partial(_spawn_all, args, thresholds))


async def _spawn_all(
    args: argparse.Namespace, thresholds: list[Threshold], opts: ClientOptions, url: str
) -> int:
    # every process holds at least one session
    n = min(args.processes, args.sessions)
    console = Console(stderr=True)
    statuses: list[dict[str, Any]] = [{} for _ in range(n)]
    codes: list[int | None] = [None] * n
    procs: list[TrioChild | None] = [None] * n
    password = opts.password or ""
    # the other secrets stay off the command line too: the children's environment
    # (the password goes through stdin: an inherited LOADGEN_VPN_PASSWORD would clash)
    env = {k: v for k, v in os.environ.items() if k != "LOADGEN_VPN_PASSWORD"}
    env.update(secrets_env(opts))
    with tempfile.TemporaryDirectory(prefix="loadgen-run-") as tmp:
        expositions = [Path(tmp) / f"{k}.prom" for k in range(n)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward_signals, procs, console)
            for k in range(n):
                argv = _child_argv(args, opts, url, k=k, n=n, exposition=expositions[k])
                nursery.start_soon(
                    partial(_child, argv, password, env, statuses, codes, procs, k=k)
                )
            if not args.no_progress:
                nursery.start_soon(_progress, args, statuses, codes, console)
            while None in codes:
                await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        missing = [k for k, p in enumerate(expositions) if not p.exists()]
        if missing:
            console.print(
                f"[red]engine processes {missing} ended without results (exit {codes})[/red]"
            )
            return 1
        samples = merge(parse_exposition(p.read_text()) for p in expositions)
        saturated = any(p.with_suffix(".saturated").read_text() == "1" for p in expositions)
    summary = build_summary(samples, generator=generator_from_samples(samples, saturated=saturated))
    results = evaluate(thresholds, summary)
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(Console(), summary, results)
    return 0 if all(r.passed for r in results) else 1


async def _forward_signals(procs: list[TrioChild | None], console: Console) -> None:
    """Ctrl-C (or SIGTERM) once: each engine stops cleanly and the merged summary
    still comes; twice: abort.  The engines live in their own sessions, so a
    terminal's Ctrl-C reaches them only this way, once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            console.print("stopping: sessions disconnect, the summary follows (again to abort)")
            for child in procs:
                if child is not None:
                    child.send_signal(signal.SIGTERM)
            break
        async for _ in signals:
            raise KeyboardInterrupt


async def _child(  # noqa: PLR0917 (one child's whole context)
    argv: list[str],
    password: str,
    env: dict[str, str],
    statuses: list[dict[str, Any]],
    codes: list[int | None],
    procs: list[TrioChild | None],
    *,
    k: int,
) -> None:
    """Engine process ``k``: its password on stdin, its status lines on stdout."""
    spec = ChildSpec(
        name=f"engine process {k}",
        argv=argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,  # the parent's: its messages reach the user
        new_session=True,
        parent_flag="--exit-with-parent",
        # the sessions' DISCONNECTs come first (the run's stop grace)
        stop_grace_s=15.0,
        env=env,
    )
    async with open_child(spec) as child:
        procs[k] = child
        assert child.stdin is not None and child.stdout is not None
        await child.stdin.send_all(password.encode() + b"\n")
        await child.stdin.aclose()
        buf = b""
        while chunk := await child.stdout.receive_some(65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    statuses[k] = json.loads(line)
                except ValueError:
                    continue
        while not child.has_exited():  # its summary is still being written
            await trio.sleep(0.05)
        codes[k] = await child.stop()  # sweeps its group, then reaps


#: status fields summed over the engine processes
_SUMMED = (
    "connecting",
    "started",
    "established",
    "failed",
    "closed",
    "echo_sent",
    "echo_received",
    "dtls_attempted",
    "dtls_fallbacks",
    "tx_bytes",
    "rx_bytes",
)


def _aggregate(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {
        "elapsed": 0.0,
        "active": {"cstp": 0, "dtls": 0},
        "failures": {},
        "connect_times": [],
        "echo_rtts": [],
        "saturated": False,
        "cpu_seconds": 0.0,
    }
    for s in statuses:
        if not s:
            continue
        total["elapsed"] = max(total["elapsed"], s["elapsed"])
        for ch, v in s["active"].items():
            total["active"][ch] = total["active"].get(ch, 0) + v
        for key in _SUMMED:
            total[key] = total.get(key, 0) + s.get(key, 0)
        for k, v in s["failures"].items():
            total["failures"][k] = total["failures"].get(k, 0) + v
        total["connect_times"] += s["connect_times"]
        total["echo_rtts"] += s["echo_rtts"]
        total["saturated"] = total["saturated"] or s["saturated"]
        total["cpu_seconds"] += s["cpu_seconds"]
    for key in _SUMMED:
        total.setdefault(key, 0)
    return total


async def _progress(
    args: argparse.Namespace,
    statuses: list[dict[str, Any]],
    codes: list[int | None],
    console: Console,
) -> None:
    progress = Progress(console, args.duration)
    if console.is_terminal:
        with Live(console=console, refresh_per_second=2) as live:
            while None in codes:
                await trio.sleep(1.0)
                live.update(progress.render(_aggregate(statuses)))
        return
    while None in codes:
        await trio.sleep(5.0)
        s = _aggregate(statuses)
        console.print(
            f"{s['elapsed']:.0f}s active {s['active']} established {s['established']} "
            f"failed {s['failed']} echo {s['echo_received']}/{s['echo_sent']}"
        )
