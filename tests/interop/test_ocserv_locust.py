"""Plain ``locust -f scenarios/connect.py`` against the real ocserv 1.1.6, in the test's netns.

The users of Locust process 0 are user1, user2, ...: ocserv knows exactly
these, and ``occtl show users`` must list every one while the run holds its
tunnels.  The stats CSV must show every connect phase and no failure.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.lab.ocserv import OcservConfig, OcservServer
from tests.helpers.locust_run import (
    PHASES,
    ROOT,
    kill_tagged,
    locust_argv,
    locust_env,
    new_tag,
    stats_rows,
    wait_none_left,
)
from tests.interop.test_ocserv_connect import _require_ocserv

pytestmark = pytest.mark.interop

USERS = 10
PASSWORD = "locust-pw"
NAMES = {f"user{n}" for n in range(1, USERS + 1)}


@pytest.fixture(scope="module")
def ocserv() -> Iterator[OcservServer]:
    _require_ocserv()
    config = OcservConfig(
        users=dict.fromkeys(sorted(NAMES), PASSWORD),
        predictable_ips=False,
        # a profile, so that the downloader phase runs too
        profile_xml="<?xml version='1.0'?><AnyConnectProfile><ServerList/></AnyConnectProfile>\n",
    )
    with OcservServer(config) as server:
        yield server


def test_locust_connect_scenario_against_ocserv(ocserv: OcservServer, tmp_path: Path) -> None:
    tag = new_tag("lgocs")
    prefix = tmp_path / "out"
    argv = [
        *locust_argv(),
        *["-f", "scenarios/connect.py", "--headless", "-u", str(USERS), "-r", str(USERS)],
        *["-t", "12s", "--csv", str(prefix), "--only-summary", "--host", ocserv.url],
        *["--vpn-cafile", str(ocserv.ca_path), "--vpn-metrics-port", "0"],
    ]
    env = locust_env(tag)
    env["LOADGEN_VPN_PASSWORD"] = PASSWORD
    log = tmp_path / "locust.log"
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        # while the users hold their tunnels, ocserv lists each of them
        deadline = time.monotonic() + 30
        names: set[str] = set()
        while names != NAMES and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            users = ocserv.occtl("show", "users")
            names = {u["Username"] for u in users} if isinstance(users, list) else set()
        assert names == NAMES, (sorted(names), log.read_text()[-3000:])
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        rows = stats_rows(prefix)
        connect = {r["Name"]: int(r["Request Count"]) for r in rows if r["Type"] == "connect"}
        assert sorted(connect) == sorted(PHASES), (connect, log.read_text()[-3000:])
        assert all(n == USERS for n in connect.values()), connect
        assert [r for r in rows if r["Type"] == "echo" and r["Name"] == "dtls"], rows
        assert all(r["Failure Count"] == "0" for r in rows), rows
        assert wait_none_left(tag, 10.0) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_tagged(tag)
