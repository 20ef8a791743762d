"""``loadgen pki`` as an operator runs it (a subprocess, from another directory): the CA,
one certificate per user that verifies against it with the user's CN, the keys'
modes, credentials.csv with absolute paths, --force, --ca-dir (the reference
gateway's --cert-dir) with a TLS handshake against that CA, and usage errors."""

from __future__ import annotations

import contextlib
import csv
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from loadgen.engine.certs import ClientCertificate, load_into
from loadgen.gateway.pki import ensure_pki

ROOT = Path(__file__).resolve().parents[2]


def _pki(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "pki", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "credentials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _check_user(row: dict[str, str], ca: x509.Certificate) -> None:
    cert = x509.load_pem_x509_certificate(Path(row["certificate"]).read_bytes())
    cert.verify_directly_issued_by(ca)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == row["username"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(Path(row["sslkey"]).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()
    assert _mode(Path(row["sslkey"])) == 0o600


def test_new_ca_and_users_from_another_directory(tmp_path: Path) -> None:
    proc = _pki(tmp_path, "--out", "out", "--users", "5")
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out").resolve()
    assert f"CA certificate (new): {out / 'ca.pem'}" in proc.stdout
    assert "issued 5/5" in proc.stderr
    assert _mode(out / "ca-key.pem") == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    text = (out / "credentials.csv").read_text()
    assert text.splitlines()[0] == "username,certificate,sslkey"
    rows = _rows(out)
    assert [r["username"] for r in rows] == [f"user{n}" for n in range(1, 6)]
    for row in rows:
        assert row["certificate"] == str(out / "users" / f"{row['username']}.pem")
        assert row["sslkey"] == str(out / "users" / f"{row['username']}.key")
        _check_user(row, ca)
    # each user has a key of its own
    assert len({Path(r["sslkey"]).read_bytes() for r in rows}) == 5
    # and what loadgen run will do with a row works
    load_into(
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        ClientCertificate(rows[0]["certificate"], rows[0]["sslkey"]),
    )


def test_refuses_to_overwrite_without_force_and_reuses_the_ca(tmp_path: Path) -> None:
    assert _pki(tmp_path, "--out", "out", "--users", "4").returncode == 0
    out = tmp_path / "out"
    ca_before = (out / "ca.pem").read_bytes()
    first = (out / "users" / "user1.pem").read_bytes()
    proc = _pki(tmp_path, "--out", "out", "--users", "2")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (out / "users" / "user1.pem").read_bytes() == first
    proc = _pki(tmp_path, "--out", "out", "--users", "2", "--force", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "CA certificate (reused)" in proc.stdout and proc.stderr == ""
    assert (out / "ca.pem").read_bytes() == ca_before  # the trust point stays valid
    assert sorted(p.name for p in (out / "users").iterdir()) == [
        "user1.key",
        "user1.pem",
        "user2.key",
        "user2.pem",
    ]
    assert (out / "users" / "user1.pem").read_bytes() != first
    assert len(_rows(out)) == 2


def test_password_column_and_pattern(tmp_path: Path) -> None:
    proc = _pki(tmp_path, "--out", "o", "--users", "3", "--user", "lt{n:03d}", "--password", "pw,x")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "o"
    assert (out / "credentials.csv").read_text().splitlines()[0] == (
        "username,certificate,sslkey,password"
    )
    rows = _rows(out)
    assert [r["username"] for r in rows] == ["lt001", "lt002", "lt003"]
    assert {r["password"] for r in rows} == {"pw,x"}  # quoted by the CSV writer
    assert _mode(out / "credentials.csv") == 0o600


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """The CN the server saw (memory BIOs); raises ssl.SSLError when refused."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(20):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        s_in.write(c_out.read())
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            c_in.write(s_out.read())
            continue
        der = server.getpeercert(binary_form=True)
        assert der is not None
        name = x509.load_der_x509_certificate(der).subject
        return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    raise AssertionError("handshake did not finish")


def test_issues_under_the_gateway_ca(tmp_path: Path) -> None:
    gateway_dir = tmp_path / "gateway"
    gw = ensure_pki(gateway_dir)  # what `loadgen gateway --cert-dir` keeps
    proc = _pki(tmp_path, "--out", "out", "--users", "2", "--ca-dir", str(gateway_dir))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert not (out / "ca.pem").exists()
    assert f"CA certificate (reused): {gateway_dir.resolve() / 'ca.pem'}" in proc.stdout
    ca = x509.load_pem_x509_certificate(gw.ca_path.read_bytes())
    rows = _rows(out)
    for row in rows:
        _check_user(row, ca)
    # a server that trusts only that CA accepts the user, and refuses a stranger
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(gw.cert_path, gw.key_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=str(gw.ca_path))
    client_ctx = ssl.create_default_context(cafile=str(gw.ca_path))
    load_into(client_ctx, ClientCertificate(rows[1]["certificate"], rows[1]["sslkey"]))
    assert _handshake(server_ctx, client_ctx) == "user2"
    assert _pki(tmp_path, "--out", "stranger", "--users", "1", "-q").returncode == 0
    stranger = ssl.create_default_context(cafile=str(gw.ca_path))
    load_into(stranger, ClientCertificate(*_stranger_files(tmp_path / "stranger")))
    with pytest.raises(ssl.SSLError):
        _handshake(server_ctx, stranger)


def _stranger_files(out: Path) -> tuple[str, str]:
    row = _rows(out)[0]
    return row["certificate"], row["sslkey"]


def test_missing_ca_dir_fails_before_writing_users(tmp_path: Path) -> None:
    proc = _pki(tmp_path, "--out", "out", "--users", "1", "--ca-dir", "nowhere")
    assert proc.returncode == 1 and "cannot load the CA" in proc.stderr
    assert not (tmp_path / "out" / "users").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "0"], "at least 1"),
        (["--users", "2", "--user", "alice"], "needs {n}"),
        (["--users", "2", "--user", "a/{n}"], "file name"),
        (["--users", "2", "--user", "u{x}"], "only field"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _pki(tmp_path, "--out", "out", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
