"""The gateway's DTLS server: many legacy-mode associations on one UDP port (protocol.md §7.1, §12).

Demultiplexing follows ocserv's main process (§7.1): an association is keyed by
the peer address (host, port).  A datagram from an address without one must be
a ClientHello (content type 22, record version ``01 00`` or ``FE xx``, a random
that is not all zero) whose session id ``lookup`` maps to a gateway session;
anything else is dropped and counted, and nothing is allocated for it.  A
ClientHello for a session from a *new* address within 3 s of that session's
previous hand-over is ignored ("received UDP connection too soon"); later, the
new address replaces the old association (the client re-attempted from a new
port).  Retransmissions from the original address reach its association and are
not affected.  At most one association per session id exists.

Tasks: three per endpoint, however many associations there are.

* the receiver reads the socket and runs each datagram through the sans-IO
  ``DtlsConnection`` of its association, synchronously;
* the sender drains one bounded queue of (datagram, peer) to ``sendto``
  (datagrams are dropped and counted when it is full: UDP may lose them);
* the timer task sleeps until the earliest deadline of all associations
  (handshake retransmission, DPD) in a heap.  An association has at most one
  live heap entry; a deadline that moves later (each received record pushes
  DPD back) leaves the entry in place and is re-checked when it fires, so the
  hot path pushes nothing.  Entries made stale (a closed association, or a
  deadline moved earlier) are skipped when popped, and the heap is rebuilt when
  they outnumber the live ones.  So 10,000 idle associations cost 10,000 heap
  entries and one sleeping task, not 10,000 tasks.

Every datagram from the network is hostile: no exception from handling one
escapes ``run()``; a bug in one association ends that association only.
"""

from __future__ import annotations

import enum
import errno
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from loadgen.proto import cstp
from loadgen.proto.dtls import (
    ApplicationDataReceived,
    ConnectionTerminated,
    DtlsConnection,
    DtlsCounters,
    DtlsSession,
    HandshakeCompleted,
    HandshakeTimedOut,
    Role,
    State,
    parse_client_hello_datagram_untrusted,
)
from loadgen.proto.dtls.records import MAX_CIPHERTEXT_LEN, RECORD_HEADER
from loadgen.proto.errors import BadPacketError

__all__ = [
    "HANDOVER_GUARD_S",
    "SERVER_RETRANSMIT_SCHEDULE_S",
    "Address",
    "Association",
    "DownReason",
    "DropReason",
    "DtlsEndpoint",
    "DtlsTarget",
    "EndpointStats",
]

log = logging.getLogger("loadgen.gateway.dtls")

#: ocserv's UDP_FD_RESEND_TIME: a new address for a session is ignored this long
#: after the previous hand-over (§7.1).
HANDOVER_GUARD_S = 3.0
#: ocserv's server flight timers start at 400 ms and give up after 60 s (§7.1);
#: doubling from 0.4 s.  The last offset is the give-up time.
SERVER_RETRANSMIT_SCHEDULE_S: tuple[float, ...] = (0.0, 0.4, 1.2, 2.8, 6.0, 12.4, 25.2, 60.0)
#: One record of the largest legal size; our peers send one record per datagram.
MAX_DATAGRAM_BYTES = RECORD_HEADER.size + MAX_CIPHERTEXT_LEN
RECEIVE_BYTES = 65536
SEND_QUEUE_DATAGRAMS = 8192
#: close_notify flush when the endpoint stops
SHUTDOWN_FLUSH_S = 1.0
_HANDSHAKE = 22
_CLIENT_HELLO = 1
#: errors of one datagram (ICMP reports, a full buffer), not of the socket
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EMSGSIZE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EPERM,
        errno.EACCES,
    }
)

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
    #: outgoing: the send queue was full
    SEND_QUEUE_FULL = "send_queue_full"
    #: outgoing: sendto failed
    SEND_ERROR = "send_error"
    #: incoming: recvfrom reported an error for one datagram
    RECEIVE_ERROR = "receive_error"


class DownReason(enum.StrEnum):
    """Why an association ended (the ``reason`` of ``on_dtls_down``)."""

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
    #: the endpoint stopped
    SHUTDOWN = "shutdown"


class DtlsTarget(Protocol):
    """What a gateway session gives the endpoint.  Callbacks run in the endpoint's
    tasks: they must not block (use ``Association.send_frame_nowait``)."""

    @property
    def dtls_session(self) -> DtlsSession: ...

    def on_dtls_up(self, assoc: Association) -> None: ...

    def on_dtls_frame(self, assoc: Association, ptype: int, payload: bytes) -> None:
        """Every decoded record: DATA, and also DPD-REQ (already answered), DPD-RESP,
        KEEPALIVE and unknown types, for liveness and channel switching (§7.9)."""

    def on_dtls_down(self, assoc: Association, reason: str) -> None:
        """Once per association, whether it came up or not (a ``DownReason``);
        not after the session's own ``Association.close()``."""


@dataclass
class EndpointStats:
    """Counters for the gateway's Prometheus export."""

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
    #: a target callback raised (logged, otherwise ignored)
    target_errors: int = 0
    internal_errors: int = 0
    dropped: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))
    down: dict[DownReason, int] = field(default_factory=lambda: dict.fromkeys(DownReason, 0))


def _rejected(c: DtlsCounters) -> int:
    return (
        c.records_dropped_bad
        + c.records_dropped_replay
        + c.records_dropped_unexpected
        + c.datagrams_undecodable
    )


class Association:
    """One DTLS association: a peer address bound to one gateway session.

    ``bytes_in``/``bytes_out`` count UDP payload bytes; ``records_in``/``records_out``
    count application-data records (one frame each, §7.7).
    """

    __slots__ = (
        "_conn",
        "_endpoint",
        "_heap_deadline",
        "_liveness",
        "bytes_in",
        "bytes_out",
        "closed",
        "created_at",
        "peer",
        "records_in",
        "records_out",
        "session_id",
        "target",
    )

    def __init__(
        self,
        endpoint: DtlsEndpoint,
        *,
        peer: Address,
        target: DtlsTarget,
        conn: DtlsConnection,
        session_id: bytes,
        now: float,
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
        self._endpoint = endpoint
        self._conn = conn
        #: set when the handshake completed: the association is up
        self._liveness: cstp.Liveness | None = None
        #: deadline of this association's live heap entry
        self._heap_deadline: float | None = None

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

    def _seal(self, ptype: int, payload: bytes, now: float) -> list[bytes]:
        """One record (one datagram) for the frame; [] when the association is not up."""
        if not self.up:
            return []
        frame = cstp.encode_dtls_payload(ptype, payload)  # our bug if too large: raises
        self._conn.send_application_data(frame)
        assert self._liveness is not None
        self._liveness.packet_sent(now)
        self.records_out += 1
        out = self._conn.datagrams_to_send(now)
        self.bytes_out += sum(len(d) for d in out)
        return out

    def send_frame_nowait(self, ptype: int, payload: bytes) -> bool:
        """Queue one frame; False if the association is not up or the queue is full."""
        out = self._seal(ptype, payload, trio.current_time())
        return bool(out) and all([self._endpoint._queue(d, self.peer) for d in out])

    async def send_frame(self, ptype: int, payload: bytes) -> bool:
        """Send one frame, waiting for room in the send queue; False if not up."""
        out = self._seal(ptype, payload, trio.current_time())
        for datagram in out:
            if not await self._endpoint._queue_wait(datagram, self.peer):
                return False
        return bool(out)

    def close(self) -> None:
        """End the association from the session's side (close_notify, no callback)."""
        self._endpoint._end(self, None, trio.current_time())


class DtlsEndpoint:
    """The DTLS server on one bound UDP socket; ``await run()`` serves until cancelled.

    ``lookup(session_id)`` names the gateway session a ClientHello resumes.
    ``random_bytes`` feeds ServerHello randoms and CBC IVs.  ``dpd_s`` is the
    DTLS DPD interval (§5.3, 0 disables it).  Single use: one ``run()``.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        *,
        lookup: Callable[[bytes], DtlsTarget | None],
        random_bytes: Callable[[int], bytes],
        dpd_s: float,
        stats: EndpointStats | None = None,
        handover_guard_s: float = HANDOVER_GUARD_S,
        retransmit_schedule_s: Sequence[float] = SERVER_RETRANSMIT_SCHEDULE_S,
        send_queue_datagrams: int = SEND_QUEUE_DATAGRAMS,
    ) -> None:
        self.stats = stats if stats is not None else EndpointStats()
        self._sock = sock
        self._lookup = lookup
        self._random = random_bytes
        self._dpd_s = dpd_s
        self._guard_s = handover_guard_s
        self._schedule = tuple(retransmit_schedule_s)
        self._by_peer: dict[Address, Association] = {}
        self._by_session: dict[bytes, Association] = {}
        # last hand-over per session, pruned in time order once older than the guard
        self._handover_at: dict[bytes, float] = {}
        self._handovers: deque[tuple[float, bytes]] = deque()
        self._heap: list[tuple[float, int, Association]] = []
        self._tiebreak = itertools.count()
        self._timer_scope: trio.CancelScope | None = None
        self._send_tx, self._send_rx = trio.open_memory_channel[tuple[bytes, Address]](
            send_queue_datagrams
        )

    # -- public surface ------------------------------------------------------------

    @property
    def association_count(self) -> int:
        return len(self._by_peer)

    def association_for(self, session_id: bytes) -> Association | None:
        return self._by_session.get(session_id)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                nursery.start_soon(self._timer_loop)
                await self._receiver()
        finally:
            await self._shutdown()

    # -- tasks -----------------------------------------------------------------------

    async def _receiver(self) -> None:
        stats = self.stats
        while True:
            try:
                data, peer = await self._sock.recvfrom(RECEIVE_BYTES)
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ERRNOS:
                    raise
                stats.dropped[DropReason.RECEIVE_ERROR] += 1
                continue
            now = trio.current_time()
            try:
                self._on_datagram(data, peer, now)
            except Exception:
                stats.internal_errors += 1
                log.exception("DTLS endpoint: datagram from %s", peer)

    async def _sender(self) -> None:
        stats = self.stats
        async for datagram, peer in self._send_rx:
            try:
                await self._sock.sendto(datagram, peer)
            except OSError as exc:
                stats.dropped[DropReason.SEND_ERROR] += 1
                log.debug("DTLS endpoint: sendto %s: %s", peer, exc)
            else:
                stats.datagrams_out += 1
                stats.bytes_out += len(datagram)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self._heap[0][0] if self._heap else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self._fire_due(trio.current_time())

    async def _shutdown(self) -> None:
        now = trio.current_time()
        for assoc in list(self._by_peer.values()):
            self._end(assoc, DownReason.SHUTDOWN, now)
        # tell the peers (bounded): their close_notify records are in the queue
        with trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_FLUSH_S):
            while True:
                try:
                    datagram, peer = self._send_rx.receive_nowait()
                    await self._sock.sendto(datagram, peer)
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError, OSError):
                    break
        self._send_tx.close()
        self._send_rx.close()

    # -- outgoing --------------------------------------------------------------------

    def _queue(self, datagram: bytes, peer: Address) -> bool:
        try:
            self._send_tx.send_nowait((datagram, peer))
        except trio.WouldBlock:
            self.stats.dropped[DropReason.SEND_QUEUE_FULL] += 1
            return False
        except trio.ClosedResourceError:
            return False
        return True

    async def _queue_wait(self, datagram: bytes, peer: Address) -> bool:
        try:
            await self._send_tx.send((datagram, peer))
        except trio.ClosedResourceError:
            return False
        return True

    def _flush(self, assoc: Association, now: float) -> None:
        for datagram in assoc._conn.datagrams_to_send(now):
            assoc.bytes_out += len(datagram)
            self._queue(datagram, assoc.peer)

    # -- incoming --------------------------------------------------------------------

    def _on_datagram(self, data: bytes, peer: Address, now: float) -> None:
        stats = self.stats
        stats.datagrams_in += 1
        stats.bytes_in += len(data)
        if len(data) > MAX_DATAGRAM_BYTES:
            stats.dropped[DropReason.OVERSIZE] += 1
            return
        if not data:
            stats.dropped[DropReason.GARBAGE] += 1  # never valid, from anyone
            return
        assoc = self._by_peer.get(peer)
        if assoc is not None:
            self._feed(assoc, data, now)
        else:
            self._on_new_peer(data, peer, now)

    def _classify(self, data: bytes) -> DropReason | None:
        """Cheap checks on the first record before parsing the hello (§7.1)."""
        if data[0] != _HANDSHAKE:
            return DropReason.NOT_CLIENT_HELLO
        if len(data) <= RECORD_HEADER.size:
            return DropReason.GARBAGE
        if not (data[1] == 0xFE or data[1:3] == b"\x01\x00"):
            return DropReason.GARBAGE
        if data[3:5] != b"\x00\x00" or data[RECORD_HEADER.size] != _CLIENT_HELLO:
            return DropReason.NOT_CLIENT_HELLO
        return None

    def _on_new_peer(self, data: bytes, peer: Address, now: float) -> None:
        # nothing is allocated for this peer until the hello names a session we know
        dropped = self.stats.dropped
        reason = self._classify(data)
        if reason is not None:
            dropped[reason] += 1
            return
        try:
            hello = parse_client_hello_datagram_untrusted(data)
        except BadPacketError:
            dropped[DropReason.GARBAGE] += 1
            return
        if not any(hello.random):
            dropped[DropReason.ZERO_RANDOM] += 1
            return
        session_id = hello.session_id
        target = self._lookup(session_id) if session_id else None
        if target is None:
            dropped[DropReason.UNKNOWN_SESSION] += 1
            return
        self._prune_handovers(now)
        if session_id in self._handover_at:
            dropped[DropReason.TOO_SOON] += 1  # ocserv: "received UDP connection too soon"
            return
        conn = DtlsConnection(
            Role.SERVER,
            session=target.dtls_session,
            random_bytes=self._random,
            retransmit_schedule_s=self._schedule,
        )
        old = self._by_session.get(session_id)
        if old is not None:
            log.info("DTLS session %s moved from %s to %s", session_id.hex()[:8], old.peer, peer)
            self._end(old, DownReason.REPLACED, now)
        assoc = Association(
            self, peer=peer, target=target, conn=conn, session_id=session_id, now=now
        )
        self._by_peer[peer] = assoc
        self._by_session[session_id] = assoc
        self._handover_at[session_id] = now
        self._handovers.append((now, session_id))
        self.stats.associations_active += 1
        self.stats.associations_total += 1
        self._feed(assoc, data, now)

    def _prune_handovers(self, now: float) -> None:
        queue = self._handovers
        while queue and now - queue[0][0] >= self._guard_s:
            at, session_id = queue.popleft()
            if self._handover_at.get(session_id) == at:
                del self._handover_at[session_id]

    def _feed(self, assoc: Association, data: bytes, now: float) -> None:
        conn = assoc._conn
        assoc.bytes_in += len(data)
        before = _rejected(conn.counters)
        try:
            conn.receive_datagram(data, now)
            rejected = _rejected(conn.counters) - before
            if rejected:
                self.stats.dropped[DropReason.BAD_RECORD] += rejected
            self._drain(assoc, now)
        except Exception:
            self._internal_error(assoc, now)

    def _internal_error(self, assoc: Association, now: float) -> None:
        self.stats.internal_errors += 1
        log.exception("DTLS association %r", assoc)
        self._end(assoc, DownReason.INTERNAL_ERROR, now)

    def _drain(self, assoc: Association, now: float) -> None:
        """Act on the connection's events, send what it queued, re-arm its timer."""
        conn = assoc._conn
        while not assoc.closed and (event := conn.next_event()) is not None:
            if isinstance(event, ApplicationDataReceived):
                self._on_record(assoc, event.data, now)
            elif isinstance(event, HandshakeCompleted):
                assoc._liveness = cstp.Liveness("server", dpd_s=self._dpd_s, keepalive_s=0, now=now)
                self.stats.handshakes_ok += 1
                self._call(assoc.target.on_dtls_up, assoc)
            elif isinstance(event, HandshakeTimedOut):
                self._end(assoc, DownReason.TIMEOUT, now)
            elif isinstance(event, ConnectionTerminated):
                if event.error is None:
                    reason = DownReason.CLOSED
                else:
                    reason = DownReason.ALERT if event.by_peer else DownReason.HANDSHAKE_FAILED
                self._end(assoc, reason, now)
            # AlertReceived: a fatal one is followed by ConnectionTerminated
        if not assoc.closed:
            self._flush(assoc, now)
            self._schedule_timer(assoc)

    def _on_record(self, assoc: Association, data: bytes, now: float) -> None:
        assoc.records_in += 1
        if assoc._liveness is not None:
            assoc._liveness.packet_received(now)  # any record proves the peer alive
        try:
            frame = cstp.decode_dtls_payload_untrusted(data)
        except BadPacketError:
            self.stats.dropped[DropReason.BAD_FRAME] += 1
            return
        if frame.type == cstp.PacketType.DPD_REQ:
            # §7.8: echo with the type byte rewritten, whatever the size (MTU probes)
            self._send_now(assoc, cstp.PacketType.DPD_RESP, frame.payload, now)
            self.stats.dpd_requests_answered += 1
        self._call(assoc.target.on_dtls_frame, assoc, frame.type, frame.payload)

    def _send_now(self, assoc: Association, ptype: int, payload: bytes, now: float) -> None:
        for datagram in assoc._seal(ptype, payload, now):
            self._queue(datagram, assoc.peer)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            self.stats.target_errors += 1
            log.exception("DTLS endpoint: %s raised", getattr(callback, "__qualname__", callback))

    def _end(self, assoc: Association, reason: DownReason | None, now: float) -> None:
        """Close the association (close_notify unless already terminated) and forget it.
        ``reason`` None: the session closed it, no callback."""
        if assoc.closed:
            return
        was_up = assoc.up
        assoc.closed = True
        conn = assoc._conn
        try:
            conn.close()
            self._flush(assoc, now)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("DTLS association %r: close", assoc)
        if self._by_peer.get(assoc.peer) is assoc:
            del self._by_peer[assoc.peer]
        if self._by_session.get(assoc.session_id) is assoc:
            del self._by_session[assoc.session_id]
        stats = self.stats
        stats.associations_active -= 1
        if not was_up:
            stats.handshakes_failed += 1
        if reason is not None:
            stats.down[reason] += 1
            log.debug("DTLS association %r down: %s", assoc, reason)
            self._call(assoc.target.on_dtls_down, assoc, str(reason))

    # -- timers ----------------------------------------------------------------------

    def _deadline(self, assoc: Association) -> float | None:
        deadlines = [assoc._conn.get_timer()]
        if assoc._liveness is not None:
            deadlines.append(assoc._liveness.get_timer())
        return min((d for d in deadlines if d is not None), default=None)

    def _schedule_timer(self, assoc: Association) -> None:
        deadline = self._deadline(assoc)
        current = assoc._heap_deadline
        if deadline is None or (current is not None and current <= deadline):
            return  # the live entry fires no later; it re-checks then
        assoc._heap_deadline = deadline
        heapq.heappush(self._heap, (deadline, next(self._tiebreak), assoc))
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline
        if len(self._heap) > 2 * len(self._by_peer) + 1024:
            self._heap = [
                (a._heap_deadline, next(self._tiebreak), a)
                for a in self._by_peer.values()
                if a._heap_deadline is not None
            ]
            heapq.heapify(self._heap)

    def _fire_due(self, now: float) -> None:
        # bounded: entries re-armed at <= now wait for the next round (a checkpoint);
        # self._heap each time, since re-arming may rebuild it
        for _ in range(len(self._heap)):
            if not self._heap or self._heap[0][0] > now:
                return
            deadline, _, assoc = heapq.heappop(self._heap)
            if assoc.closed or assoc._heap_deadline != deadline:
                continue  # stale entry
            assoc._heap_deadline = None
            try:
                self._on_timer(assoc, now)
            except Exception:
                self._internal_error(assoc, now)

    def _on_timer(self, assoc: Association, now: float) -> None:
        assoc._conn.handle_timer(now)
        liveness = assoc._liveness
        if liveness is not None:
            for _ in range(3):  # at most two actions are due at once
                action = liveness.handle_timer(now)
                if action is None:
                    break
                if action is cstp.LivenessAction.PEER_DEAD:
                    # §5.3: DTLS is declared down; the session goes on over CSTP
                    self._end(assoc, DownReason.DPD, now)
                    return
                if action is cstp.LivenessAction.SEND_DPD:
                    self._send_now(assoc, cstp.PacketType.DPD_REQ, b"", now)
                    self.stats.dpd_requests_sent += 1
                else:
                    self._send_now(assoc, cstp.PacketType.KEEPALIVE, b"", now)
        self._drain(assoc, now)
