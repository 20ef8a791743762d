"""The gateway's DTLS server, sans-IO: many legacy-mode associations on one UDP port
(protocol.md §7.1, §12).

Driver contract (aioquic style, style.md): feed ``receive_datagram(data, peer, now)``,
call ``handle_timer(now)`` when ``get_timer()`` is due, send every pair of
``datagrams_to_send()``, and read ``next_event()``.  The sessions' commands are
``send_frame(assoc, ...)`` and ``close_association(assoc, now)``; ``shutdown(now)``
ends everything.  No clock, no socket, randomness injected.

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

Timers: one heap for all associations (handshake retransmission, DPD).  An
association has at most one live heap entry; a deadline that moves later (each
received record pushes DPD back) leaves the entry in place and is re-checked
when it fires, so the per-record path pushes nothing, and once the association
is up it does not even compute the deadline.  Entries made stale (a closed
association, or a deadline moved earlier) are skipped when popped, and the heap
is rebuilt when they outnumber the live ones.  So 10,000 idle associations cost
10,000 heap entries and one timer, not 10,000 timers.

Events, not callbacks into the sessions: the server never runs a session's code,
so nothing re-enters it halfway through a datagram, a session's exception is
the driver's to catch, and tests read as conversations (datagrams in; events
and datagrams out).  It adds nothing per datagram: a record's ``FrameReceived``
is the one object made where the callback design made a ``cstp.Frame``.  The
gateway's I/O shell turns the events into its ``DtlsTarget`` callbacks.

Every datagram from the network is hostile: nothing it holds makes
``receive_datagram`` raise; a bug of ours in one association ends that
association only (``AssociationDown`` with reason INTERNAL_ERROR and the error).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic

from loadgen.proto.dtls.association import (
    Address,
    AssociationDown,
    DownReason,
    DropReason,
    EndpointStats,
    ServerAssociation,
    ServerEvent,
    TargetT,
)
from loadgen.proto.dtls.connection import DtlsConnection
from loadgen.proto.dtls.handshake import ClientHello, parse_client_hello_datagram_untrusted
from loadgen.proto.dtls.records import MAX_CIPHERTEXT_LEN, RECORD_HEADER
from loadgen.proto.dtls.session import Role
from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "HANDOVER_GUARD_S",
    "MAX_DATAGRAM_BYTES",
    "SERVER_RETRANSMIT_SCHEDULE_S",
    "DtlsServer",
    "screen_client_hello_untrusted",
]

#: ocserv's UDP_FD_RESEND_TIME: a new address for a session is ignored this long
#: after the previous hand-over (§7.1).
HANDOVER_GUARD_S = 3.0
#: ocserv's server flight timers start at 400 ms and give up after 60 s (§7.1);
#: doubling from 0.4 s.  The last offset is the give-up time.
SERVER_RETRANSMIT_SCHEDULE_S: tuple[float, ...] = (0.0, 0.4, 1.2, 2.8, 6.0, 12.4, 25.2, 60.0)
#: One record of the largest legal size; our peers send one record per datagram.
MAX_DATAGRAM_BYTES = RECORD_HEADER.size + MAX_CIPHERTEXT_LEN
_HANDSHAKE = 22
_CLIENT_HELLO = 1


def screen_client_hello_untrusted(data: bytes) -> ClientHello | DropReason:
    """The ClientHello that may open an association, or why ``data`` is none (§7.1).

    Cheap checks on the first record's header come before parsing the hello.
    """
    if not data:
        return DropReason.GARBAGE
    if data[0] != _HANDSHAKE:
        return DropReason.NOT_CLIENT_HELLO
    if len(data) <= RECORD_HEADER.size:
        return DropReason.GARBAGE
    if not (data[1] == 0xFE or data[1:3] == b"\x01\x00"):
        return DropReason.GARBAGE
    if data[3:5] != b"\x00\x00" or data[RECORD_HEADER.size] != _CLIENT_HELLO:
        return DropReason.NOT_CLIENT_HELLO
    try:
        hello = parse_client_hello_datagram_untrusted(data)
    except BadPacketError:
        return DropReason.GARBAGE
    if not any(hello.random):
        return DropReason.ZERO_RANDOM
    return hello


class DtlsServer(Generic[TargetT]):
    """The DTLS server of one UDP port (see the module docstring for the contract).

    ``lookup(session_id)`` names the gateway session a ClientHello resumes.
    ``random_bytes`` feeds ServerHello randoms and CBC IVs.  ``dpd_s`` is the
    DTLS DPD interval (§5.3, 0 disables it).
    """

    def __init__(
        self,
        *,
        lookup: Callable[[bytes], TargetT | None],
        random_bytes: Callable[[int], bytes],
        dpd_s: float,
        stats: EndpointStats | None = None,
        handover_guard_s: float = HANDOVER_GUARD_S,
        retransmit_schedule_s: Sequence[float] = SERVER_RETRANSMIT_SCHEDULE_S,
    ) -> None:
        if dpd_s < 0 or handover_guard_s < 0:
            raise LocalProtocolError("dpd_s and handover_guard_s must be >= 0")
        self.stats = stats if stats is not None else EndpointStats()
        self._lookup = lookup
        self._random = random_bytes
        self._dpd_s = dpd_s
        self._guard_s = handover_guard_s
        self._schedule = tuple(retransmit_schedule_s)
        self._by_peer: dict[Address, ServerAssociation[TargetT]] = {}
        self._by_session: dict[bytes, ServerAssociation[TargetT]] = {}
        # last hand-over per session, pruned in time order once older than the guard
        self._handover_at: dict[bytes, float] = {}
        self._handovers: deque[tuple[float, bytes]] = deque()
        self._heap: list[tuple[float, int, ServerAssociation[TargetT]]] = []
        #: the deadline of each association's live heap entry
        self._armed: dict[ServerAssociation[TargetT], float] = {}
        self._tiebreak = itertools.count()
        self._events: deque[ServerEvent[TargetT]] = deque()
        self._outbox: list[tuple[bytes, Address]] = []

    # -- what the driver reads -------------------------------------------------------

    @property
    def association_count(self) -> int:
        return len(self._by_peer)

    def association_for(self, session_id: bytes) -> ServerAssociation[TargetT] | None:
        return self._by_session.get(session_id)

    @property
    def timer_entries(self) -> int:
        """Heap entries, live and stale (bounded by about twice the associations)."""
        return len(self._heap)

    @property
    def handover_entries(self) -> int:
        """Sessions remembered for the hand-over guard (each for ``handover_guard_s``)."""
        return len(self._handovers)

    def next_event(self) -> ServerEvent[TargetT] | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> Sequence[tuple[bytes, Address]]:
        """(datagram, peer) pairs queued since the last call, in order."""
        outbox = self._outbox
        if not outbox:
            return ()  # the common case after a record: nothing made
        out = outbox.copy()
        outbox.clear()  # cleared, not replaced: the associations append to it
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due (possibly early: a stale entry), or None."""
        return self._heap[0][0] if self._heap else None

    # -- input -----------------------------------------------------------------------

    def receive_datagram(self, data: bytes, peer: Address, now: float) -> None:
        """One datagram from ``peer``.  Raises only for a bug of ours outside any
        association (the driver logs it); never for what the datagram holds."""
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
        if assoc is None:
            self._on_new_peer(data, peer, now)
            return
        try:
            ended = assoc.receive_datagram(data, now)
            if ended is None:  # _settle, inlined on the per-record path
                assoc.flush(now)
                if assoc.needs_arming:
                    self._arm(assoc)
            else:
                self._end(assoc, ended, now)
        except Exception as exc:
            self._internal_error(assoc, exc, now)

    def handle_timer(self, now: float) -> None:
        # bounded: entries re-armed at <= now wait for the next call;
        # self._heap each time, since re-arming may rebuild it
        for _ in range(len(self._heap)):
            if not self._heap or self._heap[0][0] > now:
                return
            deadline, _, assoc = heapq.heappop(self._heap)
            if self._armed.get(assoc) != deadline:
                continue  # stale entry
            del self._armed[assoc]
            try:
                self._settle(assoc, assoc.handle_timer(now), now)
            except Exception as exc:
                self._internal_error(assoc, exc, now)

    # -- the sessions' commands --------------------------------------------------------

    def send_frame(
        self, assoc: ServerAssociation[TargetT], ptype: int, payload: bytes, now: float
    ) -> bool:
        """Queue one frame (one record, one datagram); False if the association is not up."""
        if not assoc.seal_frame(ptype, payload, now):
            return False
        assoc.flush(now)
        return True

    def close_association(self, assoc: ServerAssociation[TargetT], now: float) -> None:
        """End it from the session's side: close_notify; its pending events are
        dropped, and its ``AssociationDown`` has reason None."""
        if assoc.closed:
            return
        events = self._events
        if any(event.association is assoc for event in events):
            kept = [event for event in events if event.association is not assoc]
            events.clear()
            events.extend(kept)
        self._end(assoc, None, now)

    def shutdown(self, now: float) -> None:
        """End every association (reason SHUTDOWN); their close_notify is queued."""
        for assoc in list(self._by_peer.values()):
            self._end(assoc, DownReason.SHUTDOWN, now)

    # -- associations ------------------------------------------------------------------

    def _on_new_peer(self, data: bytes, peer: Address, now: float) -> None:
        # nothing is allocated for this peer until the hello names a session we know
        dropped = self.stats.dropped
        hello = screen_client_hello_untrusted(data)
        if not isinstance(hello, ClientHello):
            dropped[hello] += 1
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
            self._end(old, DownReason.REPLACED, now)
        assoc = ServerAssociation(
            peer=peer,
            session_id=session_id,
            target=target,
            conn=conn,
            dpd_s=self._dpd_s,
            now=now,
            stats=self.stats,
            events=self._events,
            outbox=self._outbox,
        )
        self._by_peer[peer] = assoc
        self._by_session[session_id] = assoc
        self._handover_at[session_id] = now
        self._handovers.append((now, session_id))
        self.stats.associations_active += 1
        self.stats.associations_total += 1
        try:
            self._settle(assoc, assoc.receive_datagram(data, now), now)
        except Exception as exc:
            self._internal_error(assoc, exc, now)

    def _prune_handovers(self, now: float) -> None:
        queue = self._handovers
        while queue and now - queue[0][0] >= self._guard_s:
            at, session_id = queue.popleft()
            if self._handover_at.get(session_id) == at:
                del self._handover_at[session_id]

    def _settle(
        self, assoc: ServerAssociation[TargetT], ended: DownReason | None, now: float
    ) -> None:
        """After the association ran: end it, or send what it queued and re-arm its timer."""
        if ended is not None:
            self._end(assoc, ended, now)
            return
        assoc.flush(now)
        self._arm(assoc)

    def _internal_error(
        self, assoc: ServerAssociation[TargetT], exc: Exception, now: float
    ) -> None:
        self.stats.internal_errors += 1
        self._end(assoc, DownReason.INTERNAL_ERROR, now, exc)

    def _end(
        self,
        assoc: ServerAssociation[TargetT],
        reason: DownReason | None,
        now: float,
        error: Exception | None = None,
    ) -> None:
        """Close the association (close_notify unless already terminated), forget it,
        and say so."""
        if assoc.closed:
            return
        was_up = assoc.up
        try:
            assoc.terminate()
            assoc.flush(now)
        except Exception as exc:
            self.stats.internal_errors += 1
            if error is None:
                error = exc
        if self._by_peer.get(assoc.peer) is assoc:
            del self._by_peer[assoc.peer]
        if self._by_session.get(assoc.session_id) is assoc:
            del self._by_session[assoc.session_id]
        self._armed.pop(assoc, None)
        stats = self.stats
        stats.associations_active -= 1
        if not was_up:
            stats.handshakes_failed += 1
        if reason is not None:
            stats.down[reason] += 1
        self._events.append(AssociationDown(association=assoc, reason=reason, error=error))

    # -- timers ------------------------------------------------------------------------

    def _arm(self, assoc: ServerAssociation[TargetT]) -> None:
        deadline = assoc.get_timer()
        current = self._armed.get(assoc)
        if deadline is None or (current is not None and current <= deadline):
            return  # the live entry fires no later; it re-checks then
        self._armed[assoc] = deadline
        heapq.heappush(self._heap, (deadline, next(self._tiebreak), assoc))
        if len(self._heap) > 2 * len(self._armed) + 1024:
            self._heap = [(d, next(self._tiebreak), a) for a, d in self._armed.items()]
            heapq.heapify(self._heap)
