"""Certificate pins as users write them: ``pin-sha256:BASE64`` (openconnect) or ``sha1:HEX``.

``--servercert`` pins the gateway instead of trusting a CA.  Pure (no sockets,
no trio), so that every front end, the gevent side of Locust included, checks
a pin the same way before any traffic.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["CertPin", "PinKind", "cert_pins", "parse_pin"]


class PinKind(enum.Enum):
    #: openconnect: SHA-256 of the SubjectPublicKeyInfo, base64
    SPKI_SHA256 = "pin-sha256"
    #: AnyConnect: SHA-1 of the DER certificate, hex
    CERT_SHA1 = "sha1"


@dataclass(frozen=True, kw_only=True)
class CertPin:
    kind: PinKind
    digest: bytes

    def __str__(self) -> str:
        if self.kind is PinKind.SPKI_SHA256:
            return "pin-sha256:" + base64.b64encode(self.digest).decode()
        return "sha1:" + self.digest.hex().upper()


def parse_pin(text: str) -> CertPin:
    """Parse ``pin-sha256:BASE64`` or ``sha1:HEX`` (colons inside HEX allowed)."""
    kind_text, sep, value = text.strip().partition(":")
    if not sep:
        raise ValueError("a pin is 'pin-sha256:BASE64' or 'sha1:HEX'")
    if kind_text.lower() == "pin-sha256":
        try:
            digest = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError("pin-sha256 value is not base64") from exc
        if len(digest) != 32:
            raise ValueError("pin-sha256 must decode to 32 bytes")
        return CertPin(kind=PinKind.SPKI_SHA256, digest=digest)
    if kind_text.lower() == "sha1":
        hex_text = value.replace(":", "").strip()
        try:
            digest = bytes.fromhex(hex_text)
        except ValueError as exc:
            raise ValueError("sha1 pin is not hex") from exc
        if len(digest) != 20:
            raise ValueError("sha1 pin must be 40 hex digits")
        return CertPin(kind=PinKind.CERT_SHA1, digest=digest)
    raise ValueError(f"unknown pin type {kind_text!r}; use pin-sha256: or sha1:")


def cert_pins(der: bytes) -> tuple[CertPin, CertPin]:
    """Both pins of a DER certificate (SPKI SHA-256, certificate SHA-1)."""
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return (
        CertPin(kind=PinKind.SPKI_SHA256, digest=hashlib.sha256(spki).digest()),
        CertPin(kind=PinKind.CERT_SHA1, digest=hashlib.sha1(der).digest()),
    )
