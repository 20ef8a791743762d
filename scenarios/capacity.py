"""Capacity: add users step by step until the gateway (or the generator) says stop.

    locust -f scenarios/capacity.py --headless --csv capacity \\
        --step-users 200 --step-seconds 60 --max-users 5000 --max-fail-ratio 0.01 --max-p95-ms 2000

Plan:
  1. start with ``--step-users`` users; every ``--step-seconds`` add as many;
  2. at the end of each step, judge that step alone: its ``connect`` failure
     ratio must stay under ``--max-fail-ratio`` and its ``connect`` p95 under
     ``--max-p95-ms``;
  3. the first step that breaks a bound ends the test, as does reaching
     ``--max-users``; the log names the last good step: that user count is
     the measured capacity (check the generator's saturation flag as well).
"""

from __future__ import annotations

import logging
from typing import Any

from locust import LoadTestShape, constant, events, task

from loadgen.locust import VpnUser

log = logging.getLogger("capacity")


def _options(parser: Any, **_kw: Any) -> None:
    parser.add_argument("--step-users", type=int, default=200, help="users added per step")
    parser.add_argument("--step-seconds", type=float, default=60.0, help="length of a step")
    parser.add_argument("--max-users", type=int, default=5000, help="stop at this many users")
    parser.add_argument("--max-fail-ratio", type=float, default=0.01, help="per step, 0..1")
    parser.add_argument("--max-p95-ms", type=float, default=2000.0, help="connect p95, per step")


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]


class CapacityUser(VpnUser):
    wait_time = constant(5.0)

    @task
    def echo(self) -> None:
        self.vpn.echo()


class StepUntilBroken(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.step = 0
        self.seen = (0, 0)  # connect requests and failures at the last step's end
        self.last_good = 0

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        step_users = int(getattr(opts, "step_users", 200))
        step_s = float(getattr(opts, "step_seconds", 60.0))
        max_users = int(getattr(opts, "max_users", 5000))
        step = int(self.get_run_time() // step_s)  # type: ignore[no-untyped-call]
        if step > self.step:
            self.step = step
            users = step * step_users
            ok = self._step_ok(users, opts)
            if ok:
                self.last_good = users
            if not ok or users >= max_users:
                log.info("capacity: last good step %d users", self.last_good)
                return None
        users = min(max_users, (self.step + 1) * step_users)
        return users, float(step_users)

    def _step_ok(self, users: int, opts: Any) -> bool:
        assert self.runner is not None
        entry = self.runner.stats.get("connect", "connect")
        requests, failures = entry.num_requests, entry.num_failures
        d_req, d_fail = requests - self.seen[0], failures - self.seen[1]
        self.seen = (requests, failures)
        ratio = d_fail / d_req if d_req else 0.0
        p95 = entry.get_current_response_time_percentile(0.95) or 0.0
        ok = ratio <= float(getattr(opts, "max_fail_ratio", 0.01)) and p95 <= float(
            getattr(opts, "max_p95_ms", 2000.0)
        )
        log.info(
            "capacity: step of %d users: %d connects, failure ratio %.3f, p95 %.0f ms: %s",
            users, d_req, ratio, p95, "ok" if ok else "BROKEN",
        )  # fmt: skip
        return ok
