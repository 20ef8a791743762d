"""How fast ``loadgen pki`` issues client certificates, and what one client TLS context costs.

    python -m benchmarks.pki_issue [--batch 1000] [--repeat 3] [--full 10000] [--contexts 1000]

Issuing: ``loadgen.cli.pki.issue_users`` (ECDSA P-256 key, certificate signed by an
ECDSA CA, the ``.pem``/``.key`` files and ``credentials.csv`` written into a temporary
directory), wall time; the median of ``--repeat`` batches of ``--batch`` users scaled
to 10,000, then one full run of ``--full`` users.  ``0`` skips the full run.

Memory: the RSS growth of this process (``/proc/self/statm``, because tracemalloc
does not see OpenSSL's allocations) over ``--contexts`` live contexts, each from the
build function shown plus, except in the baseline rows, one user certificate loaded
by ``loadgen.engine.certs.load_into``; per context is the growth divided by the count,
each figure in a fresh interpreter.  The default run takes about 1.5 min, most of it
parsing the system store once per context.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._util import Column, gc_paused, machine_info, median, num, print_table
from loadgen.cli.pki import issue_users
from loadgen.engine.certs import ClientCertificate, load_into
from loadgen.gateway.pki import make_ca, write_cert

__all__ = ["context_kib", "issue_seconds", "main"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    # statm: size resident shared text lib data dt, in pages
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE


def issue_seconds(count: int, workdir: Path) -> float:
    """Wall time of issuing ``count`` users into a fresh directory under ``workdir``."""
    ca_cert, ca_key = make_ca("benchmark CA")
    out = Path(tempfile.mkdtemp(dir=workdir))
    (out / "users").mkdir()
    names = [f"user{n}" for n in range(1, count + 1)]
    with gc_paused():
        started = time.perf_counter()
        issue_users(out, names, ca_cert, ca_key)
        return time.perf_counter() - started


_BUILDS: dict[str, tuple[str, Callable[[str], ssl.SSLContext]]] = {
    "bare": ("SSLContext(PROTOCOL_TLS_CLIENT)", lambda _: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)),
    "cafile": (
        "create_default_context(cafile=test CA)",
        lambda cafile: ssl.create_default_context(cafile=cafile),
    ),
    "system": (
        "create_default_context() (system store)",
        lambda _: ssl.create_default_context(),
    ),
    # the hashed directory is read lazily, one CA when a chain needs it
    "capath": ("system store as capath only", lambda _: _capath_context()),
}


def _capath_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(capath=ssl.get_default_verify_paths().capath)
    return ctx


def context_kib(build: str, users: Path, count: int, *, with_cert: bool) -> float:
    """RSS growth per live context, measured in a fresh interpreter: a heap that
    freed earlier contexts would hide the growth."""
    argv = [sys.executable, "-m", "benchmarks.pki_issue", "--memory-child", build, str(users)]
    argv += [str(count), "1" if with_cert else "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    return float(proc.stdout.strip())


def _memory_child(build: str, users: Path, count: int, with_cert: bool) -> float:
    make = _BUILDS[build][1]
    cafile = str(users.parent / "ca.pem")
    certs = [
        ClientCertificate(str(users / f"ctx{n}.pem"), str(users / f"ctx{n}.key"))
        for n in range(count)
    ]
    warm = make(cafile)  # OpenSSL's one-time tables (error strings, providers) are not per context
    load_into(warm, certs[0])
    gc.collect()
    before = _rss_bytes()
    held = []
    for cert in certs:
        ctx = make(cafile)
        if with_cert:
            load_into(ctx, cert)
        held.append(ctx)
    return (_rss_bytes() - before) / len(held) / 1024


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pki_issue", description=__doc__)
    p.add_argument("--batch", type=int, default=1000, help="users per timed batch")
    p.add_argument("--repeat", type=int, default=3, help="timed batches")
    p.add_argument("--full", type=int, default=10000, help="users of the full run (0: none)")
    p.add_argument("--contexts", type=int, default=1000, help="contexts per memory figure")
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.memory_child is not None:
        build, users, count, with_cert = args.memory_child
        print(f"{_memory_child(build, Path(users), int(count), with_cert == '1'):.2f}")
        return 0
    command = "python -m benchmarks.pki_issue " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = datetime.now(UTC)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="pki-bench-") as tmp:
        work = Path(tmp)
        batches = [issue_seconds(args.batch, work) for _ in range(args.repeat)]
        full = issue_seconds(args.full, work) if args.full > 0 else None
        print("  issuing done", file=sys.stderr, flush=True)

        # the certificates of the memory figures: one per context, as one per identity
        ca_cert, ca_key = make_ca("benchmark CA")
        out = work / "contexts"
        (out / "users").mkdir(parents=True)
        issue_users(out, [f"ctx{n}" for n in range(args.contexts)], ca_cert, ca_key)
        write_cert(out / "ca.pem", ca_cert)
        memory = []
        for build, (title, _) in _BUILDS.items():
            base = context_kib(build, out / "users", args.contexts, with_cert=False)
            loaded = context_kib(build, out / "users", args.contexts, with_cert=True)
            memory.append((title, base, loaded))
        print("  memory done", file=sys.stderr, flush=True)

    per_10k = median(batches) * 10000 / args.batch
    print(f"$ {command.strip()}")
    print(f"{started:%Y-%m-%d %H:%M} UTC; {info}")
    print()
    rows = [[f"median of {args.repeat} x {args.batch}, scaled", f"{per_10k:.1f}"]]
    if full is not None:
        rows.append([f"one run of {args.full}", f"{full * 10000 / args.full:.1f}"])
    print_table([Column(title="issuing (ECDSA P-256, files written)"), num("s per 10,000")], rows)
    print()
    print_table(
        [
            Column(title=f"context (RSS growth over {args.contexts})"),
            num("KiB, no cert"),
            num("KiB, + ECDSA client cert"),
            num("cert's share KiB"),
        ],
        [[t, f"{b:.1f}", f"{c:.1f}", f"{c - b:.1f}"] for t, b, c in memory],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
