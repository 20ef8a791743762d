"""The locustfile of ``locust_vs_engine``'s Locust path: users that hold their tunnel
and echo once every E seconds (``LOADGEN_BENCH_ECHO_EVERY_S``, default 3).

Each waits between 2E/3 and 4E/3, like ``scenarios/connect.py``: echoes in
synchronised bursts would batch the work and flatter the Locust path.
"""

from __future__ import annotations

import os

from locust import between, task

from loadgen.locust import VpnUser

__all__ = ["Holder"]

#: set by locust_vs_engine (its ECHO_EVERY_ENV)
_ECHO_EVERY_S = float(os.environ.get("LOADGEN_BENCH_ECHO_EVERY_S", "3"))


class Holder(VpnUser):
    wait_time = between(_ECHO_EVERY_S * 2 / 3, _ECHO_EVERY_S * 4 / 3)

    @task
    def echo(self) -> None:
        self.vpn.echo(count=1)
