"""The CSTP channel of one session: reader, timers and DPD over trio.

The sans-IO ``CstpConnection`` decides what to send and when; this module
only moves its frames.  Each frame is written with its own ``send_all`` so it
travels in one TLS record, as ocserv and openconnect require (§5.1).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.proto import cstp
from loadgen.proto.errors import BadPacketError
from loadgen.proto.tunnel import TunnelParams

__all__ = ["CstpTunnel"]

log = logging.getLogger("loadgen.engine")

RECEIVE_CHUNK = 65536


@dataclass
class _Pending:
    sent_at: float
    done: trio.Event = field(default_factory=trio.Event)
    rtt_s: float | None = None


class CstpTunnel:
    """Runs one CSTP channel until stopped, disconnected or ended by the gateway."""

    def __init__(
        self,
        stream: trio.SSLStream[trio.SocketStream],
        params: TunnelParams,
        *,
        on_packet: Callable[[bytes], None],
        on_end: Callable[[], None],
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self.stream = stream
        self._on_packet = on_packet
        self._on_end = on_end
        self.params = params
        self._random = random_bytes
        now = trio.current_time()
        self.conn = cstp.CstpConnection(
            "client",
            dpd_s=float(params.cstp_dpd_s or 0),
            keepalive_s=float(params.cstp_keepalive_s or 0),
            now=now,
        )
        self._send_lock = trio.Lock()
        self._wakeup = trio.Event()
        self._scope = trio.CancelScope()
        self._dpd_waiters: dict[bytes, _Pending] = {}
        #: why the tunnel ended, when it did
        self.ended: SessionFailedError | None = None
        self.ended_event = trio.Event()

    # -- tasks ---------------------------------------------------------------

    def start(self, nursery: trio.Nursery, leftover: bytes) -> None:
        if leftover:
            self.conn.receive_data(leftover, trio.current_time())
        nursery.start_soon(self._run)

    def stop(self) -> None:
        self._scope.cancel()

    async def _run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                # the reader runs in this task: one task fewer per session
                nursery.start_soon(self._guarded, self._timers)
                await self._guarded(self._reader)
        self._end(SessionFailedError(Phase.TUNNEL, Reason.CANCELLED, "tunnel stopped"))

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        # Expected endings are outcomes, not crashes: record and stop.
        try:
            await task()
        except SessionFailedError as exc:
            self._end(exc)
        except Exception as exc:  # a bug fails this session only, with its traceback logged
            log.error("tunnel task %s: unexpected error", task.__name__, exc_info=exc)
            self._end(
                SessionFailedError(
                    Phase.TUNNEL, Reason.INTERNAL, f"unexpected {type(exc).__name__}"
                )
            )

    def _end(self, failure: SessionFailedError) -> None:
        if self.ended is None:
            self.ended = failure
        self.ended_event.set()
        for waiter in self._dpd_waiters.values():
            waiter.done.set()
        self._on_end()
        self._scope.cancel()

    async def _reader(self) -> None:
        # bytes that came with the CONNECT response may hold frames already
        self._handle_events()
        await self._flush()
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                raise SessionFailedError(
                    Phase.TUNNEL, Reason.RESET, "TLS connection broken under the tunnel"
                ) from None
            if not data:
                raise SessionFailedError(
                    Phase.TUNNEL, Reason.CLOSED, "gateway closed the TLS connection"
                )
            self.conn.receive_data(bytes(data), trio.current_time())
            self._handle_events()
            await self._flush()

    async def _timers(self) -> None:
        while True:
            deadline = self.conn.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            self.conn.handle_timer(trio.current_time())
            self._handle_events()
            # no wake-up from here: the loop recomputes its deadline anyway,
            # and waking itself would spin (one busy task per tunnel)
            await self._flush(wake=False)

    async def _flush(self, *, wake: bool = True) -> None:
        async with self._send_lock:
            for frame in self.conn.frames_to_send():
                try:
                    await self.stream.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise SessionFailedError(
                        Phase.TUNNEL, Reason.RESET, "TLS connection broken under the tunnel"
                    ) from exc
        if wake:
            # traffic from outside the timer task may move its deadlines
            self._wakeup.set()

    def _handle_events(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except BadPacketError as exc:
                raise SessionFailedError(Phase.TUNNEL, Reason.PROTOCOL, str(exc)) from exc
            if event is None:
                return
            if isinstance(event, cstp.PacketReceived):
                self._on_packet(event.data)
            elif isinstance(event, cstp.DpdResponseReceived):
                waiter = self._dpd_waiters.pop(event.payload, None)
                if waiter is not None:
                    waiter.rtt_s = trio.current_time() - waiter.sent_at
                    waiter.done.set()
            elif isinstance(event, (cstp.DisconnectReceived, cstp.TerminateReceived)):
                raise SessionFailedError(
                    Phase.TUNNEL, Reason.TERMINATED, "gateway ended the tunnel"
                )
            elif isinstance(event, cstp.PeerDead):
                raise SessionFailedError(
                    Phase.TUNNEL, Reason.TERMINATED, "dead peer detection: gateway silent"
                )

    # -- data ----------------------------------------------------------------

    async def send_ip(self, packet: bytes) -> None:
        self._check_alive()
        self.conn.send_packet(packet, trio.current_time())
        await self._flush()

    def _check_alive(self) -> None:
        if self.ended is not None:
            raise self.ended

    async def dpd_probe(self, timeout_s: float) -> float | None:
        """One DPD-REQ over CSTP; the round trip in seconds, or None if unanswered."""
        self._check_alive()
        payload = self._random(8)
        waiter = _Pending(sent_at=trio.current_time())
        self._dpd_waiters[payload] = waiter
        self.conn.send_dpd_request(payload, trio.current_time())
        await self._flush()
        with trio.move_on_after(timeout_s):
            await waiter.done.wait()
        self._dpd_waiters.pop(payload, None)
        self._check_alive()
        return waiter.rtt_s

    async def disconnect(self, reason: cstp.DisconnectReason | None) -> None:
        """Send DISCONNECT (bounded, shielded) and stop the tunnel tasks."""
        if self.ended is None:
            with trio.move_on_after(2.0) as scope:
                scope.shield = True
                try:
                    self.conn.send_disconnect(reason, "", trio.current_time())
                    await self._flush()
                except SessionFailedError:
                    pass
        self.stop()
