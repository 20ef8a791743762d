"""A seeded in-memory datagram network for trio, and a DTLS echo gateway on top of it.

``FakeNetwork(seed)`` hands out connected endpoint pairs (``pair()``) that
implement ``loadgen.engine.dtls.DatagramSocket``.  Each direction ("c2s":
first endpoint to second, "s2c": back) has a ``Link`` with loss, duplication,
reordering (a datagram held back by a random extra delay), a fixed latency and
two switches: ``blocked`` drops everything (UDP blackholed), and
``icmp_unreachable`` drops everything and reports an ICMP port unreachable to
the sender, whose next ``receive()`` or ``send()`` raises ConnectionRefusedError
once, as a connected UDP socket does on Linux.  Switches act on datagrams when
they are sent; datagrams already in flight still arrive.

Delays are deadlines on trio's clock (no background tasks), so the network runs
under ``trio.testing.MockClock`` (autojump).  Each direction of each pair draws
from its own ``random.Random`` derived from the seed, so a run is reproducible
for a seed as long as each side sends in the same order.  Receive queues are
bounded (``queue_limit``): overflow drops, like a full socket buffer.

``DtlsEchoServer`` is the gateway side for tests of the DTLS channel: the
sans-IO ``DtlsConnection(Role.SERVER)`` over one endpoint per client socket,
answering DPD-REQ with DPD-RESP and echoing DATA (protocol.md §5.2, §7.7).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio

from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DEFAULT_RETRANSMIT_SCHEDULE_S,
    ApplicationDataReceived,
    DtlsConnection,
    DtlsEvent,
    DtlsSession,
    HandshakeCompleted,
    Role,
    State,
    parse_client_hello_datagram_untrusted,
)
from loadgen.proto.errors import BadPacketError

__all__ = [
    "DEFAULT_QUEUE_LIMIT",
    "DtlsEchoServer",
    "FakeEndpoint",
    "FakeNetwork",
    "Link",
    "LinkStats",
    "ReceivedFrame",
    "SentDatagram",
    "serving_socket_factory",
]

DEFAULT_QUEUE_LIMIT = 256
#: datagrams kept in each endpoint's ``sent`` trace
TRACE_LIMIT = 4096


@dataclass
class LinkStats:
    """Per direction; ``delivered`` counts copies put in the receiver's queue."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    blocked: int = 0
    unreachable: int = 0
    duplicated: int = 0
    held_back: int = 0
    overflow: int = 0
    to_closed: int = 0


@dataclass
class Link:
    """One direction of the network; the switches may be flipped at any time."""

    #: probability that a datagram is dropped
    loss: float = 0.0
    #: probability that a datagram arrives twice
    duplicate: float = 0.0
    #: probability that a copy is held back by an extra delay, uniform in (0, reorder_delay_s]
    reorder: float = 0.0
    reorder_delay_s: float = 0.5
    #: fixed one-way delay of every copy (and of the ICMP error back)
    latency_s: float = 0.0
    #: drop everything (UDP blackholed)
    blocked: bool = False
    #: drop everything and tell the sender: ICMP port unreachable
    icmp_unreachable: bool = False
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability, not {value}")
        if self.latency_s < 0 or self.reorder_delay_s < 0:
            raise ValueError("delays must be >= 0")


@dataclass(frozen=True, kw_only=True)
class SentDatagram:
    at: float
    data: bytes


class FakeEndpoint:
    """One end of a connected datagram pair (``DatagramSocket``)."""

    def __init__(self, name: str, link: Link, rng: random.Random, queue_limit: int) -> None:
        self.name = name
        self._link = link  # the direction this endpoint sends on
        self._rng = rng
        self._queue_limit = queue_limit
        self.peer: FakeEndpoint | None = None
        self.closed = False
        #: what this endpoint sent, with the virtual send time (bounded)
        self.sent: deque[SentDatagram] = deque(maxlen=TRACE_LIMIT)
        self.received = 0
        # (deliver at, arrival order, datagram): a heap, so held-back copies reorder
        self._queue: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()
        self._error_at: float | None = None
        self._wakeup = trio.Event()
        self._receiving = False

    @property
    def link(self) -> Link:
        return self._link

    def queued(self) -> int:
        return len(self._queue)

    # -- DatagramSocket ---------------------------------------------------------

    async def send(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("endpoint closed")
        self._raise_pending_error()
        data = bytes(data)
        now = trio.current_time()
        self.sent.append(SentDatagram(at=now, data=data))
        link = self._link
        link.stats.sent += 1
        # every draw is made for every datagram, so one switch does not shift the others
        lost = self._rng.random() < link.loss
        twice = self._rng.random() < link.duplicate
        holds = [self._rng.random() for _ in range(2)]
        delays = [self._rng.uniform(0.0, link.reorder_delay_s) for _ in range(2)]
        if link.icmp_unreachable:
            link.stats.unreachable += 1
            self._report_unreachable(now + link.latency_s)
            return
        if link.blocked:
            link.stats.blocked += 1
            return
        if lost:
            link.stats.lost += 1
            return
        copies = 2 if twice else 1
        if twice:
            link.stats.duplicated += 1
        peer = self.peer
        assert peer is not None
        for i in range(copies):
            at = now + link.latency_s
            if holds[i] < link.reorder:
                link.stats.held_back += 1
                at += max(delays[i], 1e-6)
            peer._deliver(at, data, link.stats)

    async def receive(self) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this endpoint")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            while True:
                if self.closed:
                    raise trio.ClosedResourceError("endpoint closed")
                now = trio.current_time()
                self._raise_pending_error(now)
                if self._queue and self._queue[0][0] <= now:
                    _at, _order, data = heapq.heappop(self._queue)
                    self.received += 1
                    return data
                deadline = min(
                    self._queue[0][0] if self._queue else math.inf,
                    math.inf if self._error_at is None else self._error_at,
                )
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
                if self._wakeup.is_set():
                    self._wakeup = trio.Event()
        finally:
            self._receiving = False

    def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._wakeup.set()

    # -- internals ----------------------------------------------------------------

    def _deliver(self, at: float, data: bytes, stats: LinkStats) -> None:
        if self.closed:
            stats.to_closed += 1
            return
        if len(self._queue) >= self._queue_limit:
            stats.overflow += 1
            return
        stats.delivered += 1
        heapq.heappush(self._queue, (at, next(self._order), data))
        self._wakeup.set()

    def _report_unreachable(self, at: float) -> None:
        # one pending error slot (Linux sk_err): several ICMPs collapse into one
        self._error_at = at if self._error_at is None else min(self._error_at, at)
        self._wakeup.set()

    def _raise_pending_error(self, now: float | None = None) -> None:
        if self._error_at is None:
            return
        if self._error_at <= (trio.current_time() if now is None else now):
            self._error_at = None
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, "Connection refused (ICMP port unreachable)"
            )


class FakeNetwork:
    """Pairs of connected endpoints sharing two ``Link`` configurations."""

    def __init__(
        self,
        seed: int,
        *,
        c2s: Link | None = None,
        s2c: Link | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be >= 1")
        self.seed = seed
        self.c2s = c2s or Link()
        self.s2c = s2c or Link()
        self.queue_limit = queue_limit
        self.pairs: list[tuple[FakeEndpoint, FakeEndpoint]] = []

    def set_blocked(self, blocked: bool) -> None:
        """Both directions blackholed (or not)."""
        self.c2s.blocked = blocked
        self.s2c.blocked = blocked

    def pair(self) -> tuple[FakeEndpoint, FakeEndpoint]:
        """A new (client, server) pair, like a new source port."""
        index = len(self.pairs)
        client = FakeEndpoint(
            f"client{index}",
            self.c2s,
            random.Random(f"{self.seed}/{index}/c2s"),
            self.queue_limit,
        )
        server = FakeEndpoint(
            f"server{index}",
            self.s2c,
            random.Random(f"{self.seed}/{index}/s2c"),
            self.queue_limit,
        )
        client.peer, server.peer = server, client
        self.pairs.append((client, server))
        return client, server


# --- the gateway side of the DTLS channel tests ---------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReceivedFrame:
    at: float
    type: int
    payload: bytes


class DtlsEchoServer:
    """Answers each client socket with a server ``DtlsConnection`` (protocol.md §7.2).

    A ClientHello with a new random (a new attempt), or any datagram after the
    association ended, starts a fresh server connection on that endpoint.
    Established: DPD-REQ -> DPD-RESP with the same payload, DATA echoed as
    DATA, everything recorded in ``frames``.  ``silent`` stops all answers
    (records are still decrypted and recorded): the gateway looks dead.
    """

    def __init__(
        self,
        sessions: Iterable[DtlsSession],
        *,
        seed: int = 0,
        hello_verify: bool = False,
        schedule_s: tuple[float, ...] = DEFAULT_RETRANSMIT_SCHEDULE_S,
        echo: bool = True,
    ) -> None:
        self._sessions = {s.session_id: s for s in sessions}
        self._rng = random.Random(seed)
        self.hello_verify = hello_verify
        self.schedule_s = schedule_s
        self.echo = echo
        self.silent = False
        self.frames: list[ReceivedFrame] = []
        self.connections: list[DtlsConnection] = []
        self.events: list[tuple[float, DtlsEvent]] = []
        self.handshakes = 0
        #: the last established connection and its endpoint (for ``send_frame``)
        self._current: tuple[DtlsConnection, FakeEndpoint] | None = None

    def lookup(self, session_id: bytes) -> DtlsSession | None:
        return self._sessions.get(session_id)

    def learn(self, session: DtlsSession) -> None:
        self._sessions[session.session_id] = session

    def forget(self, session_id: bytes) -> None:
        """The gateway no longer knows this session: its ClientHello gets a fatal alert."""
        self._sessions.pop(session_id, None)

    def data(self) -> list[bytes]:
        """Payloads of the DATA frames received, in order."""
        return [f.payload for f in self.frames if f.type == cstp.PacketType.DATA]

    def frames_of(self, ptype: int) -> list[ReceivedFrame]:
        return [f for f in self.frames if f.type == ptype]

    def _new_connection(self) -> DtlsConnection:
        conn = DtlsConnection(
            Role.SERVER,
            session_lookup=self.lookup,
            random_bytes=random.Random(self._rng.getrandbits(64)).randbytes,
            hello_verify=self.hello_verify,
            retransmit_schedule_s=self.schedule_s,
        )
        self.connections.append(conn)
        return conn

    @staticmethod
    def _is_new_attempt(conn: DtlsConnection, data: bytes) -> bool:
        """A ClientHello that the current association cannot take: a new attempt."""
        try:
            hello = parse_client_hello_datagram_untrusted(data)
        except BadPacketError:
            return False
        if conn.state is State.CLOSED:
            return True
        current = conn.client_hello
        return current is not None and hello.random != current.random

    async def send_frame(self, ptype: int, payload: bytes = b"") -> None:
        """Gateway-initiated packet on the last established association."""
        if self._current is None:
            raise RuntimeError("no established DTLS association")
        conn, endpoint = self._current
        conn.send_application_data(cstp.encode_dtls_payload(ptype, payload))
        await self._flush(conn, endpoint)

    async def close_association(self) -> None:
        """close_notify on the last established association (protected, epoch 1)."""
        if self._current is None:
            raise RuntimeError("no established DTLS association")
        conn, endpoint = self._current
        conn.close()
        self._on_events(conn, endpoint)
        await self._flush(conn, endpoint)

    async def _flush(self, conn: DtlsConnection, endpoint: FakeEndpoint) -> None:
        datagrams = conn.datagrams_to_send(trio.current_time())
        if self.silent:
            return
        for datagram in datagrams:
            try:
                await endpoint.send(datagram)
            except (ConnectionRefusedError, trio.ClosedResourceError):
                return

    def _on_events(self, conn: DtlsConnection, endpoint: FakeEndpoint) -> None:
        now = trio.current_time()
        while (event := conn.next_event()) is not None:
            self.events.append((now, event))
            if isinstance(event, HandshakeCompleted):
                self.handshakes += 1
                self._current = (conn, endpoint)
            elif isinstance(event, ApplicationDataReceived):
                self._on_record(conn, event.data, now)

    def _on_record(self, conn: DtlsConnection, data: bytes, now: float) -> None:
        try:
            frame = cstp.decode_dtls_payload_untrusted(data)
        except BadPacketError:
            return
        self.frames.append(ReceivedFrame(at=now, type=frame.type, payload=frame.payload))
        if self.silent or conn.state is not State.ESTABLISHED:
            return
        if frame.type == cstp.PacketType.DPD_REQ:
            conn.send_application_data(
                cstp.encode_dtls_payload(cstp.PacketType.DPD_RESP, frame.payload)
            )
        elif frame.type == cstp.PacketType.DATA and self.echo:
            conn.send_application_data(
                cstp.encode_dtls_payload(cstp.PacketType.DATA, frame.payload)
            )

    async def serve(self, endpoint: FakeEndpoint) -> None:
        """Serve one client socket until it is closed or the task is cancelled."""
        conn = self._new_connection()
        while True:
            timer = conn.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer) as scope:
                try:
                    data = await endpoint.receive()
                except ConnectionRefusedError:
                    continue
                except trio.ClosedResourceError:
                    return
            now = trio.current_time()
            if scope.cancelled_caught:
                conn.handle_timer(now)
            else:
                if self._is_new_attempt(conn, data):
                    conn = self._new_connection()
                conn.receive_datagram(data, now)
            self._on_events(conn, endpoint)
            await self._flush(conn, endpoint)


def serving_socket_factory(
    network: FakeNetwork, server: DtlsEchoServer, nursery: trio.Nursery
) -> Callable[[], Awaitable[FakeEndpoint]]:
    """A ``socket_factory`` for ``DtlsChannel``: every call is a new source port
    (``network.pair()``) whose server end ``server`` serves in ``nursery``."""

    async def factory() -> FakeEndpoint:
        client, server_end = network.pair()
        nursery.start_soon(server.serve, server_end)
        await trio.lowlevel.checkpoint()
        return client

    return factory
