"""Soak: long-lived tunnels with steady traffic, for hours if you like.

    locust -f scenarios/soak.py --headless -u 500 -r 20 -t 4h --csv soak

Plan:
  1. every user connects once (all phases, DTLS when the gateway offers it);
  2. holds its tunnel for the whole test, sending an echo burst every 5 s
     (steady traffic; watch ``echo`` rows and the RTT/loss panels);
  3. dead peer detection runs underneath: against the embedded gateway its
     DPD is 10 s, so DPD exchanges happen every few seconds;
  4. a tunnel that dies (DPD, gateway restart) shows as a ``tunnel`` failure
     and the user reconnects at its next echo;
  5. users disconnect when the test stops.
"""

from __future__ import annotations

from locust import constant, task

from loadgen.locust import VpnUser


class SoakUser(VpnUser):
    wait_time = constant(5.0)
    #: with no --host: DPD every 10 s on the embedded gateway
    embedded_gateway_args = ("--dpd", "10")

    @task
    def steady_echo(self) -> None:
        self.vpn.echo(count=5, interval_s=0.2)
