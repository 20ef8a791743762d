"""Throw-away PKI for the interop lab (ocserv): a CA and a loopback server certificate.

The server certificate names 127.0.0.1, ::1 and localhost, so both openconnect
(``--cafile``) and our own client (``ssl`` with the CA) verify it without
``--servercert``.  The pins are returned too, for tests of pinning:

* ``sha1_hex``: SHA-1 of the certificate DER, upper-case hex.  ocserv puts it
  in the ``webvpnc`` cookie (``sh:``); openconnect 9.01 accepts it as a *bare*
  ``--servercert HEX`` (legacy form).  Careful: openconnect's ``sha1:HEX`` and
  ``sha256:HEX`` prefixes hash the SubjectPublicKeyInfo, not the certificate
  (checked by experiment);
* ``pin_sha256``: ``pin-sha256:`` + base64(SHA-256(SubjectPublicKeyInfo DER)),
  the form openconnect prints and accepts for ``--servercert``.

RSA 2048 is the default: GnuTLS in ocserv 1.1.6 takes it with every
``tls-priorities`` string, and legacy DTLS resumes the session without any
certificate, so the key type does not matter for DTLS (protocol.md §7.2).
ECDSA P-256 is available for tests that want it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KeyType", "ServerPki", "make_server_pki", "spki_pin_sha256"]

KeyType = Literal["rsa", "ecdsa"]

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, kw_only=True)
class ServerPki:
    """Paths of the written PEM files and the server certificate's pins."""

    ca_cert_path: Path
    ca_key_path: Path
    server_cert_path: Path
    server_key_path: Path
    #: SHA-1 of the server certificate DER, upper-case hex without separators
    sha1_hex: str
    #: ``pin-sha256:BASE64`` of the server certificate's SubjectPublicKeyInfo
    pin_sha256: str


def _new_key(key_type: KeyType) -> _PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: _PrivateKey) -> bytes:
    # Unencrypted PKCS#8: GnuTLS (ocserv) reads it without a password prompt.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def spki_pin_sha256(cert: x509.Certificate) -> str:
    """openconnect's ``pin-sha256:`` form of the certificate's public key."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "pin-sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def make_server_pki(
    directory: Path,
    *,
    key_type: KeyType = "rsa",
    common_name: str = "localhost",
    valid_days: int = 30,
) -> ServerPki:
    """Create a CA and a server certificate signed by it, written into ``directory``.

    Files: ``ca-cert.pem``, ``ca-key.pem``, ``server-cert.pem``, ``server-key.pem``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    # Back-date a little so a clock skew between processes never makes it "not yet valid".
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=valid_days)

    ca_key = _new_key(key_type)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loadgen test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _new_key(key_type)
    # RSA keys need keyEncipherment for the static-RSA suites (legacy TLS clients);
    # GnuTLS refuses a suite whose key usage does not allow it.
    is_rsa = key_type == "rsa"
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = {
        "ca_cert_path": directory / "ca-cert.pem",
        "ca_key_path": directory / "ca-key.pem",
        "server_cert_path": directory / "server-cert.pem",
        "server_key_path": directory / "server-key.pem",
    }
    paths["ca_cert_path"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["server_cert_path"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    for name, key in (("ca_key_path", ca_key), ("server_key_path", server_key)):
        path = paths[name]
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_bytes(_key_pem(key))

    der = server_cert.public_bytes(serialization.Encoding.DER)
    return ServerPki(
        **paths,
        sha1_hex=hashlib.sha1(der).hexdigest().upper(),
        pin_sha256=spki_pin_sha256(server_cert),
    )
