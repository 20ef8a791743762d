"""CSTP: packet framing on the TLS stream and the CSTP channel state machine.

After ``200 CONNECTED`` the TLS byte stream carries 8-byte-framed packets
(protocol.md §5.1); DTLS records carry the same packet types behind a 1-byte
header (§7.7).  ``CstpConnection`` follows the aioquic driver contract: the
caller feeds decrypted bytes with ``receive_data(data, now)``, drains
``next_event()``, writes every element of ``frames_to_send()`` with its own TLS
write, and calls ``handle_timer(now)`` when ``get_timer()`` is due.  The clock
is never read here.

Choices worth knowing:

* COMPRESSED_DATA (type 8) is a protocol error (``BadPacketError``): we never
  advertise an encoding (§5.5), so a peer that sends one is at fault, and we
  could not decompress it anyway.
* Unknown types produce ``UnknownPacketReceived`` and are otherwise ignored, as
  ocserv does (§5.2); openconnect's abort would end a load test for nothing.
* Errors in the peer's bytes surface from ``next_event()`` (as in h11), after
  the events of the frames that preceded the bad one; the connection is then
  unusable.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "CSTP_HEADER",
    "CSTP_MAGIC",
    "MAX_FRAME_PAYLOAD",
    "ChannelCounters",
    "ChannelState",
    "CompressedDataError",
    "CstpConnection",
    "CstpEvent",
    "DisconnectReason",
    "DisconnectReceived",
    "DpdResponseReceived",
    "Frame",
    "FrameDecoder",
    "Liveness",
    "LivenessAction",
    "PacketReceived",
    "PacketType",
    "PeerDead",
    "Role",
    "TerminateReceived",
    "UnknownPacketReceived",
    "decode_dtls_payload_untrusted",
    "encode_dtls_payload",
    "encode_frame",
]

Role = Literal["client", "server"]

#  0       1       2       3       4       5       6       7
# +-------+-------+-------+-------+-------+-------+-------+-------+
# |  'S'  |  'T'  |  'F'  | 0x01  | length (BE16) | type  | 0x00  |  payload...
# +-------+-------+-------+-------+-------+-------+-------+-------+
#: magic, payload length (header excluded), packet type, zero
CSTP_HEADER = struct.Struct("!4sHBB")
CSTP_MAGIC = b"STF\x01"
#: One CSTP frame must fit one TLS record (16 KiB of plaintext), §5.1.
MAX_TLS_RECORD_PLAINTEXT = 16384
MAX_FRAME_PAYLOAD = MAX_TLS_RECORD_PLAINTEXT - CSTP_HEADER.size
#: DTLS plaintext is one type byte plus the packet, in one record (§7.7).
MAX_DTLS_PAYLOAD = MAX_TLS_RECORD_PLAINTEXT - 1
#: DPD requests remembered for RTT matching.
_MAX_PENDING_DPD = 16


class PacketType(enum.IntEnum):
    """§5.2; the same numbers on CSTP and DTLS."""

    DATA = 0x00
    DPD_REQ = 0x03
    DPD_RESP = 0x04
    DISCONNECT = 0x05
    KEEPALIVE = 0x07
    COMPRESSED_DATA = 0x08
    TERMINATE = 0x09


class DisconnectReason(enum.IntEnum):
    """First byte of a client DISCONNECT payload (§5.4)."""

    #: ocserv invalidates the session: the cookie is dead
    USER = 0xB0
    #: ocserv 1.1.6 treats it as an error; master as a temporary disconnect
    RECONNECT = 0x91
    LOCAL_ERROR = 0x70
    PAUSED = 0xD1


class CompressedDataError(BadPacketError):
    """The peer sent COMPRESSED_DATA although no encoding was negotiated (§5.5)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One packet: its type (an int, since unknown types exist) and payload."""

    type: int
    payload: bytes = field(repr=False)


def _check_type(ptype: int) -> None:
    if not 0 <= ptype <= 0xFF:
        raise LocalProtocolError(f"packet type {ptype} does not fit one byte")


def encode_frame(ptype: int, payload: bytes = b"") -> bytes:
    """One CSTP frame, to be written with one TLS write (§5.1)."""
    _check_type(ptype)
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise LocalProtocolError(
            f"CSTP payload of {len(payload)} bytes does not fit one TLS record "
            f"(max {MAX_FRAME_PAYLOAD})"
        )
    return CSTP_HEADER.pack(CSTP_MAGIC, len(payload), ptype, 0) + payload


class FrameDecoder:
    """Reassembles CSTP frames from the decrypted TLS byte stream.

    Peers write one frame per TLS record, but TLS readers may split or join
    records, so this parses by the length field (§5.1).  The buffer never holds
    more than one incomplete frame (at most ``8 + max_payload - 1`` bytes)
    between calls.  After a ``BadPacketError`` the stream is out of sync and
    every later call raises again.
    """

    def __init__(self, *, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_payload = max_payload
        self._error: BadPacketError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) - self._pos

    def feed_untrusted(self, data: bytes) -> list[Frame]:
        """Every frame completed by ``data``, in order."""
        return list(self.iter_frames_untrusted(data))

    def iter_frames_untrusted(self, data: bytes) -> Iterator[Frame]:
        """Like ``feed_untrusted`` but lazy, so frames before a bad one can be used.

        ``data`` is buffered at once; the frames are parsed as they are iterated.
        """
        if self._error is not None:
            raise BadPacketError(f"CSTP stream already failed: {self._error}")
        del self._buf[: self._pos]
        self._pos = 0
        self._buf += data
        return iter(self._next_frame, None)

    def _next_frame(self) -> Frame | None:
        try:
            return self._parse_one()
        except BadPacketError as exc:
            self._error = exc
            raise

    def _parse_one(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available == 0:
            return None
        # Check the magic as soon as its first bytes arrive: fail early on garbage.
        seen = bytes(buf[pos : pos + min(available, len(CSTP_MAGIC))])
        if not CSTP_MAGIC.startswith(seen):
            raise BadPacketError(f"bad CSTP magic {seen.hex()}")
        if available < CSTP_HEADER.size:
            return None
        _magic, length, ptype, zero = CSTP_HEADER.unpack_from(buf, pos)
        if zero != 0:
            raise BadPacketError(f"CSTP header byte 7 is {zero:#04x}, expected 0")
        if length > self._max_payload:
            raise BadPacketError(f"CSTP payload length {length} > {self._max_payload}")
        end = pos + CSTP_HEADER.size + length
        if len(buf) < end:
            return None
        self._pos = end
        return Frame(type=ptype, payload=bytes(buf[pos + CSTP_HEADER.size : end]))


def encode_dtls_payload(ptype: int, payload: bytes = b"") -> bytes:
    """The plaintext of one DTLS application_data record: type byte + payload (§7.7)."""
    _check_type(ptype)
    if len(payload) > MAX_DTLS_PAYLOAD:
        raise LocalProtocolError(f"DTLS payload of {len(payload)} bytes exceeds one record")
    return bytes((ptype,)) + payload


def decode_dtls_payload_untrusted(data: bytes) -> Frame:
    """Split one DTLS record's plaintext into type and payload (§7.7)."""
    if not data:
        raise BadPacketError("empty DTLS data record")
    return Frame(type=data[0], payload=bytes(data[1:]))


# --- liveness: DPD and keepalive timers (§5.3), shared with the DTLS channel ---


class LivenessAction(enum.Enum):
    SEND_DPD = "send_dpd"
    SEND_KEEPALIVE = "send_keepalive"
    PEER_DEAD = "peer_dead"


class Liveness:
    """DPD and keepalive deadlines of one channel, driven by ``now`` (§5.3).

    Client (openconnect): DPD-REQ when nothing was received for ``dpd_s``,
    repeated every ``dpd_s / 2`` while unanswered, peer dead after ``2 * dpd_s``
    of silence.  Server (ocserv): DPD-REQ after ``2 * dpd_s`` of silence, dead
    after ``3 * dpd_s``; ocserv checks about every 30 s, here the deadlines are
    exact and the repeat also uses ``dpd_s / 2``.  Both: KEEPALIVE when nothing
    was sent for ``keepalive_s``.  0 disables either timer.

    A deadline is met when ``now >= deadline`` (openconnect declares death only
    when ``now > overdue``, but a timer that fires at its own deadline and does
    nothing would spin).
    """

    def __init__(self, role: Role, *, dpd_s: float, keepalive_s: float, now: float) -> None:
        if dpd_s < 0 or keepalive_s < 0:
            raise LocalProtocolError("dpd_s and keepalive_s must be >= 0")
        self.role: Role = role
        self.dpd_s = dpd_s
        self.keepalive_s = keepalive_s
        self.last_rx = now
        self.last_tx = now
        self._last_dpd: float | None = None
        self._dpd_outstanding = False
        self._dead = False
        # (first DPD-REQ, peer dead) after the last received packet, in units of dpd_s
        self._dpd_after, self._dead_after = (1.0, 2.0) if role == "client" else (2.0, 3.0)

    def packet_received(self, now: float) -> None:
        """Any valid packet from the peer proves it alive (ocserv counts every type)."""
        self.last_rx = max(self.last_rx, now)
        self._dpd_outstanding = False

    def packet_sent(self, now: float) -> None:
        self.last_tx = max(self.last_tx, now)

    def _dpd_due(self) -> float | None:
        if not self.dpd_s:
            return None
        if self._dpd_outstanding and self._last_dpd is not None:
            return self._last_dpd + self.dpd_s / 2
        return self.last_rx + self._dpd_after * self.dpd_s

    def _dead_due(self) -> float | None:
        return self.last_rx + self._dead_after * self.dpd_s if self.dpd_s else None

    def _keepalive_due(self) -> float | None:
        return self.last_tx + self.keepalive_s if self.keepalive_s else None

    def get_timer(self) -> float | None:
        if self._dead:
            return None
        deadlines = [
            d for d in (self._dpd_due(), self._dead_due(), self._keepalive_due()) if d is not None
        ]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> LivenessAction | None:
        """The most urgent action due at ``now``, recorded as done.

        The caller must then send the DPD-REQ or KEEPALIVE (or give up on the
        peer).  Call again until it returns None; at most two actions are due.
        """
        if self._dead:
            return None
        dead_due = self._dead_due()
        if dead_due is not None and now >= dead_due:
            self._dead = True
            return LivenessAction.PEER_DEAD
        dpd_due = self._dpd_due()
        if dpd_due is not None and now >= dpd_due:
            self._last_dpd = now
            self._dpd_outstanding = True
            self.packet_sent(now)
            return LivenessAction.SEND_DPD
        keepalive_due = self._keepalive_due()
        if keepalive_due is not None and now >= keepalive_due:
            self.packet_sent(now)
            return LivenessAction.SEND_KEEPALIVE
        return None

    def silent_for(self, now: float) -> float:
        return now - self.last_rx


# --- events ---


@dataclass(frozen=True, kw_only=True)
class PacketReceived:
    #: one raw IP packet (DATA)
    data: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class DpdResponseReceived:
    payload: bytes = field(repr=False)
    #: since our latest DPD-REQ with this payload; None if we sent none.  With
    #: overlapping equal payloads (repeats) it is the shortest candidate.
    rtt_s: float | None


@dataclass(frozen=True, kw_only=True)
class DisconnectReceived:
    #: first payload byte, None for an empty DISCONNECT
    reason_code: int | None
    text: str
    #: by ocserv 1.1.6's rule (§5.4): only 0xb0 kills the cookie; empty keeps it;
    #: any other code is an error there, which does not kill it either.  In the
    #: client role this reads the server's payload the same way (ocserv sends
    #: empty), it cannot know the server's decision.
    cookie_invalidated: bool


@dataclass(frozen=True, kw_only=True)
class TerminateReceived:
    """The server is shutting down (§5.2); treated like a DISCONNECT."""


@dataclass(frozen=True, kw_only=True)
class PeerDead:
    silent_for_s: float


@dataclass(frozen=True, kw_only=True)
class UnknownPacketReceived:
    ptype: int
    payload: bytes = field(repr=False, default=b"")


CstpEvent = (
    PacketReceived
    | DpdResponseReceived
    | DisconnectReceived
    | TerminateReceived
    | PeerDead
    | UnknownPacketReceived
)


@dataclass(slots=True)
class ChannelCounters:
    """Running totals for metrics: DATA packets and their IP bytes, plus all frames."""

    packets_tx: int = 0
    bytes_tx: int = 0
    packets_rx: int = 0
    bytes_rx: int = 0
    #: every frame, control included, and its bytes on the wire (headers included)
    frames_tx: int = 0
    wire_bytes_tx: int = 0
    frames_rx: int = 0
    wire_bytes_rx: int = 0
    dpd_requests_tx: int = 0
    dpd_requests_rx: int = 0
    keepalives_tx: int = 0
    keepalives_rx: int = 0


# --- the channel state machine ---


class ChannelState(enum.Enum):
    OPEN = "open"
    #: we sent DISCONNECT: nothing more is sent, the peer's last frames are still read
    DISCONNECT_SENT = "disconnect_sent"
    #: the peer sent DISCONNECT/TERMINATE or is dead: nothing more is sent or read
    CLOSED = "closed"
    #: the peer sent bytes we cannot accept
    ERROR = "error"


class _Trigger(enum.Enum):
    SEND = "send"
    SEND_DISCONNECT = "send DISCONNECT"
    RECEIVE = "receive"
    RECEIVE_CLOSE = "receive DISCONNECT/TERMINATE"
    PEER_DEAD = "peer dead"
    BAD_BYTES = "bad bytes"


_S, _T = ChannelState, _Trigger
_TRANSITIONS: dict[tuple[ChannelState, _Trigger], ChannelState] = {
    (_S.OPEN, _T.SEND): _S.OPEN,
    (_S.OPEN, _T.SEND_DISCONNECT): _S.DISCONNECT_SENT,
    (_S.OPEN, _T.RECEIVE): _S.OPEN,
    (_S.OPEN, _T.RECEIVE_CLOSE): _S.CLOSED,
    (_S.OPEN, _T.PEER_DEAD): _S.CLOSED,
    (_S.OPEN, _T.BAD_BYTES): _S.ERROR,
    (_S.DISCONNECT_SENT, _T.RECEIVE): _S.DISCONNECT_SENT,
    (_S.DISCONNECT_SENT, _T.RECEIVE_CLOSE): _S.CLOSED,
    (_S.DISCONNECT_SENT, _T.BAD_BYTES): _S.ERROR,
}


class CstpConnection:
    """One CSTP channel, either role, from ``200 CONNECTED`` to the end.

    ``dpd_s``/``keepalive_s`` come from ``X-CSTP-DPD``/``X-CSTP-Keepalive``
    (client) or the gateway's configuration (server); 0 disables.
    """

    def __init__(self, role: Role, *, dpd_s: float, keepalive_s: float, now: float) -> None:
        if role not in ("client", "server"):
            raise LocalProtocolError(f"role must be 'client' or 'server', not {role!r}")
        self.role: Role = role
        self.state = ChannelState.OPEN
        self.counters = ChannelCounters()
        self.liveness = Liveness(role, dpd_s=dpd_s, keepalive_s=keepalive_s, now=now)
        self._decoder = FrameDecoder()
        self._events: deque[CstpEvent] = deque()
        self._error: BadPacketError | None = None
        self._outgoing: list[bytes] = []
        self._pending_dpd: deque[tuple[bytes, float]] = deque(maxlen=_MAX_PENDING_DPD)

    def __repr__(self) -> str:
        return f"CstpConnection(role={self.role!r}, state={self.state.value})"

    def _transition(self, trigger: _Trigger) -> None:
        new = _TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise LocalProtocolError(
                f"CSTP {self.role} in state {self.state.value}: cannot {trigger.value}"
            )
        self.state = new

    # -- input --

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed decrypted bytes from the TLS stream (any split).

        In CLOSED the bytes are dropped; in ERROR this raises LocalProtocolError.
        """
        if self.state is ChannelState.ERROR:
            raise LocalProtocolError(f"CSTP {self.role}: receive_data after a protocol error")
        if self.state is ChannelState.CLOSED:
            return
        try:
            for frame in self._decoder.iter_frames_untrusted(data):
                if not self._handle_frame(frame, now):
                    return
        except BadPacketError as exc:
            self._error = exc
            self._transition(_Trigger.BAD_BYTES)

    def _handle_frame(self, frame: Frame, now: float) -> bool:
        """Process one frame; False once the peer has closed the channel."""
        ptype, payload = frame.type, frame.payload
        counters = self.counters
        counters.frames_rx += 1
        counters.wire_bytes_rx += CSTP_HEADER.size + len(payload)
        if ptype == PacketType.COMPRESSED_DATA:
            raise CompressedDataError("COMPRESSED_DATA received, but no encoding was negotiated")
        self.liveness.packet_received(now)
        if ptype == PacketType.DISCONNECT:
            self._transition(_Trigger.RECEIVE_CLOSE)
            self._events.append(_disconnect_event(payload))
            return False
        if ptype == PacketType.TERMINATE:
            self._transition(_Trigger.RECEIVE_CLOSE)
            self._events.append(TerminateReceived())
            return False
        self._transition(_Trigger.RECEIVE)
        if ptype == PacketType.DATA:
            counters.packets_rx += 1
            counters.bytes_rx += len(payload)
            self._events.append(PacketReceived(data=payload))
        elif ptype == PacketType.DPD_REQ:
            counters.dpd_requests_rx += 1
            # Answer at once with the same payload (§5.2); not once we said goodbye.
            if self.state is ChannelState.OPEN:
                self._queue(PacketType.DPD_RESP, payload, now)
        elif ptype == PacketType.DPD_RESP:
            self._events.append(DpdResponseReceived(payload=payload, rtt_s=self._rtt(payload, now)))
        elif ptype == PacketType.KEEPALIVE:
            counters.keepalives_rx += 1  # never answered (§11 item 4)
        else:
            self._events.append(UnknownPacketReceived(ptype=ptype, payload=payload))
        return True

    def _rtt(self, payload: bytes, now: float) -> float | None:
        sent_at = [t for p, t in self._pending_dpd if p == payload]
        if not sent_at:
            return None
        self._pending_dpd = deque(
            ((p, t) for p, t in self._pending_dpd if p != payload), maxlen=_MAX_PENDING_DPD
        )
        return now - max(sent_at)

    def next_event(self) -> CstpEvent | None:
        """The next event, or None.  After the events that preceded bad bytes, raises
        their ``BadPacketError`` (every call from then on)."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    # -- output --

    def _queue(self, ptype: int, payload: bytes, now: float) -> None:
        frame = encode_frame(ptype, payload)
        self._outgoing.append(frame)
        self.counters.frames_tx += 1
        self.counters.wire_bytes_tx += len(frame)
        self.liveness.packet_sent(now)

    def send_packet(self, ip_packet: bytes, now: float) -> None:
        """Queue one raw IP packet as DATA."""
        if not ip_packet:
            raise LocalProtocolError("refusing to send an empty DATA packet")
        self._transition(_Trigger.SEND)
        self._queue(PacketType.DATA, ip_packet, now)
        self.counters.packets_tx += 1
        self.counters.bytes_tx += len(ip_packet)

    def send_dpd_request(self, payload: bytes, now: float) -> None:
        """Queue a DPD-REQ; the matching DPD-RESP reports the RTT."""
        self._transition(_Trigger.SEND)
        self._send_dpd(payload, now)

    def _send_dpd(self, payload: bytes, now: float) -> None:
        self._queue(PacketType.DPD_REQ, payload, now)
        self.counters.dpd_requests_tx += 1
        self._pending_dpd.append((payload, now))

    def send_keepalive(self, now: float) -> None:
        self._transition(_Trigger.SEND)
        self._queue(PacketType.KEEPALIVE, b"", now)
        self.counters.keepalives_tx += 1

    def send_disconnect(
        self, reason: DisconnectReason | int | None, text: str = "", now: float | None = None
    ) -> None:
        """Queue a DISCONNECT; nothing may be sent after it.

        ``reason=None`` sends an empty payload: a temporary disconnect that keeps
        the cookie on ocserv, and what ocserv itself sends as a server (§5.4).
        ``DisconnectReason.USER`` (0xb0) kills the cookie.  ``now`` is optional:
        the timers stop here, so nothing depends on it.
        """
        if reason is None:
            if text:
                raise LocalProtocolError("an empty DISCONNECT cannot carry text")
            payload = b""
        else:
            if not 0 <= reason <= 0xFF:
                raise LocalProtocolError(f"disconnect reason {reason} does not fit one byte")
            try:
                payload = bytes((reason,)) + text.encode("ascii")
            except UnicodeEncodeError as exc:
                raise LocalProtocolError("DISCONNECT text must be ASCII") from exc
        encode_frame(PacketType.DISCONNECT, payload)  # size check before the transition
        self._transition(_Trigger.SEND_DISCONNECT)
        self._queue(PacketType.DISCONNECT, payload, self.liveness.last_tx if now is None else now)

    def send_terminate(self, now: float) -> None:
        """Server only: the gateway is shutting down (§5.2); nothing may be sent after it."""
        if self.role != "server":
            raise LocalProtocolError("TERMINATE is sent by the server only")
        self._transition(_Trigger.SEND_DISCONNECT)
        self._queue(PacketType.TERMINATE, b"", now)

    def frames_to_send(self) -> list[bytes]:
        """Frames queued since the last call.  Write each with its own TLS write:
        ocserv and openconnect expect exactly one frame per TLS record (§5.1)."""
        frames, self._outgoing = self._outgoing, []
        return frames

    # -- timers --

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next, or None (closed, or timers disabled)."""
        if self.state is not ChannelState.OPEN:
            return None
        return self.liveness.get_timer()

    def handle_timer(self, now: float) -> None:
        """Send DPD-REQ/KEEPALIVE when due, or report ``PeerDead``."""
        for _ in range(3):  # at most PEER_DEAD, or SEND_DPD then SEND_KEEPALIVE
            if self.state is not ChannelState.OPEN:
                return
            action = self.liveness.handle_timer(now)
            if action is None:
                return
            if action is LivenessAction.PEER_DEAD:
                self._transition(_Trigger.PEER_DEAD)
                self._events.append(PeerDead(silent_for_s=self.liveness.silent_for(now)))
            elif action is LivenessAction.SEND_DPD:
                self._send_dpd(b"", now)  # openconnect's DPD carries no payload
            else:
                self._queue(PacketType.KEEPALIVE, b"", now)
                self.counters.keepalives_tx += 1


def _disconnect_event(payload: bytes) -> DisconnectReceived:
    if not payload:
        return DisconnectReceived(reason_code=None, text="", cookie_invalidated=False)
    text = payload[1:].decode("ascii", errors="replace").rstrip("\x00")
    return DisconnectReceived(
        reason_code=payload[0],
        text=text,
        cookie_invalidated=payload[0] == DisconnectReason.USER,
    )
