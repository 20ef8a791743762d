"""Record protection for epoch 1 (protocol.md §7.5).

Everything expensive happens once per epoch in the constructors: the AESGCM
object, a pre-keyed HMAC template (copied per record), and long-lived AES-CBC
contexts.  The CBC trick: one CBC encryptor is fed ``D_k(IV) xor chain`` as
its first block, which makes it output exactly ``IV`` and then ordinary CBC
under that IV, so the explicit per-record IV still comes from the random
source and no cipher object is built per record.  The CBC decryptor is fed
``IV || ciphertext`` and its first output block is discarded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loadgen.proto.dtls.ciphers import CipherSpec
from loadgen.proto.dtls.prf import KeyBlock
from loadgen.proto.dtls.records import RECORD_HEADER, Record

__all__ = [
    "CbcReader",
    "CbcWriter",
    "GcmReader",
    "GcmWriter",
    "RecordReader",
    "RecordWriter",
    "make_reader",
    "make_writer",
]

#: MAC input prefix and GCM AAD: epoch(2)||seq(6) | type | version | plaintext length
PSEUDO_HEADER = struct.Struct("!QBHH")
_BLOCK = 16
_MAC_LEN = 20
_TAG_LEN = 16
_EXPLICIT_NONCE = struct.Struct("!Q")
_ZERO_BLOCK = bytes(_BLOCK)


class RecordWriter(Protocol):
    def protect(self, content_type: int, epoch_seq: int, plaintext: bytes) -> bytes:
        """A complete record (header + protected fragment)."""
        ...


class RecordReader(Protocol):
    def unprotect(self, record: Record) -> bytes | None:
        """The plaintext, or None when padding, MAC or tag is bad (caller drops it)."""
        ...


class CbcWriter:
    """AES-CBC + HMAC-SHA1, MAC-then-encrypt, explicit random IV per record."""

    __slots__ = ("_chain", "_ecb", "_enc", "_mac", "_random", "_version")

    def __init__(
        self, version: int, key: bytes, mac_key: bytes, random_bytes: Callable[[int], bytes]
    ) -> None:
        self._version = version
        self._random = random_bytes
        self._mac = hmac.HMAC(mac_key, hashes.SHA1())
        aes = algorithms.AES(key)
        self._enc = Cipher(aes, modes.CBC(_ZERO_BLOCK)).encryptor()
        self._ecb = Cipher(aes, modes.ECB()).decryptor()
        self._chain = _ZERO_BLOCK

    def protect(self, content_type: int, epoch_seq: int, plaintext: bytes) -> bytes:
        version = self._version
        mac = self._mac.copy()
        mac.update(PSEUDO_HEADER.pack(epoch_seq, content_type, version, len(plaintext)))
        mac.update(plaintext)
        pad_len = (-(len(plaintext) + _MAC_LEN + 1)) % _BLOCK
        iv = self._random(_BLOCK)
        first = (int.from_bytes(self._ecb.update(iv)) ^ int.from_bytes(self._chain)).to_bytes(
            _BLOCK
        )
        fragment = self._enc.update(
            first + plaintext + mac.finalize() + bytes((pad_len,)) * (pad_len + 1)
        )
        self._chain = fragment[-_BLOCK:]
        return RECORD_HEADER.pack(content_type, version, epoch_seq, len(fragment)) + fragment


class CbcReader:
    __slots__ = ("_dec", "_mac", "_min_len")

    def __init__(self, key: bytes, mac_key: bytes) -> None:
        self._mac = hmac.HMAC(mac_key, hashes.SHA1())
        self._dec = Cipher(algorithms.AES(key), modes.CBC(_ZERO_BLOCK)).decryptor()
        # IV + the blocks holding at least MAC and the padding-length byte
        self._min_len = _BLOCK + ((_MAC_LEN + 1 + _BLOCK - 1) // _BLOCK) * _BLOCK

    def unprotect(self, record: Record) -> bytes | None:
        fragment = record.fragment
        size = len(fragment)
        if size < self._min_len or size % _BLOCK:
            return None
        padded = self._dec.update(fragment)[_BLOCK:]
        pad_len = padded[-1]
        plain_len = len(padded) - pad_len - 1 - _MAC_LEN
        if plain_len < 0 or padded[-pad_len - 1 :] != bytes((pad_len,)) * (pad_len + 1):
            return None
        plaintext = padded[:plain_len]
        mac = self._mac.copy()
        mac.update(
            PSEUDO_HEADER.pack(record.epoch_seq, record.content_type, record.version, plain_len)
        )
        mac.update(plaintext)
        if not constant_time.bytes_eq(mac.finalize(), padded[plain_len : plain_len + _MAC_LEN]):
            return None
        return plaintext


class GcmWriter:
    """AES-GCM, nonce = salt(4) || epoch(2)||seq(6), the explicit part sent first (§7.5)."""

    __slots__ = ("_aead", "_salt", "_version")

    def __init__(self, version: int, key: bytes, salt: bytes) -> None:
        self._version = version
        self._aead = AESGCM(key)
        self._salt = salt

    def protect(self, content_type: int, epoch_seq: int, plaintext: bytes) -> bytes:
        version = self._version
        explicit = _EXPLICIT_NONCE.pack(epoch_seq)
        sealed = self._aead.encrypt(
            self._salt + explicit,
            plaintext,
            PSEUDO_HEADER.pack(epoch_seq, content_type, version, len(plaintext)),
        )
        return (
            RECORD_HEADER.pack(content_type, version, epoch_seq, len(sealed) + 8)
            + explicit
            + sealed
        )


class GcmReader:
    __slots__ = ("_aead", "_salt")

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._aead = AESGCM(key)
        self._salt = salt

    def unprotect(self, record: Record) -> bytes | None:
        fragment = record.fragment
        plain_len = len(fragment) - 8 - _TAG_LEN
        if plain_len < 0:
            return None
        aad = PSEUDO_HEADER.pack(record.epoch_seq, record.content_type, record.version, plain_len)
        try:
            return self._aead.decrypt(self._salt + fragment[:8], fragment[8:], aad)
        except InvalidTag:
            return None


def make_writer(
    spec: CipherSpec, keys: KeyBlock, *, client: bool, random_bytes: Callable[[int], bytes]
) -> RecordWriter:
    """The epoch-1 writer of one side: ``client`` selects the client_write_* keys."""
    key = keys.client_write_key if client else keys.server_write_key
    if spec.is_aead:
        salt = keys.client_write_salt if client else keys.server_write_salt
        return GcmWriter(spec.version, key, salt)
    mac_key = keys.client_write_mac_key if client else keys.server_write_mac_key
    return CbcWriter(spec.version, key, mac_key, random_bytes)


def make_reader(spec: CipherSpec, keys: KeyBlock, *, client: bool) -> RecordReader:
    """The epoch-1 reader for records written by the client (``client``) or the server."""
    key = keys.client_write_key if client else keys.server_write_key
    if spec.is_aead:
        return GcmReader(key, keys.client_write_salt if client else keys.server_write_salt)
    return CbcReader(key, keys.client_write_mac_key if client else keys.server_write_mac_key)
