"""The real ocserv for the interop tests: ``loadgen.lab.ocserv`` (the benchmarks and
``scripts/ocserv-lab`` use it too), re-exported for the tests."""

from __future__ import annotations

from loadgen.lab.ocserv import (
    DEFAULT_PROFILE_XML,
    DEFAULT_TLS_PRIORITIES,
    OPENCONNECT_TUN_SCRIPT,
    NotInPrivateNetnsError,
    OcservConfig,
    OcservError,
    OcservServer,
    OcservStartError,
    free_port_pair,
    group_name,
    write_openconnect_script,
)

__all__ = [
    "DEFAULT_PROFILE_XML",
    "DEFAULT_TLS_PRIORITIES",
    "OPENCONNECT_TUN_SCRIPT",
    "NotInPrivateNetnsError",
    "OcservConfig",
    "OcservError",
    "OcservServer",
    "OcservStartError",
    "free_port_pair",
    "group_name",
    "write_openconnect_script",
]
