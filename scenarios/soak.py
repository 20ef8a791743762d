"""Soak: long-lived tunnels with steady traffic, for hours if you like.

    locust -f scenarios/soak.py --headless -u 500 -r 20 -t 4h --csv soak

Plan:
  1. every user connects once (all phases, DTLS when the gateway offers it);
  2. holds its tunnel for the whole test; every 5 s it sends an ICMP echo burst
     (``echo`` rows: RTT and loss) or, one time in four, 20 UDP datagrams of
     1000 B echoed by the gateway (``traffic`` rows: bytes through the tunnel);
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

    @task(3)
    def steady_echo(self) -> None:
        self.vpn.echo(count=5, spacing_s=0.2)

    @task(1)
    def steady_traffic(self) -> None:
        # 20 x 1000 B of UDP through the tunnel and back (the gateway's echo port 7)
        self.vpn.traffic(packets=20, size_bytes=1000, spacing_s=0.01)
