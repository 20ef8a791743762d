"""The gateway's DTLS endpoint over real UDP sockets on 127.0.0.1 (protocol.md §7.1, §12).

Clients are the engine's ``DtlsChannel`` (what the load generator runs) and a
``RawClient`` that drives the sans-IO client by hand, for the cases a polite
client never produces: silence, a second port, lost flights, garbage from a
known address.  Every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from loadgen.engine.dtls import DatagramSocket, DtlsChannel, DtlsOptions, DtlsState, open_udp
from loadgen.gateway.dtls_endpoint import (
    Association,
    DownReason,
    DropReason,
    DtlsEndpoint,
    EndpointStats,
)
from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    AlertDescription,
    ApplicationDataReceived,
    ConnectionTerminated,
    DtlsAlertError,
    DtlsConnection,
    DtlsSession,
    HandshakeCompleted,
    Role,
    lookup_cipher,
)
from loadgen.proto.dtls.records import encode_record
from tests.proto.dtls.dtls_testlib import make_session
from tests.proto.dtls.server_lab import (
    ALL_SUITES,
    client_hello_bytes,
    new_peer_drops,
    stray_datagrams,
)

LOCALHOST = "127.0.0.1"
DATA = cstp.PacketType.DATA


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


class FakeTarget:
    """A gateway session: records callbacks, echoes DATA as ``echo:`` + payload."""

    def __init__(self, session: DtlsSession, *, echo: bool = True) -> None:
        self._session = session
        self.echo = echo
        self.ups: list[Association] = []
        self.downs: list[tuple[Association, str, float]] = []
        self.frames: list[tuple[int, bytes]] = []

    @property
    def dtls_session(self) -> DtlsSession:
        return self._session

    def on_dtls_up(self, assoc: Association) -> None:
        self.ups.append(assoc)

    def on_dtls_frame(self, assoc: Association, ptype: int, payload: bytes) -> None:
        self.frames.append((ptype, payload))
        if ptype == DATA and self.echo:
            assert assoc.send_frame_nowait(DATA, b"echo:" + payload)

    def on_dtls_down(self, assoc: Association, reason: str) -> None:
        self.downs.append((assoc, reason, trio.current_time()))

    def data(self) -> list[bytes]:
        return [p for t, p in self.frames if t == DATA]


@dataclass
class Gateway:
    endpoint: DtlsEndpoint
    port: int
    stats: EndpointStats
    targets: dict[bytes, FakeTarget] = field(default_factory=dict)

    def add(self, session: DtlsSession) -> FakeTarget:
        target = FakeTarget(session)
        self.targets[session.session_id] = target
        return target

    def new_peer_drops(self) -> int:
        return new_peer_drops(self.stats)


@asynccontextmanager
async def gateway(
    *, dpd_s: float = 0.0, handover_guard_s: float = 3.0, **kwargs: object
) -> AsyncIterator[Gateway]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((LOCALHOST, 0))
    targets: dict[bytes, FakeTarget] = {}
    stats = EndpointStats()
    endpoint = DtlsEndpoint(
        sock,
        lookup=targets.get,
        random_bytes=random.Random(99).randbytes,
        dpd_s=dpd_s,
        stats=stats,
        handover_guard_s=handover_guard_s,
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.run)
            yield Gateway(endpoint, sock.getsockname()[1], stats, targets)
            nursery.cancel_scope.cancel()
    finally:
        sock.close()


@dataclass
class Client:
    channel: DtlsChannel
    received: list[bytes]


def channel_client(gw: Gateway, session: DtlsSession, *, seed: int, dpd_s: float = 0.0) -> Client:
    received: list[bytes] = []

    async def factory() -> DatagramSocket:
        return await open_udp(LOCALHOST, gw.port)

    channel = DtlsChannel(
        session=session,
        header=session.cipher.header,
        cipher_name=session.cipher.name,
        dpd_s=dpd_s,
        keepalive_s=0.0,
        options=DtlsOptions(schedule_s=(0.0, 0.5, 1.0, 2.0, 4.0), reattempt_s=0),
        socket_factory=factory,
        on_packet=received.append,
        on_state=lambda state: None,
        random_bytes=random.Random(seed).randbytes,
    )
    return Client(channel, received)


class RawClient:
    """The sans-IO client on a connected UDP socket, driven step by step.  It never
    answers anything by itself (no DPD-RESP)."""

    def __init__(self, session: DtlsSession, *, seed: int) -> None:
        self.conn = DtlsConnection(
            Role.CLIENT, session=session, random_bytes=random.Random(seed).randbytes
        )
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.completed = False
        self.terminated: ConnectionTerminated | None = None
        self.frames: list[tuple[int, bytes, float]] = []
        self.sent: list[bytes] = []
        self.datagrams_in = 0

    async def open(self, port: int) -> RawClient:
        await self.sock.bind((LOCALHOST, 0))
        await self.sock.connect((LOCALHOST, port))
        return self

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return (host, port)

    async def send_raw(self, datagram: bytes) -> None:
        await self.sock.send(datagram)

    async def flush(self) -> None:
        for datagram in self.conn.datagrams_to_send(trio.current_time()):
            self.sent.append(datagram)
            await self.sock.send(datagram)

    def _events(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.completed = True
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event
            elif isinstance(event, ApplicationDataReceived):
                frame = cstp.decode_dtls_payload_untrusted(event.data)
                self.frames.append((frame.type, frame.payload, trio.current_time()))

    async def pump(self, until: Callable[[], bool], timeout_s: float) -> bool:
        """Receive and run timers until ``until()`` or the timeout; True if reached."""
        with trio.move_on_after(timeout_s):
            while not until():
                timer = self.conn.get_timer()
                with trio.move_on_at(timer if timer is not None else float("inf")) as scope:
                    data = await self.sock.recv(65536)
                if scope.cancelled_caught:
                    self.conn.handle_timer(trio.current_time())
                else:
                    self.datagrams_in += 1
                    self.conn.receive_datagram(data, trio.current_time())
                self._events()
                await self.flush()
            return True
        return False

    async def handshake(self, timeout_s: float = 3.0) -> None:
        self.conn.connect(trio.current_time())
        await self.flush()
        assert await self.pump(lambda: self.completed or self.terminated is not None, timeout_s)
        assert self.completed

    async def send_frame(self, ptype: int, payload: bytes) -> None:
        self.conn.send_application_data(cstp.encode_dtls_payload(ptype, payload))
        await self.flush()


# -- handshake and data --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"), ALL_SUITES, ids=[f"{h[2:6]}:{n}" for h, n in ALL_SUITES]
)
async def test_handshake_and_data_both_ways(header: str, name: str) -> None:
    with trio.fail_after(10):
        async with gateway() as gw, trio.open_nursery() as nursery:
            session = make_session(header, name, seed=1)
            target = gw.add(session)
            client = channel_client(gw, session, seed=2)
            nursery.start_soon(client.channel.run)
            await client.channel.first_outcome.wait()
            assert client.channel.up, client.channel.report
            expected_version = "DTLS0.9" if session.cipher.version == DTLS0_9 else "DTLS1.2"
            assert client.channel.report.version == expected_version
            await wait_until(lambda: len(target.ups) == 1)
            (assoc,) = target.ups
            assert assoc.session_id == session.session_id and assoc.up
            assert gw.endpoint.association_for(session.session_id) is assoc
            packets = [bytes([0x45, i]) + bytes(range(i * 7 % 200)) for i in range(3)]
            for packet in packets:
                await client.channel.send_ip(packet)
            await wait_until(lambda: len(client.received) == 3)
            assert target.data() == packets
            assert client.received == [b"echo:" + p for p in packets]
            assert await assoc.send_frame(DATA, b"pushed by the gateway")
            await wait_until(lambda: len(client.received) == 4)
            assert client.received[-1] == b"pushed by the gateway"
            assert (assoc.records_in, assoc.records_out) == (3, 4)
            assert assoc.bytes_in > 0 and assoc.bytes_out > 0
            assert gw.stats.handshakes_ok == gw.stats.associations_active == 1
            assert gw.stats.datagrams_in >= 5 and gw.stats.datagrams_out >= 7
            assert gw.new_peer_drops() == 0 and gw.stats.internal_errors == 0
            nursery.cancel_scope.cancel()


async def test_fifty_sessions_are_demultiplexed_on_one_port() -> None:
    with trio.fail_after(20):
        async with gateway() as gw, trio.open_nursery() as nursery:
            clients: list[tuple[FakeTarget, Client, list[bytes]]] = []
            for i in range(50):
                header, name = ALL_SUITES[i % len(ALL_SUITES)]
                session = make_session(header, name, seed=1000 + i)
                target = gw.add(session)
                client = channel_client(gw, session, seed=i)
                packets = [f"session {i} packet {k}".encode() for k in range(5)]
                clients.append((target, client, packets))
                nursery.start_soon(client.channel.run)
            for _, client, _ in clients:
                await client.channel.first_outcome.wait()
                assert client.channel.up
            for _, client, packets in clients:
                for packet in packets:
                    await client.channel.send_ip(packet)
            await wait_until(lambda: all(len(c.received) == 5 for _, c, _ in clients))
            for target, client, packets in clients:
                assert target.data() == packets  # its own packets, none of the others'
                assert client.received == [b"echo:" + p for p in packets]
                assert len(target.ups) == 1 and not target.downs
            peers = {target.ups[0].peer for target, _, _ in clients}
            assert len(peers) == 50
            assert gw.endpoint.association_count == gw.stats.associations_active == 50
            assert gw.stats.handshakes_ok == gw.stats.associations_total == 50
            assert gw.new_peer_drops() == 0
            nursery.cancel_scope.cancel()


# -- hostile input ---------------------------------------------------------------------


async def test_unknown_session_ids_are_dropped_counted_and_leave_no_state() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            stranger = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=5)
            raw = await RawClient(stranger, seed=5).open(gw.port)
            raw.conn.connect(trio.current_time())
            await raw.flush()
            assert not await raw.pump(lambda: raw.datagrams_in > 0, 0.3)  # no answer
            assert gw.stats.dropped[DropReason.UNKNOWN_SESSION] == 1
            # a flood from many ports, every id different
            rng = random.Random(6)
            socks = [await RawClient(stranger, seed=k).open(gw.port) for k in range(20)]
            for k in range(400):
                session = make_session(*ALL_SUITES[k % len(ALL_SUITES)], seed=10_000 + k)
                await socks[k % 20].send_raw(client_hello_bytes(session, random_=rng.randbytes(32)))
            await wait_until(lambda: gw.stats.datagrams_in == 401)
            assert gw.stats.dropped[DropReason.UNKNOWN_SESSION] == 401
            assert gw.new_peer_drops() == 401
            assert gw.endpoint.association_count == gw.stats.associations_total == 0
            # nothing was kept for any of those peers
            server = gw.endpoint.server
            assert (
                server.association_count == 0
                and server.association_for(stranger.session_id) is None
            )
            assert server.handover_entries == 0 and server.timer_entries == 0
            assert gw.stats.datagrams_out == 0


async def test_garbage_from_new_peers_is_counted_and_others_are_unaffected() -> None:
    with trio.fail_after(15):
        async with gateway() as gw, trio.open_nursery() as nursery:
            session = make_session(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384", seed=7)
            target = gw.add(session)
            client = channel_client(gw, session, seed=7)
            nursery.start_soon(client.channel.run)
            await client.channel.first_outcome.wait()
            assert client.channel.up
            before = gw.stats.datagrams_in
            catalog = stray_datagrams(session)
            (good,) = catalog[DropReason.UNKNOWN_SESSION]
            stranger = make_session(DTLS_CIPHERS_HEADER, "AES256-SHA", seed=8)
            junk = await RawClient(stranger, seed=8).open(gw.port)
            for datagrams in catalog.values():
                for datagram in datagrams:
                    await junk.send_raw(datagram)
            sent = sum(len(d) for d in catalog.values())
            await wait_until(lambda: gw.stats.datagrams_in == before + sent)
            for reason, datagrams in catalog.items():
                assert gw.stats.dropped[reason] == len(datagrams), reason
            # random bytes and bit-flipped hellos: each one is counted somewhere
            rng = random.Random(9)
            fuzz = [rng.randbytes(rng.randrange(0, 300)) for _ in range(300)]
            for _ in range(300):
                flipped = bytearray(good)
                for _ in range(rng.randrange(1, 4)):
                    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                fuzz.append(bytes(flipped))
            for datagram in fuzz:
                await junk.send_raw(datagram)
            await wait_until(lambda: gw.stats.datagrams_in == before + sent + len(fuzz))
            assert gw.new_peer_drops() == sent + len(fuzz)
            assert gw.stats.associations_total == 1
            assert gw.stats.internal_errors == gw.stats.target_errors == 0
            # the established session never noticed
            await client.channel.send_ip(b"still here")
            await wait_until(lambda: client.received == [b"echo:still here"])
            assert not target.downs and client.channel.up
            nursery.cancel_scope.cancel()


async def test_garbage_from_a_known_peer_is_dropped_by_its_association() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=11)
            target = gw.add(session)
            raw = await RawClient(session, seed=11).open(gw.port)
            await raw.handshake()
            await raw.send_frame(DATA, b"one")
            data_record = raw.sent[-1]
            assert await raw.pump(lambda: len(raw.frames) == 1, 2.0)
            forged = bytearray(data_record)
            forged[5:11] = (1000).to_bytes(6, "big")  # a fresh sequence number...
            forged[-1] ^= 0x55  # ...and a bad MAC/padding: dropped silently (§7.5)
            for datagram in (
                data_record,  # a replay
                bytes(forged),
                data_record[:20],  # truncated
                random.Random(3).randbytes(500),
                b"",
            ):
                await raw.send_raw(datagram)
            await wait_until(lambda: gw.stats.datagrams_in == 8)
            # all but the empty one went to the association
            assert gw.stats.dropped[DropReason.BAD_RECORD] >= 4
            assert gw.new_peer_drops() == gw.stats.dropped[DropReason.GARBAGE] == 1
            counters = target.ups[0].dtls_counters
            assert counters.records_dropped_replay == 1 and counters.records_dropped_bad == 1
            await raw.send_frame(DATA, b"two")
            assert await raw.pump(lambda: len(raw.frames) == 2, 2.0)
            assert [p for _, p, _ in raw.frames] == [b"echo:one", b"echo:two"]
            assert target.data() == [b"one", b"two"] and not target.downs


# -- the 3-second rule and hand-over ----------------------------------------------------


async def test_retransmitted_hello_from_the_same_port_is_not_too_soon() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            session = make_session(DTLS12_CIPHERS_HEADER, "AES128-SHA", seed=12)
            target = gw.add(session)
            raw = await RawClient(session, seed=12).open(gw.port)
            raw.conn.connect(trio.current_time())
            await raw.flush()
            for _ in range(3):  # the server's flight is "lost": read and discard it
                await raw.sock.recv(65536)
            timer = raw.conn.get_timer()
            assert timer is not None
            raw.conn.handle_timer(timer)  # our retransmission, same port
            await raw.flush()
            assert await raw.pump(lambda: raw.completed, 2.0)
            await wait_until(lambda: len(target.ups) == 1)
            assert gw.stats.dropped[DropReason.TOO_SOON] == 0
            assert gw.stats.associations_total == 1
            assert target.ups[0].dtls_counters.retransmits >= 1


async def test_new_port_within_3s_is_ignored_then_replaces_the_association() -> None:
    with trio.fail_after(10):
        async with gateway(handover_guard_s=3.0) as gw:
            session = make_session(DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM", seed=13)
            target = gw.add(session)
            started = trio.current_time()
            first = await RawClient(session, seed=13).open(gw.port)
            await first.handshake()
            await wait_until(lambda: len(target.ups) == 1)
            (old,) = target.ups
            # the same session from a second port, 1 s later: ocserv's "too soon"
            await trio.sleep(1.0)
            second = await RawClient(session, seed=14).open(gw.port)
            second.conn.connect(trio.current_time())
            await second.flush()
            assert not await second.pump(lambda: second.datagrams_in > 0, 0.5)
            assert gw.stats.dropped[DropReason.TOO_SOON] == 1
            assert gw.endpoint.association_for(session.session_id) is old and old.up
            await first.send_frame(DATA, b"old path")
            assert await first.pump(lambda: len(first.frames) == 1, 1.0)
            # after the window the client's retransmission from the new port wins
            await trio.sleep_until(started + 3.2)
            timer = second.conn.get_timer()
            assert timer is not None
            second.conn.handle_timer(max(timer, trio.current_time()))
            await second.flush()
            assert await second.pump(lambda: second.completed, 2.0)
            await wait_until(lambda: len(target.ups) == 2)
            new = target.ups[1]
            assert [(a, r) for a, r, _ in target.downs] == [(old, "replaced")]
            assert new.peer == second.address and old.closed and new.up
            assert gw.endpoint.association_for(session.session_id) is new
            assert gw.endpoint.association_count == 1 and gw.stats.associations_total == 2
            assert gw.stats.down[DownReason.REPLACED] == 1
            # the old port got a close_notify; its later datagrams are strangers
            assert await first.pump(lambda: first.terminated is not None, 1.0)
            assert first.terminated is not None and first.terminated.error is None
            await first.send_raw(first.sent[-1])
            await wait_until(lambda: gw.stats.dropped[DropReason.NOT_CLIENT_HELLO] == 1)


async def test_client_reattempt_from_a_new_port_replaces_after_the_guard() -> None:
    with trio.fail_after(10):
        async with gateway(handover_guard_s=0.2) as gw, trio.open_nursery() as nursery:
            session = make_session(DTLS12_CIPHERS_HEADER, "ECDHE-RSA-AES128-GCM-SHA256", seed=15)
            target = gw.add(session)
            client = channel_client(gw, session, seed=15)
            nursery.start_soon(client.channel.run)
            await client.channel.first_outcome.wait()
            await trio.sleep(0.3)
            raw = await RawClient(session, seed=16).open(gw.port)
            await raw.handshake()
            await wait_until(lambda: len(target.ups) == 2 and len(target.downs) == 1)
            assert target.downs[0][:2] == (target.ups[0], "replaced")
            assert gw.stats.associations_active == 1 and gw.stats.handshakes_ok == 2
            # the channel learns from the close_notify and falls back
            await wait_until(lambda: client.channel.state is DtlsState.DOWN)
            nursery.cancel_scope.cancel()


# -- DPD --------------------------------------------------------------------------------


async def test_dpd_request_is_answered_and_passed_on() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            session = make_session(DTLS_CIPHERS_HEADER, "AES256-SHA", seed=17)
            target = gw.add(session)
            raw = await RawClient(session, seed=17).open(gw.port)
            await raw.handshake()
            probe = (1400).to_bytes(4, "little") + bytes(1396)  # an MTU probe (§7.8)
            await raw.send_frame(cstp.PacketType.DPD_REQ, b"hello-dpd")
            await raw.send_frame(cstp.PacketType.DPD_REQ, probe)
            assert await raw.pump(lambda: len(raw.frames) == 2, 2.0)
            assert [(t, p) for t, p, _ in raw.frames] == [
                (cstp.PacketType.DPD_RESP, b"hello-dpd"),
                (cstp.PacketType.DPD_RESP, probe),
            ]
            assert target.frames == [
                (cstp.PacketType.DPD_REQ, b"hello-dpd"),
                (cstp.PacketType.DPD_REQ, probe),
            ]
            assert gw.stats.dpd_requests_answered == 2


async def test_engine_dpd_probe_gets_an_answer() -> None:
    with trio.fail_after(10):
        async with gateway() as gw, trio.open_nursery() as nursery:
            session = make_session(DTLS12_CIPHERS_HEADER, "AES256-SHA", seed=18)
            gw.add(session)
            client = channel_client(gw, session, seed=18)
            nursery.start_soon(client.channel.run)
            await client.channel.first_outcome.wait()
            rtt = await client.channel.dpd_probe(2.0)
            assert rtt is not None and 0 <= rtt < 2.0
            nursery.cancel_scope.cancel()


async def test_server_dpd_declares_dtls_down_after_three_intervals_of_silence() -> None:
    dpd_s = 0.2
    with trio.fail_after(10):
        async with gateway(dpd_s=dpd_s) as gw:
            session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=19)
            target = gw.add(session)
            raw = await RawClient(session, seed=19).open(gw.port)
            await raw.handshake()
            await raw.send_frame(cstp.PacketType.KEEPALIVE, b"")
            last_sent = trio.current_time()
            # listen without answering anything
            assert await raw.pump(lambda: raw.terminated is not None, 3.0)
            dpds = [at for t, _, at in raw.frames if t == cstp.PacketType.DPD_REQ]
            assert dpds and dpds[0] - last_sent >= 2 * dpd_s - 0.02
            ((assoc, reason, down_at),) = target.downs
            assert reason == "dpd" and assoc is target.ups[0]
            assert 3 * dpd_s - 0.02 <= down_at - last_sent < 3 * dpd_s + 0.5
            assert len(dpds) >= 2  # repeated every dpd/2 while unanswered
            assert raw.terminated is not None and raw.terminated.error is None  # close_notify
            assert gw.stats.down[DownReason.DPD] == 1
            assert gw.stats.dpd_requests_sent == len(dpds)
            assert gw.endpoint.association_count == gw.stats.associations_active == 0
            assert target.frames == [(cstp.PacketType.KEEPALIVE, b"")]


async def test_answered_server_dpd_keeps_the_association_up() -> None:
    dpd_s = 0.2
    with trio.fail_after(10):
        async with gateway(dpd_s=dpd_s) as gw, trio.open_nursery() as nursery:
            session = make_session(DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES128-GCM", seed=20)
            target = gw.add(session)
            client = channel_client(gw, session, seed=20)  # answers DPD, sends nothing
            nursery.start_soon(client.channel.run)
            await client.channel.first_outcome.wait()
            await trio.sleep(8 * dpd_s)
            assert client.channel.up and not target.downs
            assert gw.stats.dpd_requests_sent >= 2
            responses = [f for f in target.frames if f[0] == cstp.PacketType.DPD_RESP]
            assert len(responses) == gw.stats.dpd_requests_sent
            nursery.cancel_scope.cancel()


# -- how associations end ------------------------------------------------------------------


async def test_handshake_timeout_is_reported_down() -> None:
    with trio.fail_after(10):
        async with gateway(retransmit_schedule_s=(0.0, 0.1, 0.3)) as gw:
            session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=21)
            target = gw.add(session)
            raw = await RawClient(session, seed=21).open(gw.port)
            raw.conn.connect(trio.current_time())
            await raw.flush()
            await wait_until(lambda: len(target.downs) == 1)
            assert target.downs[0][1] == "timeout" and not target.ups
            got = 0
            with trio.move_on_after(0.1):
                while True:
                    await raw.sock.recv(65536)
                    got += 1
            assert got == 6  # the three-datagram flight, sent at 0 and 0.1 s
            assert gw.stats.handshakes_failed == 1 and gw.stats.down[DownReason.TIMEOUT] == 1
            assert gw.endpoint.association_count == 0


async def test_wrong_suite_is_refused_with_our_alert() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            session = make_session(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384", seed=22)
            target = gw.add(session)
            other = DtlsSession(
                session_id=session.session_id,
                master_secret=session.master_secret,
                cipher=lookup_cipher(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256"),
            )
            raw = await RawClient(other, seed=22).open(gw.port)
            raw.conn.connect(trio.current_time())
            await raw.flush()
            assert await raw.pump(lambda: raw.terminated is not None, 2.0)
            assert raw.terminated is not None and raw.terminated.by_peer
            assert isinstance(raw.terminated.error, DtlsAlertError)
            assert raw.terminated.error.description == AlertDescription.HANDSHAKE_FAILURE
            await wait_until(lambda: len(target.downs) == 1)
            assert target.downs[0][1] == "handshake_failed" and not target.ups
            assert gw.stats.handshakes_failed == 1 and gw.stats.handshakes_ok == 0
            assert gw.endpoint.association_count == 0


async def test_fatal_alert_from_the_client_is_reported_down() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            session = make_session(DTLS_CIPHERS_HEADER, "AES256-SHA", seed=26)
            target = gw.add(session)
            raw = await RawClient(session, seed=26).open(gw.port)
            raw.conn.connect(trio.current_time())
            await raw.flush()
            # the client gives up mid-handshake: fatal handshake_failure, epoch 0
            await raw.send_raw(encode_record(21, DTLS0_9, 0, 5, b"\x02\x28"))
            await wait_until(lambda: len(target.downs) == 1)
            assert target.downs[0][1] == "alert" and not target.ups
            assert gw.stats.down[DownReason.ALERT] == gw.stats.handshakes_failed == 1


async def test_peer_close_notify_local_close_and_shutdown() -> None:
    with trio.fail_after(10):
        sessions = [make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=s) for s in (23, 24, 25)]
        async with gateway() as gw:
            targets = [gw.add(s) for s in sessions]
            raws = [await RawClient(s, seed=i).open(gw.port) for i, s in enumerate(sessions)]
            for raw in raws:
                await raw.handshake()
            await wait_until(lambda: all(t.ups for t in targets))
            # the client says goodbye
            raws[0].conn.close()
            await raws[0].flush()
            await wait_until(lambda: len(targets[0].downs) == 1)
            assert targets[0].downs[0][1] == "closed"
            # the gateway session closes its association: close_notify, no callback
            targets[1].ups[0].close()
            assert await raws[1].pump(lambda: raws[1].terminated is not None, 1.0)
            assert not targets[1].downs and not targets[1].ups[0].up
            assert not targets[1].ups[0].send_frame_nowait(DATA, b"too late")
            assert gw.endpoint.association_count == 1
        # the endpoint stopped: the last one hears about it, and so does its session
        assert targets[2].downs[0][1] == "shutdown"
        assert await raws[2].pump(lambda: raws[2].terminated is not None, 1.0)
        assert gw.stats.associations_active == 0


# -- the shell's own work: callbacks and the send queue ------------------------------------


class _Moody(FakeTarget):
    """Raises from its callbacks, closes its association, or records send results."""

    def __init__(self, session: DtlsSession, *, mood: str) -> None:
        super().__init__(session, echo=False)
        self.mood = mood
        self.sent: list[bool] = []

    def on_dtls_frame(self, assoc: Association, ptype: int, payload: bytes) -> None:
        super().on_dtls_frame(assoc, ptype, payload)
        if self.mood == "raise":
            raise RuntimeError("a session's bug")
        if self.mood == "close":
            assoc.close()
        if self.mood == "echo":
            self.sent.append(assoc.send_frame_nowait(DATA, b"echo:" + payload))


async def _moody(
    gw: Gateway, mood: str, suite: tuple[str, str], *, seed: int
) -> tuple[_Moody, RawClient]:
    """A _Moody session, and a raw client that completed its handshake."""
    session = make_session(*suite, seed=seed)
    target = _Moody(session, mood=mood)
    gw.targets[session.session_id] = target
    raw = await RawClient(session, seed=seed).open(gw.port)
    await raw.handshake()
    return target, raw


async def _joined(raw: RawClient, payloads: list[bytes]) -> None:
    """Several DATA records in one datagram."""
    for payload in payloads:
        raw.conn.send_application_data(cstp.encode_dtls_payload(DATA, payload))
    await raw.send_raw(b"".join(raw.conn.datagrams_to_send(trio.current_time())))


async def test_a_raising_callback_is_counted_and_the_association_goes_on() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            target, raw = await _moody(gw, "raise", (DTLS_CIPHERS_HEADER, "AES128-SHA"), seed=40)
            await _joined(raw, [b"one", b"two"])
            await wait_until(lambda: len(target.frames) == 2)
            assert gw.stats.target_errors == 2 and gw.stats.internal_errors == 0
            assert target.ups[0].up and not target.downs


async def test_a_session_closing_its_association_in_a_callback_hears_nothing_more() -> None:
    with trio.fail_after(10):
        async with gateway() as gw:
            target, raw = await _moody(
                gw, "close", (DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256"), seed=41
            )
            await _joined(raw, [b"one", b"two"])
            assert await raw.pump(lambda: raw.terminated is not None, 2.0)  # close_notify
            assert target.data() == [b"one"]  # not the record after the close
            assert not target.downs and not target.ups[0].up
            assert gw.endpoint.association_count == 0 and gw.stats.associations_active == 0


async def test_a_full_send_queue_drops_and_counts() -> None:
    with trio.fail_after(10):
        # room for the server's three-datagram flight, not for five echoes at once
        async with gateway(send_queue_datagrams=3) as gw:
            target, raw = await _moody(
                gw, "echo", (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES128-GCM"), seed=42
            )
            await _joined(raw, [b"a", b"b", b"c", b"d", b"e"])  # before the sender runs
            await wait_until(lambda: len(target.sent) == 5)
            # three in the buffer, and one more if the sender task is waiting for it
            queued = target.sent.count(True)
            assert queued in (3, 4) and target.sent == [True] * queued + [False] * (5 - queued)
            assert gw.stats.dropped[DropReason.SEND_QUEUE_FULL] == 5 - queued
            assert await raw.pump(lambda: len(raw.frames) == queued, 2.0)
            assert [p for _, p, _ in raw.frames] == [
                b"echo:" + p for p in (b"a", b"b", b"c", b"d")[:queued]
            ]
