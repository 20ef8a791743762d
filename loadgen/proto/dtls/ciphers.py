"""Legacy-mode cipher names, versions and code points (protocol.md §7.3).

The same name means a different wire protocol depending on the CONNECT
response header that carried it: ``AES128-SHA`` in ``X-DTLS-CipherSuite`` is
DTLS 0.9 with the TLS 1.0 PRF, in ``X-DTLS12-CipherSuite`` it is DTLS 1.2 with
P_SHA256 (§12 gotcha 3).  Hence one table keyed by (header, name).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from loadgen.proto.errors import RemoteProtocolError

__all__ = [
    "DTLS0_9",
    "DTLS1_0",
    "DTLS1_2",
    "DTLS12_CIPHERS_HEADER",
    "DTLS_CIPHERS_HEADER",
    "KNOWN_DTLS12_CIPHERS",
    "KNOWN_DTLS_CIPHERS",
    "CipherSpec",
    "PrfHash",
    "UnknownCipherError",
    "lookup_cipher",
    "version_name",
]

#: Wire version bytes (record layer and hellos), §7.4.
DTLS0_9 = 0x0100
DTLS1_0 = 0xFEFF
DTLS1_2 = 0xFEFD

DTLS_CIPHERS_HEADER = "X-DTLS-CipherSuite"
DTLS12_CIPHERS_HEADER = "X-DTLS12-CipherSuite"

RECORD_HEADER_SIZE = 13
AES_BLOCK = 16
GCM_TAG = 16


class PrfHash(enum.StrEnum):
    """The PRF family, which also fixes the Finished transcript hash (§7.4)."""

    #: TLS 1.0 PRF: P_MD5 xor P_SHA1; transcript hash MD5 || SHA-1
    MD5_SHA1 = "md5-sha1"
    SHA256 = "sha256"
    SHA384 = "sha384"


def version_name(version: int) -> str:
    return {DTLS0_9: "DTLS0.9", DTLS1_0: "DTLS1.0", DTLS1_2: "DTLS1.2"}.get(
        version, f"0x{version:04x}"
    )


@dataclass(frozen=True, kw_only=True)
class CipherSpec:
    """Everything the record layer and key schedule need for one suite."""

    header: str
    name: str
    version: int
    code: int
    prf_hash: PrfHash
    enc_key_len: int
    #: HMAC-SHA1 key length for CBC suites, 0 for AEAD
    mac_key_len: int
    #: implicit GCM salt taken from the key block (4), 0 for CBC
    salt_len: int
    #: bytes sent in front of each protected fragment: CBC IV (16) or GCM explicit nonce (8)
    record_iv_len: int

    @property
    def is_aead(self) -> bool:
        return self.mac_key_len == 0

    @property
    def key_block_len(self) -> int:
        """Bytes of key block actually used (explicit IVs need no IV material)."""
        return 2 * (self.mac_key_len + self.enc_key_len + self.salt_len)

    @property
    def max_record_overhead(self) -> int:
        """Worst-case bytes added to a plaintext: header, IV/nonce, MAC or tag, padding."""
        if self.is_aead:
            return RECORD_HEADER_SIZE + self.record_iv_len + GCM_TAG
        return RECORD_HEADER_SIZE + self.record_iv_len + self.mac_key_len + AES_BLOCK

    def __repr__(self) -> str:
        return (
            f"CipherSpec({self.header}: {self.name}, {version_name(self.version)}, "
            f"0x{self.code:04x}, {self.prf_hash})"
        )


class UnknownCipherError(RemoteProtocolError):
    """The gateway named a DTLS cipher suite that this implementation does not know."""


def _cbc(header: str, name: str, version: int, code: int, *, prf: PrfHash, key: int) -> CipherSpec:
    return CipherSpec(
        header=header,
        name=name,
        version=version,
        code=code,
        prf_hash=prf,
        enc_key_len=key,
        mac_key_len=20,
        salt_len=0,
        record_iv_len=AES_BLOCK,
    )


def _gcm(header: str, name: str, code: int, *, prf: PrfHash, key: int) -> CipherSpec:
    return CipherSpec(
        header=header,
        name=name,
        version=DTLS1_2,
        code=code,
        prf_hash=prf,
        enc_key_len=key,
        mac_key_len=0,
        salt_len=4,
        record_iv_len=8,
    )


_H, _H12 = DTLS_CIPHERS_HEADER, DTLS12_CIPHERS_HEADER
_MD5SHA1, _SHA256, _SHA384 = PrfHash.MD5_SHA1, PrfHash.SHA256, PrfHash.SHA384

# §7.3 first table.  DES-CBC3-SHA is left out on purpose: 3DES is deprecated in
# `cryptography` and no current gateway picks it over AES.
_DTLS_TABLE = (
    _gcm(
        _H, "OC-DTLS1_2-AES256-GCM", 0x009D, prf=_SHA384, key=32
    ),  # SHA-384: the draft is wrong, §11.1
    _gcm(_H, "OC-DTLS1_2-AES128-GCM", 0x009C, prf=_SHA256, key=16),
    _cbc(_H, "AES256-SHA", DTLS0_9, 0x0035, prf=_MD5SHA1, key=32),
    _cbc(_H, "AES128-SHA", DTLS0_9, 0x002F, prf=_MD5SHA1, key=16),
    _cbc(_H, "DHE-RSA-AES256-SHA", DTLS0_9, 0x0039, prf=_MD5SHA1, key=32),
    _cbc(_H, "DHE-RSA-AES128-SHA", DTLS0_9, 0x0033, prf=_MD5SHA1, key=16),
)
# §7.3 second table: always DTLS 1.2; the key-exchange part of the name is
# irrelevant in a resumption.
_DTLS12_TABLE = (
    _gcm(_H12, "ECDHE-RSA-AES256-GCM-SHA384", 0xC030, prf=_SHA384, key=32),
    _gcm(_H12, "ECDHE-RSA-AES128-GCM-SHA256", 0xC02F, prf=_SHA256, key=16),
    _gcm(_H12, "AES256-GCM-SHA384", 0x009D, prf=_SHA384, key=32),
    _gcm(_H12, "AES128-GCM-SHA256", 0x009C, prf=_SHA256, key=16),
    _cbc(_H12, "DHE-RSA-AES256-SHA", DTLS1_2, 0x0039, prf=_SHA256, key=32),
    _cbc(_H12, "DHE-RSA-AES128-SHA", DTLS1_2, 0x0033, prf=_SHA256, key=16),
    _cbc(_H12, "AES256-SHA", DTLS1_2, 0x0035, prf=_SHA256, key=32),
    _cbc(_H12, "AES128-SHA", DTLS1_2, 0x002F, prf=_SHA256, key=16),
)

_TABLE: dict[tuple[str, str], CipherSpec] = {
    (spec.header.lower(), spec.name): spec for spec in _DTLS_TABLE + _DTLS12_TABLE
}

#: Names understood in ``X-DTLS-CipherSuite`` / ``X-DTLS12-CipherSuite``, in preference order.
KNOWN_DTLS_CIPHERS: tuple[str, ...] = tuple(spec.name for spec in _DTLS_TABLE)
KNOWN_DTLS12_CIPHERS: tuple[str, ...] = tuple(spec.name for spec in _DTLS12_TABLE)


def lookup_cipher(header: str, name: str) -> CipherSpec:
    """The suite a CONNECT response header names (header name case-insensitive)."""
    spec = _TABLE.get((header.strip().lower(), name.strip()))
    if spec is None:
        raise UnknownCipherError(f"unknown DTLS cipher {name!r} in {header!r}")
    return spec
