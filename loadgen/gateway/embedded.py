"""The embedded default target: the reference gateway as a child process on loopback.

Used when a command gets no gateway URL.  A separate process keeps the
gateway's CPU out of the client's measurements; it listens on a free port of
127.0.0.1, its CA goes to a private temporary directory, and it is stopped
(SIGTERM, then SIGKILL) when the caller is done, whatever happens.  If the
caller dies without cleaning up, the gateway notices its parent is gone and
exits (``--exit-with-parent``; PR_SET_PDEATHSIG cannot be used: trio starts
processes from a worker thread, and the signal fires when that thread ends).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from loadgen.lifecycle import terminate

__all__ = ["BANNER_CA", "BANNER_URL", "EmbeddedGateway", "embedded_gateway"]

#: the banner ``loadgen gateway`` prints on stdout once it listens (one place
#: for every reader: this module, the Locust client, the test fixture)
BANNER_URL = re.compile(r"gateway listening: (https://\S+)")
BANNER_CA = re.compile(r"CA certificate: (\S+)")


@dataclass(frozen=True, kw_only=True)
class EmbeddedGateway:
    url: str
    ca_path: Path
    metrics_port: int | None


class EmbeddedGatewayError(RuntimeError):
    pass


@asynccontextmanager
async def embedded_gateway(
    extra_args: Sequence[str] = (),
    *,
    metrics_port: int | None = None,
    start_timeout_s: float = 30.0,
) -> AsyncIterator[EmbeddedGateway]:
    with tempfile.TemporaryDirectory(prefix="loadgen-gateway-") as tmp:
        argv = [
            sys.executable,
            "-m",
            "loadgen",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--cert-dir",
            tmp,
            *extra_args,
        ]
        if metrics_port is not None:
            argv += ["--metrics-port", str(metrics_port)]
        log_path = Path(tmp) / "gateway.log"
        with log_path.open("wb") as log:
            proc = await trio.lowlevel.open_process(
                argv,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        try:
            url, ca = await _read_banner(proc, start_timeout_s, log_path)
            yield EmbeddedGateway(url=url, ca_path=ca, metrics_port=metrics_port)
        finally:
            with trio.CancelScope(shield=True):
                await terminate(proc)


async def _read_banner(proc: trio.Process, timeout_s: float, log_path: Path) -> tuple[str, Path]:
    assert proc.stdout is not None
    buf = b""
    url = ca = None
    with trio.move_on_after(timeout_s):
        while url is None or ca is None:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                break
            buf += chunk
            text = buf.decode("utf-8", "replace")
            if m := BANNER_URL.search(text):
                url = m.group(1)
            if m := BANNER_CA.search(text):
                ca = Path(m.group(1))
    if url is None or ca is None:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise EmbeddedGatewayError(f"the embedded gateway did not start: {tail}")
    return url, ca
