"""Private network namespaces: ``loadgen.lab.netns`` (the benchmarks and
``scripts/ocserv-lab`` use it too), re-exported for the tests."""

from __future__ import annotations

from loadgen.lab.netns import (
    CLONE_NEWNET,
    NetnsError,
    bring_up_loopback,
    can_create_netns,
    ensure_private_netns,
    enter_private_netns,
    in_private_netns,
    link_names,
)

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
