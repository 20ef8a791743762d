"""Reconnect storm: every user drops its tunnel at once and connects again.

    locust -f scenarios/storm.py --headless -u 1000 -r 100 -t 3m --storm-at 60 --csv storm

Plan:
  1. users connect and hold their tunnels with an echo every 2 s;
  2. at ``--storm-at`` seconds after the test start, every user drops its
     tunnel within ``--storm-jitter`` seconds (as after a gateway failover)
     and authenticates again: the ``reconnect`` row times each, and the
     phase rows show how the gateway copes with the burst;
  3. users echo again until the test stops, then disconnect.
"""

from __future__ import annotations

import random
import time
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import constant, events, task

from loadgen.locust import VpnUser

_started = [0.0]


def _options(parser: Any, **_kw: Any) -> None:
    parser.add_argument("--storm-at", type=float, default=60.0, help="seconds after the start")
    parser.add_argument("--storm-jitter", type=float, default=5.0, help="spread, seconds")


def _test_start(**_kw: Any) -> None:
    _started[0] = time.monotonic()


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_test_start)  # type: ignore[no-untyped-call]


class StormUser(VpnUser):
    wait_time = constant(2.0)

    def on_start(self) -> None:
        self.stormed = False
        super().on_start()

    @task
    def hold_then_storm(self) -> None:
        options = self.environment.parsed_options
        storm_at = float(getattr(options, "storm_at", 60.0))
        if not self.stormed and time.monotonic() - _started[0] >= storm_at:
            self.stormed = True
            gevent.sleep(random.uniform(0.0, float(getattr(options, "storm_jitter", 5.0))))
            self.vpn.reconnect()
        else:
            self.vpn.echo()
