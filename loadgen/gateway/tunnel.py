"""One tunnel on the gateway: the CSTP channel on the TLS stream, the DTLS
association when the client brings one up, and the echo data plane.

A reply leaves on the channel its request came on.  DTLS counts as the
session's data channel from the handshake until DTLS DPD declares it dead.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Callable
from ipaddress import IPv4Address

import trio

from loadgen.gateway.dataplane import answer_untrusted
from loadgen.gateway.dtls_endpoint import Association
from loadgen.metrics.gateway import GatewayMetrics
from loadgen.proto import cstp
from loadgen.proto.admission import SessionRecord
from loadgen.proto.dtls import DtlsSession
from loadgen.proto.errors import BadPacketError

__all__ = ["TunnelSession"]

log = logging.getLogger("loadgen.gateway")
RECEIVE_CHUNK = 65536


class TunnelSession:
    """A CONNECTed client.  Implements the DtlsTarget protocol of the endpoint."""

    def __init__(
        self,
        *,
        record: SessionRecord[TunnelSession],
        stream: trio.SSLStream[trio.SocketStream],
        gateway_address: IPv4Address,
        dtls_session: DtlsSession | None,
        dpd_s: float,
        keepalive_s: float,
        metrics: GatewayMetrics,
        on_dtls_change: Callable[[TunnelSession], None] = lambda s: None,
    ) -> None:
        self.record = record
        self._stream = stream
        self._gateway = gateway_address
        self._dtls_session = dtls_session
        self._metrics = metrics
        self.conn = cstp.CstpConnection(
            "server", dpd_s=dpd_s, keepalive_s=keepalive_s, now=trio.current_time()
        )
        self._send_lock = trio.Lock()
        self._wakeup = trio.Event()
        self.dtls: Association | None = None
        self.cookie_invalidated = False
        self.end_reason = "closed"
        #: set once _handle_events saw the end: the reader and the timer task
        #: both drain events, and the end must be counted once
        self._over = False
        self._scope = trio.CancelScope()
        self._metrics_channel = "cstp"

    # -- DtlsTarget -------------------------------------------------------------

    @property
    def dtls_session(self) -> DtlsSession:
        assert self._dtls_session is not None
        return self._dtls_session

    def on_dtls_up(self, assoc: Association) -> None:
        self.dtls = assoc
        self._metrics.handshakes.labels("dtls", "ok").inc()
        self._move_gauge("dtls")

    def on_dtls_frame(self, assoc: Association, ptype: int, payload: bytes) -> None:
        if ptype != cstp.PacketType.DATA:
            return  # DPD is answered by the endpoint; keepalives need nothing
        self._count("dtls", "rx", payload)
        reply = answer_untrusted(payload, self._gateway)
        if reply is None:
            self._metrics.dropped.labels("not_for_gateway").inc()
            return
        self._count("dtls", "tx", reply)
        assoc.send_frame_nowait(cstp.PacketType.DATA, reply)

    def on_dtls_down(self, assoc: Association, reason: str) -> None:
        if self.dtls is assoc:
            self.dtls = None
            self._move_gauge("cstp")
        else:  # it never came up: its handshake failed or was abandoned
            self._metrics.handshakes.labels("dtls", "failed").inc()

    def _move_gauge(self, channel: str) -> None:
        if channel != self._metrics_channel:
            self._metrics.sessions_active.labels(self._metrics_channel).dec()
            self._metrics.sessions_active.labels(channel).inc()
            self._metrics_channel = channel

    def _count(self, channel: str, direction: str, packet: bytes) -> None:
        self._metrics.packets.labels(channel, direction).inc()
        self._metrics.bytes.labels(channel, direction).inc(len(packet))

    # -- CSTP ---------------------------------------------------------------------

    async def run(self, leftover: bytes) -> None:
        """Serve the tunnel until the client leaves, DPD gives up, or we stop."""
        # counted here, not in __init__: the finally below is what uncounts it
        self._metrics.sessions_active.labels("cstp").inc()
        try:
            with self._scope:
                if leftover:
                    self.conn.receive_data(leftover, trio.current_time())
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._timers, nursery.cancel_scope)
                    await self._reader()
                    nursery.cancel_scope.cancel()
        finally:
            self._metrics.sessions_active.labels(self._metrics_channel).dec()
            if self.dtls is not None:
                self.dtls.close()
                self.dtls = None

    async def _reader(self) -> None:
        # bytes that came with the CONNECT may already end the tunnel
        if not self._handle_events():
            await self._flush()
            return
        await self._flush()
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                self.end_reason = "reset"
                return
            if not data:
                self.end_reason = "closed"
                return
            self.conn.receive_data(bytes(data), trio.current_time())
            if not self._handle_events():
                await self._flush()
                return
            await self._flush()

    async def _timers(self, scope: trio.CancelScope) -> None:
        while True:
            deadline = self.conn.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            self.conn.handle_timer(trio.current_time())
            if not self._handle_events():
                scope.cancel()
                return
            # not _flush(): waking ourselves would make this loop spin
            await self._send_frames()

    def _handle_events(self) -> bool:
        """Process the CSTP events; False when the tunnel is over."""
        if self._over:
            return False
        self._over = not self._drain_events()
        return not self._over

    def _drain_events(self) -> bool:
        while True:
            try:
                event = self.conn.next_event()
            except BadPacketError as exc:
                log.info("tunnel of %s: bad CSTP data (%s); closing", self.record.username, exc)
                self._metrics.dropped.labels("cstp_malformed").inc()
                self.end_reason = "protocol"
                return False
            if event is None:
                return True
            if isinstance(event, cstp.PacketReceived):
                self._count("cstp", "rx", event.data)
                reply = answer_untrusted(event.data, self._gateway)
                if reply is None:
                    self._metrics.dropped.labels("not_for_gateway").inc()
                else:
                    self._count("cstp", "tx", reply)
                    self.conn.send_packet(reply, trio.current_time())
            elif isinstance(event, cstp.DisconnectReceived):
                # 0xb0 kills the cookie; an empty DISCONNECT keeps it (§5.4)
                self.cookie_invalidated = event.cookie_invalidated
                self.end_reason = "logout" if event.cookie_invalidated else "disconnect"
                return False
            elif isinstance(event, cstp.PeerDead):
                log.info("tunnel of %s: DPD timeout", self.record.username)
                self.end_reason = "dpd"
                return False

    async def _flush(self) -> None:
        """Send what CSTP queued, then wake the timer task (a send moves its timers)."""
        await self._send_frames()
        self._wakeup.set()

    async def _send_frames(self) -> None:
        async with self._send_lock:
            for frame in self.conn.frames_to_send():
                try:
                    await self._stream.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return

    async def terminate(self) -> None:
        """Gateway shutdown: tell the client (TERMINATE), then stop."""
        try:
            self.conn.send_terminate(trio.current_time())
            with trio.move_on_after(1.0):
                await self._flush()
        except Exception:  # the session may already be closing
            log.debug("terminate of %s failed", self.record.username, exc_info=True)
        self._scope.cancel()
