"""The one certificate builder (loadgen/gateway/pki.py): what the gateway and the tests get.

Certificates are checked by reading them back and by a TLS handshake between two
``ssl`` objects over memory BIOs (no socket), so verification, names and validity
are the ssl module's verdict, not ours.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from loadgen.gateway.pki import (
    DEFAULT_NAMES,
    KeyType,
    ensure_pki,
    issue_server_cert,
    make_ca,
    make_server_pki,
    write_cert,
    write_key,
)


def _handshake(ca_path: Path, cert_path: Path, key_path: Path, server_hostname: str) -> None:
    """A client that trusts ``ca_path`` and checks the name, against a server with the
    certificate; raises ssl.SSLCertVerificationError when the client refuses it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(ca_path))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def _san(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in ext.get_values_for_type(x509.IPAddress)} | set(
        ext.get_values_for_type(x509.DNSName)
    )


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
def test_make_server_pki_verifies_for_the_loopback_names(tmp_path: Path, key_type: KeyType) -> None:
    pki = make_server_pki(tmp_path, key_type=key_type)
    for name in DEFAULT_NAMES:
        _handshake(pki.ca_cert_path, pki.server_cert_path, pki.server_key_path, name)
    cert = x509.load_pem_x509_certificate(pki.server_cert_path.read_bytes())
    assert _san(cert) == {"127.0.0.1", "::1", "localhost"}
    key = serialization.load_pem_private_key(pki.server_key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey if key_type == "rsa" else ec.EllipticCurvePrivateKey)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment == (key_type == "rsa")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    for path in (pki.ca_key_path, pki.server_key_path):
        assert path.stat().st_mode & 0o777 == 0o600


def test_pins_are_computed_independently(tmp_path: Path) -> None:
    pki = make_server_pki(tmp_path, key_type="ecdsa")
    cert = x509.load_pem_x509_certificate(pki.server_cert_path.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert pki.sha1_hex == hashlib.sha1(der).hexdigest().upper()
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        pki.pin_sha256 == "pin-sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    )


def test_a_wrong_name_is_refused(tmp_path: Path) -> None:
    pki = make_server_pki(tmp_path, key_type="ecdsa", names=["vpn.example.com"])
    _handshake(pki.ca_cert_path, pki.server_cert_path, pki.server_key_path, "vpn.example.com")
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(pki.ca_cert_path, pki.server_cert_path, pki.server_key_path, "localhost")


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    pki = make_server_pki(tmp_path, key_type="ecdsa", valid_from=long_ago, valid_days=2)
    cert = x509.load_pem_x509_certificate(pki.server_cert_path.read_bytes())
    assert cert.not_valid_before_utc == long_ago.replace(microsecond=0)
    assert cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        _handshake(pki.ca_cert_path, pki.server_cert_path, pki.server_key_path, "localhost")


def test_a_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    pki = make_server_pki(tmp_path / "a", key_type="ecdsa")
    other = make_server_pki(tmp_path / "b", key_type="ecdsa")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(other.ca_cert_path, pki.server_cert_path, pki.server_key_path, "localhost")


def test_default_validity_is_back_dated_for_clock_skew() -> None:
    before = datetime.datetime.now(datetime.UTC)
    ca, ca_key = make_ca("ca", valid_days=10)
    cert, _ = issue_server_cert(ca, ca_key, valid_days=3)
    for c, days in ((ca, 10), (cert, 3)):
        assert c.not_valid_before_utc <= before - datetime.timedelta(minutes=59)
        after = c.not_valid_after_utc - before
        assert datetime.timedelta(days=days, seconds=-2) <= after <= datetime.timedelta(days=days)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert cert.issuer == ca.subject


def test_names_may_be_addresses_or_dns_names_and_repeat() -> None:
    ca, ca_key = make_ca("ca")
    cert, _ = issue_server_cert(ca, ca_key, names=["10.0.0.1", "gw", "fd00::1", "gw"])
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ext.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fd00::1"),
    ]
    assert ext.get_values_for_type(x509.DNSName) == ["gw"]


def test_ensure_pki_keeps_its_ca_and_renews_the_server_certificate(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, ["vpn.test"])
    ca_pem = first.ca_path.read_bytes()
    cert_pem = first.cert_path.read_bytes()
    _handshake(first.ca_path, first.cert_path, first.key_path, "vpn.test")
    second = ensure_pki(tmp_path)
    assert second.ca_path.read_bytes() == ca_pem  # clients that trusted it still do
    assert second.cert_path.read_bytes() != cert_pem
    _handshake(second.ca_path, second.cert_path, second.key_path, "::1")
    cert = x509.load_pem_x509_certificate(second.cert_path.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert _san(cert) == {"127.0.0.1", "::1", "localhost"}


def test_write_key_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("old")
    path.chmod(0o644)
    ca, ca_key = make_ca("ca")
    write_key(path, ca_key)
    write_cert(tmp_path / "ca.pem", ca)
    assert path.stat().st_mode & 0o777 == 0o600
    assert serialization.load_pem_private_key(path.read_bytes(), password=None)
