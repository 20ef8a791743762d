"""The web UI: plain ``locust -f scenarios/connect.py`` (no --headless), driven over HTTP.

The page loads, a swarm started from the form connects users through the
embedded gateway (started at init, before any swarm), ``/stats/requests``
shows every connect phase, ``/stop`` stops the users, and SIGTERM ends
Locust with no child left.  Loopback only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.helpers.locust_run import (
    PHASES,
    ROOT,
    SECRET,
    free_ports,
    kill_tagged,
    locust_argv,
    locust_env,
    new_tag,
    wait_none_left,
)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_web_ui_swarm_and_stop(tmp_path: Path) -> None:
    tag = new_tag("lgweb")
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "locust.log"
    argv = [
        *locust_argv(),
        "-f",
        "scenarios/connect.py",
        "--web-host",
        "127.0.0.1",
        "--web-port",
        str(port),
        "--vpn-metrics-port",
        "0",
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=locust_env(tag), stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                status, page = _get(base + "/")
                break
            except OSError:
                time.sleep(0.3)
        assert status == 200, log.read_text()[-3000:]
        assert b"locust" in page.lower()
        # the password option is not in the page at all (masking would still ship it)
        assert SECRET.encode() not in page
        assert b"vpn_password" not in page and b"vpn-password" not in page
        # old spellings of options work but are not offered
        assert b"deprecated_vpn" not in page and b"vpn-user-pattern" not in page

        form = urllib.parse.urlencode({"user_count": 4, "spawn_rate": 4}).encode()
        with urllib.request.urlopen(base + "/swarm", data=form, timeout=5) as resp:
            assert json.loads(resp.read())["success"] is True

        names: dict[str, int] = {}
        while time.monotonic() < deadline:
            _, body = _get(base + "/stats/requests")
            stats = json.loads(body)["stats"]
            names = {s["name"]: s["num_requests"] for s in stats if s.get("method") == "connect"}
            if all(names.get(p, 0) >= 4 for p in PHASES):
                break
            time.sleep(0.5)
        assert all(names.get(p, 0) == 4 for p in PHASES), names
        failures = json.loads(_get(base + "/stats/requests")[1])["stats"]
        assert all(s["num_failures"] == 0 for s in failures), failures

        with urllib.request.urlopen(base + "/stop", data=b"", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert wait_none_left(tag, 10.0) == [], log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_tagged(tag)
