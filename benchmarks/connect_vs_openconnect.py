"""Full connects with DTLS against the real ocserv: loadgen side by side with openconnect 9.01.

    python -m benchmarks.connect_vs_openconnect [--runs N] [--warmup W] [--timeout S]
                                                [--budget S] [--gap S] [--json FILE]
                                                [--clients openconnect,fresh,cli,inproc]
                                                [--openconnect-no-system-trust]

Run as root from the repository root.  The process first moves itself into a private
network namespace (loadgen/lab/netns.py): ocserv, openconnect's tun devices and every
packet of this benchmark exist only there.  ocserv 1.1.6 is started by the lab harness
(loadgen/lab/ocserv.py, DTLS on, no profile), then every round runs one full connect
(TLS, authentication, CSTP CONNECT, DTLS up) with each client, in a rotating order so that
machine noise spreads over all of them:

* ``openconnect``: ``openconnect --protocol=anyconnect --user=alice --passwd-on-stdin
  --cafile=CA --script=SCRIPT --interface=IFACE -v URL`` with the harness's address-only
  script (never vpnc-script).  Time from just before the spawn to the line "Established
  DTLS connection" on its output; at that line the process is stopped (SIGSTOP) while its
  CPU time (/proc/PID/task/*/schedstat, ns) and peak RSS (VmHWM) are read.  Then it may
  finish its tun set-up and is ended with SIGINT (it sends BYE).
* ``loadgen engine, fresh process``: a new interpreter (``python -m
  benchmarks._fresh_client``) importing only ``loadgen``, running ``open_session`` /
  ``connect`` / ``wait_dtls``; it prints a line when DTLS is up and blocks, and is
  sampled exactly like openconnect.
* ``loadgen connect (CLI)``: ``python -m loadgen connect URL --user alice --password-stdin
  --cafile CA --echo-count 0 --json --download off``.  Its DTLS-up moment is not visible from
  outside: connect time is its JSON ``phases.connect`` (phases 1-6), CPU and peak RSS are
  the whole process life (``wait4`` rusage: start-up, imports, connect, the two DPD probes
  of ``--json``, DISCONNECT, exit).
* ``loadgen engine, in-process``: the same engine calls in this process, with one shared
  SSL context as the load engine uses; wall ``perf_counter`` and CPU ``process_time``
  around ``connect`` + ``wait_dtls``; twice per round (see ``--gap`` below).

"connect → DTLS" starts where the client opens its TCP connection (openconnect: its
first output line, "POST https://..."; loadgen: the start of phase 1), "start → DTLS"
at the spawn.  Every figure is the median of the measured rounds (after ``--warmup``
untimed rounds), with min and max.  Each client starts after ``--gap`` idle seconds, so
all start from the same state: ocserv done with the previous session, the machine idle.
Starting from idle costs a warm process: here an in-process connect after 0.3 s of sleep
takes 1.2-1.5 times the wall and 1.7-2 times the CPU time of one started right after
another connect (cold caches, a halted vCPU).  Fresh processes warm up during their own
start-up.  So the in-process client connects twice per round, the second time
back-to-back, as connects follow each other in a load run.  Any failed connect aborts
the run; every child is killed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import trio

from benchmarks._fresh_client import MARK as CHILD_MARK
from benchmarks._util import (
    BenchmarkError,
    Column,
    LineReader,
    machine_info,
    median,
    num,
    print_table,
    proc_schedstat_ns,
    proc_status_kib,
    spawn,
)
from loadgen import lifecycle
from loadgen.engine.session import DownloadMode, SessionConfig, open_session
from loadgen.engine.tls import TlsOptions, build_client_context
from loadgen.engine.url import parse_gateway_url
from loadgen.lab.netns import enter_private_netns
from loadgen.lab.ocserv import OcservConfig, OcservServer, write_openconnect_script
from loadgen.lifecycle import Child
from loadgen.proto.cstp import DisconnectReason

__all__ = [
    "CLIENTS",
    "ROWS",
    "Sample",
    "main",
    "run_loadgen_cli",
    "run_loadgen_fresh",
    "run_loadgen_inprocess",
    "run_openconnect",
]

OPENCONNECT = "openconnect"
LOADGEN_FRESH = "loadgen engine, fresh process"
LOADGEN_CLI = "loadgen connect (CLI)"
LOADGEN_INPROC = "loadgen engine, in-process"
LOADGEN_INPROC_B2B = "loadgen engine, in-process, back-to-back"
CLIENTS = (OPENCONNECT, LOADGEN_FRESH, LOADGEN_CLI, LOADGEN_INPROC)
#: report rows: the in-process client yields two samples per round
ROWS = (*CLIENTS, LOADGEN_INPROC_B2B)
#: --clients keys
CLIENT_KEYS = {
    "openconnect": OPENCONNECT,
    "fresh": LOADGEN_FRESH,
    "cli": LOADGEN_CLI,
    "inproc": LOADGEN_INPROC,
}

USER = "alice"
DTLS_LINE = "Established DTLS connection"
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_STOP_GRACE_S = 5.0
_SETTLE_S = 2.0
_POLL_S = 0.002


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One connect of one client; None where the figure does not exist for that client."""

    client: str
    round: int
    #: spawn → DTLS up (processes sampled at DTLS up only)
    start_to_dtls_ms: float | None
    #: TCP connect → DTLS up
    connect_to_dtls_ms: float
    cpu_ms: float
    peak_rss_mib: float | None
    #: spawn → exit (the CLI only)
    process_ms: float | None = None
    #: "startup", "tls", "auth_connect", "dtls" (ms), as far as known
    steps_ms: dict[str, float] = field(default_factory=dict)
    dtls: str = ""


# -- processes ------------------------------------------------------------------


def _piped(name: str, argv: Sequence[str], **kw: Any) -> Child:
    """A client with stdin and stdout piped, stderr into stdout."""
    return spawn(
        name,
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stop_grace_s=_STOP_GRACE_S,
        **kw,
    )


def _pipes(child: Child) -> tuple[IO[bytes], LineReader]:
    """The child's stdin, and a line reader on its stdout."""
    if child.stdin is None or child.stdout is None:
        raise BenchmarkError("child spawned without its pipes")
    return child.stdin, LineReader(child.stdout)


def _left(t0: float, timeout_s: float) -> float:
    """What is left of ``timeout_s`` since ``t0`` (perf_counter)."""
    return t0 + timeout_s - time.perf_counter()


def _cpu_ms(pid: int) -> float:
    return proc_schedstat_ns(pid) / 1e6


def _vmhwm_mib(pid: int) -> float:
    return proc_status_kib(pid, "VmHWM") / 1024


def _iface_up(name: str) -> bool:
    # An ioctl on a socket of this namespace (sysfs would show the host's links).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH14x", name.encode(), 0))
        except OSError:
            return False
    return bool(struct.unpack_from("16sH", res)[1] & _IFF_UP)


def _wait_settled(pid: int, iface: str, timeout_s: float) -> None:
    """Until the tun script has set the link up and exited (bounded): a clean SIGINT."""
    deadline = time.monotonic() + timeout_s
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if _iface_up(iface) and not children.read_text().strip():
                return
        time.sleep(_POLL_S)


# -- the clients ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Lab:
    url: str
    cafile: str
    password: str
    tunnel_peer: str
    script: Path
    timeout_s: float
    openconnect_no_system_trust: bool
    ssl_context: Any


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _loadgen_steps(phases: dict[str, float]) -> dict[str, float]:
    return {
        "tls": _ms(phases.get("tls", 0.0)),
        "auth_connect": _ms(
            sum(phases.get(k, 0.0) for k in ("group_select", "auth", "download", "cstp_connect"))
        ),
        "dtls": _ms(phases.get("dtls", 0.0)),
    }


def run_openconnect(lab: Lab, rnd: int) -> Sample:
    iface = f"ocbench{rnd}"
    argv = [
        *["openconnect", "--protocol=anyconnect", "--passwd-on-stdin", "-v"],
        f"--user={USER}",
        f"--cafile={lab.cafile}",
        f"--script={lab.script}",
        f"--interface={iface}",
    ]
    if lab.openconnect_no_system_trust:
        argv.append("--no-system-trust")
    argv.append(lab.url)
    env = dict(os.environ, LOADGEN_TUN_PEER=lab.tunnel_peer)
    t0 = time.perf_counter()
    child = _piped(OPENCONNECT, argv, env=env, stop_signal=signal.SIGINT)
    stdin, reader = _pipes(child)
    try:
        stdin.write(lab.password.encode() + b"\n")
        stdin.close()
        t_dtls, line = reader.wait_for(DTLS_LINE, _left(t0, lab.timeout_s))
        os.kill(child.pid, signal.SIGSTOP)
        try:
            cpu, rss = _cpu_ms(child.pid), _vmhwm_mib(child.pid)
        finally:
            os.kill(child.pid, signal.SIGCONT)
        _wait_settled(child.pid, iface, _SETTLE_S)
    finally:
        reader.close()
        child.stop()  # SIGINT: it sends BYE
    t_post = reader.first("POST https://")
    t_https = reader.first("Connected to HTTPS")
    t_cstp = reader.first("CSTP connected")
    if t_post is None or t_https is None or t_cstp is None:
        raise BenchmarkError("openconnect output lacks the POST / HTTPS / CSTP lines")
    suite = line.split("Ciphersuite", 1)[-1].strip(" .")
    return Sample(
        client=OPENCONNECT,
        round=rnd,
        start_to_dtls_ms=_ms(t_dtls - t0),
        connect_to_dtls_ms=_ms(t_dtls - t_post),
        cpu_ms=cpu,
        peak_rss_mib=rss,
        steps_ms={
            "startup": _ms(t_post - t0),
            "tls": _ms(t_https - t_post),
            "auth_connect": _ms(t_cstp - t_https),
            "dtls": _ms(t_dtls - t_cstp),
        },
        dtls=suite,
    )


def run_loadgen_fresh(lab: Lab, rnd: int) -> Sample:
    argv = [sys.executable, "-m", "benchmarks._fresh_client", lab.url, lab.cafile, USER]
    t0 = time.perf_counter()
    child = _piped(LOADGEN_FRESH, argv)
    stdin, reader = _pipes(child)
    try:
        stdin.write(lab.password.encode() + b"\n")
        stdin.flush()
        t_up, line = reader.wait_for(CHILD_MARK, _left(t0, lab.timeout_s))
        cpu, rss = _cpu_ms(child.pid), _vmhwm_mib(child.pid)  # the child blocks on stdin
        with contextlib.suppress(BrokenPipeError):
            stdin.write(b"stop\n")
            stdin.close()
        child.wait_exited(_STOP_GRACE_S)  # it logs out (BYE) by itself
    finally:
        reader.close()
        child.stop()
    report = json.loads(line.split(CHILD_MARK, 1)[1])
    if report["channel"] != "dtls":
        raise BenchmarkError(f"loadgen (fresh process) did not get DTLS: {report}")
    connect_ms = _ms(report["connect_s"])
    return Sample(
        client=LOADGEN_FRESH,
        round=rnd,
        start_to_dtls_ms=_ms(t_up - t0),
        connect_to_dtls_ms=connect_ms,
        cpu_ms=cpu,
        peak_rss_mib=rss,
        steps_ms={"startup": _ms(t_up - t0) - connect_ms, **_loadgen_steps(report["phases"])},
        dtls=str(report["dtls"]),
    )


def run_loadgen_cli(lab: Lab, rnd: int) -> Sample:
    argv = [sys.executable, "-m", "loadgen", "connect", lab.url, "--user", USER, "--cafile"]
    argv += [lab.cafile, "--password-stdin", "--echo-count", "0", "--json", "--download", "off"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = spawn(LOADGEN_CLI, argv, stdin=subprocess.PIPE, stdout=out, stderr=err)
        try:
            if child.stdin is None:
                raise BenchmarkError("child spawned without stdin")
            child.stdin.write(lab.password.encode() + b"\n")
            child.stdin.close()
            # pidfd: woken at the exit itself, no polling delay in the process time
            pidfd = os.pidfd_open(child.pid)
            try:
                with selectors.DefaultSelector() as sel:
                    sel.register(pidfd, selectors.EVENT_READ)
                    sel.select(timeout=lab.timeout_s)
            finally:
                os.close(pidfd)
            t_exit = time.perf_counter()
            if not child.has_exited():
                raise BenchmarkError(f"loadgen connect did not exit within {lab.timeout_s} s")
        finally:
            child.stop(1.0, sig=signal.SIGKILL)  # reaped here: wait4 gives its rusage
        usage = child.rusage
        out.seek(0)
        err.seek(0)
        text, err_text = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if usage is None:
        raise BenchmarkError("no rusage for the loadgen connect process")
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"loadgen connect printed no JSON: {text[-500:]} {err_text}") from exc
    if not report.get("ok") or report.get("channel") != "dtls":
        raise BenchmarkError(f"loadgen connect failed or stayed on CSTP: {text[-1500:]}")
    dtls = report.get("dtls") or {}
    return Sample(
        client=LOADGEN_CLI,
        round=rnd,
        start_to_dtls_ms=None,
        connect_to_dtls_ms=_ms(report["phases"]["connect"]),
        cpu_ms=_ms(usage.ru_utime + usage.ru_stime),
        peak_rss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
        process_ms=_ms(t_exit - t0),
        steps_ms=_loadgen_steps(report["phases"]),
        dtls=f"{dtls.get('version')} {dtls.get('cipher')}",
    )


def _inprocess_once(lab: Lab, rnd: int, client: str) -> Sample:
    cfg = SessionConfig(
        url=parse_gateway_url(lab.url),
        username=USER,
        password=lab.password,
        tls=TlsOptions(cafile=lab.cafile),
        hostname="loadgen-1",
        download=DownloadMode.OFF,
    )
    result: dict[str, Any] = {}

    async def one() -> None:
        with trio.fail_after(lab.timeout_s):
            async with open_session(cfg, lab.ssl_context) as s:
                w0, c0 = time.perf_counter(), time.process_time()
                await s.connect()
                await s.wait_dtls()
                w1, c1 = time.perf_counter(), time.process_time()
                tunnel = s.tunnel
                if tunnel is None or tunnel.channel != "dtls" or tunnel.dtls is None:
                    raise BenchmarkError("loadgen (in-process) did not get DTLS")
                r = tunnel.dtls.report
                result.update(
                    wall=w1 - w0,
                    cpu=c1 - c0,
                    phases={str(k): v for k, v in s.phases.items()},
                    dtls=f"{r.version} {r.cipher}",
                )
                await s.disconnect(DisconnectReason.USER)

    trio.run(one)
    return Sample(
        client=client,
        round=rnd,
        start_to_dtls_ms=None,
        connect_to_dtls_ms=_ms(result["wall"]),
        cpu_ms=_ms(result["cpu"]),
        peak_rss_mib=None,
        steps_ms=_loadgen_steps(result["phases"]),
        dtls=result["dtls"],
    )


def run_loadgen_inprocess(lab: Lab, rnd: int) -> list[Sample]:
    """Two connects: the first after the idle gap, the second right after the first
    (a warm CPU and a warm ocserv, as in a load run, where connects follow each other)."""
    first = _inprocess_once(lab, rnd, LOADGEN_INPROC)
    return [first, _inprocess_once(lab, rnd, LOADGEN_INPROC_B2B)]


def _one(runner: Callable[[Lab, int], Sample]) -> Callable[[Lab, int], list[Sample]]:
    return lambda lab, rnd: [runner(lab, rnd)]


RUNNERS: dict[str, Callable[[Lab, int], list[Sample]]] = {
    OPENCONNECT: _one(run_openconnect),
    LOADGEN_FRESH: _one(run_loadgen_fresh),
    LOADGEN_CLI: _one(run_loadgen_cli),
    LOADGEN_INPROC: run_loadgen_inprocess,
}


# -- the report -----------------------------------------------------------------


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "—"
    return f"{median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


#: (key, title, how to read it from a sample)
_METRICS: tuple[tuple[str, str, Callable[[Sample], float | None]], ...] = (
    ("start", "start → DTLS ms", lambda s: s.start_to_dtls_ms),
    ("connect", "connect → DTLS ms", lambda s: s.connect_to_dtls_ms),
    ("cpu", "CPU ms", lambda s: s.cpu_ms),
    ("rss", "peak RSS MiB", lambda s: s.peak_rss_mib),
)
_STEPS = (
    ("startup", "spawn → TCP connect"),
    ("tls", "TCP + TLS"),
    ("auth_connect", "auth + CSTP CONNECT"),
    ("dtls", "DTLS handshake"),
)
NOTES = """\
CPU: openconnect and the fresh loadgen process from exec to DTLS up (schedstat, all threads);
the CLI over its whole life (wait4 rusage: interpreter start, imports, connect, DPD probes,
DISCONNECT, exit); in-process: connect + wait_dtls only (process_time), SSL context shared;
back-to-back: a second in-process connect right after the first (no idle gap before it).
RSS is per process, not per session: loadgen's includes the CPython interpreter and its
imports, and one loadgen process holds thousands of sessions (per-session memory is measured
by the load engine's benchmark)."""


def report(samples: Sequence[Sample]) -> None:
    """Print the three tables and the notes."""
    groups = {c: g for c in ROWS if (g := [s for s in samples if s.client == c])}
    figs = {
        c: {k: [v for s in g if (v := get(s)) is not None] for k, _, get in _METRICS}
        for c, g in groups.items()
    }
    print_table(
        [
            Column(title="client"),
            num("runs"),
            *(num(t) for _, t, _ in _METRICS),
            Column(title="DTLS"),
        ],
        [
            [
                c,
                str(len(g)),
                *(_spread(figs[c][k]) for k, _, _ in _METRICS),
                ", ".join(sorted({s.dtls for s in g})),
            ]
            for c, g in groups.items()
        ],
    )
    if LOADGEN_CLI in groups:
        spans = [s.process_ms for s in groups[LOADGEN_CLI] if s.process_ms is not None]
        print(f"\n{LOADGEN_CLI}, spawn → exit: {_spread(spans)} ms")
    if OPENCONNECT in groups and len(groups) > 1:
        oc = figs[OPENCONNECT]

        def ratio(a: list[float], b: list[float]) -> str:
            return f"{median(a) / median(b):.2f}" if a and b else "—"

        print("\nRatios loadgen / openconnect (of the medians):\n")
        print_table(
            [Column(title="client"), *(num(t.rsplit(" ", 1)[0]) for _, t, _ in _METRICS)],
            [
                [c, *(ratio(figs[c][k], oc[k]) for k, _, _ in _METRICS)]
                for c in groups
                if c != OPENCONNECT
            ],
        )
    print("\nWhere the time goes (ms):\n")
    print_table(
        [Column(title="client"), *(num(t) for _, t in _STEPS)],
        [
            [c, *(_spread([s.steps_ms[k] for s in g if k in s.steps_ms]) for k, _ in _STEPS)]
            for c, g in groups.items()
        ],
    )
    print("\n" + NOTES)


# -- main -----------------------------------------------------------------------


def _tool_version(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0] if text else "?"


def _orders(clients: tuple[str, ...], rounds: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Round r runs the clients rotated by r: each takes each slot in turn."""
    for r in range(rounds):
        k = r % len(clients)
        yield r, clients[k:] + clients[:k]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.connect_vs_openconnect",
        description="Full connects with DTLS against ocserv: loadgen and openconnect side "
        "by side (root; runs in a private network namespace).",
    )
    p.add_argument("--runs", type=int, default=10, help="measured rounds (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument(
        "--timeout", type=float, default=20.0, help="bound of each connect in s (default 20)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=150.0,
        help="start no new round after this many seconds (default 150)",
    )
    p.add_argument(
        "--gap",
        type=float,
        default=0.3,
        help="idle seconds before each connect, so that ocserv has finished tearing down "
        "the previous session (default 0.3)",
    )
    p.add_argument("--json", type=Path, help="also write every sample to this file")
    p.add_argument(
        "--openconnect-no-system-trust",
        action="store_true",
        help="pass --no-system-trust to openconnect (loadgen trusts only --cafile)",
    )
    p.add_argument(
        "--clients",
        default=",".join(CLIENT_KEYS),
        help=f"comma-separated subset of {','.join(CLIENT_KEYS)} (default: all)",
    )
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.clients.split(",") if k.strip()]
    if not keys or any(k not in CLIENT_KEYS for k in keys):
        p.error(f"--clients takes a subset of {','.join(CLIENT_KEYS)}")
    args.clients = tuple(c for k, c in CLIENT_KEYS.items() if k in keys)
    if args.runs < 1 or args.warmup < 0 or args.timeout <= 0 or args.gap < 0:
        p.error("--runs >= 1, --warmup >= 0, --timeout > 0, --gap >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # First, while single-threaded: everything below lives in a private network namespace.
    enter_private_netns()
    args = _parse_args(argv)
    lifecycle.exit_on_sigterm()  # unwinds through the clean-up below
    began = time.monotonic()
    samples: list[Sample] = []
    try:
        with (
            OcservServer(OcservConfig(predictable_ips=False)) as server,
            tempfile.TemporaryDirectory(prefix="oc-bench-") as tmp,
        ):
            lab = Lab(
                url=server.url,
                cafile=str(server.ca_path),
                password=server.config.users[USER],
                tunnel_peer=server.tunnel_peer_ipv4,
                script=write_openconnect_script(Path(tmp) / "tun-script.sh"),
                timeout_s=args.timeout,
                openconnect_no_system_trust=args.openconnect_no_system_trust,
                ssl_context=build_client_context(TlsOptions(cafile=str(server.ca_path))),
            )
            for r, order in _orders(args.clients, args.warmup + args.runs):
                if r >= args.warmup and time.monotonic() - began > args.budget:
                    print(
                        f"budget of {args.budget:g} s spent: stopped after {r - args.warmup} rounds"
                    )
                    break
                for client in order:
                    time.sleep(args.gap)
                    new = RUNNERS[client](lab, r)
                    if r >= args.warmup:
                        samples += new
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        lifecycle.stop_all()
    elapsed = time.monotonic() - began
    cmd = shlex.join(["python", "-m", "benchmarks.connect_vs_openconnect", *(argv or sys.argv[1:])])
    print(f"{cmd}  ({datetime.now(UTC):%Y-%m-%d})")
    print(machine_info())
    rounds = len({s.round for s in samples})
    print(
        f"{_tool_version(['ocserv', '--version'])}; {_tool_version(['openconnect', '--version'])}"
        f"; {rounds} rounds + {args.warmup} warm-up, {elapsed:.0f} s wall\n"
    )
    report(samples)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
