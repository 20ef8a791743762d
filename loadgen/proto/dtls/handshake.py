"""Handshake messages of the legacy abbreviated handshake (protocol.md §7.1, §7.4).

Handshake header (12 bytes)::

    msg_type(1) | length(3) | message_seq(2) | fragment_offset(3) | fragment_length(3)

We send every message unfragmented and reassemble fragments we receive.
Hello bodies::

    ClientHello: version(2) random(32) sid_len(1) sid cookie_len(1) cookie
                 suites_len(2) suites comp_len(1) comps [ext_len(2) exts]
    ServerHello: version(2) random(32) sid_len(1) sid suite(2) comp(1) [ext_len(2) exts]
    HelloVerifyRequest: version(2) cookie_len(1) cookie
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from loadgen.proto.dtls.ciphers import DTLS0_9
from loadgen.proto.dtls.records import ContentType, iter_records_untrusted
from loadgen.proto.errors import BadPacketError

__all__ = [
    "EXT_RENEGOTIATION_INFO",
    "FORBIDDEN_EXTENSIONS",
    "ClientHello",
    "Extensions",
    "HandshakeFragment",
    "HandshakeType",
    "HelloVerifyRequest",
    "Reassembler",
    "ServerHello",
    "encode_change_cipher_spec",
    "encode_handshake",
    "parse_change_cipher_spec_untrusted",
    "parse_client_hello_datagram_untrusted",
    "parse_client_hello_untrusted",
    "parse_finished_untrusted",
    "parse_handshake_fragments_untrusted",
    "parse_hello_verify_request_untrusted",
    "parse_server_hello_untrusted",
    "transcript_entry",
]

HANDSHAKE_HEADER_SIZE = 12
#: Our messages are < 300 bytes; openconnect's ClientHello is < 1 KiB.  A bigger
#: claimed length is hostile (reassembly buffers are allocated from it).
MAX_HANDSHAKE_LEN = 1 << 14
EXT_RENEGOTIATION_INFO = 0xFF01
#: extended_master_secret and encrypt_then_mac: never offered (§7.4, §12 gotcha 4)
EXT_EXTENDED_MASTER_SECRET = 0x0017
EXT_ENCRYPT_THEN_MAC = 0x0016
FORBIDDEN_EXTENSIONS = frozenset((EXT_EXTENDED_MASTER_SECRET, EXT_ENCRYPT_THEN_MAC))
_U16 = struct.Struct("!H")

Extensions = tuple[tuple[int, bytes], ...]


class HandshakeType(enum.IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    FINISHED = 20


class HandshakeFragment(NamedTuple):
    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    body: bytes

    @property
    def is_complete(self) -> bool:
        return self.fragment_offset == 0 and len(self.body) == self.length


def _header(msg_type: int, length: int, message_seq: int, offset: int, frag_len: int) -> bytes:
    return (
        bytes((msg_type,))
        + length.to_bytes(3)
        + _U16.pack(message_seq)
        + offset.to_bytes(3)
        + frag_len.to_bytes(3)
    )


def encode_handshake(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """One whole message: offset 0, fragment_length = length (§7.1)."""
    return _header(msg_type, len(body), message_seq, 0, len(body)) + body


def transcript_entry(version: int, msg_type: int, message_seq: int, body: bytes) -> bytes:
    """What a message contributes to the Finished hash (§7.4): DTLS 0.9 hashes the body
    only, DTLS 1.2 the whole message with an unfragmented header."""
    if version == DTLS0_9:
        return body
    return encode_handshake(msg_type, message_seq, body)


def parse_handshake_fragments_untrusted(data: bytes) -> list[HandshakeFragment]:
    """All handshake fragments in one record's plaintext."""
    out: list[HandshakeFragment] = []
    offset = 0
    end = len(data)
    if not data:
        raise BadPacketError("empty handshake record")
    while offset < end:
        if end - offset < HANDSHAKE_HEADER_SIZE:
            raise BadPacketError("truncated handshake header")
        msg_type = data[offset]
        length = int.from_bytes(data[offset + 1 : offset + 4])
        (message_seq,) = _U16.unpack_from(data, offset + 4)
        frag_offset = int.from_bytes(data[offset + 6 : offset + 9])
        frag_len = int.from_bytes(data[offset + 9 : offset + 12])
        offset += HANDSHAKE_HEADER_SIZE
        if length > MAX_HANDSHAKE_LEN:
            raise BadPacketError(f"handshake message too long ({length})")
        if frag_offset + frag_len > length:
            raise BadPacketError("handshake fragment beyond the message end")
        if end - offset < frag_len:
            raise BadPacketError("handshake fragment truncated")
        out.append(
            HandshakeFragment(
                msg_type, length, message_seq, frag_offset, data[offset : offset + frag_len]
            )
        )
        offset += frag_len
    return out


class Reassembler:
    """Collects fragments per message_seq; returns a body once every byte arrived.

    Bounded: at most ``max_messages`` partial messages; inconsistent fragments
    (type or length differing from the first one seen) are rejected.
    """

    def __init__(self, max_messages: int = 4) -> None:
        self._max = max_messages
        self._partial: dict[int, tuple[int, bytearray, bytearray]] = {}

    def add(self, frag: HandshakeFragment) -> bytes | None:
        if frag.is_complete:
            self._partial.pop(frag.message_seq, None)
            return frag.body
        entry = self._partial.get(frag.message_seq)
        if entry is None:
            if len(self._partial) >= self._max:
                return None
            entry = (frag.msg_type, bytearray(frag.length), bytearray(frag.length))
            self._partial[frag.message_seq] = entry
        msg_type, buf, have = entry
        if msg_type != frag.msg_type or len(buf) != frag.length:
            raise BadPacketError("handshake fragment disagrees with earlier fragments")
        start, stop = frag.fragment_offset, frag.fragment_offset + len(frag.body)
        buf[start:stop] = frag.body
        have[start:stop] = b"\x01" * (stop - start)
        if have.count(0):
            return None
        del self._partial[frag.message_seq]
        return bytes(buf)


class _Reader:
    """Bounds-checked cursor; every shortfall is a BadPacketError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if len(self._data) - self._pos < n:
            raise BadPacketError("handshake message truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2))

    def vector8(self, max_len: int = 255) -> bytes:
        n = self.u8()
        if n > max_len:
            raise BadPacketError(f"vector longer than {max_len}")
        return self.take(n)

    def vector16(self) -> bytes:
        return self.take(self.u16())

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def extensions(self) -> Extensions | None:
        """None when the optional extensions block is absent."""
        if self.remaining == 0:
            return None
        block = _Reader(self.vector16())
        if self.remaining:
            raise BadPacketError("bytes after the extensions block")
        out: list[tuple[int, bytes]] = []
        while block.remaining:
            out.append((block.u16(), block.vector16()))
        return tuple(out)


def _encode_extensions(extensions: Extensions | None) -> bytes:
    if extensions is None:
        return b""
    body = b"".join(_U16.pack(t) + _U16.pack(len(d)) + d for t, d in extensions)
    return _U16.pack(len(body)) + body


@dataclass(frozen=True, kw_only=True)
class ClientHello:
    client_version: int
    random: bytes = field(repr=False)
    session_id: bytes
    cookie: bytes = b""
    cipher_suites: tuple[int, ...]
    compression_methods: bytes = b"\x00"
    #: None: no extensions block at all (what we send for DTLS 0.9)
    extensions: Extensions | None = None

    def encode(self) -> bytes:
        suites = b"".join(_U16.pack(s) for s in self.cipher_suites)
        return (
            _U16.pack(self.client_version)
            + self.random
            + bytes((len(self.session_id),))
            + self.session_id
            + bytes((len(self.cookie),))
            + self.cookie
            + _U16.pack(len(suites))
            + suites
            + bytes((len(self.compression_methods),))
            + self.compression_methods
            + _encode_extensions(self.extensions)
        )


def parse_client_hello_untrusted(body: bytes) -> ClientHello:
    r = _Reader(body)
    version = r.u16()
    random = r.take(32)
    session_id = r.vector8(32)
    cookie = r.vector8()
    suites = r.vector16()
    if not suites or len(suites) % 2:
        raise BadPacketError("bad cipher_suites length")
    compression = r.vector8()
    if not compression:
        raise BadPacketError("no compression methods")
    return ClientHello(
        client_version=version,
        random=random,
        session_id=session_id,
        cookie=cookie,
        cipher_suites=tuple(s for (s,) in _U16.iter_unpack(suites)),
        compression_methods=compression,
        extensions=r.extensions(),
    )


@dataclass(frozen=True, kw_only=True)
class ServerHello:
    server_version: int
    random: bytes = field(repr=False)
    session_id: bytes
    cipher_suite: int
    compression_method: int = 0
    extensions: Extensions | None = None

    def encode(self) -> bytes:
        return (
            _U16.pack(self.server_version)
            + self.random
            + bytes((len(self.session_id),))
            + self.session_id
            + _U16.pack(self.cipher_suite)
            + bytes((self.compression_method,))
            + _encode_extensions(self.extensions)
        )


def parse_server_hello_untrusted(body: bytes) -> ServerHello:
    r = _Reader(body)
    return ServerHello(
        server_version=r.u16(),
        random=r.take(32),
        session_id=r.vector8(32),
        cipher_suite=r.u16(),
        compression_method=r.u8(),
        extensions=r.extensions(),
    )


@dataclass(frozen=True, kw_only=True)
class HelloVerifyRequest:
    server_version: int
    cookie: bytes

    def encode(self) -> bytes:
        return _U16.pack(self.server_version) + bytes((len(self.cookie),)) + self.cookie


def parse_hello_verify_request_untrusted(body: bytes) -> HelloVerifyRequest:
    r = _Reader(body)
    hvr = HelloVerifyRequest(server_version=r.u16(), cookie=r.vector8())
    if r.remaining:
        raise BadPacketError("bytes after the HelloVerifyRequest cookie")
    return hvr


def parse_finished_untrusted(body: bytes) -> bytes:
    if len(body) != 12:
        raise BadPacketError(f"Finished verify_data must be 12 bytes, not {len(body)}")
    return body


def encode_change_cipher_spec(version: int, message_seq: int) -> bytes:
    """DTLS 0.9: ``01`` + 16-bit message_seq (the CCS consumes one); else ``01`` (§7.4)."""
    if version == DTLS0_9:
        return b"\x01" + _U16.pack(message_seq)
    return b"\x01"


def parse_change_cipher_spec_untrusted(version: int, fragment: bytes) -> None:
    """Like GnuTLS, check the shape but not the DTLS 0.9 sequence value."""
    expected = 3 if version == DTLS0_9 else 1
    if len(fragment) != expected or fragment[0] != 1:
        raise BadPacketError(f"bad ChangeCipherSpec {fragment.hex()}")


def parse_client_hello_datagram_untrusted(datagram: bytes) -> ClientHello:
    """The ClientHello in a datagram's first record, for a gateway's demultiplexer
    (§7.1: find the session by the session id before any association exists)."""
    for record in iter_records_untrusted(datagram):
        if record.content_type != ContentType.HANDSHAKE or record.epoch != 0:
            raise BadPacketError("first record is not an epoch-0 handshake record")
        frag = parse_handshake_fragments_untrusted(record.fragment)[0]
        if frag.msg_type != HandshakeType.CLIENT_HELLO or not frag.is_complete:
            raise BadPacketError("first record holds no complete ClientHello")
        return parse_client_hello_untrusted(frag.body)
    raise BadPacketError("empty datagram")
