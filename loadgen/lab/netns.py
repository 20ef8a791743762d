"""Private network namespaces for interop tests, benchmarks and the ocserv lab
(the network safety guard).

ocserv, its tun devices and its address pool must live only inside a network
namespace that we created (architecture.md, "Network safety in tests").  The
test process moves itself into a fresh namespace early, while it is still
single-threaded: ``unshare(CLONE_NEWNET)`` only moves the calling thread, and
every child started afterwards (ocserv, openconnect, ``ip``) inherits the new
namespace.  Python 3.11 has no ``os.unshare``, hence ctypes on libc.

A fresh namespace holds only ``lo``, and it is down: nothing (not even
127.0.0.1) works until it is brought up.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess

__all__ = [
    "CLONE_NEWNET",
    "NetnsError",
    "bring_up_loopback",
    "can_create_netns",
    "ensure_private_netns",
    "enter_private_netns",
    "in_private_netns",
    "link_names",
]

#: from <sched.h>
CLONE_NEWNET = 0x40000000

#: Linux gives the initial network namespace a fixed inode number
#: (PROC_NET_INIT_INO = 0xEFFFFFF9 in include/linux/proc_ns.h); seen here on the host.
_INIT_NET_INO = 0xEFFFFFF9
_MAX_ANCESTORS = 4096
_IP_TIMEOUT_S = 10.0


class NetnsError(RuntimeError):
    """Creating or checking the private network namespace failed."""


def _netns_inode(proc: str, pid: str) -> int:
    return os.stat(f"{proc}/{pid}/ns/net").st_ino


def _parent_pid(proc: str, pid: str) -> str | None:
    try:
        with open(f"{proc}/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("PPid:"):
                    ppid = line.split()[1]
                    return None if ppid == "0" else ppid
    except (OSError, IndexError):
        return None
    return None


def _host_netns_inode(proc: str) -> int | None:
    """The network namespace of the host, or None if no evidence is readable.

    First choice is PID 1's.  Some sandboxes (this Firecracker VM among them)
    deny reading ``/proc/1/ns/net`` even to root, so the fallback is the
    readable ancestor closest to PID 1: pytest, a benchmark or ``scripts/ocserv-lab``
    is started from a host shell, also when it runs under ``unshare -n``.
    """
    try:
        return _netns_inode(proc, "1")
    except OSError:
        pass
    oldest: int | None = None
    pid = _parent_pid(proc, "self")
    for _ in range(_MAX_ANCESTORS):
        if pid is None or pid == "1":
            break
        with contextlib.suppress(OSError):
            oldest = _netns_inode(proc, pid)
        pid = _parent_pid(proc, pid)
    return oldest


def in_private_netns(*, proc_root: str = "/proc") -> bool:
    """True if this process is in another network namespace than the host's.

    The host's namespace is PID 1's (or, if that is unreadable, the oldest
    readable ancestor's, see _host_netns_inode); the initial namespace, with its
    fixed inode number, never counts as private.  Without evidence the answer
    is False: the guard fails closed.  ``proc_root`` exists for tests.
    """
    try:
        own = _netns_inode(proc_root, "self")
    except OSError:
        return False
    if own == _INIT_NET_INO:
        return False
    host = _host_netns_inode(proc_root)
    return host is not None and own != host


def can_create_netns() -> bool:
    """True if this process may create a network namespace (root, with ``ip`` installed)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def link_names() -> list[str]:
    """Names of the network interfaces in the current namespace (via ``ip -j link``)."""
    proc = subprocess.run(
        ["ip", "-j", "link", "show"],
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT_S,
        check=True,
    )
    return [str(link["ifname"]) for link in json.loads(proc.stdout)]


def enter_private_netns() -> None:
    """Move the current process into a new, empty network namespace with ``lo`` up.

    Call it early (pytest start, script start) while the process has only one
    thread: the namespace belongs to the calling thread, and threads started
    before would stay on the host.  Raises NetnsError on any failure.
    """
    # /proc/self/task also counts threads that Python did not start (C libraries).
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise NetnsError(
            "enter_private_netns() must run while the process is single-threaded "
            f"({threads} threads alive); the other threads would stay in the host namespace"
        )
    if not can_create_netns():
        raise NetnsError("creating a network namespace needs root and the `ip` tool")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.unshare(ctypes.c_int(CLONE_NEWNET)) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)} (errno {errno})")
    if not in_private_netns():
        raise NetnsError("unshare(CLONE_NEWNET) returned 0 but the namespace did not change")
    bring_up_loopback()


def bring_up_loopback(*, require_empty: bool = True) -> None:
    """In a private namespace: set ``lo`` up; by default check that it is the only link.

    For processes started by ``unshare -n`` (which leaves ``lo`` down).  Pass
    ``require_empty=False`` in a namespace that may already hold tun devices.
    """
    if not in_private_netns():
        raise NetnsError("refusing to touch links outside a private network namespace")
    # The child `ip` inherits our (new) namespace.
    proc = subprocess.run(
        ["ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise NetnsError(f"`ip link set lo up` failed: {proc.stderr.strip()}")
    names = link_names()
    if require_empty and names != ["lo"]:
        raise NetnsError(f"new network namespace is not empty: interfaces {names}")


def ensure_private_netns() -> None:
    """Enter a new private network namespace unless this process already is in one."""
    if not in_private_netns():
        enter_private_netns()
