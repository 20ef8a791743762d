"""The (header, name) -> suite table against protocol.md §7.3."""

from __future__ import annotations

import pytest

from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS1_2,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
    UnknownCipherError,
    lookup_cipher,
)
from loadgen.proto.dtls.ciphers import PrfHash
from loadgen.proto.errors import RemoteProtocolError

# name: (version, code, prf, enc key, mac key, record iv) -- §7.3, first table
DTLS_TABLE = {
    "AES128-SHA": (DTLS0_9, 0x002F, PrfHash.MD5_SHA1, 16, 20, 16),
    "AES256-SHA": (DTLS0_9, 0x0035, PrfHash.MD5_SHA1, 32, 20, 16),
    "DHE-RSA-AES128-SHA": (DTLS0_9, 0x0033, PrfHash.MD5_SHA1, 16, 20, 16),
    "DHE-RSA-AES256-SHA": (DTLS0_9, 0x0039, PrfHash.MD5_SHA1, 32, 20, 16),
    "OC-DTLS1_2-AES128-GCM": (DTLS1_2, 0x009C, PrfHash.SHA256, 16, 0, 8),
    # 0x009D with SHA-384, not the draft's "SHA256" (§11.1)
    "OC-DTLS1_2-AES256-GCM": (DTLS1_2, 0x009D, PrfHash.SHA384, 32, 0, 8),
}
# §7.3, second table: always DTLS 1.2
DTLS12_TABLE = {
    "ECDHE-RSA-AES256-GCM-SHA384": (DTLS1_2, 0xC030, PrfHash.SHA384, 32, 0, 8),
    "ECDHE-RSA-AES128-GCM-SHA256": (DTLS1_2, 0xC02F, PrfHash.SHA256, 16, 0, 8),
    "AES256-GCM-SHA384": (DTLS1_2, 0x009D, PrfHash.SHA384, 32, 0, 8),
    "AES128-GCM-SHA256": (DTLS1_2, 0x009C, PrfHash.SHA256, 16, 0, 8),
    "DHE-RSA-AES256-SHA": (DTLS1_2, 0x0039, PrfHash.SHA256, 32, 20, 16),
    "DHE-RSA-AES128-SHA": (DTLS1_2, 0x0033, PrfHash.SHA256, 16, 20, 16),
    "AES256-SHA": (DTLS1_2, 0x0035, PrfHash.SHA256, 32, 20, 16),
    "AES128-SHA": (DTLS1_2, 0x002F, PrfHash.SHA256, 16, 20, 16),
}


@pytest.mark.parametrize(
    ("header", "table"), [(DTLS_CIPHERS_HEADER, DTLS_TABLE), (DTLS12_CIPHERS_HEADER, DTLS12_TABLE)]
)
def test_table_matches_protocol_md(header: str, table: dict[str, tuple[object, ...]]) -> None:
    for name, expected in table.items():
        spec = lookup_cipher(header, name)
        got = (
            spec.version,
            spec.code,
            spec.prf_hash,
            spec.enc_key_len,
            spec.mac_key_len,
            spec.record_iv_len,
        )
        assert got == expected, name
        assert (spec.header, spec.name) == (header, name)
        assert spec.is_aead == (spec.mac_key_len == 0)
        assert spec.salt_len == (4 if spec.is_aead else 0)


def test_known_name_lists_are_exactly_the_tables() -> None:
    assert set(KNOWN_DTLS_CIPHERS) == set(DTLS_TABLE)
    assert set(KNOWN_DTLS12_CIPHERS) == set(DTLS12_TABLE)
    # preference order: strongest first, as ocserv ranks them (§6)
    assert KNOWN_DTLS_CIPHERS[0] == "OC-DTLS1_2-AES256-GCM"
    assert KNOWN_DTLS12_CIPHERS[0] == "ECDHE-RSA-AES256-GCM-SHA384"


def test_same_name_differs_by_header() -> None:
    """§12 gotcha 3: AES128-SHA is DTLS 0.9 in one header and DTLS 1.2 in the other."""
    legacy = lookup_cipher(DTLS_CIPHERS_HEADER, "AES128-SHA")
    modern = lookup_cipher(DTLS12_CIPHERS_HEADER, "AES128-SHA")
    assert legacy.code == modern.code == 0x002F
    assert (legacy.version, modern.version) == (DTLS0_9, DTLS1_2)
    assert (legacy.prf_hash, modern.prf_hash) == (PrfHash.MD5_SHA1, PrfHash.SHA256)


def test_lookup_is_case_insensitive_on_the_header_only() -> None:
    assert lookup_cipher("x-dtls12-ciphersuite", " AES256-GCM-SHA384 ").code == 0x009D
    with pytest.raises(UnknownCipherError):
        lookup_cipher(DTLS12_CIPHERS_HEADER, "aes256-gcm-sha384")


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (DTLS_CIPHERS_HEADER, "PSK-NEGOTIATE"),
        (DTLS_CIPHERS_HEADER, "OC2-DTLS1_2-CHACHA20-POLY1305"),
        (DTLS_CIPHERS_HEADER, "AES256-GCM-SHA384"),  # only valid in the DTLS12 header
        (DTLS12_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM"),  # only valid in the legacy header
        ("X-CSTP-Foo", "AES128-SHA"),
    ],
)
def test_unknown_names_raise_a_remote_error(header: str, name: str) -> None:
    with pytest.raises(UnknownCipherError) as info:
        lookup_cipher(header, name)
    assert isinstance(info.value, RemoteProtocolError)


def test_overheads() -> None:
    """§7.5: GCM adds 13 + 8 + 16; AES-CBC-SHA1 adds 13 + 16 + 20 + up to 16."""
    assert lookup_cipher(DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES128-GCM").max_record_overhead == 37
    assert lookup_cipher(DTLS_CIPHERS_HEADER, "AES128-SHA").max_record_overhead == 65
    gcm = lookup_cipher(DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM")
    assert gcm.key_block_len == 72 and "0x009d" in repr(gcm)
