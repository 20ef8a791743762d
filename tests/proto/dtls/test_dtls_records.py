"""Record framing, the anti-replay window, PRFs and record protection."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from loadgen.proto.dtls import (
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
    lookup_cipher,
)
from loadgen.proto.dtls.prf import derive_key_block, p_hash, prf_tls10
from loadgen.proto.dtls.protection import (
    PSEUDO_HEADER,
    CbcReader,
    CbcWriter,
    make_reader,
    make_writer,
)
from loadgen.proto.dtls.records import (
    MAX_CIPHERTEXT_LEN,
    Record,
    ReplayWindow,
    encode_record,
    iter_records_untrusted,
    parse_records_untrusted,
)
from loadgen.proto.errors import BadPacketError
from tests.proto.dtls.dtls_testlib import ScriptedRandom, make_session

ALL = [(DTLS_CIPHERS_HEADER, n) for n in KNOWN_DTLS_CIPHERS] + [
    (DTLS12_CIPHERS_HEADER, n) for n in KNOWN_DTLS12_CIPHERS
]
EPOCH1 = 1 << 48


# -- framing ----------------------------------------------------------------------------


def test_record_header_layout() -> None:
    raw = encode_record(23, 0x0100, 1, 0x0102030405, b"abc")
    assert raw == bytes.fromhex("17 0100 0001 000102030405 0003") + b"abc"
    (record,) = parse_records_untrusted(raw)
    assert record == Record(23, 0x0100, (1 << 48) | 0x0102030405, b"abc")
    assert (record.epoch, record.seq) == (1, 0x0102030405)


def test_several_records_per_datagram_and_trailing_garbage() -> None:
    a = encode_record(22, 0xFEFD, 0, 0, b"x" * 5)
    b = encode_record(20, 0xFEFD, 0, 1, b"\x01")
    c = encode_record(23, 0xFEFD, 1, 9, b"")
    assert [r.seq for r in parse_records_untrusted(a + b + c)] == [0, 1, 9]
    seen = []
    with pytest.raises(BadPacketError):
        for record in iter_records_untrusted(a + b + b"\x17\xfe"):
            seen.append(record.seq)
    assert seen == [0, 1]  # the good records before the garbage are still usable


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x16\x01\x00",
        encode_record(22, 0x0100, 0, 0, b"abcd")[:-1],
        bytes.fromhex("17 fefd 0001 000000000000") + (MAX_CIPHERTEXT_LEN + 1).to_bytes(2),
    ],
)
def test_malformed_datagrams(raw: bytes) -> None:
    with pytest.raises(BadPacketError):
        parse_records_untrusted(raw)


# -- replay window ------------------------------------------------------------------------


def test_replay_window_rules() -> None:
    window = ReplayWindow()
    assert not window.is_replay(0)
    window.mark(0)
    assert window.is_replay(0)
    for seq in (5, 3, 4, 1):  # reordering inside the window is fine
        assert not window.is_replay(seq)
        window.mark(seq)
    assert all(window.is_replay(s) for s in (0, 1, 3, 4, 5))
    assert not window.is_replay(2)
    window.mark(100)
    assert window.is_replay(36)  # 100 - 64: fell out of the window
    assert not window.is_replay(37)
    assert window.is_replay(100) and not window.is_replay(99)
    window.mark(2**48 - 1)  # a huge jump stays cheap and correct
    assert window.is_replay(100) and window.is_replay(2**48 - 1)
    assert not window.is_replay(2**48 - 2)


def test_replay_window_against_a_set_model() -> None:
    rng = random.Random(3)
    window = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for _ in range(5000):
        seq = max(0, top + rng.randint(-80, 10))
        expected = seq in seen or seq <= top - 64
        assert window.is_replay(seq) == expected, seq
        if not expected:
            window.mark(seq)
            seen.add(seq)
            top = max(top, seq)


# -- PRFs -----------------------------------------------------------------------------


def _p_hash_reference(name: str, secret: bytes, seed: bytes, n: int) -> bytes:
    out, a = b"", seed
    while len(out) < n:
        a = std_hmac.new(secret, a, name).digest()
        out += std_hmac.new(secret, a + seed, name).digest()
    return out[:n]


def test_p_hash_and_tls10_prf_against_stdlib_reference() -> None:
    from cryptography.hazmat.primitives import hashes

    secret, seed = bytes(range(48)), b"label" + bytes(range(64))
    for name, algo in (("sha256", hashes.SHA256()), ("sha384", hashes.SHA384())):
        assert p_hash(algo, secret, seed, 100) == _p_hash_reference(name, secret, seed, 100)
    md5 = _p_hash_reference("md5", secret[:24], seed, 104)
    sha = _p_hash_reference("sha1", secret[24:], seed, 104)
    assert prf_tls10(secret, b"label", bytes(range(64)), 104) == bytes(
        x ^ y for x, y in zip(md5, sha, strict=True)
    )
    assert hashlib.md5(b"").digest() != hashlib.sha1(b"").digest()[:16]  # sanity of the model


# -- record protection ----------------------------------------------------------------


def _pair(header: str, name: str, seed: int = 1) -> tuple[object, object]:
    session = make_session(header, name, seed)
    keys = derive_key_block(
        session.cipher, session.master_secret, client_random=b"c" * 32, server_random=b"s" * 32
    )
    writer = make_writer(
        session.cipher, keys, client=True, random_bytes=random.Random(seed).randbytes
    )
    reader = make_reader(session.cipher, keys, client=True)
    return writer, reader


@pytest.mark.parametrize(("header", "name"), ALL)
def test_protect_unprotect_round_trip_all_suites(header: str, name: str) -> None:
    writer, reader = _pair(header, name)
    version = lookup_cipher(header, name).version
    records = []
    for size in (0, 1, 11, 12, 15, 16, 17, 31, 1400, 16384):
        payload = bytes(random.Random(size).randbytes(size))
        raw = writer.protect(23, EPOCH1 | size, payload)  # type: ignore[attr-defined]
        (record,) = parse_records_untrusted(raw)
        assert (record.content_type, record.version, record.epoch, record.seq) == (
            23,
            version,
            1,
            size,
        )
        records.append((record, payload))
    # decrypt out of order: the long-lived CBC contexts must not depend on order
    for record, payload in reversed(records):
        assert reader.unprotect(record) == payload  # type: ignore[attr-defined]
    # the epoch/seq, type and version are authenticated (MAC input / AAD)
    record, payload = records[3]
    for forged in (
        record._replace(epoch_seq=record.epoch_seq + 1),
        record._replace(content_type=22),
        record._replace(version=record.version ^ 1),
        record._replace(fragment=record.fragment[:-1]),
        record._replace(fragment=b""),
    ):
        assert reader.unprotect(forged) is None  # type: ignore[attr-defined]
    assert reader.unprotect(record) == payload  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(3))
def test_cbc_writer_uses_exactly_the_random_ivs(seed: int) -> None:
    key, mac_key = bytes(range(16)), bytes(range(20))
    ivs = [random.Random(seed * 10 + i).randbytes(16) for i in range(4)]
    writer = CbcWriter(0x0100, key, mac_key, ScriptedRandom(ivs))
    for i, iv in enumerate(ivs):
        payload = b"p" * (i * 7)
        raw = writer.protect(23, EPOCH1 | i, payload)
        assert raw[13:29] == iv
        # independent check with a fresh one-shot CBC context and stdlib HMAC
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(raw[29:]) + decryptor.finalize()
        pad = padded[-1]
        assert padded[-pad - 1 :] == bytes([pad]) * (pad + 1) and pad < 16  # minimal padding
        mac = std_hmac.new(
            mac_key, PSEUDO_HEADER.pack(EPOCH1 | i, 23, 0x0100, len(payload)) + payload, "sha1"
        ).digest()
        assert padded[: -pad - 1] == payload + mac


def test_cbc_reader_accepts_longer_padding_and_rejects_bad_padding() -> None:
    key, mac_key, iv = bytes(16), bytes(20), bytes(range(16))
    payload = b"hello"

    def record(pad_len: int, pad_byte: int | None = None) -> Record:
        mac = std_hmac.new(
            mac_key, PSEUDO_HEADER.pack(EPOCH1, 23, 0x0100, len(payload)) + payload, "sha1"
        ).digest()
        padding = bytes([pad_len if pad_byte is None else pad_byte]) * pad_len + bytes([pad_len])
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        body = encryptor.update(payload + mac + padding) + encryptor.finalize()
        return Record(23, 0x0100, EPOCH1, iv + body)

    reader = CbcReader(key, mac_key)
    assert reader.unprotect(record(6)) == payload  # minimal: 5 + 20 + 6 + 1 = 32
    assert reader.unprotect(record(6 + 16 * 5)) == payload  # any valid pad_len (RFC 5246)
    assert reader.unprotect(record(6 + 16, pad_byte=7)) is None


def test_gcm_nonce_is_salt_plus_epoch_and_sequence() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    spec = lookup_cipher(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256")
    keys = derive_key_block(spec, bytes(48), client_random=bytes(32), server_random=bytes(32))
    writer = make_writer(spec, keys, client=False, random_bytes=ScriptedRandom([]))
    epoch_seq = EPOCH1 | 0xABCDEF
    raw = writer.protect(23, epoch_seq, b"data")
    assert raw[13:21] == epoch_seq.to_bytes(8)
    aad = epoch_seq.to_bytes(8) + bytes.fromhex("17 fefd 0004")
    expected = AESGCM(keys.server_write_key).encrypt(
        keys.server_write_salt + epoch_seq.to_bytes(8), b"data", aad
    )
    assert raw[21:] == expected
