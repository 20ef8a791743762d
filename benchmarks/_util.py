"""Small helpers shared by the benchmarks: medians, a table printer, a machine line;
child processes that are always killed, the reference gateway as a child, and a
``loadgen run`` watched through its ``/metrics``."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

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
    "children",
    "free_port",
    "gc_paused",
    "install_signal_handlers",
    "machine_info",
    "median",
    "print_table",
    "proc_cpu_s",
    "proc_rss_kib",
    "scrape",
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
# (engine_scale.py and connect_rate.py)

REPO_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.25


class BenchmarkError(RuntimeError):
    """A part could not produce its figure; the message says why."""


# -- child processes ------------------------------------------------------------


def _set_pdeathsig() -> None:
    # Only safe from the main thread (the signal follows the forking thread).
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Children:
    """Every child of the benchmark, each in its own process group; all killed at the end."""

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - one prctl; spawned from the main thread
            **kw,
        )
        self.live[proc.pid] = proc
        return proc

    def stop(
        self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 15.0
    ) -> int | None:
        """Signal, wait (bounded), then SIGKILL the whole group; the exit code if any."""
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace_s)
            # the group: loadgen run's engine processes and embedded gateways
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        finally:
            self.live.pop(proc.pid, None)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        return proc.returncode

    def kill_all(self) -> None:
        for proc in list(self.live.values()):
            self.stop(proc, signal.SIGKILL, grace_s=2.0)


children = _Children()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that kill children


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a live process (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchmarkError(f"no VmRSS for pid {pid}")


def proc_cpu_s(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of a live process (s); with the CPU of its reaped children if asked."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
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
    """Lines of a child's stdout with a deadline (the child writes JSON lines)."""

    def __init__(self, stream: Any) -> None:
        self._fd: int = stream.fileno()
        os.set_blocking(self._fd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self._buf = b""
        self.lines: list[str] = []

    def close(self) -> None:
        self._sel.close()

    def wait_for(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if line.startswith(prefix):
                    self.lines.remove(line)
                    return line[len(prefix) :]
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sel.select(timeout=remaining):
                if time.monotonic() >= deadline:
                    break
                continue
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                break
            *done, self._buf = (self._buf + data).split(b"\n")
            self.lines += [d.decode(errors="replace") for d in done]
        raise BenchmarkError(f"child never printed {prefix!r}; last lines: {self.lines[-10:]}")


@dataclass
class ReferenceGateway:
    """``loadgen gateway`` on 127.0.0.1 (a free port), in its own process."""

    extra_args: Sequence[str] = ()
    metrics_port: int | None = None
    url: str = ""
    ca: str = ""
    pid: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> ReferenceGateway:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-gateway-")
        argv = [sys.executable, "-m", "loadgen", "gateway", "--listen", "127.0.0.1:0"]
        argv += ["--cert-dir", self._tmp.name, *self.extra_args]
        if self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        log = Path(self._tmp.name) / "gateway.log"
        with log.open("wb") as err:
            self._proc = children.spawn(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        self.pid = self._proc.pid
        reader = LineReader(self._proc.stdout)
        try:
            self.url = reader.wait_for("gateway listening: ", 30.0).strip()
            self.ca = reader.wait_for("CA certificate: ", 5.0).strip()
        except BenchmarkError as exc:
            self.__exit__()
            raise BenchmarkError(f"gateway did not start: {log.read_text()[-800:]}") from exc
        finally:
            reader.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            children.stop(self._proc, signal.SIGTERM, grace_s=10.0)
            self._proc = None
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
            proc = children.spawn(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
            )
        watch = RunWatch(code=None, wall_s=0.0)
        t0 = time.monotonic()
        stopped = False
        try:
            assert proc.stdin is not None
            proc.stdin.write(password.encode() + b"\n")
            proc.stdin.close()
            while proc.poll() is None and time.monotonic() - t0 < timeout_s:
                samples = scrape(ports)
                if samples is not None:
                    watch.ticks.append(_tick(time.monotonic() - t0, samples, gateway_probe))
                    if not stopped and stop_when is not None and stop_when(watch.ticks):
                        # the parent of --processes forwards nothing: signal the group
                        os.killpg(proc.pid, signal.SIGINT)
                        stopped = True
                time.sleep(poll_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
            watch.wall_s = time.monotonic() - t0
        finally:
            watch.code = children.stop(proc, signal.SIGINT, grace_s=20.0)
        with contextlib.suppress(OSError, ValueError):
            watch.summary = json.loads(summary_path.read_text())
        watch.stderr_tail = err_path.read_text(errors="replace")[-1500:]
    return watch
