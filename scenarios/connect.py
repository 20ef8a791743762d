"""Connect, hold, echo, disconnect: the basic tunnel test.

    locust -f scenarios/connect.py --headless -u 20 -r 10 -t 1m

Each user connects once (phases tls .. dtls show as ``connect`` rows), holds
its tunnel for the whole test with an ICMP echo burst every few seconds
(``echo`` rows per channel), and disconnects when the test stops.  Without
``--host`` the embedded reference gateway on loopback is the target.
Options: ``python -m loadgen.locust`` lists the ``--vpn-*`` options (Locust
prints its --help before loading this file): identities (--vpn-user with
{n}, or --vpn-credentials, --vpn-password or LOADGEN_VPN_PASSWORD,
--vpn-group), TLS trust (--vpn-cafile, --vpn-servercert, --vpn-servername,
--vpn-insecure), session (--vpn-timeout, --vpn-user-agent, --vpn-download),
DTLS (--vpn-no-dtls, cipher offers, --vpn-dtls-schedule, --vpn-dtls-reattempt,
--vpn-dtls-host/--vpn-dtls-port), echo (--vpn-echo-count, --vpn-echo-spacing,
--vpn-echo-size, --vpn-echo-target, ...), and metrics (--vpn-metrics-port: each
engine sidecar serves Prometheus metrics on this base port plus its worker
index, default 9646, 0: off; --prometheus-sd FILE: a Prometheus file_sd list
of the sidecars).  Distributed: the same file with --master (it starts the
embedded gateway) and --worker on each worker.
"""

from __future__ import annotations

from locust import between, task

from loadgen.locust import VpnUser


class TunnelHolder(VpnUser):
    wait_time = between(2.0, 4.0)

    @task
    def echo(self) -> None:
        self.vpn.echo()
