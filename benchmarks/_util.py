"""Small helpers shared by the benchmarks: medians, a table printer, a machine line;
child processes that are always killed (``loadgen.lifecycle``), their output lines
with a deadline, the reference gateway as a child, and a ``loadgen run`` watched
through its ``/metrics``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

from loadgen import lifecycle
from loadgen.gateway.embedded import gateway_spec
from loadgen.lifecycle import Child, ChildSpec, ChildStartError, Stdio, start_child
from loadgen.metrics.summary import Samples, merge, parse_exposition

__all__ = [
    "REPO_ROOT",
    "BenchmarkError",
    "Column",
    "GatewayProbe",
    "LineReader",
    "ReferenceGateway",
    "RunWatch",
    "Tick",
    "free_port",
    "gc_paused",
    "machine_info",
    "median",
    "num",
    "print_table",
    "proc_cpu_s",
    "proc_rss_kib",
    "proc_schedstat_ns",
    "proc_stat_fields",
    "proc_status_kib",
    "scrape",
    "spawn",
    "watch_run",
]


def median(values: Sequence[float]) -> float:
    """The median; a benchmark figure on a shared, noisy machine is never a mean."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect first, then keep the cyclic GC out of a timed section (as timeit does)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model, aes = "unknown CPU", False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = " ".join(value.split())
        elif key in ("flags", "Features") and not aes:
            aes = "aes" in value.split()
    return f"{model} ({'AES-NI' if aes else 'no AES-NI flag'})"


def _openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
    except ImportError:  # pragma: no cover - cryptography is a project dependency
        return "OpenSSL ?"
    return str(backend.openssl_version_text())


def machine_info() -> str:
    """One line: CPU, cores, load, Python, cryptography and OpenSSL versions."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{_cpu_model()}, {os.cpu_count()} CPUs, load {load}; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"cryptography {metadata.version('cryptography')}, {_openssl_version()}; "
        f"{platform.system()} {platform.release()} {platform.machine()}"
    )


@dataclass(frozen=True, kw_only=True)
class Column:
    title: str
    justify: Literal["left", "right"] = "left"


def num(title: str) -> Column:
    """A column of figures (right-aligned)."""
    return Column(title=title, justify="right")


def print_table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], *, console: Console | None = None
) -> None:
    """Print a Markdown-shaped table (rich's MARKDOWN box), so it pastes into a README as is.

    Never wrapped or truncated: wider than the terminal (or than 80 columns when piped)
    means the console is widened to fit.
    """
    table = Table(box=box.MARKDOWN, pad_edge=True, show_edge=True)
    for column in columns:
        table.add_column(column.title, justify=column.justify, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console = console or Console()
    # measure without the console's own width limit, which would squash the columns
    needed = console.measure(table, options=console.options.update_width(1_000)).maximum
    if needed > console.width:
        console = Console(width=needed, file=console.file)
    console.print(table)


# -- child processes, the reference gateway, watched runs ------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.25


class BenchmarkError(RuntimeError):
    """A part could not produce its figure; the message says why."""


def _start(spec: ChildSpec) -> Child:
    """A child of the benchmark: in its own process group (swept at stop), SIGKILLed
    if the benchmark dies (PR_SET_PDEATHSIG), stopped by ``lifecycle.stop_all``."""
    return start_child(
        dataclasses.replace(spec, cwd=REPO_ROOT, new_session=True, pdeathsig=signal.SIGKILL)
    )


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    stdin: Stdio = subprocess.DEVNULL,
    stdout: Stdio = None,
    stderr: Stdio = None,
    env: Mapping[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_grace_s: float = 15.0,
) -> Child:
    """A child of the benchmark with the given stdio (no banner: the caller reads)."""
    spec = ChildSpec(
        name=name,
        argv=argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        stop_signal=stop_signal,
        stop_grace_s=stop_grace_s,
    )
    return _start(spec)


def proc_status_kib(pid: int, key: str) -> int:
    """A memory line of /proc/PID/status (KiB): VmRSS, VmHWM, ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise BenchmarkError(f"no {key} for pid {pid}")


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a live process (KiB)."""
    return proc_status_kib(pid, "VmRSS")


def proc_stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_schedstat_ns(pid: int) -> int:
    """CPU time of all threads of a live process, from schedstat (ns, not 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def proc_cpu_s(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of a live process (s); with the CPU of its reaped children if asked."""
    fields = proc_stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def free_port(count: int = 1) -> int:
    """A TCP port of 127.0.0.1 such that ``count`` consecutive ports are free."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + count > 65535:
            continue
        ok = True
        for p in range(port + 1, port + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise BenchmarkError("no free port range")


def scrape(ports: Sequence[int]) -> Samples | None:
    """The merged /metrics of ``ports`` on 127.0.0.1, or None if one does not answer."""
    found = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                found.append(parse_exposition(r.read().decode()))
        except OSError:
            return None
    return merge(found) if len(found) > 1 else found[0]


class LineReader:
    """Lines of a child's stdout, each stamped with ``perf_counter`` when it was read."""

    def __init__(self, stream: Any) -> None:
        self._fd: int = stream.fileno()
        os.set_blocking(self._fd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self._partial = b""
        self.lines: list[tuple[float, str]] = []

    def close(self) -> None:
        self._sel.close()

    def wait_for(self, needle: str, timeout_s: float) -> tuple[float, str]:
        """The (time, line) of the first line holding ``needle``, bounded by ``timeout_s``."""
        for stamp, line in self.lines:
            if needle in line:
                return stamp, line
        deadline = time.perf_counter() + timeout_s
        while (remaining := deadline - time.perf_counter()) > 0:
            if not self._sel.select(timeout=remaining):
                continue
            now = time.perf_counter()
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                break
            *complete, self._partial = (self._partial + data).split(b"\n")
            found: tuple[float, str] | None = None
            for raw in complete:
                line = raw.decode(errors="replace")
                self.lines.append((now, line))
                if found is None and needle in line:
                    found = (now, line)
            if found is not None:
                return found
        tail = "\n".join(line for _, line in self.lines[-25:])
        raise BenchmarkError(f"never saw {needle!r} (output tail):\n{tail}")

    def after(self, tag: str, timeout_s: float) -> Any:
        """The JSON after ``tag`` on the first line holding it (the child's reports)."""
        _, line = self.wait_for(tag, timeout_s)
        return json.loads(line.split(tag, 1)[1])

    def first(self, needle: str) -> float | None:
        """When the first line holding ``needle`` was read, if it was."""
        return next((t for t, line in self.lines if needle in line), None)


@dataclass
class ReferenceGateway:
    """``loadgen gateway`` on 127.0.0.1 (a free port), in its own process."""

    extra_args: Sequence[str] = ()
    metrics_port: int | None = None
    url: str = ""
    ca: str = ""
    pid: int = 0
    _child: Child | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> ReferenceGateway:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-gateway-")
        spec = gateway_spec(Path(self._tmp.name), self.extra_args, metrics_port=self.metrics_port)
        try:
            self._child = _start(dataclasses.replace(spec, stop_grace_s=10.0))
        except ChildStartError as exc:
            self.__exit__()
            raise BenchmarkError(str(exc)) from None
        self.pid = self._child.pid
        self.url = self._child.banner["url"]
        self.ca = self._child.banner["ca"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# -- watching a `loadgen run` -------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """One look at a run: client counters from /metrics, the gateway from /proc."""

    t: float
    started: float
    established: float
    failed: float
    active: float
    echo_sent: float
    echo_lost: float
    client_cpu_s: float
    client_rss_bytes: float
    gateway_cpu_s: float | None
    gateway_rss_kib: int | None


@dataclass
class RunWatch:
    code: int | None
    wall_s: float
    ticks: list[Tick] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    stderr_tail: str = ""


#: (CPU seconds, RSS KiB) of the gateway, whatever it is made of
GatewayProbe = Callable[[], tuple[float, int]]


def _tick(t: float, samples: Samples, probe: GatewayProbe | None) -> Tick:
    gcpu: float | None = None
    grss: int | None = None
    if probe is not None:
        with contextlib.suppress(OSError, ValueError):
            gcpu, grss = probe()
    return Tick(
        t=t,
        started=samples.total("loadgen_sessions_started_total"),
        established=samples.total("loadgen_sessions_total", outcome="established"),
        failed=samples.total("loadgen_sessions_total", outcome="failed"),
        active=samples.total("loadgen_sessions_active", channel="dtls")
        + samples.total("loadgen_sessions_active", channel="cstp"),
        echo_sent=samples.total("loadgen_echo_requests_total"),
        echo_lost=samples.total("loadgen_echo_lost_total"),
        client_cpu_s=samples.total("process_cpu_seconds_total"),
        client_rss_bytes=samples.total("process_resident_memory_bytes"),
        gateway_cpu_s=gcpu,
        gateway_rss_kib=grss,
    )


def watch_run(
    args: Sequence[str],
    *,
    password: str = "x",
    processes: int = 1,
    gateway_pid: int | None = None,
    gateway_probe: GatewayProbe | None = None,
    timeout_s: float,
    stop_when: Callable[[list[Tick]], bool] | None = None,
    poll_s: float = _POLL_S,
) -> RunWatch:
    """Run ``loadgen run ARGS --metrics-port P --summary F`` and poll its /metrics.

    The gateway is observed through ``gateway_probe``, or /proc of ``gateway_pid``.
    ``stop_when(ticks)`` true: SIGINT (the run disconnects and writes its summary).
    """
    if gateway_probe is None and gateway_pid is not None:
        pid = gateway_pid

        def gateway_probe() -> tuple[float, int]:
            return proc_cpu_s(pid), proc_rss_kib(pid)

    port = free_port(processes)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        err_path = Path(tmp) / "stderr"
        argv = [sys.executable, "-m", "loadgen", "run", *args, "--password-stdin"]
        argv += ["--metrics-port", str(port), "--summary", str(summary_path), "--no-progress"]
        if processes > 1:
            argv += ["--processes", str(processes)]
        ports = [port + k for k in range(processes)]
        with err_path.open("wb") as err:
            run = spawn(
                "loadgen run",
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stop_signal=signal.SIGINT,
                stop_grace_s=20.0,
            )
        watch = RunWatch(code=None, wall_s=0.0)
        t0 = time.monotonic()
        stopped = False
        try:
            assert run.stdin is not None
            run.stdin.write(password.encode() + b"\n")
            run.stdin.close()
            while run.poll() is None and time.monotonic() - t0 < timeout_s:
                samples = scrape(ports)
                if samples is not None:
                    watch.ticks.append(_tick(time.monotonic() - t0, samples, gateway_probe))
                    if not stopped and stop_when is not None and stop_when(watch.ticks):
                        # the parent of --processes forwards nothing: signal the group
                        os.killpg(run.pid, signal.SIGINT)
                        stopped = True
                time.sleep(poll_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.wait(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
            watch.wall_s = time.monotonic() - t0
        finally:
            watch.code = run.stop()
        with contextlib.suppress(OSError, ValueError):
            watch.summary = json.loads(summary_path.read_text())
        watch.stderr_tail = err_path.read_text(errors="replace")[-1500:]
    return watch


def parts_of(text: str, known: Sequence[str]) -> list[str] | None:
    """The parts a ``--parts`` list names; None (after saying which) when one is unknown."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(known))
    if unknown:
        print(f"unknown parts: {unknown}", file=sys.stderr)
        return None
    return parts


@contextmanager
def benchmark_run(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """One benchmark run: SIGTERM unwinds it, a header line names the machine, every
    child is stopped at the end, then the wall time, and ``--json`` gets the results
    put in the yielded dict."""
    lifecycle.exit_on_sigterm()
    started = time.monotonic()
    print(f"{datetime.now(UTC):%Y-%m-%d}; {machine_info()}")
    out: dict[str, Any] = {"machine": machine_info(), "args": vars(args) | {"json": None}}
    try:
        yield out
    finally:
        lifecycle.stop_all()
    print(f"\n{time.monotonic() - started:.0f} s wall")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
