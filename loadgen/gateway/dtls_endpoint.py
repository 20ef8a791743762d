"""The gateway's DTLS server on one UDP socket: the trio shell around the sans-IO
``loadgen.proto.dtls.server.DtlsServer`` (protocol.md §7.1, §12).

The demultiplexing, the ClientHello screening, the 3 s hand-over guard, DPD
and the timer heap are the server's (read its docstring for the rules); this
module does the I/O, in three tasks however many associations
there are:

* the receiver reads the socket and hands each datagram to the server, then
  turns the server's events into the sessions' ``DtlsTarget`` callbacks;
* the sender drains one bounded queue of (datagram, peer) to ``sendto``
  (datagrams are dropped and counted when it is full: UDP may lose them);
* the timer task sleeps until the server's ``get_timer()``.

When the endpoint stops, every association ends (``shutdown``) and their
close_notify records are flushed for at most ``SHUTDOWN_FLUSH_S``.  Nothing a
datagram holds, and no exception of a session's callback, escapes ``run()``.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import trio

from loadgen.proto.dtls import (
    HANDOVER_GUARD_S,
    SERVER_RETRANSMIT_SCHEDULE_S,
    AssociationDown,
    AssociationUp,
    DownReason,
    DropReason,
    DtlsCounters,
    DtlsServer,
    EndpointStats,
    FrameReceived,
    ServerAssociation,
    SessionTarget,
    State,
)
from loadgen.proto.dtls.association import Address

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

RECEIVE_BYTES = 65536
SEND_QUEUE_DATAGRAMS = 8192
#: close_notify flush when the endpoint stops
SHUTDOWN_FLUSH_S = 1.0
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

_Datagram = tuple[bytes, Address]


class DtlsTarget(SessionTarget, Protocol):
    """What a gateway session gives the endpoint.  Callbacks run in the endpoint's
    tasks: they must not block (use ``Association.send_frame_nowait``)."""

    def on_dtls_up(self, assoc: Association) -> None: ...

    def on_dtls_frame(self, assoc: Association, ptype: int, payload: bytes) -> None:
        """Every decoded record: DATA, and also DPD-REQ (already answered), DPD-RESP,
        KEEPALIVE and unknown types, for liveness and channel switching (§7.9)."""

    def on_dtls_down(self, assoc: Association, reason: str) -> None:
        """Once per association, whether it came up or not (a ``DownReason``);
        not after the session's own ``Association.close()``."""


class _SendQueue:
    """The sending end of the bounded queue the sender task drains."""

    __slots__ = ("_stats", "_tx")

    def __init__(self, tx: trio.MemorySendChannel[_Datagram], stats: EndpointStats) -> None:
        self._tx = tx
        self._stats = stats

    def put_nowait(self, item: _Datagram) -> bool:
        try:
            self._tx.send_nowait(item)
        except trio.WouldBlock:
            self._stats.dropped[DropReason.SEND_QUEUE_FULL] += 1
            return False
        except trio.ClosedResourceError:
            return False
        return True

    def put_all_nowait(self, items: Iterable[_Datagram]) -> bool:
        """Every item that fits; False if any was dropped."""
        ok = True
        for item in items:
            if not self.put_nowait(item):
                ok = False
        return ok

    async def put(self, item: _Datagram) -> bool:
        try:
            await self._tx.send(item)
        except trio.ClosedResourceError:
            return False
        return True


class Association:
    """A gateway session's handle on its DTLS association (the server's
    ``ServerAssociation``), with the sending and closing that need trio.

    ``bytes_in``/``bytes_out`` count UDP payload bytes; ``records_in``/``records_out``
    count application-data records (one frame each, §7.7).
    """

    __slots__ = ("_assoc", "_queue", "_server")

    def __init__(
        self,
        assoc: ServerAssociation[DtlsTarget],
        *,
        server: DtlsServer[DtlsTarget],
        queue: _SendQueue,
    ) -> None:
        self._assoc = assoc
        self._server = server
        self._queue = queue

    def __repr__(self) -> str:
        return repr(self._assoc)

    @property
    def peer(self) -> Address:
        return self._assoc.peer

    @property
    def session_id(self) -> bytes:
        return self._assoc.session_id

    @property
    def target(self) -> DtlsTarget:
        return self._assoc.target

    @property
    def created_at(self) -> float:
        return self._assoc.created_at

    @property
    def closed(self) -> bool:
        return self._assoc.closed

    @property
    def up(self) -> bool:
        return self._assoc.up

    @property
    def state(self) -> State:
        return self._assoc.state

    @property
    def dtls_counters(self) -> DtlsCounters:
        return self._assoc.dtls_counters

    @property
    def records_in(self) -> int:
        return self._assoc.records_in

    @property
    def records_out(self) -> int:
        return self._assoc.records_out

    @property
    def bytes_in(self) -> int:
        return self._assoc.bytes_in

    @property
    def bytes_out(self) -> int:
        return self._assoc.bytes_out

    def send_frame_nowait(self, ptype: int, payload: bytes) -> bool:
        """Queue one frame; False if the association is not up or the queue is full."""
        server = self._server
        if not server.send_frame(self._assoc, ptype, payload, trio.current_time()):
            return False
        queued = True
        for item in server.datagrams_to_send():  # one, in fact: one record per datagram
            queued = self._queue.put_nowait(item) and queued
        return queued

    async def send_frame(self, ptype: int, payload: bytes) -> bool:
        """Send one frame, waiting for room in the send queue; False if not up."""
        server = self._server
        if not server.send_frame(self._assoc, ptype, payload, trio.current_time()):
            return False
        for item in server.datagrams_to_send():
            if not await self._queue.put(item):
                return False
        return True

    def close(self) -> None:
        """End the association from the session's side (close_notify, no callback)."""
        server = self._server
        server.close_association(self._assoc, trio.current_time())
        self._queue.put_all_nowait(server.datagrams_to_send())


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
        self.server: DtlsServer[DtlsTarget] = DtlsServer(
            lookup=lookup,
            random_bytes=random_bytes,
            dpd_s=dpd_s,
            stats=stats,
            handover_guard_s=handover_guard_s,
            retransmit_schedule_s=retransmit_schedule_s,
        )
        self.stats = self.server.stats
        self._sock = sock
        self._send_tx, self._send_rx = trio.open_memory_channel[_Datagram](send_queue_datagrams)
        self._queue = _SendQueue(self._send_tx, self.stats)
        #: the sessions' handles, made when an association is first reported
        self._handles: dict[ServerAssociation[DtlsTarget], Association] = {}
        self._timer_scope: trio.CancelScope | None = None
        #: the deadline the timer task sleeps until (-inf while it is not asleep)
        self._timer_at = -math.inf

    # -- public surface ------------------------------------------------------------

    @property
    def association_count(self) -> int:
        return self.server.association_count

    def association_for(self, session_id: bytes) -> Association | None:
        assoc = self.server.association_for(session_id)
        return None if assoc is None else self._handle(assoc)

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
        stats, server = self.stats, self.server
        while True:
            try:
                data, peer = await self._sock.recvfrom(RECEIVE_BYTES)
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ERRNOS:
                    raise
                stats.dropped[DropReason.RECEIVE_ERROR] += 1
                continue
            try:
                server.receive_datagram(data, peer, trio.current_time())
                self._react()
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
        server = self.server
        while True:
            deadline = server.get_timer()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._timer_scope, self._timer_at = scope, scope.deadline
                await trio.sleep_forever()
            self._timer_scope, self._timer_at = None, -math.inf
            try:
                server.handle_timer(trio.current_time())
                self._react()
            except Exception:
                self.stats.internal_errors += 1
                log.exception("DTLS endpoint: timers")

    async def _shutdown(self) -> None:
        try:
            self.server.shutdown(trio.current_time())
            self._react()
        except Exception:
            self.stats.internal_errors += 1
            log.exception("DTLS endpoint: shutdown")
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

    # -- from the server to the sessions and the socket ------------------------------

    def _handle(self, assoc: ServerAssociation[DtlsTarget]) -> Association:
        handle = self._handles.get(assoc)
        if handle is None:
            handle = Association(assoc, server=self.server, queue=self._queue)
            self._handles[assoc] = handle
        return handle

    def _react(self) -> None:
        """Run the callbacks of the server's events, queue its datagrams, and bring
        the timer forward if a deadline moved earlier."""
        server, handles = self.server, self._handles
        while (event := server.next_event()) is not None:
            if isinstance(event, FrameReceived):  # the per-record case: no helper calls
                handle = handles.get(event.association) or self._handle(event.association)
                try:
                    handle.target.on_dtls_frame(handle, event.ptype, event.payload)
                except Exception:
                    self._target_error(handle.target.on_dtls_frame)
            elif isinstance(event, AssociationUp):
                handle = self._handle(event.association)
                self._call(handle.target.on_dtls_up, handle)
            else:
                self._on_down(event)
        out = server.datagrams_to_send()
        if out:
            self._queue.put_all_nowait(out)
        deadline = server.get_timer()
        if deadline is not None and deadline < self._timer_at:  # a float, not the property
            self._timer_at = deadline
            if self._timer_scope is not None:
                self._timer_scope.deadline = deadline

    def _on_down(self, event: AssociationDown[DtlsTarget]) -> None:
        assoc, reason = event.association, event.reason
        handle = self._handles.pop(assoc, None) or Association(
            assoc, server=self.server, queue=self._queue
        )
        if event.error is not None:
            log.error("DTLS association %r: %s", handle, reason, exc_info=event.error)
        if reason is None:
            return  # the session closed it: no callback
        if reason is DownReason.REPLACED:
            new = self.server.association_for(assoc.session_id)
            log.info(
                "DTLS session %s moved from %s to %s",
                assoc.session_id.hex()[:8],
                assoc.peer,
                new.peer if new is not None else "?",
            )
        log.debug("DTLS association %r down: %s", handle, reason)
        self._call(handle.target.on_dtls_down, handle, str(reason))

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            self._target_error(callback)

    def _target_error(self, callback: Callable[..., None]) -> None:
        """Count and log the callback's exception (call from its ``except``)."""
        self.stats.target_errors += 1
        log.exception("DTLS endpoint: %s raised", getattr(callback, "__qualname__", callback))
