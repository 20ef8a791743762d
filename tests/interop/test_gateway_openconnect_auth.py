"""The real openconnect 9.01 logs in to our reference gateway's other auth modes, inside
the test's private network namespace: a client certificate (``--auth certificate``) and
a password then a one-time password (``--auth password+otp``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.gateway.pki import issue_client_cert, load_ca, make_ca, write_cert, write_key
from loadgen.lab.ocserv import write_openconnect_script
from loadgen.proto.otp import HotpCodes, TokenSecret
from tests.helpers.gateway import GatewayProcess, gateway_process
from tests.interop.test_gateway_openconnect import (
    GATEWAY_TUNNEL_IP,
    POOL,
    _Openconnect,
    _require_tools,
    _wait_route,
)

pytestmark = pytest.mark.interop

OTP_KEY = b"12345678901234567890"
#: RFC 4226 appendix D: counters 0 to 2 of OTP_KEY
HOTP_CODES = ("755224", "287082", "359152")


def _start(gw: GatewayProcess, tmp: Path, iface: str, stdin: str, *extra: str) -> _Openconnect:
    script = write_openconnect_script(tmp / "tun-script.sh")
    log = tmp / f"openconnect-{iface}.log"
    env = {**os.environ, "LOADGEN_TUN_PEER": GATEWAY_TUNNEL_IP}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                "openconnect",
                "--protocol=anyconnect",
                f"--cafile={gw.ca_path}",
                f"--script={script}",
                f"--interface={iface}",
                "--no-dtls",
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
    proc.stdin.write(stdin)
    proc.stdin.close()
    return _Openconnect(proc, log)


def _ping(iface: str) -> None:
    _wait_route(iface)
    ping = subprocess.run(
        ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", iface, GATEWAY_TUNNEL_IP],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr


# -- --auth certificate ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    _require_tools()
    with gateway_process(
        tmp_path_factory.mktemp("gw-cert"), "--auth", "certificate", "--pool", POOL
    ) as gw:
        yield gw


def _client_cert(tmp: Path, ca_dir: Path | None, cn: str) -> tuple[Path, Path]:
    ca_cert, ca_key = load_ca(ca_dir) if ca_dir is not None else make_ca("someone else's CA")
    cert, key = issue_client_cert(ca_cert, ca_key, cn)
    cert_path, key_path = tmp / f"{cn}.pem", tmp / f"{cn}-key.pem"
    write_cert(cert_path, cert)
    write_key(key_path, key)
    return cert_path, key_path


def test_openconnect_logs_in_with_a_client_certificate(
    cert_gateway: GatewayProcess, tmp_path: Path
) -> None:
    cert, key = _client_cert(tmp_path, cert_gateway.ca_path.parent, "carol")
    oc = _start(cert_gateway, tmp_path, "tunlgcert", "", f"--certificate={cert}", f"--sslkey={key}")
    try:
        assert oc.wait_for("CSTP connected", 20), oc.output()[-3000:]
        # no form was asked for: the init was answered with the cookie
        assert "Please enter your username" not in oc.output()
        _ping("tunlgcert")
    finally:
        oc.stop()


def test_openconnect_without_a_certificate_is_refused(
    cert_gateway: GatewayProcess, tmp_path: Path
) -> None:
    oc = _start(cert_gateway, tmp_path, "tunlgnocert", "", "--non-inter")
    try:
        assert oc.proc.wait(timeout=30) != 0
    finally:
        oc.stop()
    assert "No certificate" in oc.output() or "401" in oc.output(), oc.output()[-3000:]
    assert "CSTP connected" not in oc.output()


def test_openconnect_with_a_certificate_of_another_ca_is_refused(
    cert_gateway: GatewayProcess, tmp_path: Path
) -> None:
    cert, key = _client_cert(tmp_path, None, "carol")
    oc = _start(
        cert_gateway,
        tmp_path,
        "tunlgrogue",
        "",
        "--non-inter",
        f"--certificate={cert}",
        f"--sslkey={key}",
    )
    try:
        assert oc.proc.wait(timeout=30) != 0
    finally:
        oc.stop()
    assert "CSTP connected" not in oc.output()


# -- --auth password+otp -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def otp_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    _require_tools()
    directory = tmp_path_factory.mktemp("gw-otp")
    otp_file = directory / "users.oath"
    otp_file.write_text(f"HOTP\talice\t-\t{OTP_KEY.hex()}\n")
    with gateway_process(
        directory,
        "--auth",
        "password+otp",
        "--otp-file",
        str(otp_file),
        "--user",
        "alice:test",
        "--pool",
        POOL,
    ) as gw:
        yield gw


def test_our_codes_are_the_rfc_vectors() -> None:
    codes = HotpCodes(TokenSecret(key=OTP_KEY))
    assert tuple(codes.next_code() for _ in HOTP_CODES) == HOTP_CODES


def test_openconnect_logs_in_with_password_then_otp(
    otp_gateway: GatewayProcess, tmp_path: Path
) -> None:
    # ocserv's OTP prompt is a plain "password" field, which openconnect's token mode
    # does not fill: the code is the second line on stdin
    oc = _start(
        otp_gateway,
        tmp_path,
        "tunlgotp",
        f"test\n{HOTP_CODES[0]}\n",
        "--user=alice",
        "--passwd-on-stdin",
    )
    try:
        assert oc.wait_for("CSTP connected", 20), oc.output()[-3000:]
        assert "Please enter your OTP password." in oc.output()
        _ping("tunlgotp")
    finally:
        oc.stop()


def test_openconnect_with_a_replayed_otp_is_refused(
    otp_gateway: GatewayProcess, tmp_path: Path
) -> None:
    # the first login of this module used counter 0; counter 1 works, 1 again does not
    first = _start(
        otp_gateway,
        tmp_path,
        "tunlgotp1",
        f"test\n{HOTP_CODES[1]}\n",
        "--user=alice",
        "--passwd-on-stdin",
    )
    try:
        assert first.wait_for("CSTP connected", 20), first.output()[-3000:]
    finally:
        first.stop()
    again = _start(
        otp_gateway,
        tmp_path,
        "tunlgotp2",
        f"test\n{HOTP_CODES[1]}\n",
        "--user=alice",
        "--passwd-on-stdin",
        "--non-inter",
    )
    try:
        assert again.proc.wait(timeout=30) != 0
    finally:
        again.stop()
    assert "CSTP connected" not in again.output()
    assert "Authentication failed" in again.output() or "401" in again.output()
