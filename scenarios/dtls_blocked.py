"""Chaos: UDP blocked for a window mid-run; tunnels must survive on TLS and come back to DTLS.

    locust -f scenarios/dtls_blocked.py --headless -u 200 -r 2 -t 6m \\
        --block-at 60 --block-for 120 --csv dtls_blocked

Plan:
  1. the fault proxy (``--faultproxy URL``, or one started on loopback) sits in front
     of the gateway for TCP and for UDP; users connect through it;
  2. at ``--block-at`` seconds, UDP is blackholed both ways for ``--block-for`` seconds;
  3. during the window, established tunnels move to CSTP when DPD declares DTLS dead
     (the embedded gateway's DPD is 10 s so this takes seconds, not minutes), and new
     sessions fall back to CSTP after the 31 s DTLS schedule (``dtls`` rows fail with
     ``dtls/timeout``: an outcome, the session is up);
  4. after the window, every tunnel returns to DTLS at its next periodic re-attempt
     (``--vpn-dtls-reattempt``, 20 s here unless given);
  5. every user echoes every 2 s throughout: ``echo`` rows per channel show the move,
     and no echo may fail outside the window.
"""

from __future__ import annotations

from typing import Any

from locust import constant, events, task

from loadgen.locust import VpnUser
from loadgen.locust.chaos import FaultLab, Toxic, Window


def _options(parser: Any, **_kw: Any) -> None:
    parser.add_argument("--block-at", type=float, default=60.0, help="seconds after the start")
    parser.add_argument("--block-for", type=float, default=120.0, help="length of the block")


def _plan(options: Any) -> list[Window]:
    blackhole = [
        Toxic(proxy="dtls", type="blackhole", stream="upstream"),
        Toxic(proxy="dtls", type="blackhole", stream="downstream"),
    ]
    return [Window(at_s=options.block_at, for_s=options.block_for, toxics=blackhole)]


def _defaults(environment: Any, **_kw: Any) -> None:
    options = environment.parsed_options
    if options is not None and getattr(options, "vpn_dtls_reattempt", None) is None:
        options.vpn_dtls_reattempt = 20.0


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_defaults)  # type: ignore[no-untyped-call]
FaultLab.install(_plan)


class DtlsBlockedUser(VpnUser):
    wait_time = constant(2.0)
    embedded_gateway_args = ("--dpd", "10")

    @task
    def echo(self) -> None:
        self.vpn.echo(count=1)
