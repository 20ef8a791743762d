"""The seeded in-memory datagram network and the DTLS echo gateway (tests/helpers/fakenet.py),
on trio's MockClock (autojump): virtual time, so every delay is checked exactly."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DTLS_CIPHERS_HEADER,
    AlertReceived,
    ApplicationDataReceived,
    ConnectionTerminated,
    DtlsConnection,
    DtlsEvent,
    HandshakeCompleted,
    Role,
    State,
    lookup_cipher,
)
from loadgen.proto.dtls import DtlsSession as Session
from tests.helpers.fakenet import (
    DtlsEchoServer,
    FakeEndpoint,
    FakeNetwork,
    Link,
    serving_socket_factory,
)

LIMIT_S = 600.0


async def _drain(endpoint: FakeEndpoint, quiet_s: float = 5.0) -> list[tuple[float, bytes]]:
    """Everything that arrives until nothing came for ``quiet_s``."""
    got: list[tuple[float, bytes]] = []
    for _ in range(10_000):
        with trio.move_on_after(quiet_s):
            data = await endpoint.receive()
            got.append((trio.current_time(), data))
            continue
        return got
    raise AssertionError("endpoint never went quiet")


async def _send_numbered(endpoint: FakeEndpoint, count: int, gap_s: float = 0.01) -> None:
    for i in range(count):
        await endpoint.send(i.to_bytes(4, "big"))
        await trio.sleep(gap_s)


async def _send_and_collect(
    a: FakeEndpoint, b: FakeEndpoint, count: int, gap_s: float = 0.01
) -> tuple[dict[bytes, float], list[tuple[float, bytes]]]:
    """``a`` sends ``count`` numbered datagrams while ``b`` receives them as they arrive."""
    sent_at: dict[bytes, float] = {}
    got: list[tuple[float, bytes]] = []

    async def collect() -> None:
        got.extend(await _drain(b))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        for i in range(count):
            data = i.to_bytes(4, "big")
            sent_at[data] = trio.current_time()
            await a.send(data)
            await trio.sleep(gap_s)
    return sent_at, got


async def test_delivery_both_ways_after_the_latency(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(1, c2s=Link(latency_s=0.25), s2c=Link(latency_s=0.5))
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        start = trio.current_time()
        await a.send(b"ping")
        assert await b.receive() == b"ping"
        assert trio.current_time() - start == pytest.approx(0.25)
        await b.send(b"pong")
        assert await a.receive() == b"pong"
        assert trio.current_time() - start == pytest.approx(0.75)
    assert [d.data for d in a.sent] == [b"ping"]
    assert [d.data for d in b.sent] == [b"pong"]
    assert net.c2s.stats.sent == net.c2s.stats.delivered == 1
    assert a.received == 1 and b.received == 1


async def test_zero_latency_is_immediate_and_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(2)
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        for i in range(5):
            await a.send(bytes([i]))
        got = [await b.receive() for _ in range(5)]
    assert got == [bytes([i]) for i in range(5)]
    assert trio.current_time() == 0.0


async def test_loss_all_or_some(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(3, c2s=Link(loss=1.0))
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        await _send_numbered(a, 20)
        assert await _drain(b) == []
    assert net.c2s.stats.lost == 20 and net.c2s.stats.delivered == 0

    net = FakeNetwork(3, c2s=Link(loss=0.3), queue_limit=1000)
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        await _send_numbered(a, 1000, gap_s=0.001)
        got = await _drain(b)
    # binomial(1000, 0.7): 700 +- 4.5 sigma
    assert 630 < len(got) < 770
    assert len(got) + net.c2s.stats.lost == 1000
    numbers = [int.from_bytes(d, "big") for _, d in got]
    assert numbers == sorted(numbers)  # loss alone never reorders


async def _trace(seed: int, link: Link) -> list[tuple[float, bytes]]:
    net = FakeNetwork(seed, c2s=link)
    a, b = net.pair()
    _sent, got = await _send_and_collect(a, b, 200)
    return got


async def test_same_seed_same_trace(autojump_clock: trio.testing.MockClock) -> None:
    def link() -> Link:
        return Link(loss=0.2, duplicate=0.2, reorder=0.3, reorder_delay_s=0.2, latency_s=0.05)

    with trio.fail_after(LIMIT_S * 10):
        first = await _trace(7, link())
        base = trio.current_time()
        second = await _trace(7, link())
        other = await _trace(8, link())
    # same datagrams, same order, same relative arrival times
    assert [d for _, d in first] == [d for _, d in second]
    t0, t1 = first[0][0], second[0][0]
    assert [t - t0 for t, _ in first] == pytest.approx([t - t1 for t, _ in second])
    assert second[0][0] > base - 1e-9
    assert [d for _, d in first] != [d for _, d in other]


async def test_duplication(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(4, c2s=Link(duplicate=1.0, latency_s=0.1))
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        await _send_numbered(a, 10)
        got = [d for _, d in await _drain(b)]
    assert got == [i.to_bytes(4, "big") for i in range(10) for _ in range(2)]
    assert net.c2s.stats.duplicated == 10 and net.c2s.stats.delivered == 20


async def test_reordering_holds_back_within_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(5, c2s=Link(reorder=0.5, reorder_delay_s=0.3, latency_s=0.1))
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        sent_at, got = await _send_and_collect(a, b, 100, gap_s=0.02)
    numbers = [int.from_bytes(d, "big") for _, d in got]
    assert sorted(numbers) == list(range(100))  # nothing lost or duplicated
    assert numbers != sorted(numbers)  # but reordered
    delays = [at - sent_at[d] for at, d in got]
    assert all(0.1 - 1e-9 <= d <= 0.4 + 1e-9 for d in delays)
    held = sum(1 for d in delays if d > 0.1 + 1e-9)
    assert held == net.c2s.stats.held_back
    assert 25 < held < 75


async def test_blocked_switch_drops_from_now_on(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(6, c2s=Link(latency_s=1.0))
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        await a.send(b"in flight")
        net.set_blocked(True)
        await a.send(b"dropped")
        await b.send(b"dropped too")
        assert [d for _, d in await _drain(b)] == [b"in flight"]
        assert await _drain(a) == []
        net.set_blocked(False)
        await a.send(b"through again")
        assert await b.receive() == b"through again"
    assert net.c2s.stats.blocked == 1 and net.s2c.stats.blocked == 1


async def test_icmp_unreachable_is_reported_once_to_the_sender(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(7, c2s=Link(latency_s=0.5, icmp_unreachable=True))
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        start = trio.current_time()
        await a.send(b"to a closed port")  # the send itself succeeds, as on Linux
        with pytest.raises(ConnectionRefusedError):
            await a.receive()
        assert trio.current_time() - start == pytest.approx(0.5)  # the ICMP comes back
        # reported once: the socket is usable again
        await b.send(b"hello")
        assert await a.receive() == b"hello"
        # the next send after an ICMP fails itself (sock_error on send)
        await a.send(b"again")
        await trio.sleep(1.0)
        with pytest.raises(ConnectionRefusedError):
            await a.send(b"and again")
        net.c2s.icmp_unreachable = False
        await a.send(b"port open now")
        assert await b.receive() == b"port open now"
    assert net.c2s.stats.unreachable == 2
    assert b.received == 1


async def test_queues_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(8, queue_limit=4)
    a, b = net.pair()
    with trio.fail_after(LIMIT_S):
        for i in range(10):
            await a.send(bytes([i]))
        assert b.queued() == 4
        got = [d for _, d in await _drain(b)]
    assert got == [bytes([i]) for i in range(4)]
    assert net.c2s.stats.overflow == 6


async def test_close_wakes_the_receiver_and_drops_what_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(9)
    a, b = net.pair()
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await b.receive()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(1.0)
            b.close()
        assert len(errors) == 1
        await a.send(b"to nowhere")
        with pytest.raises(trio.ClosedResourceError):
            await b.send(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await b.receive()
    assert net.c2s.stats.to_closed == 1


async def test_one_receiver_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(10)
    a, _b = net.pair()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.receive)
            await trio.sleep(0.1)
            with pytest.raises(trio.BusyResourceError):
                await a.receive()
            nursery.cancel_scope.cancel()


def test_link_validation() -> None:
    with pytest.raises(ValueError, match="probability"):
        Link(loss=1.5)
    with pytest.raises(ValueError, match="delays"):
        Link(latency_s=-1.0)
    with pytest.raises(ValueError, match="queue_limit"):
        FakeNetwork(0, queue_limit=0)


def test_pairs_are_independent_sources() -> None:
    net = FakeNetwork(11)
    first = net.pair()
    second = net.pair()
    assert first[0].peer is first[1] and second[1].peer is second[0]
    assert first[0].link is second[0].link is net.c2s
    assert len(net.pairs) == 2


# --- the DTLS echo gateway, driven by a sans-IO client by hand ---------------------------


def _session(name: str = "AES128-SHA", seed: int = 1) -> Session:
    rng = random.Random(seed)
    return Session(
        session_id=rng.randbytes(32),
        master_secret=rng.randbytes(48),
        cipher=lookup_cipher(DTLS_CIPHERS_HEADER, name),
    )


async def _client_step(
    client: DtlsConnection, endpoint: FakeEndpoint, wait_s: float
) -> list[DtlsEvent]:
    """Flush, then feed what arrives within ``wait_s``; the events that came out."""
    for datagram in client.datagrams_to_send(trio.current_time()):
        await endpoint.send(datagram)
    with trio.move_on_after(wait_s):
        for _ in range(100):
            client.receive_datagram(await endpoint.receive(), trio.current_time())
    for datagram in client.datagrams_to_send(trio.current_time()):
        await endpoint.send(datagram)
    out: list[DtlsEvent] = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def _frames(events: list[DtlsEvent]) -> list[cstp.Frame]:
    return [
        cstp.decode_dtls_payload_untrusted(e.data)
        for e in events
        if isinstance(e, ApplicationDataReceived)
    ]


async def test_echo_server_handshakes_echoes_and_goes_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = _session()
    net = FakeNetwork(12, c2s=Link(latency_s=0.01), s2c=Link(latency_s=0.01))
    server = DtlsEchoServer([session], seed=3)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            endpoint = await serving_socket_factory(net, server, nursery)()
            client = DtlsConnection(
                Role.CLIENT, session=session, random_bytes=random.Random(5).randbytes
            )
            client.connect(trio.current_time())
            events = await _client_step(client, endpoint, 0.5)
            assert any(isinstance(e, HandshakeCompleted) for e in events)
            await trio.sleep(0.1)  # our Finished reaches the server
            assert server.handshakes == 1

            client.send_application_data(cstp.encode_dtls_payload(cstp.PacketType.DPD_REQ, b"hi"))
            client.send_application_data(
                cstp.encode_dtls_payload(cstp.PacketType.DATA, b"\x45ip packet")
            )
            client.send_application_data(cstp.encode_dtls_payload(cstp.PacketType.KEEPALIVE))
            frames = _frames(await _client_step(client, endpoint, 0.5))
            assert [(f.type, f.payload) for f in frames] == [
                (cstp.PacketType.DPD_RESP, b"hi"),
                (cstp.PacketType.DATA, b"\x45ip packet"),
            ]  # no answer to KEEPALIVE (§5.2)
            assert server.data() == [b"\x45ip packet"]
            assert [f.type for f in server.frames] == [
                cstp.PacketType.DPD_REQ,
                cstp.PacketType.DATA,
                cstp.PacketType.KEEPALIVE,
            ]

            await server.send_frame(cstp.PacketType.DPD_REQ, b"from gw")
            frames = _frames(await _client_step(client, endpoint, 0.5))
            assert [(f.type, f.payload) for f in frames] == [(cstp.PacketType.DPD_REQ, b"from gw")]

            server.silent = True
            client.send_application_data(cstp.encode_dtls_payload(cstp.PacketType.DPD_REQ, b"?"))
            assert await _client_step(client, endpoint, 5.0) == []
            assert server.frames_of(cstp.PacketType.DPD_REQ)[-1].payload == b"?"
            nursery.cancel_scope.cancel()
    assert len(net.pairs) == 1


async def test_echo_server_alerts_an_unknown_session_and_takes_a_new_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = _session("OC-DTLS1_2-AES256-GCM")
    net = FakeNetwork(13)
    server = DtlsEchoServer([], seed=4)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            endpoint = await serving_socket_factory(net, server, nursery)()
            first = DtlsConnection(
                Role.CLIENT, session=session, random_bytes=random.Random(1).randbytes
            )
            first.connect(trio.current_time())
            events = await _client_step(first, endpoint, 0.5)
            assert any(isinstance(e, AlertReceived) for e in events)
            assert isinstance(events[-1], ConnectionTerminated) and events[-1].by_peer
            assert first.state is State.CLOSED

            # the gateway learns the session; a new ClientHello on the same port works
            server.learn(session)
            second = DtlsConnection(
                Role.CLIENT, session=session, random_bytes=random.Random(2).randbytes
            )
            second.connect(trio.current_time())
            events = await _client_step(second, endpoint, 0.5)
            assert any(isinstance(e, HandshakeCompleted) for e in events)
            nursery.cancel_scope.cancel()
    assert len(server.connections) == 2
