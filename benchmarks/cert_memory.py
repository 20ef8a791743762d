"""Client memory per session, with and without a client certificate per identity.

Runs the reference gateway as a subprocess on loopback twice: ``--auth password``
and ``--auth certificate`` (the users' certificates from ``loadgen pki``, one per
identity, so every session has a TLS context of its own).  For each, one engine
process (``loadgen run``) holds N1 then N2 idle sessions (DTLS up, no echo, the
length of the run), and the slope of its peak RSS is the memory of one session:
what a run of N sessions adds, the interpreter and imports left out.

    python -m benchmarks.cert_memory [--small 200] [--large 1000] [--repeat 3]

Figures side by side: KiB per session without, with, and the difference (the
certificate's context).  Medians of ``--repeat`` runs; the machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loadgen.gateway.embedded import gateway_spec
from loadgen.lifecycle import start_child


def _peak_rss(url: str, ca: Path, sessions: int, extra: list[str], out: Path) -> float:
    summary = out / f"summary-{sessions}.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "loadgen", "run", url, "--cafile", str(ca),
            "--sessions", str(sessions), "--rate", "200", "--duration", str(8 + sessions / 150),
            "--echo-count", "0", "--no-progress", "--summary", str(summary), *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"loadgen run failed:\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(summary.read_text())
    if report["sessions"]["established"] != sessions:
        raise SystemExit(f"only {report['sessions']} established")
    return float(report["generator"]["peak_rss_bytes"]) / 1024


def _per_session(mode: str, small: int, large: int, work: Path, password_args: list[str]) -> float:
    gw_dir = work / f"gw-{mode}"
    gw_dir.mkdir(exist_ok=True)
    spec = gateway_spec(gw_dir, ("--auth", mode, "--max-sessions", str(large + 10)))
    with start_child(spec) as child:
        url, ca = child.banner["url"], Path(child.banner["ca"])
        extra = list(password_args)
        if mode == "certificate":
            pki = work / "pki"
            if not pki.exists():
                subprocess.run(
                    [
                        sys.executable, "-m", "loadgen", "pki", "--out", str(pki),
                        "--users", str(large), "--ca-dir", str(gw_dir), "-q",
                    ],
                    check=True,
                    timeout=300,
                )  # fmt: skip
            extra = ["--credentials", str(pki / "credentials.csv")]
        low = _peak_rss(url, ca, small, extra, work)
        high = _peak_rss(url, ca, large, extra, work)
    return (high - low) / (large - small)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    without: list[float] = []
    with_cert: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cert-memory-") as tmp:
        work = Path(tmp)
        # the certificate mode shares its CA with the password gateway's directory layout
        for _ in range(args.repeat):
            without.append(
                _per_session("password", args.small, args.large, work, ["--password", "x"])
            )
            with_cert.append(_per_session("certificate", args.small, args.large, work, []))
            print(f"run: {without[-1]:.1f} KiB without, {with_cert[-1]:.1f} KiB with", flush=True)
    a, b = statistics.median(without), statistics.median(with_cert)
    print(f"\nclient KiB per idle DTLS session ({args.small} -> {args.large} sessions, "
          f"median of {args.repeat}):")  # fmt: skip
    print(f"  without a certificate      {a:8.1f}   ({', '.join(f'{v:.1f}' for v in without)})")
    print(f"  a certificate per identity {b:8.1f}   ({', '.join(f'{v:.1f}' for v in with_cert)})")
    print(f"  difference                 {b - a:8.1f}   (ratio {b / a:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
