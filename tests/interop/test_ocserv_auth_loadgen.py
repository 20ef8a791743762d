"""loadgen logs in to the real ocserv 1.1.6 wherever openconnect does: certificates,
certificate and password, either of them, password and HOTP, and unescaped banners.

Each ocserv runs in the test's private network namespace (loopback only) with a
configuration of the kind ocserv's own test suite uses; ``loadgen connect`` and
``loadgen run`` are run as a user runs them.  The openconnect side of the same
setups is ``test_ocserv_auth_openconnect.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.hotp import HOTP

from loadgen.lab.ocserv import OcservConfig, OcservServer

pytestmark = pytest.mark.interop

HEX_KEY = "3132333435363738393031323334353637383930"
PASSWORD = "test-pw"
#: the Done-when figure: one run holds this many certificate sessions
RUN_SESSIONS = 500


def _require_ocserv() -> None:
    for tool in ("ocserv", "ocpasswd", "occtl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install --test)")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, OcservServer]]:
    """One ocserv per setup, started once for the module."""
    _require_ocserv()
    setups = {
        "certificate": OcservConfig(auth="certificate", udp_port=None),
        "certificate+plain": OcservConfig(
            auth="certificate+plain", users={"alice": PASSWORD}, udp_port=None
        ),
        "plain|certificate": OcservConfig(
            auth="plain|certificate", users={"alice": PASSWORD}, udp_port=None
        ),
        "otp": OcservConfig(users={"alice": PASSWORD}, otp_users={"alice": HEX_KEY}, udp_port=None),
        "banners": OcservConfig(
            users={"alice": PASSWORD},
            banner="Use <ctrl-c> to quit",
            pre_login_banner="Terms & Conditions apply",
            udp_port=None,
        ),
    }
    started: dict[str, OcservServer] = {}
    try:
        for name, config in setups.items():
            server = OcservServer(config)
            server.start()
            started[name] = server
        yield started
    finally:
        for server in started.values():
            server.stop()


def _connect(
    server: OcservServer, *args: str, user: str = "alice", password: str | None = PASSWORD
) -> tuple[dict[str, Any], str]:
    argv = [sys.executable, "-m", "loadgen", "connect", server.url, "--cafile", str(server.ca_path)]
    argv += ["--user", user, "--json", "--echo-count", "1", *args]
    if password is not None:
        argv.append("--password-stdin")
    proc = subprocess.run(
        argv,
        input="" if password is None else password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout), proc.stdout + proc.stderr


def _cert_args(server: OcservServer, cn: str) -> list[str]:
    cert, key = server.issue_user_cert(cn)
    return ["--certificate", str(cert), "--sslkey", str(key)]


def test_certificate_only(servers: dict[str, OcservServer]) -> None:
    server = servers["certificate"]
    report, _ = _connect(server, *_cert_args(server, "carol"), user="carol", password=None)
    assert report["ok"], report["error"]
    assert report["echo"]["received"] == 1
    # ocserv answers the init with the complete: no form, no auth phase
    assert "auth" not in report["phases"]


def test_certificate_only_without_one_is_certificate_required(
    servers: dict[str, OcservServer],
) -> None:
    report, _ = _connect(servers["certificate"], user="carol", password="unused")
    assert not report["ok"]
    assert report["error"]["reason"] == "certificate_required", report["error"]


def test_certificate_and_password(servers: dict[str, OcservServer]) -> None:
    server = servers["certificate+plain"]
    report, output = _connect(server, *_cert_args(server, "alice"))
    assert report["ok"], report["error"]
    assert PASSWORD not in output
    report, _ = _connect(server)
    assert report["error"]["reason"] == "certificate_required", report["error"]


@pytest.mark.parametrize("with_cert", [True, False])
def test_certificate_or_password(servers: dict[str, OcservServer], with_cert: bool) -> None:
    server = servers["plain|certificate"]
    args = _cert_args(server, "alice") if with_cert else []
    report, _ = _connect(server, *args, password=None if with_cert else PASSWORD)
    assert report["ok"], report["error"]


def test_password_and_hotp(servers: dict[str, OcservServer]) -> None:
    server = servers["otp"]
    report, _ = _connect(server)
    assert not report["ok"]
    assert report["error"]["reason"] == "second_factor_required", report["error"]
    secret = f"0x{HEX_KEY}"
    report, output = _connect(server, "--token-mode", "hotp", "--token-secret", secret)
    assert report["ok"], report["error"]
    code = HOTP(bytes.fromhex(HEX_KEY), 6, SHA1())
    assert code.generate(0).decode() not in output and HEX_KEY not in output
    # counter 0 is spent (ocserv writes it back): the next login takes counter 1
    report, _ = _connect(server, "--token-mode", "hotp", "--token-secret", f"{secret},1")
    assert report["ok"], report["error"]


def test_unescaped_banners(servers: dict[str, OcservServer]) -> None:
    report, _ = _connect(servers["banners"])
    assert report["ok"], report["error"]
    assert report["banner"] == {
        "pre_login": "Terms & Conditions apply",
        "login": "Use <ctrl-c> to quit",
    }


@pytest.fixture(scope="module")
def cert_run_server() -> Iterator[OcservServer]:
    _require_ocserv()
    config = OcservConfig(auth="certificate", predictable_ips=False, ipv4_network="10.78.0.0/16")
    with OcservServer(config) as server:
        yield server


def test_run_holds_500_sessions_with_a_certificate_each(
    cert_run_server: OcservServer, tmp_path: Path
) -> None:
    server = cert_run_server
    rows = ["username,certificate,sslkey"]
    for n in range(1, RUN_SESSIONS + 1):
        cert, key = server.issue_user_cert(f"user{n}")
        rows.append(f"user{n},{cert},{key}")
    credentials = tmp_path / "credentials.csv"
    credentials.write_text("\n".join(rows) + "\n")
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            *[sys.executable, "-m", "loadgen", "run", server.url, "--cafile", str(server.ca_path)],
            *["--credentials", str(credentials), "--sessions", str(RUN_SESSIONS)],
            *["--rate", "60", "--duration", "15", "--echo-every", "5", "--no-progress"],
            *["--summary", str(summary_path)],
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["sessions"] == {
        "started": RUN_SESSIONS,
        "established": RUN_SESSIONS,
        "failed": 0,
    }, summary.get("failures", summary)
