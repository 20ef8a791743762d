"""The fault proxy as a child process on loopback, for scenarios and tests.

``loadgen faultproxy`` runs in its own process: toxiproxy-python is blocking and keeps
its API address class-wide, and a Locust process is gevent-patched, so the proxy's
trio loop lives apart.  It listens on 127.0.0.1 (its API on a free port unless one
is asked for), prints one banner line with the API URL, and is stopped (SIGTERM,
then SIGKILL) when the caller is done.  If the caller dies without cleaning up, the
proxy notices its parent is gone and exits (``--exit-with-parent``).  When
``LOADGEN_LOCUST_TAG`` holds a valid tag (as for the Locust sidecars), the command
line carries ``--tag TAG`` so that tests can prove no proxy is left behind
(``pgrep -f``).  Both go through the one child lifecycle (``loadgen.lifecycle``).

Two flavours: :func:`embedded_faultproxy` for trio code, and
:func:`start_faultproxy_process` / :func:`stop_faultproxy_process` for plain
blocking code (a Locust scenario under gevent, a pytest fixture); no trio import
here, for the latter.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from loadgen.lifecycle import (
    START_TIMEOUT_S,
    Child,
    ChildSpec,
    ChildStartError,
    open_child,
    start_child,
)

__all__ = [
    "BANNER_URL",
    "EmbeddedFaultProxyError",
    "embedded_faultproxy",
    "faultproxy_argv",
    "faultproxy_spec",
    "start_faultproxy_process",
    "stop_faultproxy_process",
]

#: the banner ``loadgen faultproxy`` prints on stdout once its API listens
BANNER_URL = re.compile(r"faultproxy API: (http://\S+)")


class EmbeddedFaultProxyError(ChildStartError):
    pass


def faultproxy_spec(
    *,
    config: Path | None = None,
    port: int = 0,
    extra_args: Sequence[str] = (),
    start_timeout_s: float = START_TIMEOUT_S,
) -> ChildSpec:
    """``loadgen faultproxy --host 127.0.0.1 --port PORT``; the banner gives ``url``."""
    argv = [sys.executable, "-m", "loadgen", "faultproxy", "--host", "127.0.0.1"]
    argv += ["--port", str(port), *extra_args]
    if config is not None:
        argv += ["--config", str(config)]
    return ChildSpec(
        name="fault proxy",
        argv=argv,
        banner={"url": BANNER_URL},
        start_timeout_s=start_timeout_s,
        parent_flag="--exit-with-parent",
        tag_flag="--tag",
        error=EmbeddedFaultProxyError,
    )


def faultproxy_argv(
    *, config: Path | None = None, port: int = 0, extra_args: Sequence[str] = ()
) -> list[str]:
    """The command line as run (with ``--exit-with-parent`` and the tag)."""
    return faultproxy_spec(config=config, port=port, extra_args=extra_args).command()


@asynccontextmanager
async def embedded_faultproxy(
    *,
    config: Path | None = None,
    port: int = 0,
    extra_args: Sequence[str] = (),
    start_timeout_s: float = START_TIMEOUT_S,
) -> AsyncIterator[str]:
    """Start ``loadgen faultproxy``; yield its API URL (``http://127.0.0.1:PORT``)."""
    spec = faultproxy_spec(
        config=config, port=port, extra_args=extra_args, start_timeout_s=start_timeout_s
    )
    async with open_child(spec) as child:
        yield child.banner["url"]


def start_faultproxy_process(
    *,
    config: Path | None = None,
    port: int = 0,
    extra_args: Sequence[str] = (),
    start_timeout_s: float = START_TIMEOUT_S,
) -> tuple[Child, str]:
    """Blocking flavour: start ``loadgen faultproxy``; return the child and API URL.

    Stop it with :func:`stop_faultproxy_process` (or ``child.stop()``).  Its log
    goes to a private temporary directory and is quoted on a failed start.
    """
    spec = faultproxy_spec(
        config=config, port=port, extra_args=extra_args, start_timeout_s=start_timeout_s
    )
    child = start_child(spec)
    return child, child.banner["url"]


def stop_faultproxy_process(child: Child, *, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; idempotent."""
    child.stop(timeout_s)
