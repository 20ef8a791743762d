"""The load engine at scale, against the reference gateway in its own process, on loopback.

    python -m benchmarks.engine_scale [--parts memory,cpu,echo,gateway] [--json FILE]
                                      [--repeat N] [--budget S] [options of each part]

Parts (each bounded in time; every child process is killed on the way out):

* ``memory``: client RSS per established idle tunnel with DTLS up.  A fresh engine
  process (the engine API, one ``Swarm`` as ``loadgen run`` builds it) does a warm-up of
  sequential connects, reads its VmRSS, ramps to ``--memory-sessions`` (5,000) idle
  sessions, waits until every one is up on DTLS and settled, collects garbage and
  reads VmRSS again; (after - before) / sessions.  The gateway's RSS is read at the
  same two moments.
* ``cpu``: client CPU time per full connect (TLS, auth, CSTP CONNECT, DTLS up) against
  a gateway without a profile (``loadgen gateway --accept-any``), in this process:
  ``process_time`` around ``connect`` + ``wait_dtls`` of sequential connects, the
  all-in cost (logout and close included) of the same, and of 10 connects in flight;
  then a cProfile pass that says where the time goes.
* ``echo``: tunnel echo round trips per second per client core, over DTLS and over CSTP
  (``loadgen run --echo-every 0.001 --echo-count B``): counters and the client's
  CPU are read from its ``/metrics`` at both ends of a steady window.
* ``gateway``: the reference gateway holding ``--gateway-sessions`` (10,000) idle
  sessions in one process, clients spread over ``loadgen run --processes 2``; the
  gateway's RSS per session (VmRSS at the peak minus after a warm-up).

Figures are medians over ``--repeat`` runs where a part is repeated.  Traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import os
import pstats
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from benchmarks._util import (
    REPO_ROOT,
    BenchmarkError,
    Column,
    LineReader,
    ReferenceGateway,
    Tick,
    benchmark_run,
    median,
    num,
    parts_of,
    print_table,
    proc_rss_kib,
    spawn,
    watch_run,
)

__all__ = [
    "CpuResult",
    "EchoResult",
    "GatewayResult",
    "MemoryResult",
    "main",
    "part_cpu",
    "part_echo",
    "part_gateway",
    "part_memory",
]

CHILD_MEMORY = "_memory-child"


# -- part: memory -----------------------------------------------------------------


def _vmrss_self_kib() -> int:
    return proc_rss_kib(os.getpid())


def _task_count() -> int:
    """Every trio task of this run, walking the task tree from the root."""
    todo = [trio.lowlevel.current_root_task()]
    count = 0
    while todo:
        task = todo.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


def _traced_by_file(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, sessions: int
) -> list[tuple[str, float, float]]:
    """(file, bytes per session, blocks per session), largest first."""
    stats = after.compare_to(before, "filename")
    out = []
    for st in stats:
        name = st.traceback[0].filename
        for marker in ("site-packages/", f"{REPO_ROOT}/", "lib/python3.11/"):
            if marker in name:
                name = name.split(marker, 1)[1]
        out.append((name, st.size_diff / sessions, st.count_diff / sessions))
    return sorted(out, key=lambda x: -x[1])


async def _memory_child(
    url: str, ca: str, sessions: int, rate: float, timeout_s: float, *, trace: bool
) -> None:
    """Runs in a fresh process; talks to the parent with JSON lines on stdout.

    With ``trace``, tracemalloc follows the Python allocations from before the ramp
    to all up (its own bookkeeping then inflates the RSS figures).
    """
    from prometheus_client import CollectorRegistry

    from loadgen.engine.limits import raise_nofile_limit
    from loadgen.engine.loadmodel import ClosedModel
    from loadgen.engine.session import SessionConfig, open_session
    from loadgen.engine.swarm import Identity, Swarm, SwarmConfig
    from loadgen.engine.tls import TlsOptions, build_client_context
    from loadgen.engine.url import parse_gateway_url
    from loadgen.metrics.client import ClientMetrics
    from loadgen.proto.cstp import DisconnectReason

    def say(tag: str, **data: Any) -> None:
        print(f"{tag} {json.dumps(data)}", flush=True)

    raise_nofile_limit()
    tls = TlsOptions(cafile=ca)
    ctx = build_client_context(tls)
    base = SessionConfig(url=parse_gateway_url(url), username="", password="x", tls=tls)
    for n in range(20):  # warm-up: lazy imports, caches, the SSL session machinery
        cfg = SessionConfig(
            url=base.url, username=f"warm{n}", password="x", tls=tls, hostname=f"warm{n}"
        )
        async with open_session(cfg, ctx) as s:
            await s.connect()
            await s.wait_dtls()
            await s.disconnect(DisconnectReason.USER)
    metrics = ClientMetrics(CollectorRegistry())
    swarm = Swarm(
        SwarmConfig(base=base, duration_s=timeout_s),
        ssl_context=ctx,
        schedule=ClosedModel(sessions, rate),
        identities=lambda n: Identity(
            username=f"user{n + 1}", password="x", group=None, hostname=f"loadgen-{n}"
        ),
        metrics=metrics,
    )
    await trio.to_thread.run_sync(lambda: None)  # the worker thread exists before "before"
    gc.collect()
    if trace:
        tracemalloc.start(1)
    snap0 = tracemalloc.take_snapshot() if trace else None
    tasks0 = _task_count()
    say("READY", rss_kib=_vmrss_self_kib(), objects=len(gc.get_objects()))
    await trio.to_thread.run_sync(sys.stdin.readline)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(swarm.run)
        t0 = time.monotonic()
        st = swarm.stats
        while time.monotonic() - t0 < timeout_s - 10:
            await trio.sleep(0.5)
            if st.active["dtls"] + st.active["cstp"] + st.failed >= sessions and not st.connecting:
                break
        up_s = time.monotonic() - t0
        await trio.sleep(3.0)  # settle: DTLS keepalives, buffers, late frees
        gc.collect()
        held = max(1, st.active["dtls"] + st.active["cstp"])
        traced = None
        if snap0 is not None:
            traced = _traced_by_file(snap0, tracemalloc.take_snapshot(), held)
        say(
            "UP",
            rss_kib=_vmrss_self_kib(),
            objects=len(gc.get_objects()),
            tasks_per_session=(_task_count() - tasks0) / held,
            traced=traced,
            dtls=st.active["dtls"],
            cstp=st.active["cstp"],
            failed=st.failed,
            failures=st.failures,
            up_s=up_s,
            cpu_s=time.process_time(),
        )
        await trio.to_thread.run_sync(sys.stdin.readline)
        swarm.stop()
    say("DONE", closed=st.closed)


@dataclass(frozen=True)
class MemoryResult:
    sessions: int
    dtls: int
    cstp: int
    failed: int
    up_s: float
    client_kib_per_session: float
    client_rss_before_mib: float
    client_rss_after_mib: float
    objects_per_session: float
    tasks_per_session: float
    gateway_kib_per_session: float
    #: with --memory-trace: (file, bytes per session, blocks per session)
    traced: list[tuple[str, float, float]] | None


def part_memory(sessions: int, rate: float, timeout_s: float, trace: bool) -> MemoryResult:
    with ReferenceGateway(extra_args=["--accept-any"]) as gw:
        argv = [sys.executable, "-m", "benchmarks.engine_scale", CHILD_MEMORY, gw.url, gw.ca]
        argv += [str(sessions), str(rate), str(timeout_s), "trace" if trace else "-"]
        child = spawn(
            "memory child", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stop_grace_s=10.0
        )
        assert child.stdin is not None
        reader = LineReader(child.stdout)
        try:
            ready = reader.after("READY ", 60)
            gw_before = proc_rss_kib(gw.pid)
            child.stdin.write(b"go\n")
            child.stdin.flush()
            up = reader.after("UP ", timeout_s)
            gw_after = proc_rss_kib(gw.pid)
            child.stdin.write(b"stop\n")
            child.stdin.flush()
            reader.wait_for("DONE ", 60)
        finally:
            reader.close()
            child.stop()
    held = up["dtls"] + up["cstp"]
    if held == 0:
        raise BenchmarkError(f"no session came up: {up}")
    return MemoryResult(
        sessions=sessions,
        dtls=up["dtls"],
        cstp=up["cstp"],
        failed=up["failed"],
        up_s=up["up_s"],
        client_kib_per_session=(up["rss_kib"] - ready["rss_kib"]) / held,
        client_rss_before_mib=ready["rss_kib"] / 1024,
        client_rss_after_mib=up["rss_kib"] / 1024,
        objects_per_session=(up["objects"] - ready["objects"]) / held,
        tasks_per_session=up["tasks_per_session"],
        gateway_kib_per_session=(gw_after - gw_before) / held,
        traced=up["traced"],
    )


# -- part: CPU per connect -----------------------------------------------------------


_GENERIC = ("other C builtins", "other Python (stdlib)")
#: categories spent in C (OpenSSL, the kernel, Rust): not inflated by the profiler
_C_CATEGORIES = frozenset(
    {"OpenSSL: TLS handshake, read, write", "socket syscalls", "DTLS crypto (cryptography)"}
)


def _own_category(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    if filename == "~":  # a C function: its name says whose it is
        if "select.epoll" in name:
            return "waiting in epoll (idle, excluded)"
        if "_ssl." in name:
            return "OpenSSL: TLS handshake, read, write"
        if "_socket." in name or "socket.close" in name:
            return "socket syscalls"
        if "pyexpat" in name:
            return "XML parsing (expat, defusedxml)"
        if any(k in name for k in ("cryptography", "AESGCM", "hmac", "_hashlib", "HMAC")):
            return "DTLS crypto (cryptography)"
        return _GENERIC[0]
    path = filename.replace("\\", "/")
    for key, label in (
        ("/loadgen/proto/", "loadgen.proto (sans-IO)"),
        ("/loadgen/engine/", "loadgen.engine"),
        ("/loadgen/", "loadgen.engine"),
        ("/benchmarks/", "loadgen.engine"),  # the benchmark's own loop around open_session
        ("/trio/", "trio runtime (scheduler, sockets, SSLStream)"),
        ("trio.", "trio runtime (scheduler, sockets, SSLStream)"),
        ("outcome", "trio runtime (scheduler, sockets, SSLStream)"),
        ("/h11/", "h11 (HTTP/1.1)"),
        ("/cryptography/", "DTLS crypto (cryptography)"),
        ("/defusedxml/", "XML parsing (expat, defusedxml)"),
        ("/xml/", "XML parsing (expat, defusedxml)"),
        ("/ssl.py", "OpenSSL: TLS handshake, read, write"),
    ):
        if key in path:
            return label
    return _GENERIC[1]


def _attribute(raw: dict[tuple[str, int, str], Any]) -> dict[str, float]:
    """Own time per category; generic code (builtins, stdlib) goes to its callers.

    ``isinstance`` or ``contextlib`` called from trio is trio's cost: the own time of
    a generic function is split over its callers in proportion to the time each
    caller spent in it (pstats keeps that per caller), recursively up to a depth.
    """
    out: dict[str, float] = {}

    def give(func: tuple[str, int, str], seconds: float, depth: int) -> None:
        cat = _own_category(func)
        callers = raw[func][4] if func in raw else {}
        if cat not in _GENERIC or depth >= 6 or not callers:
            out[cat] = out.get(cat, 0.0) + seconds
            return
        shares = {c: v[2] for c, v in callers.items()}
        total = sum(shares.values())
        for caller, share in shares.items():
            part = seconds * share / total if total > 0 else seconds / len(shares)
            give(caller, part, depth + 1)

    for func, (_cc, _nc, tottime, _ct, _callers) in raw.items():
        give(func, tottime, 0)
    return out


@dataclass(frozen=True)
class CpuResult:
    connect_cpu_ms: float
    connect_wall_ms: float
    allin_cpu_ms: float
    concurrent_allin_cpu_ms: float
    concurrency: int
    profile: list[tuple[str, float]]
    profiled_ms: float
    top: list[tuple[str, float, int]]


async def _connect_many(
    url: str,
    ca: str,
    count: int,
    *,
    concurrency: int = 1,
    per_connect: list[tuple[float, float]] | None = None,
) -> None:
    from loadgen.engine.session import SessionConfig, open_session
    from loadgen.engine.tls import TlsOptions, build_client_context
    from loadgen.engine.url import parse_gateway_url
    from loadgen.proto.cstp import DisconnectReason

    tls = TlsOptions(cafile=ca)
    ctx = build_client_context(tls)
    gw = parse_gateway_url(url)
    counter = iter(range(count))

    async def worker() -> None:
        for n in counter:
            cfg = SessionConfig(
                url=gw, username=f"user{n + 1}", password="x", tls=tls, hostname=f"lg-{n}"
            )
            with trio.fail_after(20):
                async with open_session(cfg, ctx) as s:
                    w0, c0 = time.perf_counter(), time.process_time()
                    await s.connect()
                    await s.wait_dtls()
                    w1, c1 = time.perf_counter(), time.process_time()
                    if s.tunnel is None or s.tunnel.channel != "dtls":
                        raise BenchmarkError("a session did not get DTLS")
                    if per_connect is not None:
                        per_connect.append((c1 - c0, w1 - w0))
                    await s.disconnect(DisconnectReason.USER)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


def part_cpu(connects: int, profile_connects: int, repeat: int) -> CpuResult:
    with ReferenceGateway(extra_args=["--accept-any"]) as gw:
        trio.run(lambda: _connect_many(gw.url, gw.ca, 30))  # warm-up
        per_batch_cpu, per_batch_wall, allin, conc = [], [], [], []
        concurrency = 10
        for _ in range(repeat):
            samples: list[tuple[float, float]] = []
            c0 = time.process_time()
            trio.run(partial(_connect_many, gw.url, gw.ca, connects, per_connect=samples))
            allin.append((time.process_time() - c0) / connects * 1000)
            per_batch_cpu.append(median([c for c, _ in samples]) * 1000)
            per_batch_wall.append(median([w for _, w in samples]) * 1000)
            c0 = time.process_time()
            trio.run(lambda: _connect_many(gw.url, gw.ca, connects, concurrency=concurrency))
            conc.append((time.process_time() - c0) / connects * 1000)
        prof = cProfile.Profile()
        prof.enable()
        trio.run(lambda: _connect_many(gw.url, gw.ca, profile_connects))
        prof.disable()
    stats = pstats.Stats(prof)
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    by_cat = _attribute(raw)
    by_cat.pop("waiting in epoll (idle, excluded)", None)
    top = [
        (f"{Path(func[0]).name}:{func[1]}({func[2]})", tottime, ncalls)
        for func, (_cc, ncalls, tottime, _ct, _callers) in raw.items()
    ]
    total = sum(by_cat.values())
    profile = sorted(
        ((k, v / profile_connects * 1000) for k, v in by_cat.items()), key=lambda kv: -kv[1]
    )
    top = sorted(
        ((n, t / profile_connects * 1000, c) for n, t, c in top if "select.epoll" not in n),
        key=lambda x: -x[1],
    )[:12]
    return CpuResult(
        connect_cpu_ms=median(per_batch_cpu),
        connect_wall_ms=median(per_batch_wall),
        allin_cpu_ms=median(allin),
        concurrent_allin_cpu_ms=median(conc),
        concurrency=concurrency,
        profile=profile,
        profiled_ms=total / profile_connects * 1000,
        top=top,
    )


# -- part: echo ------------------------------------------------------------------------


@dataclass(frozen=True)
class EchoResult:
    channel: str
    sessions: int
    burst: int
    rt_per_s: float
    client_cpu_fraction: float
    rt_per_client_cpu_s: float
    gateway_cpu_fraction: float
    rt_per_gateway_cpu_s: float
    lost: float
    rtt_p50_ms: float | None
    saturated: bool | None


def _window(ticks: list[Tick], start_s: float, length_s: float) -> tuple[Tick, Tick]:
    inside = [t for t in ticks if t.t >= start_s]
    if not inside:
        raise BenchmarkError("the run ended before the measuring window")
    first = inside[0]
    last = next((t for t in inside if t.t >= first.t + length_s), inside[-1])
    if last.t - first.t < length_s / 2:
        raise BenchmarkError("the measuring window is too short")
    return first, last


def part_echo(channel: str, sessions: int, burst: int, window_s: float) -> EchoResult:
    ramp_s = 2.0
    duration = ramp_s + 2.0 + window_s + 2.0
    with ReferenceGateway(extra_args=["--accept-any"]) as gw:
        args = [gw.url, "--cafile", gw.ca, "--sessions", str(sessions)]
        args += ["--rate", str(sessions / ramp_s), "--duration", str(duration)]
        args += ["--echo-every", "0.001", "--echo-count", str(burst), "--echo-timeout", "2"]
        if channel == "cstp":
            args.append("--no-dtls")
        watch = watch_run(args, gateway_pid=gw.pid, timeout_s=duration + 40)
    a, b = _window(watch.ticks, ramp_s + 2.0, window_s)
    if watch.summary is None or a.gateway_cpu_s is None or b.gateway_cpu_s is None:
        raise BenchmarkError(f"echo run failed: {watch.stderr_tail}")
    dt = b.t - a.t
    received = (b.echo_sent - b.echo_lost) - (a.echo_sent - a.echo_lost)
    ccpu = b.client_cpu_s - a.client_cpu_s
    gcpu = b.gateway_cpu_s - a.gateway_cpu_s
    rtt = watch.summary["echo"]["rtt_p50"]
    return EchoResult(
        channel=channel,
        sessions=sessions,
        burst=burst,
        rt_per_s=received / dt,
        client_cpu_fraction=ccpu / dt,
        rt_per_client_cpu_s=received / ccpu if ccpu > 0 else math.nan,
        gateway_cpu_fraction=gcpu / dt,
        rt_per_gateway_cpu_s=received / gcpu if gcpu > 0 else math.nan,
        lost=b.echo_lost - a.echo_lost,
        rtt_p50_ms=None if rtt is None else rtt * 1000,
        saturated=watch.summary["generator"]["saturated"],
    )


# -- part: the gateway with 10,000 sessions -----------------------------------------------


@dataclass(frozen=True)
class GatewayResult:
    target: int
    peak_active: int
    peak_at_s: float
    gateway_rss_before_mib: float
    gateway_rss_peak_mib: float
    gateway_kib_per_session: float
    client_rss_peak_mib: float
    failed: int
    failures: dict[str, Any]
    saturated: bool | None
    achieved_rate: float
    client_cpu_ms_per_connect: float
    gateway_cpu_ms_per_connect: float
    wall_s: float


def part_gateway(sessions: int, rate: float, budget_s: float) -> GatewayResult:
    # long enough for a ramp at a third of the asked rate; the run is stopped once
    # every session has been up for 3 s
    duration = min(budget_s, sessions / rate * 3 + 10.0)
    with ReferenceGateway(extra_args=["--accept-any"]) as gw:
        warm = watch_run(
            [gw.url, "--cafile", gw.ca, "--sessions", "50", "--rate", "50", "--duration", "3"],
            gateway_pid=gw.pid,
            timeout_s=60,
        )
        if warm.summary is None:
            raise BenchmarkError(f"warm-up failed: {warm.stderr_tail}")
        time.sleep(1.0)
        before = proc_rss_kib(gw.pid)
        args = [gw.url, "--cafile", gw.ca, "--sessions", str(sessions), "--rate", str(rate)]
        args += ["--duration", f"{duration:.0f}", "--echo-every", "0"]
        watch = watch_run(
            args,
            processes=2,
            gateway_pid=gw.pid,
            timeout_s=duration + 90,
            # all up and settled for a few polls: enough, stop early
            stop_when=lambda ticks: (
                len(ticks) > 12 and all(t.active >= sessions for t in ticks[-12:])
            ),
        )
    if not watch.ticks:
        raise BenchmarkError(f"no /metrics from the run: {watch.stderr_tail}")
    peak = max(watch.ticks, key=lambda t: (t.active, t.t))
    # the gateway's RSS at the last poll that still held the peak count
    held = [t for t in watch.ticks if t.active == peak.active and t.gateway_rss_kib]
    at = held[-1] if held else peak
    rss = at.gateway_rss_kib or 0
    first = next((t for t in watch.ticks if t.established > 0), watch.ticks[0])
    top = next((t for t in watch.ticks if t.established >= peak.active), peak)
    summary = watch.summary or {}
    ramp = top.established - first.established
    gcpu = (top.gateway_cpu_s or 0.0) - (first.gateway_cpu_s or 0.0)
    return GatewayResult(
        target=sessions,
        peak_active=int(peak.active),
        peak_at_s=top.t,
        gateway_rss_before_mib=before / 1024,
        gateway_rss_peak_mib=rss / 1024,
        gateway_kib_per_session=(rss - before) / peak.active if peak.active else math.nan,
        client_rss_peak_mib=max(t.client_rss_bytes for t in watch.ticks) / 2**20,
        failed=int(max(t.failed for t in watch.ticks)),
        failures=summary.get("failures", {}),
        saturated=summary.get("generator", {}).get("saturated"),
        achieved_rate=ramp / max(1e-9, top.t - first.t),
        client_cpu_ms_per_connect=(top.client_cpu_s - first.client_cpu_s) / ramp * 1000
        if ramp
        else math.nan,
        gateway_cpu_ms_per_connect=gcpu / ramp * 1000 if ramp else math.nan,
        wall_s=watch.wall_s,
    )


# -- report ---------------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report_memory(results: list[MemoryResult]) -> None:
    print("\nClient memory per established idle tunnel (DTLS up), reference gateway apart:\n")
    r0 = results[0]
    print_table(
        [Column(title="figure"), num("median (min-max)")],
        [
            ["sessions held (DTLS / CSTP / failed)", f"{r0.dtls} / {r0.cstp} / {r0.failed}"],
            ["client RSS before, MiB", _spread([r.client_rss_before_mib for r in results])],
            ["client RSS with all up, MiB", _spread([r.client_rss_after_mib for r in results])],
            ["client KiB per session", _spread([r.client_kib_per_session for r in results])],
            [
                "client Python objects per session",
                _spread([r.objects_per_session for r in results]),
            ],
            ["client trio tasks per session", _spread([r.tasks_per_session for r in results])],
            ["gateway KiB per session", _spread([r.gateway_kib_per_session for r in results])],
            ["ramp to all up, s", _spread([r.up_s for r in results])],
        ],
    )
    print(
        "peer: openconnect, one process per tunnel, peak RSS 16.9 MiB at DTLS up "
        "(benchmarks/README.md, connect_vs_openconnect)"
    )
    traced = next((r.traced for r in results if r.traced), None)
    if traced:
        total = sum(b for _, b, _ in traced)
        print(
            f"\nPython allocations per session (tracemalloc, by file; {total / 1024:.1f} KiB "
            "in all; RSS figures above are inflated by tracemalloc in this mode):\n"
        )
        rows = [[f, f"{b:,.0f}", f"{n:.1f}"] for f, b, n in traced[:15]]
        rest = traced[15:]
        rows.append(
            ["(the rest)", f"{sum(b for _, b, _ in rest):,.0f}", f"{sum(n for *_, n in rest):.1f}"]
        )
        print_table([Column(title="file"), num("bytes"), num("blocks")], rows)
        owners: dict[str, float] = {}
        for f, b, _ in traced:
            owner = "trio" if "trio" in f else "loadgen" if f.startswith("loadgen/") else "other"
            owners[owner] = owners.get(owner, 0.0) + b
        print(
            "by owner: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in sorted(owners.items()))
        )


def report_cpu(r: CpuResult) -> None:
    print("\nClient CPU per full connect with DTLS (gateway without a profile, in-process):\n")
    print_table(
        [Column(title="figure"), num("ms")],
        [
            ["connect + wait_dtls, CPU (median)", f"{r.connect_cpu_ms:.2f}"],
            ["connect + wait_dtls, wall (median)", f"{r.connect_wall_ms:.2f}"],
            ["all-in per session, sequential (CPU)", f"{r.allin_cpu_ms:.2f}"],
            [f"all-in per session, {r.concurrency} in flight (CPU)",
             f"{r.concurrent_allin_cpu_ms:.2f}"],
        ],
    )  # fmt: skip
    print(
        f"\nWhere the time goes (cProfile, sequential all-in; {r.profiled_ms:.2f} ms per session "
        "under the profiler, whose per-call overhead inflates the Python rows):\n"
    )
    # C calls cost the same under the profiler; Python code pays its per-call hooks.
    c_ms = sum(v for k, v in r.profile if k in _C_CATEGORIES)
    scale = max(0.0, r.allin_cpu_ms - c_ms) / max(1e-9, r.profiled_ms - c_ms)
    print_table(
        [Column(title="where"), num("ms profiled"), num("share"), num("ms est. unprofiled")],
        [
            [
                k,
                f"{v:.3f}",
                f"{v / r.profiled_ms:.0%}",
                f"{v if k in _C_CATEGORIES else v * scale:.2f}",
            ]
            for k, v in r.profile
        ],
    )
    print(
        f"(estimate: C rows as profiled, Python rows scaled by {scale:.2f} so that the "
        f"column adds up to the unprofiled all-in {r.allin_cpu_ms:.2f} ms)"
    )
    print("\nTop functions by own time:\n")
    print_table(
        [Column(title="function"), num("ms per session"), num("calls")],
        [[n, f"{t:.3f}", str(c)] for n, t, c in r.top],
    )


def report_echo(results: list[EchoResult]) -> None:
    print("\nEcho round trips (closed loop, loopback, reference gateway apart):\n")
    rows = []
    for ch in ("dtls", "cstp"):
        rs = [r for r in results if r.channel == ch]
        if not rs:
            continue
        rows.append(
            [
                ch,
                f"{rs[0].sessions}x{rs[0].burst}",
                _spread([r.rt_per_s for r in rs], "{:,.0f}"),
                _spread([r.client_cpu_fraction for r in rs], "{:.2f}"),
                _spread([r.rt_per_client_cpu_s for r in rs], "{:,.0f}"),
                _spread([r.gateway_cpu_fraction for r in rs], "{:.2f}"),
                _spread([r.rt_per_gateway_cpu_s for r in rs], "{:,.0f}"),
                _spread([r.rtt_p50_ms for r in rs if r.rtt_p50_ms is not None], "{:.1f}"),
                str(int(sum(r.lost for r in rs))),
                ",".join(sorted({str(r.saturated) for r in rs})),
            ]
        )
    print_table(
        [
            Column(title="channel"),
            num("sessionsxburst"),
            num("RT/s"),
            num("client cores"),
            num("RT per client CPU-s"),
            num("gateway cores"),
            num("RT per gateway CPU-s"),
            num("RTT p50 ms"),
            num("lost"),
            Column(title="saturated"),
        ],
        rows,
    )


def report_gateway(r: GatewayResult) -> None:
    print("\nReference gateway holding idle sessions in one process (clients: --processes 2):\n")
    print_table(
        [Column(title="figure"), num("value")],
        [
            ["sessions asked / held at peak", f"{r.target:,} / {r.peak_active:,}"],
            ["gateway RSS after warm-up, MiB", f"{r.gateway_rss_before_mib:.1f}"],
            ["gateway RSS at peak, MiB", f"{r.gateway_rss_peak_mib:.1f}"],
            ["gateway KiB per session", f"{r.gateway_kib_per_session:.1f}"],
            ["clients' RSS at peak (2 processes), MiB", f"{r.client_rss_peak_mib:.1f}"],
            ["achieved connect rate, sessions/s", f"{r.achieved_rate:.0f}"],
            ["clients' CPU per connect during the ramp, ms", f"{r.client_cpu_ms_per_connect:.1f}"],
            ["gateway CPU per connect during the ramp, ms", f"{r.gateway_cpu_ms_per_connect:.1f}"],
            ["all up after, s", f"{r.peak_at_s:.1f}"],
            ["failed sessions", f"{r.failed} {r.failures or ''}"],
            ["generator saturated", str(r.saturated)],
        ],
    )


# -- main -------------------------------------------------------------------------------------

PARTS = ("memory", "cpu", "echo", "gateway")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.engine_scale",
        description="The load engine at scale against the reference gateway on loopback.",
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    p.add_argument("--repeat", type=int, default=3, help="runs of memory, cpu, echo (default 3)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--memory-sessions", type=int, default=5000)
    p.add_argument("--memory-rate", type=float, default=250.0)
    p.add_argument(
        "--memory-trace",
        action="store_true",
        help="tracemalloc the Python allocations per session (inflates the RSS figures)",
    )
    p.add_argument("--connects", type=int, default=300, help="connects per CPU batch")
    p.add_argument("--profile-connects", type=int, default=200)
    p.add_argument("--echo-sessions", type=int, default=20)
    p.add_argument("--echo-burst", type=int, default=16)
    p.add_argument("--echo-window", type=float, default=8.0, help="seconds measured")
    p.add_argument("--gateway-sessions", type=int, default=10_000)
    p.add_argument("--gateway-rate", type=float, default=250.0)
    p.add_argument("--budget", type=float, default=240.0, help="bound of the gateway part's run, s")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == [CHILD_MEMORY]:
        url, ca, sessions, rate, timeout, trace = raw[1:7]
        child = partial(_memory_child, trace=trace == "trace")
        trio.run(child, url, ca, int(sessions), float(rate), float(timeout))
        return 0
    args = _parse_args(raw)
    parts = parts_of(args.parts, PARTS)
    if parts is None:
        return 2
    with benchmark_run(args) as out:
        if "memory" in parts:
            timeout = args.memory_sessions / args.memory_rate * 3 + 60
            mem = [
                part_memory(args.memory_sessions, args.memory_rate, timeout, args.memory_trace)
                for _ in range(args.repeat)
            ]
            out["memory"] = [vars(m) for m in mem]
            report_memory(mem)
        if "cpu" in parts:
            cpu = part_cpu(args.connects, args.profile_connects, args.repeat)
            out["cpu"] = vars(cpu)
            report_cpu(cpu)
        if "echo" in parts:
            echo = [
                part_echo(ch, args.echo_sessions, args.echo_burst, args.echo_window)
                for _ in range(args.repeat)
                for ch in ("dtls", "cstp")
            ]
            out["echo"] = [vars(e) for e in echo]
            report_echo(echo)
        if "gateway" in parts:
            gwr = part_gateway(args.gateway_sessions, args.gateway_rate, args.budget)
            out["gateway"] = vars(gwr)
            report_gateway(gwr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
