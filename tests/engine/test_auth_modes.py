"""Certificates, one-time passwords and form entries end to end, as users run them.

``loadgen gateway --auth ...`` is started as a subprocess (loopback, in the
test's private network namespace); ``loadgen pki`` makes the users'
certificates under the gateway's own CA; ``loadgen connect`` and
``loadgen run`` log in with them.  The secrets given on the command line
never appear in anything these commands print.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.helpers.gateway import GatewayProcess, gateway_process

#: RFC 4226's test key, as ocserv's otp file writes it (hex) and openconnect reads it (0x)
HEX_KEY = "3132333435363738393031323334353637383930"
KEY_PASSWORD = "kp-Secret-9"


def _loadgen(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _connect(gw: GatewayProcess, *args: str, stdin: str = "") -> tuple[dict[str, Any], str]:
    proc = _loadgen(
        "connect", gw.url, "--cafile", str(gw.ca_path), "--json", "--echo-count", "1",
        *args, stdin=stdin,
    )  # fmt: skip
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def cert_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    base = tmp_path_factory.mktemp("certauth")
    with gateway_process(base / "gw", "--auth", "certificate") as gw:
        proc = _loadgen(
            "pki", "--out", str(base / "pki"), "--users", "4", "--ca-dir", str(base / "gw"), "-q"
        )
        assert proc.returncode == 0, proc.stderr
        yield gw, base / "pki"


@pytest.fixture(scope="module")
def otp_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    base = tmp_path_factory.mktemp("otpauth")
    otp = base / "users.otp"
    otp.write_text(f"HOTP alice - {HEX_KEY}\nHOTP/T30 bob - {HEX_KEY}\nHOTP carol - {HEX_KEY}\n")
    with gateway_process(
        base / "gw",
        *("--auth", "password+otp", "--otp-file", str(otp)),
        *("--user", "alice:pw-a", "--user", "bob:pw-b", "--user", "carol:pw-c"),
    ) as gw:
        yield gw


def test_certificate_login(cert_gateway: tuple[GatewayProcess, Path]) -> None:
    gw, pki = cert_gateway
    users = pki / "users"
    report, _ = _connect(
        gw, "--user", "user1", "--certificate", str(users / "user1.pem"),
        "--sslkey", str(users / "user1.key"),
    )  # fmt: skip
    assert report["ok"], report["error"]
    assert report["echo"]["received"] == 1


def test_no_certificate_is_certificate_required(cert_gateway: tuple[GatewayProcess, Path]) -> None:
    gw, _ = cert_gateway
    report, _ = _connect(gw, "--user", "user1", "--password-stdin", stdin="whatever\n")
    assert not report["ok"]
    assert report["error"]["reason"] == "certificate_required", report["error"]


def test_pkcs12_with_a_key_password(
    cert_gateway: tuple[GatewayProcess, Path], tmp_path: Path
) -> None:
    gw, pki = cert_gateway
    cert = x509.load_pem_x509_certificate((pki / "users" / "user2.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (pki / "users" / "user2.key").read_bytes(), password=None
    )
    bundle = tmp_path / "user2.p12"
    bundle.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"user2",
            key,  # type: ignore[arg-type]
            cert,
            None,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    report, output = _connect(
        gw, "--user", "user2", "--certificate", str(bundle), "--key-password", KEY_PASSWORD
    )
    assert report["ok"], report["error"]
    assert KEY_PASSWORD not in output


def test_wrong_key_password_is_a_usage_error_without_the_password(
    cert_gateway: tuple[GatewayProcess, Path], tmp_path: Path
) -> None:
    gw, pki = cert_gateway
    key = serialization.load_pem_private_key(
        (pki / "users" / "user3.key").read_bytes(), password=None
    )
    encrypted = tmp_path / "user3.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    proc = _loadgen(
        "connect", gw.url, "--cafile", str(gw.ca_path), "--user", "user3",
        "--certificate", str(pki / "users" / "user3.pem"), "--sslkey", str(encrypted),
        "--key-password", "not-" + KEY_PASSWORD,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "key" in proc.stderr and KEY_PASSWORD not in proc.stdout + proc.stderr


def test_run_with_a_certificate_per_user(cert_gateway: tuple[GatewayProcess, Path]) -> None:
    gw, pki = cert_gateway
    proc = _loadgen(
        "run", gw.url, "--cafile", str(gw.ca_path), "--credentials", str(pki / "credentials.csv"),
        "--sessions", "4", "--processes", "2", "--duration", "4", "--no-progress",
        "--summary", str(pki / "summary.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((pki / "summary.json").read_text())
    assert summary["sessions"]["established"] == 4, summary["sessions"]
    assert summary["sessions"]["failed"] == 0


def test_run_with_a_certificate_pattern(cert_gateway: tuple[GatewayProcess, Path]) -> None:
    gw, pki = cert_gateway
    users = pki / "users"
    proc = _loadgen(
        "run", gw.url, "--cafile", str(gw.ca_path), "--user", "user{n}",
        "--certificate", f"{users}/{{user}}.pem", "--sslkey", f"{users}/user{{n}}.key",
        "--sessions", "3", "--duration", "3", "--no-progress",
        "--summary", str(pki / "pattern.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((pki / "pattern.json").read_text())
    assert summary["sessions"]["established"] == 3, summary["sessions"]


def test_hotp_second_factor(otp_gateway: GatewayProcess) -> None:
    secret = f"0x{HEX_KEY}"
    report, output = _connect(
        otp_gateway, "--user", "alice", "--password-stdin", "--token-mode", "hotp",
        "--token-secret", secret, stdin="pw-a\n",
    )  # fmt: skip
    assert report["ok"], report["error"]
    assert secret not in output and HEX_KEY not in output and "pw-a" not in output
    # the same counter again is a replay: ocserv's rule, kept by the gateway
    report, _ = _connect(
        otp_gateway, "--user", "alice", "--password-stdin", "--token-mode", "hotp",
        "--token-secret", secret, stdin="pw-a\n",
    )  # fmt: skip
    assert not report["ok"] and report["error"]["reason"] == "auth_rejected"
    report, _ = _connect(
        otp_gateway, "--user", "alice", "--password-stdin", "--token-mode", "hotp",
        "--token-secret", f"{secret},1", stdin="pw-a\n",
    )  # fmt: skip
    assert report["ok"], report["error"]


def test_totp_second_factor(otp_gateway: GatewayProcess) -> None:
    report, _ = _connect(
        otp_gateway, "--user", "bob", "--password-stdin", "--token-mode", "totp",
        "--token-secret", f"0x{HEX_KEY}", stdin="pw-b\n",
    )  # fmt: skip
    assert report["ok"], report["error"]


def test_no_token_is_second_factor_required(otp_gateway: GatewayProcess) -> None:
    report, _ = _connect(otp_gateway, "--user", "carol", "--password-stdin", stdin="pw-c\n")
    assert not report["ok"]
    assert report["error"]["reason"] == "second_factor_required"
    assert "OTP" in report["error"]["message"]


def test_token_secret_from_the_environment_never_shows(otp_gateway: GatewayProcess) -> None:
    secret = f"0x{HEX_KEY},7"
    proc = subprocess.run(
        [
            sys.executable, "-m", "loadgen", "connect", otp_gateway.url,
            "--cafile", str(otp_gateway.ca_path), "--json", "--user", "carol",
            "--password-stdin", "--token-mode", "hotp",
        ],
        input="pw-c\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "LOADGEN_VPN_TOKEN_SECRET": secret},
    )  # fmt: skip
    report = json.loads(proc.stdout)
    assert report["ok"], report["error"]
    assert HEX_KEY not in proc.stdout + proc.stderr
