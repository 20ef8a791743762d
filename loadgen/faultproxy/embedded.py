"""The fault proxy as a child process on loopback, for scenarios and tests.

``loadgen faultproxy`` runs in its own process: toxiproxy-python is blocking and keeps
its API address class-wide, and a Locust process is gevent-patched, so the proxy's
trio loop lives apart.  It listens on 127.0.0.1 (its API on a free port unless one
is asked for), prints one banner line with the API URL, and is stopped (SIGTERM,
then SIGKILL) when the caller is done.  If the caller dies without cleaning up, the
proxy notices its parent is gone and exits (``--exit-with-parent``, as the
embedded gateway does).  When ``LOADGEN_LOCUST_TAG`` holds a valid tag (as for the
Locust sidecars, loadgen.locust.client), the command line carries ``--tag TAG`` so
that tests can prove no proxy is left behind (``pgrep -f``).

Two flavours: :func:`embedded_faultproxy` for trio code, and
:func:`start_faultproxy_process` / :func:`stop_faultproxy_process` for plain
blocking code (a Locust scenario under gevent, a pytest fixture).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import trio

from loadgen.lifecycle import terminate

__all__ = [
    "BANNER_URL",
    "EmbeddedFaultProxyError",
    "embedded_faultproxy",
    "faultproxy_argv",
    "start_faultproxy_process",
    "stop_faultproxy_process",
]

#: the banner ``loadgen faultproxy`` prints on stdout once its API listens
BANNER_URL = re.compile(r"faultproxy API: (http://\S+)")
#: loadgen.locust.client.TAG_ENV, read here by name: that module imports gevent
TAG_ENV = "LOADGEN_LOCUST_TAG"
_TAG_OK = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _tag() -> str:
    tag = os.environ.get(TAG_ENV, "")
    return tag if _TAG_OK.fullmatch(tag) else ""


class EmbeddedFaultProxyError(RuntimeError):
    pass


def faultproxy_argv(
    *, config: Path | None = None, port: int = 0, extra_args: Sequence[str] = ()
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "loadgen",
        "faultproxy",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--exit-with-parent",
        str(os.getpid()),
        *extra_args,
    ]
    if config is not None:
        argv += ["--config", str(config)]
    if tag := _tag():
        argv += ["--tag", tag]
    return argv


@asynccontextmanager
async def embedded_faultproxy(
    *,
    config: Path | None = None,
    port: int = 0,
    extra_args: Sequence[str] = (),
    start_timeout_s: float = 30.0,
) -> AsyncIterator[str]:
    """Start ``loadgen faultproxy``; yield its API URL (``http://127.0.0.1:PORT``)."""
    argv = faultproxy_argv(config=config, port=port, extra_args=extra_args)
    with tempfile.TemporaryDirectory(prefix="loadgen-faultproxy-") as tmp:
        log_path = Path(tmp) / "faultproxy.log"
        with log_path.open("wb") as log:
            proc = await trio.lowlevel.open_process(
                argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
            )
        try:
            url = await _read_banner(proc, start_timeout_s, log_path)
            yield url
        finally:
            with trio.CancelScope(shield=True):
                await terminate(proc)


async def _read_banner(proc: trio.Process, timeout_s: float, log_path: Path) -> str:
    assert proc.stdout is not None
    buf = b""
    with trio.move_on_after(timeout_s):
        while True:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                break
            buf += chunk
            if m := BANNER_URL.search(buf.decode("utf-8", "replace")):
                return m.group(1)
    tail = log_path.read_text(errors="replace")[-1500:]
    raise EmbeddedFaultProxyError(f"the fault proxy did not start: {tail}")


def start_faultproxy_process(
    *,
    config: Path | None = None,
    port: int = 0,
    extra_args: Sequence[str] = (),
    start_timeout_s: float = 30.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Blocking flavour: start ``loadgen faultproxy``; return the process and API URL.

    Stop it with :func:`stop_faultproxy_process`.  Its logs go to a temporary file
    that is quoted on a failed start.
    """
    argv = faultproxy_argv(config=config, port=port, extra_args=extra_args)
    # the child keeps its own descriptor of the log: ours closes on return
    with tempfile.TemporaryFile(prefix="loadgen-faultproxy-") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            url = _read_banner_blocking(proc.stdout, start_timeout_s)
        except EmbeddedFaultProxyError:
            stop_faultproxy_process(proc)
            log.seek(0)
            tail = log.read()[-1500:].decode("utf-8", "replace")
            raise EmbeddedFaultProxyError(f"the fault proxy did not start: {tail}") from None
        except BaseException:
            stop_faultproxy_process(proc)
            raise
    return proc, url


def _read_banner_blocking(stdout: IO[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            if m := BANNER_URL.search(buf.decode("utf-8", "replace")):
                return m.group(1)
    raise EmbeddedFaultProxyError("no banner from the fault proxy")


def stop_faultproxy_process(proc: subprocess.Popen[bytes], *, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; idempotent."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
