"""Connect rate: loadgen against the reference gateway, and loadgen vs openconnect on ocserv.

    python -m benchmarks.connect_rate [--parts gateway,ocserv] [--json FILE] [options]

Everything runs on one machine (here 2 cores), client and gateway together.

* ``gateway``: ``loadgen run URL --sessions R*RAMP --rate R --echo-every 0`` against
  ``loadgen gateway --accept-any`` (no groups, no profile: TLS, auth, CSTP CONNECT, DTLS)
  for each rate R of ``--rates``, then at the top rate with ``--processes 2`` and against
  the default gateway (two groups and a profile: group selection and a profile download
  over a second TLS connection, all six phases).  The run's ``/metrics`` is polled: the
  sustained rate is the sessions established from the first start until every
  session is up, over that time; the run is stopped (SIGINT: DISCONNECT, summary) once every session
  has been up for 2 s, or ends at 3 ramps + 5 s.  CPU per connect is the client's
  (its ``process_cpu_seconds_total``) and the gateway's (/proc) over that slope.
* ``ocserv``: as root, in a private network namespace (loadgen/lab/netns.py) with the
  real ocserv 1.1.6 from the lab harness (DTLS on, no profile, ``--ocserv-sessions``
  users): ``loadgen run`` with every session due at once (``--rate 1000``), then N
  parallel openconnect processes for each N of ``--parallel`` (a new one starts as
  soon as one reaches "Established DTLS connection"; each then holds its tunnel).  Rate
  = sessions / (time from the first start to the last DTLS up).  openconnect runs with
  the harness's address-only ``--script`` (never vpnc-script) and is ended with SIGINT.
  Between runs every session is gone from ``occtl show users``.

Figures are medians of ``--repeat`` runs (min-max).  Every child is killed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._util import (
    BenchmarkError,
    Column,
    ReferenceGateway,
    RunWatch,
    Tick,
    benchmark_run,
    median,
    num,
    parts_of,
    print_table,
    proc_rss_kib,
    proc_schedstat_ns,
    proc_stat_fields,
    spawn,
    watch_run,
)
from loadgen.lifecycle import Child

__all__ = [
    "OcservRate",
    "RateResult",
    "main",
    "openconnect_pool",
    "rate_against_gateway",
    "rate_against_ocserv_loadgen",
]

PASSWORD = "bench-pw"
DTLS_LINE = b"Established DTLS connection"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the reference gateway ----------------------------------------------------------------


@dataclass(frozen=True)
class RateResult:
    label: str
    offered: float
    sessions: int
    established: int
    failed: int
    sustained: float
    all_up_s: float | None
    connect_p50_ms: float | None
    connect_p95_ms: float | None
    client_cpu_ms: float
    gateway_cpu_ms: float
    client_cores: float
    gateway_cores: float
    saturated: bool | None
    failures: dict[str, Any] = field(default_factory=dict)


def _crossing(ticks: list[Tick], value: float) -> Tick | None:
    return next((t for t in ticks if t.established >= value), None)


def _all_up_for(sessions: int, seconds: float, poll_s: float) -> Any:
    polls = max(1, round(seconds / poll_s))

    def stop(ticks: list[Tick]) -> bool:
        return len(ticks) >= polls and all(t.active >= sessions for t in ticks[-polls:])

    return stop


def _result(label: str, offered: float, sessions: int, watch: RunWatch) -> RateResult:
    """Rate, CPU and cores from the first start to every session up (or the last poll).

    Not a 10-90 % slope: an overloaded engine shares the CPU among thousands of
    connects in flight, which then complete in bursts, so only the whole ramp counts.
    """
    summary = watch.summary
    if summary is None or not watch.ticks:
        raise BenchmarkError(f"{label}: no summary (exit {watch.code}): {watch.stderr_tail}")
    first = next((t for t in watch.ticks if t.started > 0), watch.ticks[0])
    up = _crossing(watch.ticks, sessions)
    end = up or max(watch.ticks, key=lambda t: t.established)
    span = end.t - first.t
    n = end.established - first.established
    connect = summary["phases"]["connect"]
    nan = float("nan")
    gcpu = nan
    if first.gateway_cpu_s is not None and end.gateway_cpu_s is not None:
        gcpu = end.gateway_cpu_s - first.gateway_cpu_s
    ccpu = end.client_cpu_s - first.client_cpu_s
    return RateResult(
        label=label,
        offered=offered,
        sessions=sessions,
        established=int(summary["sessions"]["established"]),
        failed=int(summary["sessions"]["failed"]),
        sustained=n / span if span > 0 else 0.0,
        all_up_s=None if up is None else span,
        connect_p50_ms=None if connect["p50"] is None else connect["p50"] * 1000,
        connect_p95_ms=None if connect["p95"] is None else connect["p95"] * 1000,
        client_cpu_ms=ccpu / n * 1000 if n > 0 else nan,
        gateway_cpu_ms=gcpu / n * 1000 if n > 0 else nan,
        client_cores=ccpu / span if span > 0 else nan,
        gateway_cores=gcpu / span if span > 0 else nan,
        saturated=summary["generator"]["saturated"],
        failures=summary["failures"],
    )


def rate_against_gateway(
    rate: float, ramp_s: float, *, processes: int = 1, profile: bool = False
) -> RateResult:
    sessions = round(rate * ramp_s)
    duration = 3 * ramp_s + 5
    extra = [] if profile else ["--accept-any"]
    label = f"{'six phases' if profile else 'no profile'}, {processes} process"
    label += "es" if processes > 1 else ""
    with ReferenceGateway(extra_args=extra) as gw:
        args = [gw.url, "--cafile", gw.ca, "--sessions", str(sessions), "--rate", str(rate)]
        args += ["--duration", str(duration), "--echo-every", "0"]
        watch = watch_run(
            args,
            processes=processes,
            gateway_pid=gw.pid,
            timeout_s=duration + 60,
            stop_when=_all_up_for(sessions, 2.0, 0.25),
        )
    return _result(label, rate, sessions, watch)


# -- ocserv -------------------------------------------------------------------------------


def group_cpu_s(pgid: int) -> float:
    """CPU of a process group: its live members, plus what the leader has reaped."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = proc_stat_fields(entry)
            if int(f[2]) == pgid:
                ticks += int(f[11]) + int(f[12])
                if int(entry) == pgid:
                    ticks += int(f[13]) + int(f[14])
    return ticks / _CLK_TCK


def _wait_no_users(server: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if not server.occtl("show", "users"):
                time.sleep(0.5)  # workers exiting
                return
        time.sleep(0.25)
    raise BenchmarkError("ocserv still lists sessions after the run")


@dataclass(frozen=True)
class OcservRate:
    client: str
    sessions: int
    established: int
    failed: int
    rate: float
    span_s: float
    client_cpu_ms: float
    ocserv_cpu_ms: float
    client_rss_mib_per_tunnel: float | None
    notes: str = ""


def rate_against_ocserv_loadgen(server: Any, sessions: int) -> OcservRate:
    pgid = server.pid
    assert pgid is not None
    offered = 1000.0
    args = [server.url, "--cafile", str(server.ca_path), "--user", "user{n}"]
    args += ["--sessions", str(sessions), "--rate", str(offered), "--duration", "60"]
    args += ["--echo-every", "0"]
    cpu0 = group_cpu_s(pgid)
    watch = watch_run(
        args,
        password=PASSWORD,
        timeout_s=120,
        stop_when=_all_up_for(sessions, 1.0, 0.05),
        poll_s=0.05,
        gateway_probe=lambda: (group_cpu_s(pgid), 0),
    )
    if watch.summary is None or not watch.ticks:
        raise BenchmarkError(f"loadgen on ocserv: no summary: {watch.stderr_tail}")
    first = next((t for t in watch.ticks if t.started > 0), watch.ticks[0])
    up = _crossing(watch.ticks, sessions) or watch.ticks[-1]
    established = int(up.established)
    # the poll before the first start is at most 50 ms earlier: count from there
    start_t = max(0.0, first.t - 0.05)
    span = up.t - start_t
    ocpu = (up.gateway_cpu_s or cpu0) - cpu0
    result = OcservRate(
        client="loadgen run (1 process)",
        sessions=sessions,
        established=established,
        failed=int(watch.summary["sessions"]["failed"]),
        rate=established / span if span > 0 else 0.0,
        span_s=span,
        client_cpu_ms=(up.client_cpu_s - first.client_cpu_s) / max(1, established) * 1000,
        ocserv_cpu_ms=ocpu / max(1, established) * 1000,
        client_rss_mib_per_tunnel=None,
        notes=f"connect p50 {watch.summary['phases']['connect']['p50'] * 1000:.0f} ms "
        f"(from the scheduled start), saturated {watch.summary['generator']['saturated']}",
    )
    _wait_no_users(server)
    return result


@dataclass
class _Oc:
    proc: Child
    user: str
    spawned: float
    up: float | None = None
    tail: bytes = b""


def openconnect_pool(
    server: Any, script: Path, sessions: int, parallel: int, timeout_s: float
) -> OcservRate:
    """``sessions`` openconnect processes, at most ``parallel`` connecting at a time."""
    pgid = server.pid
    assert pgid is not None
    env = dict(os.environ, LOADGEN_TUN_PEER=server.tunnel_peer_ipv4)
    base = ["openconnect", "--protocol=anyconnect", "--passwd-on-stdin", "-v"]
    base += [f"--cafile={server.ca_path}", f"--script={script}"]
    pending = list(range(1, sessions + 1))
    live: dict[int, _Oc] = {}
    failed: list[_Oc] = []
    sel = selectors.DefaultSelector()
    cpu0 = group_cpu_s(pgid)
    t0 = time.monotonic()
    connecting = 0
    last_up = t0
    try:
        while (pending or connecting) and time.monotonic() - t0 < timeout_s:
            while pending and connecting < parallel:
                n = pending.pop(0)
                argv = [*base, f"--user=user{n}", f"--interface=ocr{n}", server.url]
                proc = spawn(
                    "openconnect",
                    argv,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(PASSWORD.encode() + b"\n")
                proc.stdin.close()
                os.set_blocking(proc.stdout.fileno(), False)
                oc = _Oc(proc=proc, user=f"user{n}", spawned=time.monotonic())
                live[proc.pid] = oc
                sel.register(proc.stdout, selectors.EVENT_READ, oc)
                connecting += 1
            for key, _ in sel.select(timeout=0.05):
                oc = key.data
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:  # exited
                    sel.unregister(key.fileobj)
                    if oc.up is None:
                        connecting -= 1
                        failed.append(oc)
                    continue
                oc.tail = (oc.tail + data)[-4000:]
                if oc.up is None and DTLS_LINE in oc.tail:
                    oc.up = last_up = time.monotonic()
                    connecting -= 1
        ups = [oc for oc in live.values() if oc.up is not None]
        span = last_up - t0
        client_ns = 0
        rss = 0
        for oc in ups:
            with contextlib.suppress(OSError, IndexError, ValueError):
                # schedstat (ns) of its threads: ticks would round 18 ms to 10 or 20
                client_ns += proc_schedstat_ns(oc.proc.pid)
                f = proc_stat_fields(oc.proc.pid)
                client_ns += (int(f[13]) + int(f[14])) * 10**9 // _CLK_TCK  # its reaped script
                rss += proc_rss_kib(oc.proc.pid)
        ocpu = group_cpu_s(pgid) - cpu0
    finally:
        sel.close()
        for oc in live.values():
            oc.proc.send_signal(signal.SIGINT)  # BYE
        deadline = time.monotonic() + 15
        for oc in live.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                oc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for oc in live.values():
            oc.proc.stop(1.0, sig=signal.SIGKILL)
    note = ""
    if failed:
        note = f"{len(failed)} exited early, e.g. {failed[0].tail[-300:]!r}"
    result = OcservRate(
        client=f"openconnect, {parallel} in parallel",
        sessions=sessions,
        established=len(ups),
        failed=sessions - len(ups),
        rate=len(ups) / span if span > 0 else 0.0,
        span_s=span,
        client_cpu_ms=client_ns / 1e6 / max(1, len(ups)),
        ocserv_cpu_ms=ocpu / max(1, len(ups)) * 1000,
        client_rss_mib_per_tunnel=rss / 1024 / len(ups) if ups else None,
        notes=note,
    )
    _wait_no_users(server)
    return result


def part_ocserv(sessions: int, parallel: Sequence[int], repeat: int) -> list[OcservRate]:
    from loadgen.lab.ocserv import OcservConfig, OcservServer, write_openconnect_script

    users = {f"user{n}": PASSWORD for n in range(1, sessions + 1)}
    out: list[OcservRate] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-oc-") as tmp,
        OcservServer(OcservConfig(users=users, predictable_ips=False)) as server,
    ):
        script = write_openconnect_script(Path(tmp) / "tun-script.sh")
        # one untimed round of each: ocserv's first sessions pay its own warm-up
        rate_against_ocserv_loadgen(server, min(sessions, 20))
        openconnect_pool(server, script, min(sessions, 8), 8, 60)
        for _ in range(repeat):
            out.append(rate_against_ocserv_loadgen(server, sessions))
            out.extend(openconnect_pool(server, script, sessions, p, 180) for p in parallel)
    return out


# -- report -------------------------------------------------------------------------------


def _med(values: Sequence[float | None], fmt: str = "{:.1f}") -> str:
    vs = [v for v in values if v is not None and not math.isnan(v)]
    if not vs:
        return "—"
    if len(vs) == 1:
        return fmt.format(vs[0])
    return f"{fmt.format(median(vs))} ({fmt.format(min(vs))}-{fmt.format(max(vs))})"


def report_gateway(results: list[RateResult]) -> None:
    print("\nConnect rate against the reference gateway, both on this machine:\n")
    labels = list(dict.fromkeys((r.label, r.offered) for r in results))
    rows = []
    for label, offered in labels:
        rs = [r for r in results if (r.label, r.offered) == (label, offered)]
        rows.append(
            [
                label,
                f"{offered:.0f}",
                str(rs[0].sessions),
                _med([r.sustained for r in rs], "{:.0f}"),
                _med([r.all_up_s for r in rs]),
                f"{sum(r.failed for r in rs)}",
                _med([r.connect_p50_ms for r in rs], "{:.0f}"),
                _med([r.connect_p95_ms for r in rs], "{:.0f}"),
                _med([r.client_cpu_ms for r in rs], "{:.2f}"),
                _med([r.gateway_cpu_ms for r in rs], "{:.2f}"),
                _med([r.client_cores for r in rs], "{:.2f}"),
                _med([r.gateway_cores for r in rs], "{:.2f}"),
                ",".join(sorted({str(r.saturated) for r in rs})),
            ]
        )
    print_table(
        [
            Column(title="target"),
            num("--rate"),
            num("sessions"),
            num("sustained/s"),
            num("all up s"),
            num("failed"),
            num("connect p50 ms"),
            num("p95 ms"),
            num("client CPU ms/conn"),
            num("gateway CPU ms/conn"),
            num("client cores"),
            num("gateway cores"),
            Column(title="saturated"),
        ],
        rows,
    )
    for r in results:
        if r.failures:
            print(f"failures ({r.label}, --rate {r.offered:.0f}): {r.failures}")


def report_ocserv(results: list[OcservRate]) -> None:
    print("\nConnect rate against ocserv 1.1.6 (TLS, auth, CSTP, DTLS up), all on this machine:\n")
    rows = []
    for client in dict.fromkeys(r.client for r in results):
        rs = [r for r in results if r.client == client]
        rows.append(
            [
                client,
                f"{rs[0].sessions}",
                f"{sum(r.established for r in rs)}/{sum(r.sessions for r in rs)}",
                _med([r.rate for r in rs]),
                _med([r.span_s for r in rs], "{:.2f}"),
                _med([r.client_cpu_ms for r in rs]),
                _med([r.ocserv_cpu_ms for r in rs]),
                _med([r.client_rss_mib_per_tunnel for r in rs]),
            ]
        )
    print_table(
        [
            Column(title="client"),
            num("sessions"),
            num("up/asked"),
            num("sessions/s"),
            num("span s"),
            num("client CPU ms/session"),
            num("ocserv CPU ms/session"),
            num("client RSS MiB/tunnel"),
        ],
        rows,
    )
    for r in results:
        if r.notes:
            print(f"{r.client}: {r.notes}")


# -- main ---------------------------------------------------------------------------------

PARTS = ("gateway", "ocserv")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.connect_rate",
        description="Connect rate of loadgen against the reference gateway and ocserv "
        "(with openconnect side by side); the ocserv part needs root.",
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--rates", type=_ints, default=[100, 200, 300, 500], help="offered rates")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds of ramp per rate")
    p.add_argument("--ocserv-sessions", type=int, default=200)
    p.add_argument("--parallel", type=_ints, default=[8, 32], help="openconnect processes")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    parts = parts_of(args.parts, PARTS)
    if parts is None:
        return 2
    if "ocserv" in parts:
        # first, while single-threaded: ocserv, openconnect and every socket live there
        from loadgen.lab.netns import enter_private_netns

        enter_private_netns()
    with benchmark_run(args) as out:
        if "gateway" in parts:
            results: list[RateResult] = []
            top = max(args.rates)
            for _ in range(args.repeat):
                results += [rate_against_gateway(r, args.ramp) for r in args.rates]
                results.append(rate_against_gateway(top, args.ramp, processes=2))
                results.append(rate_against_gateway(top, args.ramp, profile=True))
            out["gateway"] = [vars(r) for r in results]
            report_gateway(results)
        if "ocserv" in parts:
            oc = part_ocserv(args.ocserv_sessions, args.parallel, args.repeat)
            out["ocserv"] = [vars(r) for r in oc]
            report_ocserv(oc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
