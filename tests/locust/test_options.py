"""The ``--vpn-*`` options that change who connects and how TLS is trusted, end to end.

A ``loadgen gateway`` with a users file is the target (``--host``), so it
checks every password: a credentials file split over two worker processes
connects every user once with its own password, wrong passwords fail as
``auth/auth_rejected``, and a certificate pin replaces the CA file.  The
``traffic`` task's rows carry the bytes echoed through the tunnel.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from tests.helpers.certs import spki_pin_sha256
from tests.helpers.gateway import GatewayProcess, gateway_process
from tests.helpers.locust_run import new_tag, run_locust, stats_rows

USERS = {f"crew{n}": f"secret-{n}-pw" for n in range(1, 5)}


@pytest.fixture
def gateway(tmp_path: Path) -> GatewayProcess:  # type: ignore[misc]
    users = tmp_path / "gw-users.txt"
    users.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    with gateway_process(tmp_path / "gw", "--users", str(users)) as gw:
        yield gw


def _rows(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["Type"], r["Name"]): r for r in stats_rows(prefix)}


def test_credentials_file_split_over_two_processes(tmp_path: Path, gateway: GatewayProcess) -> None:
    creds = tmp_path / "creds.txt"
    creds.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    prefix = tmp_path / "out"
    proc = run_locust(
        [
            *["-f", "scenarios/connect.py", "--processes", "2", "--headless", "-u", "4"],
            *["-r", "4", "-t", "10s", "--csv", str(prefix), "--only-summary"],
            *["--host", gateway.url, "--vpn-cafile", str(gateway.ca_path)],
            *["--vpn-credentials", str(creds), "--vpn-metrics-port", "0"],
        ],
        tag=new_tag("lgcreds"),
    )
    rows = _rows(prefix)
    # four distinct users, each once: a shared identity would evict a tunnel (a failure)
    assert int(rows[("connect", "connect")]["Request Count"]) == 4, proc.stderr[-3000:]
    assert all(r["Failure Count"] == "0" for r in rows.values()), rows
    assert all(p not in proc.stdout + proc.stderr for p in USERS.values())


def test_wrong_passwords_fail_auth(tmp_path: Path, gateway: GatewayProcess) -> None:
    creds = tmp_path / "creds.txt"
    creds.write_text("".join(f"{u}:not-{p}\n" for u, p in USERS.items()))
    prefix = tmp_path / "out"
    run_locust(
        [
            *["-f", "scenarios/connect.py", "--headless", "-u", "2", "-r", "2", "-t", "5s"],
            *["--csv", str(prefix), "--only-summary", "--exit-code-on-error", "0"],
            *["--host", gateway.url, "--vpn-cafile", str(gateway.ca_path)],
            *["--vpn-credentials", str(creds), "--vpn-metrics-port", "0"],
        ],
        tag=new_tag("lgbadpw"),
    )
    rows = _rows(prefix)
    auth = rows[("connect", "auth")]
    assert int(auth["Failure Count"]) == int(auth["Request Count"]) >= 2
    failures = Path(f"{prefix}_failures.csv").read_text()
    assert "auth/auth_rejected" in failures


def test_certificate_pin_replaces_the_ca(tmp_path: Path, gateway: GatewayProcess) -> None:
    cert = x509.load_pem_x509_certificate((tmp_path / "gw" / "server.pem").read_bytes())
    creds = tmp_path / "creds.txt"
    creds.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    for pin, ok in ((spki_pin_sha256(cert), True), ("sha1:" + "00" * 20, False)):
        prefix = tmp_path / f"out-{ok}"
        run_locust(
            [
                *["-f", "scenarios/connect.py", "--headless", "-u", "2", "-r", "2", "-t", "4s"],
                *["--csv", str(prefix), "--only-summary", "--exit-code-on-error", "0"],
                *["--host", gateway.url, "--vpn-servercert", pin],
                *["--vpn-credentials", str(creds), "--vpn-metrics-port", "0"],
            ],
            tag=new_tag("lgpin"),
        )
        tls = _rows(prefix)[("connect", "tls" if ok else "connect")]
        failed = int(tls["Failure Count"])
        assert (failed == 0) if ok else (failed == int(tls["Request Count"]) >= 2), (pin, tls)


TRAFFIC_LOCUSTFILE = """
from locust import constant, task
from loadgen.locust import VpnUser

class Mover(VpnUser):
    wait_time = constant(1.0)

    @task
    def move(self) -> None:
        self.vpn.traffic(packets=20, size_bytes=1000, spacing_s=0.005)
"""


def test_traffic_rows_carry_the_bytes_echoed(tmp_path: Path) -> None:
    locustfile = tmp_path / "traffic.py"
    locustfile.write_text(TRAFFIC_LOCUSTFILE)
    prefix = tmp_path / "out"
    run_locust(
        [
            *["-f", str(locustfile), "--headless", "-u", "2", "-r", "2", "-t", "6s"],
            *["--csv", str(prefix), "--only-summary", "--vpn-metrics-port", "0"],
        ],
        tag=new_tag("lgtraffic"),
    )
    row = _rows(prefix)[("traffic", "dtls")]
    assert int(row["Request Count"]) >= 4 and row["Failure Count"] == "0", row
    # every burst: 20 datagrams of 1000 B payload echoed back
    assert float(row["Average Content Size"]) == 20_000, row
