"""The reference gateway as a test fixture: a subprocess (``loadgen gateway``,
as users run it, through ``loadgen.gateway.embedded``'s spec and the one child
lifecycle) or in-process on a trio nursery."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.embedded import gateway_spec
from loadgen.gateway.pki import ensure_pki
from loadgen.gateway.server import Gateway
from loadgen.lifecycle import Child, start_child
from loadgen.metrics.gateway import GatewayMetrics

__all__ = ["GatewayProcess", "gateway_process", "start_gateway"]


@dataclass
class GatewayProcess:
    url: str
    ca_path: Path
    #: the child (Popen-like: ``pid``, ``send_signal``, ``wait``, ``poll``)
    proc: Child
    stderr_path: Path
    #: the ``metrics:`` line of the banner, with ``--metrics-port``
    metrics_url: str | None = None

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def gateway_process(
    cert_dir: Path, *args: str, start_timeout_s: float = 20.0
) -> Iterator[GatewayProcess]:
    """``loadgen gateway --listen 127.0.0.1:0 -v`` with ``args``, its CA and log
    (``gateway.log``) in ``cert_dir``; stopped by SIGTERM (then SIGKILL)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    spec = gateway_spec(cert_dir, ("-v", *args), start_timeout_s=start_timeout_s)
    with start_child(spec) as child:
        assert child.log_path is not None
        yield GatewayProcess(
            url=child.banner["url"],
            ca_path=Path(child.banner["ca"]),
            proc=child,
            stderr_path=child.log_path,
            metrics_url=child.banner.get("metrics"),
        )


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
