"""DTLS record layer framing and the anti-replay window (protocol.md §7.1).

::

    type(1) | version(2) | epoch(2) | sequence(6) | length(2) | fragment

Epoch and sequence are carried together as one 64-bit ``epoch_seq``
(epoch << 48 | seq): that is exactly the first 8 bytes of the MAC input /
GCM AAD and of the GCM explicit nonce, so the hot path never splits them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from typing import NamedTuple

from loadgen.proto.errors import BadPacketError

__all__ = [
    "MAX_CIPHERTEXT_LEN",
    "MAX_PLAINTEXT_LEN",
    "RECORD_HEADER",
    "SEQ_MASK",
    "ContentType",
    "Record",
    "ReplayWindow",
    "encode_record",
    "iter_records_untrusted",
    "parse_records_untrusted",
]

#: type, version, epoch<<48|seq, length
RECORD_HEADER = struct.Struct("!BHQH")
SEQ_MASK = (1 << 48) - 1
MAX_PLAINTEXT_LEN = 1 << 14
#: RFC 6347 / RFC 5246 §6.2.3: plaintext + 2048
MAX_CIPHERTEXT_LEN = MAX_PLAINTEXT_LEN + 2048
REPLAY_WINDOW_SIZE = 64
_WINDOW_MASK = (1 << REPLAY_WINDOW_SIZE) - 1


class ContentType(enum.IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class Record(NamedTuple):
    content_type: int
    version: int
    epoch_seq: int
    fragment: bytes

    @property
    def epoch(self) -> int:
        return self.epoch_seq >> 48

    @property
    def seq(self) -> int:
        return self.epoch_seq & SEQ_MASK


def encode_record(content_type: int, version: int, epoch: int, seq: int, fragment: bytes) -> bytes:
    """A plaintext (epoch 0) record, or any record whose fragment is already protected."""
    return RECORD_HEADER.pack(content_type, version, (epoch << 48) | seq, len(fragment)) + fragment


def iter_records_untrusted(data: bytes) -> Iterator[Record]:
    """Yield every record of a datagram; raise BadPacketError at the first malformed one.

    The caller processes the records yielded before the error (a datagram may
    carry several records, §7.1).
    """
    offset = 0
    end = len(data)
    size = RECORD_HEADER.size
    while offset < end:
        if end - offset < size:
            raise BadPacketError(f"truncated DTLS record header ({end - offset} bytes)")
        content_type, version, epoch_seq, length = RECORD_HEADER.unpack_from(data, offset)
        offset += size
        if length > MAX_CIPHERTEXT_LEN:
            raise BadPacketError(f"DTLS record too long ({length} bytes)")
        if end - offset < length:
            raise BadPacketError(f"DTLS record truncated ({end - offset} of {length} bytes)")
        yield Record(content_type, version, epoch_seq, data[offset : offset + length])
        offset += length


def parse_records_untrusted(data: bytes) -> list[Record]:
    """All records of a datagram, or BadPacketError if any part is malformed."""
    if not data:
        raise BadPacketError("empty datagram")
    return list(iter_records_untrusted(data))


class ReplayWindow:
    """RFC 6347 §4.1.2.6 sliding window over 48-bit sequence numbers (64 entries).

    ``is_replay`` before authenticating, ``mark`` only after the record was
    accepted, so forged records cannot move the window.
    """

    __slots__ = ("_bitmap", "_top")

    def __init__(self) -> None:
        self._top = -1
        self._bitmap = 0

    def is_replay(self, seq: int) -> bool:
        if seq > self._top:
            return False
        offset = self._top - seq
        if offset >= REPLAY_WINDOW_SIZE:
            return True
        return bool((self._bitmap >> offset) & 1)

    def mark(self, seq: int) -> None:
        if seq > self._top:
            shift = seq - self._top
            # never shift by a huge amount: a 2**47 jump must not build a 2**47-bit int
            if shift >= REPLAY_WINDOW_SIZE:
                self._bitmap = 1
            else:
                self._bitmap = ((self._bitmap << shift) | 1) & _WINDOW_MASK
            self._top = seq
        else:
            self._bitmap |= 1 << (self._top - seq)
