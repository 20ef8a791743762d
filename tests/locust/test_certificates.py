"""Plain ``locust -f scenarios/connect.py`` with a client certificate per user.

``loadgen gateway --auth certificate`` runs as a subprocess on loopback;
``loadgen pki`` issues the users' certificates under its CA; the credentials
file carries each user's certificate and key: the certificate is the whole
login, so a user whose certificate did not reach the handshake would fail
with ``certificate_required``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.gateway import gateway_process
from tests.helpers.locust_run import new_tag, run_locust, stats_rows

USERS = 6


def test_locust_users_log_in_with_their_own_certificates(tmp_path: Path) -> None:
    with gateway_process(tmp_path / "gw", "--auth", "certificate") as gw:
        pki = tmp_path / "pki"
        issued = subprocess.run(
            [
                *[sys.executable, "-m", "loadgen", "pki", "--out", str(pki)],
                *["--users", str(USERS), "--ca-dir", str(tmp_path / "gw"), "-q"],
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert issued.returncode == 0, issued.stderr
        prefix = tmp_path / "out"
        proc = run_locust(
            [
                *["-f", "scenarios/connect.py", "--headless", "-u", str(USERS), "-r", "6"],
                *["-t", "8s", "--host", gw.url, "--vpn-cafile", str(gw.ca_path)],
                *["--vpn-credentials", str(pki / "credentials.csv")],
                *["--vpn-metrics-port", "0", "--csv", str(prefix), "--only-summary"],
            ],
            tag=new_tag("lgcert"),
        )
    log = proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = stats_rows(prefix)
    connect = {r["Name"]: r for r in rows if r["Type"] == "connect"}
    assert int(connect["connect"]["Request Count"]) >= USERS, log
    for row in rows:
        assert row["Failure Count"] == "0", (row, log)
