"""One association of the gateway's DTLS server, sans-IO, and what the server reports:
events, drop and down reasons, counters (protocol.md §7.1, §7.7-§7.9).

``DtlsServer`` (server.py) makes and drives a ``ServerAssociation``: it runs each
datagram and timer through the association's ``DtlsConnection``, answers DPD
requests, keeps DPD's liveness (``cstp.Liveness``, §5.3), and reports the
association's life as events.  A driver only reads an association and hands it
back to the server's commands.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from loadgen.proto import cstp
from loadgen.proto.dtls.connection import DtlsConnection
from loadgen.proto.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    HandshakeCompleted,
    HandshakeTimedOut,
)
from loadgen.proto.dtls.session import DtlsCounters, DtlsSession
from loadgen.proto.dtls.states import State

__all__ = [
    "Address",
    "AssociationDown",
    "AssociationUp",
    "DownReason",
    "DropReason",
    "EndpointStats",
    "FrameReceived",
    "ServerAssociation",
    "ServerEvent",
    "SessionTarget",
    "TargetT",
]

_DPD_REQ = cstp.PacketType.DPD_REQ

#: A peer's socket address: (host, port) for IPv4, (host, port, flow, scope) for IPv6.
Address = tuple[Any, ...]


class DropReason(enum.StrEnum):
    """Why a datagram was dropped (metric label values)."""

    #: from an unknown address: too short, bad record version, malformed hello
    GARBAGE = "garbage"
    #: from an unknown address: not an epoch-0 handshake record holding a ClientHello
    NOT_CLIENT_HELLO = "not_client_hello"
    #: a ClientHello whose random is all zero (ocserv rejects these, §7.1)
    ZERO_RANDOM = "zero_random"
    #: a ClientHello naming no session we know
    UNKNOWN_SESSION = "unknown_session"
    #: a new address for a session within 3 s of its previous hand-over
    TOO_SOON = "too_soon"
    #: larger than one legal record
    OVERSIZE = "oversize"
    #: from a known address, rejected by the DTLS layer (undecodable, bad MAC,
    #: replayed, unexpected in the state); one count per record or datagram
    BAD_RECORD = "bad_record"
    #: a decrypted record without the type byte (§7.7)
    BAD_FRAME = "bad_frame"
    #: outgoing: the driver's send queue was full (counted by the driver)
    SEND_QUEUE_FULL = "send_queue_full"
    #: outgoing: sendto failed (counted by the driver)
    SEND_ERROR = "send_error"
    #: incoming: recvfrom reported an error for one datagram (counted by the driver)
    RECEIVE_ERROR = "receive_error"


class DownReason(enum.StrEnum):
    """Why an association ended."""

    #: the same session came back from a new address after the 3 s guard
    REPLACED = "replaced"
    #: no record for 3 x dpd (ocserv's UDP rule, §5.3); the session stays on CSTP
    DPD = "dpd"
    #: the handshake retransmission schedule ran out
    TIMEOUT = "timeout"
    #: the peer sent close_notify
    CLOSED = "closed"
    #: the peer sent a fatal alert
    ALERT = "alert"
    #: we refused the peer's handshake (suite, version, Finished)
    HANDSHAKE_FAILED = "handshake_failed"
    #: a bug of ours while handling this association
    INTERNAL_ERROR = "internal_error"
    #: the server shut down
    SHUTDOWN = "shutdown"


@dataclass
class EndpointStats:
    """Counters for the gateway's Prometheus export.

    The driver counts what only it sees: ``datagrams_out``/``bytes_out`` (sent),
    ``target_errors``, and the SEND_QUEUE_FULL, SEND_ERROR and RECEIVE_ERROR drops.
    ``dropped`` is only ever updated as ``dropped[reason] += n`` (the gateway
    passes a dict that exports each update).
    """

    associations_active: int = 0
    associations_total: int = 0
    handshakes_ok: int = 0
    #: associations that ended before their handshake completed
    handshakes_failed: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dpd_requests_sent: int = 0
    dpd_requests_answered: int = 0
    #: a session's callback raised (logged, otherwise ignored)
    target_errors: int = 0
    internal_errors: int = 0
    dropped: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))
    down: dict[DownReason, int] = field(default_factory=lambda: dict.fromkeys(DownReason, 0))


class SessionTarget(Protocol):
    """What ``lookup`` returns for a session id: a gateway session with DTLS keys."""

    @property
    def dtls_session(self) -> DtlsSession: ...


TargetT = TypeVar("TargetT", bound=SessionTarget)


@dataclass(frozen=True, kw_only=True, slots=True)
class AssociationUp(Generic[TargetT]):
    """The handshake completed: the association carries frames (§7.2)."""

    association: ServerAssociation[TargetT]


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameReceived(Generic[TargetT]):
    """One decoded record: DATA, and also DPD-REQ (already answered), DPD-RESP,
    KEEPALIVE and unknown types, for liveness and channel switching (§7.7-§7.9)."""

    association: ServerAssociation[TargetT]
    ptype: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class AssociationDown(Generic[TargetT]):
    """The association is over: exactly once per association, whether it came up or
    not, and always its last event.  ``reason`` None: the driver closed it
    (``close_association``).  ``error``: a bug of ours caught while handling or
    closing it (with reason INTERNAL_ERROR, or a close that failed)."""

    association: ServerAssociation[TargetT]
    reason: DownReason | None
    error: Exception | None = None


ServerEvent = AssociationUp[TargetT] | FrameReceived[TargetT] | AssociationDown[TargetT]


def _rejected(c: DtlsCounters) -> int:
    return (
        c.records_dropped_bad
        + c.records_dropped_replay
        + c.records_dropped_unexpected
        + c.datagrams_undecodable
    )


class ServerAssociation(Generic[TargetT]):
    """One DTLS association: a peer address bound to one gateway session.

    Made and driven by ``DtlsServer``, sharing its event queue and outbox; a driver
    reads it and hands it back to the server's commands.  ``bytes_in``/``bytes_out``
    count UDP payload bytes; ``records_in``/``records_out`` count application-data
    records (one frame each, §7.7).
    """

    __slots__ = (
        "_conn",
        "_dpd_s",
        "_events",
        "_liveness",
        "_outbox",
        "_rejected",
        "_stats",
        "bytes_in",
        "bytes_out",
        "closed",
        "created_at",
        "needs_arming",
        "peer",
        "records_in",
        "records_out",
        "session_id",
        "target",
    )

    def __init__(
        self,
        *,
        peer: Address,
        session_id: bytes,
        target: TargetT,
        conn: DtlsConnection,
        dpd_s: float,
        now: float,
        stats: EndpointStats,
        events: deque[ServerEvent[TargetT]],
        outbox: list[tuple[bytes, Address]],
    ) -> None:
        self.peer = peer
        self.session_id = session_id
        self.target = target
        self.created_at = now
        self.closed = False
        self.records_in = 0
        self.records_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: the deadline may now be earlier than the one the server armed: set by
        #: every datagram of the handshake, read by the server.  Once up, records
        #: only push DPD later, so the per-record path computes no deadline at all.
        self.needs_arming = True
        self._conn = conn
        self._dpd_s = dpd_s
        self._stats = stats
        self._events = events
        self._outbox = outbox
        #: the connection's rejected records and datagrams, as last counted
        self._rejected = 0
        #: set when the handshake completed: the association is up
        self._liveness: cstp.Liveness | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("up" if self.up else "handshake")
        return f"<Association {self.session_id.hex()[:8]} {self.peer} {state}>"

    @property
    def up(self) -> bool:
        return not self.closed and self._liveness is not None

    @property
    def state(self) -> State:
        return self._conn.state

    @property
    def dtls_counters(self) -> DtlsCounters:
        return self._conn.counters

    # -- driven by the server -----------------------------------------------------

    def receive_datagram(self, data: bytes, now: float) -> DownReason | None:
        """Run one datagram through the connection; why it ended, if it did."""
        conn = self._conn
        self.bytes_in += len(data)
        self.needs_arming = self._liveness is None
        conn.receive_datagram(data, now)
        rejected = _rejected(conn.counters)  # only datagrams make the connection reject
        if rejected != self._rejected:
            self._stats.dropped[DropReason.BAD_RECORD] += rejected - self._rejected
            self._rejected = rejected
        return self._drain(now)

    def handle_timer(self, now: float) -> DownReason | None:
        """Retransmit, send DPD-REQ, or give up on the peer; why it ended, if it did."""
        self._conn.handle_timer(now)
        liveness = self._liveness
        if liveness is not None:
            for _ in range(3):  # at most two actions are due at once
                action = liveness.handle_timer(now)
                if action is None:
                    break
                if action is cstp.LivenessAction.PEER_DEAD:
                    return DownReason.DPD  # §5.3: DTLS is down; the session goes on over CSTP
                if action is cstp.LivenessAction.SEND_DPD:
                    self.seal_frame(cstp.PacketType.DPD_REQ, b"", now)
                    self._stats.dpd_requests_sent += 1
                else:
                    self.seal_frame(cstp.PacketType.KEEPALIVE, b"", now)
        return self._drain(now)

    def get_timer(self) -> float | None:
        timer = self._conn.get_timer()
        liveness = self._liveness
        if liveness is None:
            return timer
        dpd = liveness.get_timer()
        if timer is None or dpd is None:
            return dpd if timer is None else timer
        return min(timer, dpd)

    def seal_frame(self, ptype: int, payload: bytes, now: float) -> bool:
        """One record for the frame into the connection's outbox; False when not up."""
        liveness = self._liveness
        if self.closed or liveness is None:
            return False
        frame = cstp.encode_dtls_payload(ptype, payload)  # our bug if too large: raises
        self._conn.send_application_data(frame)
        liveness.packet_sent(now)
        self.records_out += 1
        return True

    def flush(self, now: float) -> None:
        """Move the connection's datagrams to the server's outbox, addressed to the peer."""
        out = self._conn.datagrams_to_send(now)
        if out:  # most records are answered by nothing
            peer, append = self.peer, self._outbox.append
            for datagram in out:
                self.bytes_out += len(datagram)
                append((datagram, peer))

    def terminate(self) -> None:
        """Closed from now on; close_notify unless the connection already ended."""
        self.closed = True
        self._conn.close()

    def _drain(self, now: float) -> DownReason | None:
        conn = self._conn
        while (event := conn.next_event()) is not None:
            if isinstance(event, ApplicationDataReceived):
                self._on_record_untrusted(event.data, now)
            elif isinstance(event, HandshakeCompleted):
                self._liveness = cstp.Liveness("server", dpd_s=self._dpd_s, keepalive_s=0, now=now)
                self._stats.handshakes_ok += 1
                self._events.append(AssociationUp(association=self))
            elif isinstance(event, HandshakeTimedOut):
                return DownReason.TIMEOUT
            elif isinstance(event, ConnectionTerminated):
                if event.error is None:
                    return DownReason.CLOSED
                return DownReason.ALERT if event.by_peer else DownReason.HANDSHAKE_FAILED
            # AlertReceived: a fatal one is followed by ConnectionTerminated
        return None

    def _on_record_untrusted(self, data: bytes, now: float) -> None:
        self.records_in += 1
        liveness = self._liveness
        if liveness is not None:
            liveness.packet_received(now)  # any record proves the peer alive
        if not data:
            self._stats.dropped[DropReason.BAD_FRAME] += 1
            return
        # the type byte and the packet (§7.7), split here rather than by
        # cstp.decode_dtls_payload_untrusted: the event is the one object per record
        ptype, payload = data[0], data[1:]
        if ptype == _DPD_REQ:
            # §7.8: echo with the type byte rewritten, whatever the size (MTU probes)
            self.seal_frame(cstp.PacketType.DPD_RESP, payload, now)
            self._stats.dpd_requests_answered += 1
        self._events.append(FrameReceived(association=self, ptype=ptype, payload=payload))
