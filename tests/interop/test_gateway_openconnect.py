"""The real openconnect 9.01 against our reference gateway, inside the test's
private network namespace: DTLS for each legacy cipher and a ping through
openconnect's tun device to the gateway's tunnel address."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.lab.ocserv import write_openconnect_script
from tests.helpers.gateway import GatewayProcess, gateway_process

pytestmark = pytest.mark.interop

POOL = "10.200.0.0/16"
GATEWAY_TUNNEL_IP = "10.200.0.1"


def _require_tools() -> None:
    for tool in ("openconnect", "ping", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install --test)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    _require_tools()
    with gateway_process(
        tmp_path_factory.mktemp("gw"), "--user", "alice:test", "--pool", POOL
    ) as gw:
        yield gw


class _Openconnect:
    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _openconnect(gw: GatewayProcess, tmp: Path, iface: str, *extra: str) -> _Openconnect:
    script = write_openconnect_script(tmp / "tun-script.sh")
    log = tmp / f"openconnect-{iface}.log"
    env = {**os.environ, "LOADGEN_TUN_PEER": GATEWAY_TUNNEL_IP}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                "openconnect",
                "--protocol=anyconnect",
                "--user=alice",
                "--passwd-on-stdin",
                f"--cafile={gw.ca_path}",
                f"--script={script}",
                f"--interface={iface}",
                "-v",
                *extra,
                gw.url,
            ],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    assert proc.stdin is not None
    proc.stdin.write("test\n")
    proc.stdin.close()
    return _Openconnect(proc, log)


def _wait_route(iface: str, timeout_s: float = 10.0) -> None:
    """openconnect runs the --script after it logs the connection: wait for its route."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        routes = subprocess.run(
            ["ip", "route", "show", "dev", iface], capture_output=True, text=True, check=False
        ).stdout
        if GATEWAY_TUNNEL_IP in routes:
            return
        time.sleep(0.05)
    raise AssertionError(f"no route to {GATEWAY_TUNNEL_IP} via {iface}")


@pytest.mark.parametrize(
    "cipher",
    # None: openconnect's default offer, PSK-NEGOTIATE first; the gateway picks legacy
    ["AES128-SHA", "AES256-SHA", "OC-DTLS1_2-AES128-GCM", "OC-DTLS1_2-AES256-GCM", None],
)
def test_openconnect_dtls_and_ping(
    gateway: GatewayProcess, tmp_path: Path, cipher: str | None
) -> None:
    iface = "tunlg" + str(abs(hash(cipher)) % 1000)
    extra = [] if cipher is None else [f"--dtls-ciphers={cipher}"]
    oc = _openconnect(gateway, tmp_path, iface, *extra)
    try:
        assert oc.wait_for("Established DTLS connection", 20), oc.output()[-3000:]
        assert "CSTP connected" in oc.output()
        if cipher is None:
            assert "PSK" not in oc.output().split("Established DTLS connection")[1].splitlines()[0]
        _wait_route(iface)
        ping = subprocess.run(
            ["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", iface, GATEWAY_TUNNEL_IP],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr + oc.output()[-2000:]
        assert " 0% packet loss" in ping.stdout
    finally:
        oc.stop()
    # openconnect says goodbye with DISCONNECT 0xb0 (it logs "Send BYE packet")
    assert "BYE" in oc.output() or oc.proc.returncode == 0


def test_openconnect_without_dtls_pings_over_cstp(gateway: GatewayProcess, tmp_path: Path) -> None:
    oc = _openconnect(gateway, tmp_path, "tunlgcstp", "--no-dtls")
    try:
        assert oc.wait_for("CSTP connected", 20), oc.output()[-3000:]
        _wait_route("tunlgcstp")
        ping = subprocess.run(
            ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", "tunlgcstp", GATEWAY_TUNNEL_IP],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        oc.stop()
