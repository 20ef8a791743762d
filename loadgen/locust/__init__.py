"""Locust integration: VPN users whose sessions run in a trio engine sidecar.

``VpnUser`` is imported lazily: the sidecar (``python -m
loadgen.locust.sidecar``) imports this package too, and must never import
Locust, whose gevent monkey-patching trio cannot run under.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadgen.locust.user import VpnConnection, VpnUser

__all__ = ["VpnConnection", "VpnUser"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from loadgen.locust import user

        return getattr(user, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
