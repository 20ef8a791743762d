"""Process lifecycle shared by the long-running commands and their embedded children.

A server command (``loadgen gateway``, ``loadgen faultproxy``) stops on SIGTERM
or SIGINT, and, when started as an embedded child with ``--exit-with-parent``,
when its parent is gone (polled: PR_SET_PDEATHSIG cannot be used, since trio
starts processes from a worker thread and the signal fires when that thread
ends).  The parent stops such a child with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import signal

import trio

__all__ = ["terminate", "watch_parent", "watch_signals"]

PARENT_POLL_S = 1.0
TERM_GRACE_S = 5.0


async def watch_signals(stop: trio.Event) -> None:
    """Set ``stop`` at the first SIGTERM or SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


async def watch_parent(parent_pid: int, stop: trio.Event) -> None:
    """Set ``stop`` once this process's parent is no longer ``parent_pid``."""
    while os.getppid() == parent_pid:
        await trio.sleep(PARENT_POLL_S)
    stop.set()


async def terminate(proc: trio.Process, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns once the child is reaped."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace_s):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
