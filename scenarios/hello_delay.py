"""Chaos: TLS and DTLS hellos delayed, as on a congested or inspecting path.

    locust -f scenarios/hello_delay.py --headless -u 100 -r 10 -t 5m \\
        --tls-delay-ms 1000 --dtls-delay-ms 2000 --delay-at 60 --delay-for 120 --csv hello

Plan:
  1. the fault proxy (``--faultproxy URL``, or one started on loopback) sits in front
     of the gateway for TCP and for UDP; users connect through it;
  2. from ``--delay-at`` seconds for ``--delay-for`` seconds, the first bytes of every
     TCP connection (the TLS ClientHello) wait ``--tls-delay-ms``, and DTLS handshake
     datagrams wait ``--dtls-delay-ms`` (data records pass untouched);
  3. every user reconnects every ``--reconnect-every`` seconds, so hellos keep coming:
     the ``tls`` and ``dtls`` rows (and ``download``, a second TLS connection) show the
     added delay inside the window, while ``echo`` RTTs stay flat (the gateway's end of
     the DTLS handshake waits too, since the client's last flight is a handshake
     datagram: the first echo after a connect may take one delay, hence its 5 s bound);
  4. sessions must still end up on DTLS: a hello delay is not a fallback.
"""

from __future__ import annotations

import time
from typing import Any

from locust import constant, events, task

from loadgen.locust import VpnUser
from loadgen.locust.chaos import FaultLab, Toxic, Window


def _options(parser: Any, **_kw: Any) -> None:
    parser.add_argument("--tls-delay-ms", type=float, default=1000.0, help="TLS hello delay")
    parser.add_argument("--dtls-delay-ms", type=float, default=2000.0, help="DTLS hello delay")
    parser.add_argument("--delay-at", type=float, default=60.0, help="seconds after the start")
    parser.add_argument("--delay-for", type=float, default=120.0, help="window length")
    parser.add_argument("--reconnect-every", type=float, default=20.0, help="seconds")


def _plan(options: Any) -> list[Window]:
    toxics = [
        Toxic(
            proxy="tls",
            type="hello_delay",
            stream="upstream",
            attributes={"delay": options.tls_delay_ms},
        ),
        Toxic(
            proxy="dtls",
            type="hello_delay",
            stream="upstream",
            attributes={"delay": options.dtls_delay_ms},
        ),
    ]
    return [Window(at_s=options.delay_at, for_s=options.delay_for, toxics=toxics)]


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
FaultLab.install(_plan)


class HelloDelayedUser(VpnUser):
    wait_time = constant(2.0)

    def on_start(self) -> None:
        super().on_start()
        self.connected_at = time.monotonic()

    @task
    def echo_and_reconnect(self) -> None:
        every = float(getattr(self.environment.parsed_options, "reconnect_every", 20.0))
        if time.monotonic() - self.connected_at >= every:
            self.vpn.reconnect()
            self.connected_at = time.monotonic()
        else:
            self.vpn.echo(count=1, timeout_s=5.0)
