"""Certificates for the reference gateway and the test labs, made with ``cryptography``.

One builder for every certificate the project makes: a CA (:func:`make_ca`) and a
server certificate signed by it (:func:`issue_server_cert`) for 127.0.0.1, ::1,
localhost or any other names, or a client certificate for a user
(:func:`issue_client_cert`, what ``loadgen pki`` issues), with an ECDSA P-256 or
RSA 2048 key and a chosen validity (back-dated an hour by default, so a clock skew
between processes never makes it "not yet valid"; ``valid_from`` in the past makes
an expired one).  Two ways to use it:

- :func:`ensure_pki`, the gateway's: the CA is kept in ``DIR/ca.pem`` (+ key) and
  reused, so clients that trust it once keep trusting later runs; each call makes a
  fresh ECDSA server certificate.
- :func:`make_server_pki`, throw-away: a new CA and server certificate per call, RSA
  by default (GnuTLS in ocserv 1.1.6 takes RSA with every ``tls-priorities`` string;
  legacy DTLS resumes the session without any certificate, so the key type does not
  matter for DTLS, protocol.md §7.2), with the pins that tests of pinning need:

  * ``sha1_hex``: SHA-1 of the certificate DER, upper-case hex.  ocserv puts it in
    the ``webvpnc`` cookie (``sh:``); openconnect 9.01 accepts it as a *bare*
    ``--servercert HEX`` (legacy form).  Careful: openconnect's ``sha1:HEX`` and
    ``sha256:HEX`` prefixes hash the SubjectPublicKeyInfo, not the certificate
    (checked by experiment);
  * ``pin_sha256``: ``pin-sha256:`` + base64(SHA-256(SubjectPublicKeyInfo DER)), the
    form openconnect prints and accepts for ``--servercert``.

Private keys are unencrypted PKCS#8 (GnuTLS reads them without a password prompt),
written with mode 0600.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_NAMES",
    "GatewayPki",
    "KeyType",
    "PrivateKey",
    "ServerPki",
    "ensure_pki",
    "issue_client_cert",
    "issue_server_cert",
    "load_ca",
    "make_ca",
    "make_server_pki",
    "new_key",
    "spki_pin_sha256",
    "write_cert",
    "write_key",
]

DEFAULT_NAMES = ("127.0.0.1", "::1", "localhost")

KeyType = Literal["rsa", "ecdsa"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_SKEW = datetime.timedelta(hours=1)


@dataclass(frozen=True, kw_only=True)
class GatewayPki:
    ca_path: Path
    cert_path: Path
    key_path: Path


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


# -- the builder ------------------------------------------------------------------------


def new_key(key_type: KeyType = "ecdsa") -> PrivateKey:
    """An RSA 2048 key for ``"rsa"``, else ECDSA P-256."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _validity(
    valid_days: float, valid_from: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    start = valid_from if valid_from is not None else now - _SKEW
    end = (valid_from if valid_from is not None else now) + datetime.timedelta(days=valid_days)
    return start, end


def _key_usage(*, ca: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    common_name: str,
    *,
    key_type: KeyType = "ecdsa",
    valid_days: float = 3650,
    valid_from: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA certificate (path length 0) and its key."""
    key = new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity(valid_days, valid_from)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    *,
    key_type: KeyType,
    usage: x509.ObjectIdentifier,
    validity: tuple[datetime.datetime, datetime.datetime],
    san: x509.SubjectAlternativeName | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """An end-entity certificate for ``common_name`` with extended key ``usage``."""
    key = new_key(key_type)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RSA keys need keyEncipherment for the static-RSA suites (legacy TLS clients);
        # GnuTLS refuses a suite whose key usage does not allow it
        .add_extension(_key_usage(ca=False, key_encipherment=key_type == "rsa"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    names: Sequence[str] = DEFAULT_NAMES,
    common_name: str = "localhost",
    key_type: KeyType = "ecdsa",
    valid_days: float = 365,
    valid_from: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A TLS server certificate for ``names`` (IP addresses or DNS names), signed by
    the CA, and its key."""
    return _issue_leaf(
        ca_cert,
        ca_key,
        common_name,
        key_type=key_type,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        validity=_validity(valid_days, valid_from),
        san=_san(names),
    )


def issue_client_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    key_type: KeyType = "ecdsa",
    *,
    valid_days: float = 365,
    valid_from: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A TLS client certificate for the user ``common_name`` (subject CN, which is
    what a gateway's certificate authentication maps to the user name), signed by
    the CA, and its key."""
    return _issue_leaf(
        ca_cert,
        ca_key,
        common_name,
        key_type=key_type,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        validity=_validity(valid_days, valid_from),
    )


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_key(path: Path, key: PrivateKey) -> None:
    """The key as unencrypted PKCS#8 PEM, readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(pem)


def spki_pin_sha256(cert: x509.Certificate) -> str:
    """openconnect's ``pin-sha256:`` form of the certificate's public key."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "pin-sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


# -- the two uses -----------------------------------------------------------------------


def _load_or_make_ca(directory: Path) -> tuple[x509.Certificate, PrivateKey]:
    ca_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if ca_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cert, key
    cert, key = make_ca("loadgen reference gateway CA")
    write_key(key_path, key)
    write_cert(ca_path, cert)
    return cert, key


def load_ca(directory: Path) -> tuple[x509.Certificate, PrivateKey]:
    """The CA of ``DIR/ca.pem`` and ``DIR/ca-key.pem`` (a gateway's ``--cert-dir``).

    ValueError when a file is missing or unreadable, the key is not RSA or ECDSA,
    or it does not belong to the certificate.
    """
    ca_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    try:
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot load the CA of {directory}: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: the CA key is neither RSA nor ECDSA")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the key of {ca_path}")
    return cert, key


def ensure_pki(directory: Path, extra_names: Sequence[str] = ()) -> GatewayPki:
    """The CA (reused when present) and a fresh server certificate signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_or_make_ca(directory)
    cert, key = issue_server_cert(ca_cert, ca_key, names=[*DEFAULT_NAMES, *extra_names])
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    write_key(key_path, key)
    write_cert(cert_path, cert)
    return GatewayPki(ca_path=directory / "ca.pem", cert_path=cert_path, key_path=key_path)


def make_server_pki(
    directory: Path,
    *,
    key_type: KeyType = "rsa",
    common_name: str = "localhost",
    names: Sequence[str] = DEFAULT_NAMES,
    valid_days: float = 30,
    valid_from: datetime.datetime | None = None,
) -> ServerPki:
    """A new CA and a server certificate signed by it, written into ``directory``.

    Files: ``ca-cert.pem``, ``ca-key.pem``, ``server-cert.pem``, ``server-key.pem``.
    ``names``, ``valid_days`` and ``valid_from`` make wrong-name or expired
    certificates for tests of verification.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(
        "loadgen test CA", key_type=key_type, valid_days=valid_days, valid_from=valid_from
    )
    cert, key = issue_server_cert(
        ca_cert,
        ca_key,
        names=names,
        common_name=common_name,
        key_type=key_type,
        valid_days=valid_days,
        valid_from=valid_from,
    )
    pki = ServerPki(
        ca_cert_path=directory / "ca-cert.pem",
        ca_key_path=directory / "ca-key.pem",
        server_cert_path=directory / "server-cert.pem",
        server_key_path=directory / "server-key.pem",
        sha1_hex=hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper(),
        pin_sha256=spki_pin_sha256(cert),
    )
    write_cert(pki.ca_cert_path, ca_cert)
    write_key(pki.ca_key_path, ca_key)
    write_cert(pki.server_cert_path, cert)
    write_key(pki.server_key_path, key)
    return pki
