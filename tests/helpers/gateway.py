"""The reference gateway as a test fixture: a subprocess (``loadgen gateway``,
as users run it) or in-process on a trio nursery."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.embedded import BANNER_CA, BANNER_URL
from loadgen.gateway.pki import ensure_pki
from loadgen.gateway.server import Gateway
from loadgen.metrics.gateway import GatewayMetrics

__all__ = ["GatewayProcess", "gateway_process", "start_gateway"]


@dataclass
class GatewayProcess:
    url: str
    ca_path: Path
    proc: subprocess.Popen[str]
    stderr_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def gateway_process(
    cert_dir: Path, *args: str, start_timeout_s: float = 20.0
) -> Iterator[GatewayProcess]:
    """``loadgen gateway --listen 127.0.0.1:0`` with ``args``; stopped by SIGTERM."""
    stderr_path = cert_dir / "gateway.log"
    cert_dir.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadgen",
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--cert-dir",
                str(cert_dir),
                "-v",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        url = ca = None
        deadline = time.monotonic() + start_timeout_s
        assert proc.stdout is not None
        while (url is None or ca is None) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if m := BANNER_URL.search(line):
                url = m.group(1)
            if m := BANNER_CA.search(line):
                ca = m.group(1)
        if url is None or ca is None:
            raise RuntimeError(f"gateway did not start: {stderr_path.read_text()[-2000:]}")
        yield GatewayProcess(url=url, ca_path=Path(ca), proc=proc, stderr_path=stderr_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def start_gateway(
    nursery: trio.Nursery, cert_dir: Path, config: GatewayConfig, *, profile: bytes | None = None
) -> tuple[Gateway, Path]:
    """An in-process gateway on 127.0.0.1 (port from the config, 0 = free)."""
    pki = ensure_pki(cert_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert_path, pki.key_path)
    gateway = Gateway(config, ctx, GatewayMetrics(CollectorRegistry()))
    gateway.profile_body = profile
    await nursery.start(gateway.serve)
    return gateway, pki.ca_path


def url_of(gateway: Gateway) -> str:
    return f"https://127.0.0.1:{gateway.port}/"


def free_args(*pairs: Sequence[str]) -> list[str]:
    return [item for pair in pairs for item in pair]
