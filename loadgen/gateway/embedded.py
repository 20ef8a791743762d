"""The embedded default target: the reference gateway as a child process on loopback.

Used when a command gets no gateway URL, and by the Locust side, the benchmarks
and the test fixtures, all through :func:`gateway_spec` and the one child
lifecycle (``loadgen.lifecycle``).  A separate process keeps the gateway's CPU
out of the client's measurements; it listens on a free port of 127.0.0.1, its
CA and log go to a directory of the caller's (a private temporary one for
:func:`embedded_gateway`), and it is stopped (SIGTERM, then SIGKILL) when the
caller is done, whatever happens.  If the caller dies without cleaning up, the
gateway notices its parent is gone and exits (``--exit-with-parent``).

No trio import here: the Locust side (gevent) reads the banner patterns and
starts the gateway with the blocking runner.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from loadgen.lifecycle import START_TIMEOUT_S, ChildSpec, ChildStartError, open_child

__all__ = [
    "BANNER_CA",
    "BANNER_METRICS",
    "BANNER_URL",
    "EMBEDDED_PASSWORD",
    "EmbeddedGateway",
    "EmbeddedGatewayError",
    "embedded_gateway",
    "gateway_spec",
]

#: the embedded gateway accepts any user with any password; clients send this one
EMBEDDED_PASSWORD = "loadgen"
#: the banner ``loadgen gateway`` prints on stdout once it listens
BANNER_URL = re.compile(r"gateway listening: (https://\S+)")
BANNER_CA = re.compile(r"CA certificate: (\S+)")
#: printed after them when it serves ``--metrics-port``
BANNER_METRICS = re.compile(r"metrics: (http://\S+)")


@dataclass(frozen=True, kw_only=True)
class EmbeddedGateway:
    url: str
    ca_path: Path
    metrics_port: int | None


class EmbeddedGatewayError(ChildStartError):
    pass


def gateway_spec(
    cert_dir: Path,
    extra_args: Sequence[str] = (),
    *,
    metrics_port: int | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> ChildSpec:
    """``loadgen gateway --listen 127.0.0.1:0 --cert-dir CERT_DIR EXTRA_ARGS``: its CA
    and its log (``gateway.log``) in ``cert_dir``; the banner gives ``url``, ``ca``
    and, with ``--metrics-port``, ``metrics``."""
    argv = [sys.executable, "-m", "loadgen", "gateway", "--listen", "127.0.0.1:0"]
    argv += ["--cert-dir", str(cert_dir), *extra_args]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    banner: Mapping[str, re.Pattern[str]] = {"url": BANNER_URL, "ca": BANNER_CA}
    if "--metrics-port" in argv:
        banner = {**banner, "metrics": BANNER_METRICS}
    return ChildSpec(
        name="gateway",
        argv=argv,
        banner=banner,
        start_timeout_s=start_timeout_s,
        parent_flag="--exit-with-parent",
        log_dir=cert_dir,
        error=EmbeddedGatewayError,
    )


@asynccontextmanager
async def embedded_gateway(
    extra_args: Sequence[str] = (),
    *,
    metrics_port: int | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> AsyncIterator[EmbeddedGateway]:
    """The trio flavour, with a private temporary directory for the CA and the log."""
    with tempfile.TemporaryDirectory(prefix="loadgen-gateway-") as tmp:
        spec = gateway_spec(
            Path(tmp), extra_args, metrics_port=metrics_port, start_timeout_s=start_timeout_s
        )
        async with open_child(spec) as child:
            yield EmbeddedGateway(
                url=child.banner["url"],
                ca_path=Path(child.banner["ca"]),
                metrics_port=metrics_port,
            )
