"""The DTLS channel of one session (phase 6): handshake, data, DPD, fallback.

Legacy AnyConnect mode (protocol.md §7): the sans-IO ``DtlsConnection``
resumes the session named by ``X-DTLS-Session-ID`` with our
``X-DTLS-Master-Secret``.  The ClientHello goes out on the seed's schedule (0,
1, 3, 7, 15 s, given up at 31 s); when it fails the session stays on CSTP with
a fallback reason, and a new attempt follows every ``reattempt_s`` so sessions
recover when UDP comes back.  A DTLS channel that DPD declares dead hands the
traffic back to CSTP the same way.
"""

from __future__ import annotations

import enum
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from loadgen.failures import FallbackReason
from loadgen.options import DEFAULT_DTLS12_OFFER, DEFAULT_DTLS_OFFER, DEFAULTS
from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DTLS0_9,
    AlertReceived,
    ApplicationDataReceived,
    CipherSpec,
    ConnectionTerminated,
    DtlsConnection,
    DtlsSession,
    HandshakeCompleted,
    HandshakeTimedOut,
    Role,
)
from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "DEFAULT_DTLS12_OFFER",
    "DEFAULT_DTLS_OFFER",
    "DatagramSocket",
    "DtlsChannel",
    "DtlsOptions",
    "DtlsState",
    "open_udp",
]

log = logging.getLogger("loadgen.engine")

RECEIVE_BYTES = 65536
#: a connected UDP socket reports ICMP errors (port/host/net unreachable) and
#: local firewall rejections through these
_UNREACHABLE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM, errno.EACCES}
)


@dataclass(frozen=True, kw_only=True)
class DtlsOptions:
    #: X-DTLS-CipherSuite offer; None = header not sent
    ciphers: tuple[str, ...] | None = DEFAULT_DTLS_OFFER
    #: X-DTLS12-CipherSuite offer; None = header not sent
    ciphers12: tuple[str, ...] | None = DEFAULT_DTLS12_OFFER
    #: ClientHello send times; the last entry is when the attempt is given up
    schedule_s: tuple[float, ...] = DEFAULTS.dtls_schedule
    #: seconds between attempts after a failure (0: never again); openconnect: 60
    reattempt_s: float = DEFAULTS.dtls_reattempt_s
    #: send DTLS here instead of the gateway's host and X-DTLS-Port (fault proxies)
    host: str | None = None
    port: int | None = None


class DtlsState(enum.StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


class DatagramSocket(Protocol):
    """A connected datagram socket: the real UDP one, or an in-memory one in tests."""

    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    def close(self) -> None: ...


class _UdpSocket:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock

    async def send(self, data: bytes) -> None:
        await self._sock.send(data)

    async def receive(self) -> bytes:
        return await self._sock.recv(RECEIVE_BYTES)

    def close(self) -> None:
        self._sock.close()


async def open_udp(host: str, port: int, source_ip: str | None = None) -> DatagramSocket:
    """One connected UDP socket: ICMP errors then surface as ECONNREFUSED."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, type_, proto, _canon, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        if source_ip is not None:
            await sock.bind((source_ip, 0))
        await sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return _UdpSocket(sock)


SocketFactory = Callable[[], Awaitable[DatagramSocket]]


class _AttemptEndedError(Exception):
    def __init__(self, reason: FallbackReason) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class DtlsReport:
    """What ``loadgen connect --json`` shows as ``dtls``."""

    version: str | None = None
    header: str | None = None
    cipher: str | None = None
    retransmits: int = 0
    fallback: FallbackReason | None = None
    attempts: int = 0
    fallbacks: list[FallbackReason] = field(default_factory=list)
    error: str | None = None


class DtlsChannel:
    """Runs attempts until stopped; ``up`` tells whether data may use DTLS now."""

    def __init__(
        self,
        *,
        session: DtlsSession,
        header: str,
        cipher_name: str,
        dpd_s: float,
        keepalive_s: float,
        options: DtlsOptions,
        socket_factory: SocketFactory,
        on_packet: Callable[[bytes], None],
        on_state: Callable[[DtlsState], None],
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._session = session
        self._dpd_s = dpd_s
        self._keepalive_s = keepalive_s
        self._options = options
        self._socket_factory = socket_factory
        self._on_packet = on_packet
        self._on_state = on_state
        self._random = random_bytes
        self.report = DtlsReport(header=header, cipher=cipher_name)
        self.state = DtlsState.CONNECTING
        #: set when the first attempt has ended, up or fallen back
        self.first_outcome = trio.Event()
        #: seconds from the first ClientHello to HandshakeCompleted, when it came
        self.handshake_s: float | None = None
        self._conn: DtlsConnection | None = None
        self._sock: DatagramSocket | None = None
        self._liveness: cstp.Liveness | None = None
        self._wakeup = trio.Event()
        self._send_failed = False
        self._dead: FallbackReason | None = None
        self._dpd_waiters: dict[bytes, tuple[float, trio.Event, list[float]]] = {}
        self.tx_packets = 0
        self.rx_packets = 0
        self.tx_bytes = 0
        self.rx_bytes = 0

    @property
    def cipher(self) -> CipherSpec:
        return self._session.cipher

    @property
    def up(self) -> bool:
        return self.state is DtlsState.UP

    def _set_state(self, state: DtlsState) -> None:
        if state is not self.state:
            self.state = state
            self._on_state(state)

    # -- the attempt loop -----------------------------------------------------

    async def run(self) -> None:
        """Attempt, serve, fall back, wait, attempt again: until cancelled."""
        try:
            while True:
                try:
                    reason = await self._attempt()
                except OSError:
                    # a local send/receive/resolve error: the UDP path is unusable
                    self._close_socket()
                    reason = FallbackReason.ICMP_UNREACHABLE
                self._fall_back(reason)
                if self._options.reattempt_s <= 0:
                    return
                await trio.sleep(self._options.reattempt_s)
                self._set_state(DtlsState.CONNECTING)
        finally:
            self._close_socket()
            self._conn = None
            if self.state is DtlsState.UP:
                self.state = DtlsState.DOWN  # stopped: no callback, the session is going
            self.first_outcome.set()

    def _fall_back(self, reason: FallbackReason) -> None:
        self.report.fallback = reason
        self.report.fallbacks.append(reason)
        self._conn = None
        self._liveness = None
        self._set_state(DtlsState.DOWN)
        self.first_outcome.set()

    def fail_internal(self, exc: BaseException) -> None:
        """Our own bug ended the channel: stay on CSTP and say so in the report."""
        log.error("DTLS channel: unexpected error", exc_info=exc)
        self.report.error = f"internal error: {type(exc).__name__}"
        self._fall_back(FallbackReason.PROTOCOL)
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _attempt(self) -> FallbackReason:
        self.report.attempts += 1
        if self._sock is None:
            # One UDP socket (one source port) for all retransmissions and
            # re-attempts: ocserv ignores a new port within 3 s (§7.1).
            self._sock = await self._socket_factory()
        conn = DtlsConnection(
            Role.CLIENT,
            session=self._session,
            random_bytes=self._random,
            retransmit_schedule_s=self._options.schedule_s,
        )
        self._conn = conn
        started = trio.current_time()
        conn.connect(started)
        try:
            await self._handshake(conn)
        except _AttemptEndedError as exc:
            return exc.reason
        finally:
            self.report.retransmits += conn.counters.retransmits
        if self.handshake_s is None:
            self.handshake_s = trio.current_time() - started
        self._liveness = cstp.Liveness(
            "client", dpd_s=self._dpd_s, keepalive_s=self._keepalive_s, now=trio.current_time()
        )
        self.report.fallback = None  # up again; the history stays in ``fallbacks``
        self._set_state(DtlsState.UP)
        self.first_outcome.set()
        try:
            await self._serve(conn)
        except _AttemptEndedError as exc:
            # The association is gone; the gateway keeps the 4-tuple bound to
            # the old one, so the next attempt starts from a new port.
            self._close_socket()
            return exc.reason
        raise AssertionError("unreachable: _serve only ends by raising")

    async def _handshake(self, conn: DtlsConnection) -> None:
        while True:
            await self._flush(conn)
            if self._drain_events(conn):
                return
            timer = conn.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer) as scope:
                data = await self._receive()
            if scope.cancelled_caught:
                conn.handle_timer(trio.current_time())
            else:
                conn.receive_datagram(data, trio.current_time())

    async def _receive(self) -> bytes:
        assert self._sock is not None
        try:
            return await self._sock.receive()
        except OSError as exc:
            if exc.errno in _UNREACHABLE_ERRNOS:
                raise _AttemptEndedError(FallbackReason.ICMP_UNREACHABLE) from None
            raise

    async def _flush(self, conn: DtlsConnection) -> None:
        assert self._sock is not None
        for datagram in conn.datagrams_to_send(trio.current_time()):
            try:
                await self._sock.send(datagram)
            except OSError as exc:
                if exc.errno in _UNREACHABLE_ERRNOS:
                    raise _AttemptEndedError(FallbackReason.ICMP_UNREACHABLE) from None
                raise

    def _drain_events(self, conn: DtlsConnection) -> bool:
        """Process events; True once the handshake completed."""
        completed = False
        while (event := conn.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.report.version = "DTLS0.9" if event.version == DTLS0_9 else "DTLS1.2"
                completed = True
            elif isinstance(event, HandshakeTimedOut):
                raise _AttemptEndedError(FallbackReason.TIMEOUT)
            elif isinstance(event, ConnectionTerminated):
                raise _AttemptEndedError(FallbackReason.ALERT)
            elif isinstance(event, AlertReceived):
                continue
            elif isinstance(event, ApplicationDataReceived):
                self._on_record(event.data)
        return completed

    # -- established ------------------------------------------------------------

    async def _serve(self, conn: DtlsConnection) -> None:
        self._dead = None
        self._send_failed = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_dead, self._timers, conn, nursery.cancel_scope)
            # the reader runs in this task: one task fewer per session
            await self._until_dead(self._reader, conn, nursery.cancel_scope)
        raise _AttemptEndedError(self._dead or FallbackReason.DPD)

    async def _until_dead(
        self,
        task: Callable[[DtlsConnection], Awaitable[None]],
        conn: DtlsConnection,
        scope: trio.CancelScope,
    ) -> None:
        # The channel's end is an outcome: record it and stop both loops,
        # without an exception crossing the nursery.
        try:
            await task(conn)
        except _AttemptEndedError as exc:
            if self._dead is None:
                self._dead = exc.reason
            scope.cancel()
        except OSError:
            # a local socket error while up: the UDP path is unusable
            if self._dead is None:
                self._dead = FallbackReason.ICMP_UNREACHABLE
            scope.cancel()

    async def _reader(self, conn: DtlsConnection) -> None:
        while True:
            data = await self._receive()
            conn.receive_datagram(data, trio.current_time())
            self._drain_events(conn)
            await self._flush(conn)

    async def _timers(self, conn: DtlsConnection) -> None:
        liveness = self._liveness
        assert liveness is not None
        while True:
            deadlines = [t for t in (conn.get_timer(), liveness.get_timer()) if t is not None]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._send_failed:
                raise _AttemptEndedError(FallbackReason.ICMP_UNREACHABLE)
            now = trio.current_time()
            conn.handle_timer(now)
            action = liveness.handle_timer(now)
            if action is cstp.LivenessAction.PEER_DEAD:
                raise _AttemptEndedError(FallbackReason.DPD)
            if action is cstp.LivenessAction.SEND_DPD:
                self._send_frame(cstp.PacketType.DPD_REQ, b"")
            elif action is cstp.LivenessAction.SEND_KEEPALIVE:
                self._send_frame(cstp.PacketType.KEEPALIVE, b"")
            self._drain_events(conn)
            await self._flush(conn)

    def _on_record(self, data: bytes) -> None:
        if self._liveness is not None:
            self._liveness.packet_received(trio.current_time())
        try:
            frame = cstp.decode_dtls_payload_untrusted(data)
        except BadPacketError:
            return  # a DTLS peer may send types we do not know; ignore (§5.2)
        if frame.type == cstp.PacketType.DATA:
            self.rx_packets += 1
            self.rx_bytes += len(frame.payload)
            self._on_packet(frame.payload)
        elif frame.type == cstp.PacketType.DPD_REQ:
            try:
                self._send_frame(cstp.PacketType.DPD_RESP, frame.payload)
            except LocalProtocolError:
                return  # a DPD before our handshake is done: nothing to answer on yet
            self._wakeup.set()
        elif frame.type == cstp.PacketType.DPD_RESP:
            waiter = self._dpd_waiters.pop(frame.payload, None)
            if waiter is not None:
                sent_at, event, out = waiter
                out.append(trio.current_time() - sent_at)
                event.set()
        # DISCONNECT and TERMINATE also come on CSTP, which ends the session;
        # KEEPALIVE needs no answer; unknown types are ignored as ocserv does.

    def _send_frame(self, ptype: int, payload: bytes) -> None:
        conn = self._conn
        if conn is None or not self.up:
            raise LocalProtocolError("DTLS is not up")
        conn.send_application_data(cstp.encode_dtls_payload(ptype, payload))
        if self._liveness is not None:
            self._liveness.packet_sent(trio.current_time())

    async def send_ip(self, packet: bytes) -> None:
        """One IP packet over DTLS; LocalProtocolError when it cannot go (the
        caller then sends it on CSTP, §7.9)."""
        conn = self._conn
        if conn is None or not self.up:
            raise LocalProtocolError("DTLS is not up")
        self._send_frame(cstp.PacketType.DATA, packet)
        self.tx_packets += 1
        self.tx_bytes += len(packet)
        await self._flush_or_fail(conn)

    async def _flush_or_fail(self, conn: DtlsConnection) -> None:
        """Flush from outside the channel's loops: a write error takes DTLS down
        (openconnect: "DTLS got write error ... Falling back to SSL")."""
        try:
            await self._flush(conn)
        except (_AttemptEndedError, OSError):
            self._send_failed = True
            self._wakeup.set()
            raise LocalProtocolError("DTLS send failed") from None

    async def dpd_probe(self, timeout_s: float) -> float | None:
        """One DPD-REQ over DTLS; the round trip in seconds, or None."""
        if not self.up or self._conn is None:
            return None
        payload = self._random(8)
        done = trio.Event()
        out: list[float] = []
        self._dpd_waiters[payload] = (trio.current_time(), done, out)
        try:
            self._send_frame(cstp.PacketType.DPD_REQ, payload)
            await self._flush_or_fail(self._conn)
        except LocalProtocolError:
            self._dpd_waiters.pop(payload, None)
            return None
        with trio.move_on_after(timeout_s):
            await done.wait()
        self._dpd_waiters.pop(payload, None)
        return out[0] if out else None
