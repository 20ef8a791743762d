"""Every TCP toxic, deterministically: trio's mock clock and in-memory streams.

The proxy's own relay (``TcpProxy.relay``) runs between two in-memory stream pairs,
so these tests exercise the same links, chains and toxics as a real connection;
times are exact because the clock is virtual (``autojump_clock``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing

from loadgen.faultproxy.chain import TcpChain
from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.model import ApiError, ToxicSpec
from loadgen.faultproxy.tcp import TcpProxy
from loadgen.faultproxy.toxics import TCP_TOXICS, check_tcp_toxic
from loadgen.faultproxy.toxics.base import EOF, Chunk, Close, item_size
from loadgen.faultproxy.toxics.slicer import SlicerToxic

EPS = 1e-9


def toxic(
    type_: str, stream: str = "downstream", toxicity: float = 1.0, **attrs: float
) -> ToxicSpec:
    return check_tcp_toxic(
        ToxicSpec(
            name=f"{type_}_{stream}", type=type_, stream=stream, toxicity=toxicity, attributes=attrs
        )
    )


@dataclass
class Rig:
    proxy: TcpProxy
    metrics: FaultProxyMetrics
    client: trio.abc.HalfCloseableStream  # the application's client end
    server: trio.abc.HalfCloseableStream  # the application's server end
    ended: trio.Event
    ended_at: list[float]

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"proxy": "p", **labels})
        return 0.0 if value is None else value


@asynccontextmanager
async def rig(*toxics: ToxicSpec, seed: int = 1) -> AsyncIterator[Rig]:
    metrics = FaultProxyMetrics()
    metrics.proxy_added("p")
    proxy = TcpProxy(
        name="p",
        listen="127.0.0.1:0",
        upstream="127.0.0.1:9",
        metrics=metrics,
        rng=random.Random(seed),
    )
    for t in toxics:
        proxy.add_toxic(t)
    client, proxy_client_side = trio.testing.memory_stream_pair()
    proxy_upstream_side, server = trio.testing.memory_stream_pair()
    ended = trio.Event()
    ended_at: list[float] = []

    async def run() -> None:
        try:
            await proxy.relay(proxy_client_side, proxy_upstream_side)
        finally:
            ended_at.append(trio.current_time())
            ended.set()
            # as the listener does after a connection: close both sides
            await proxy_client_side.aclose()
            await proxy_upstream_side.aclose()

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            yield Rig(proxy, metrics, client, server, ended, ended_at)
            nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        data = await stream.receive_some(size - len(buf))
        assert data, f"stream ended after {len(buf)} of {size} bytes"
        buf += data
    return buf


async def test_no_toxic_relays_both_ways_and_counts_bytes(autojump_clock: trio.abc.Clock) -> None:
    async with rig() as r:
        await r.client.send_all(b"ping")
        assert await receive_exactly(r.server, 4) == b"ping"
        await r.server.send_all(b"pong!")
        assert await receive_exactly(r.client, 5) == b"pong!"
        assert r.sample("loadgen_faultproxy_bytes_total", direction="upstream") == 4
        assert r.sample("loadgen_faultproxy_bytes_total", direction="downstream") == 5


# -- latency ---------------------------------------------------------------------------


async def test_latency_delays_its_stream_only(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("latency", latency=300)) as r:
        t0 = trio.current_time()
        await r.client.send_all(b"up")
        assert await receive_exactly(r.server, 2) == b"up"
        assert trio.current_time() - t0 < EPS  # upstream has no toxic
        t1 = trio.current_time()
        await r.server.send_all(b"down")
        assert await receive_exactly(r.client, 4) == b"down"
        assert abs(trio.current_time() - t1 - 0.300) < EPS
        assert (
            r.sample("loadgen_faultproxy_delayed_total", direction="downstream", toxic="latency")
            == 1
        )
        assert (
            abs(
                r.sample(
                    "loadgen_faultproxy_delay_seconds_total",
                    direction="downstream",
                    toxic="latency",
                )
                - 0.3
            )
            < EPS
        )


async def test_latency_shifts_a_stream_without_slowing_it(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("latency", "upstream", latency=1000)) as r:
        t0 = trio.current_time()
        for i in range(3):
            await r.client.send_all(bytes([i]))
            await trio.sleep(0.1)
        arrivals = []
        for i in range(3):
            assert await receive_exactly(r.server, 1) == bytes([i])
            arrivals.append(trio.current_time() - t0)
        assert arrivals == pytest.approx([1.0, 1.1, 1.2])


async def test_latency_jitter_is_seeded_bounded_and_keeps_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def delays(seed: int) -> list[float]:
        out = []
        async with rig(toxic("latency", "upstream", latency=100, jitter=50), seed=seed) as r:
            for i in range(20):
                t0 = trio.current_time()
                await r.client.send_all(bytes([i]))
                assert await receive_exactly(r.server, 1) == bytes([i])
                out.append(trio.current_time() - t0)
        return out

    first, again, other = await delays(7), await delays(7), await delays(8)
    assert first == pytest.approx(again, abs=1e-9)
    assert first != pytest.approx(other, abs=1e-6)
    assert all(0.05 - EPS <= d <= 0.15 + EPS for d in first)
    assert len(set(first)) > 1


# -- bandwidth -------------------------------------------------------------------------


async def test_bandwidth_paces_in_100ms_pieces(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("bandwidth", "upstream", rate=1)) as r:  # 1 KB/s = 1000 bytes/s
        t0 = trio.current_time()
        await r.client.send_all(b"x" * 250)
        got = []
        total = 0
        while total < 250:
            data = await r.server.receive_some(1000)
            total += len(data)
            got.append((round(trio.current_time() - t0, 6), len(data)))
        assert got == [(0.1, 100), (0.2, 100), (0.25, 50)]


async def test_bandwidth_zero_is_no_limit(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("bandwidth", "upstream", rate=0)) as r:
        t0 = trio.current_time()
        await r.client.send_all(b"y" * 100_000)
        assert len(await receive_exactly(r.server, 100_000)) == 100_000
        assert trio.current_time() - t0 < EPS


# -- slow_close ------------------------------------------------------------------------


async def test_slow_close_delays_the_eof_not_the_data(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("slow_close", "upstream", delay=500)) as r:
        t0 = trio.current_time()
        await r.client.send_all(b"bye")
        await r.client.send_eof()
        assert await receive_exactly(r.server, 3) == b"bye"
        assert trio.current_time() - t0 < EPS
        assert await r.server.receive_some(10) == b""
        assert abs(trio.current_time() - t0 - 0.5) < EPS


# -- timeout ---------------------------------------------------------------------------


async def test_timeout_drops_data_then_closes(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("timeout", "upstream", timeout=1000)) as r:
        t0 = trio.current_time()
        await r.client.send_all(b"lost")
        await r.ended.wait()
        assert abs(r.ended_at[0] - t0 - 1.0) < EPS
        assert await r.server.receive_some(10) == b""  # nothing got through
        assert (
            r.sample(
                "loadgen_faultproxy_dropped_bytes_total", direction="upstream", toxic="timeout"
            )
            == 4
        )


async def test_timeout_zero_holds_forever_and_removal_closes(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with rig(toxic("timeout", "upstream", timeout=0)) as r:
        await r.client.send_all(b"lost")
        await trio.sleep(3600 - 10)
        assert not r.ended.is_set()
        r.proxy.remove_toxic("timeout_upstream")  # Toxiproxy's Cleanup closes the stream
        await r.ended.wait()
        assert await r.server.receive_some(10) == b""


# -- reset_peer ------------------------------------------------------------------------


async def test_reset_peer_resets_after_first_data(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("reset_peer", "upstream", timeout=200)) as r:
        await trio.sleep(5)  # the clock starts with the first data, not the connection
        assert not r.ended.is_set()
        t0 = trio.current_time()
        await r.client.send_all(b"hello")
        await r.ended.wait()
        assert abs(r.ended_at[0] - t0 - 0.2) < EPS
        assert await r.server.receive_some(10) == b""


# -- slicer ----------------------------------------------------------------------------


async def test_slicer_cuts_and_spaces_pieces(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("slicer", "upstream", average_size=10, size_variation=0, delay=1000)) as r:
        t0 = trio.current_time()
        await r.client.send_all(bytes(range(40)))
        got = []
        data = b""
        while len(data) < 40:
            piece = await r.server.receive_some(100)
            data += piece
            got.append((round(trio.current_time() - t0, 6), len(piece)))
        assert data == bytes(range(40))
        assert got == [(0.0, 10), (0.001, 10), (0.002, 10), (0.003, 10)]


def test_slicer_cuts_add_up_and_respect_the_bounds() -> None:
    rng = random.Random(3)
    slicer = SlicerToxic({"average_size": 100, "size_variation": 30}, now=0.0, rng=rng)
    for size in (1, 99, 130, 131, 1000, 65536):
        cuts = slicer.cuts(size)
        assert sum(cuts) == size
        assert all(0 < c <= 130 for c in cuts)
    zero = SlicerToxic({}, now=0.0)
    assert zero.cuts(500) == [500]  # Toxiproxy would never return here


# -- limit_data ------------------------------------------------------------------------


async def test_limit_data_closes_at_the_limit(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("limit_data", "upstream", bytes=10)) as r:
        await r.client.send_all(b"abcdef")
        assert await receive_exactly(r.server, 6) == b"abcdef"
        await r.client.send_all(b"ghijkl")
        assert await receive_exactly(r.server, 4) == b"ghij"
        assert await r.server.receive_some(10) == b""
        await r.ended.wait()
        assert (
            r.sample(
                "loadgen_faultproxy_dropped_bytes_total", direction="upstream", toxic="limit_data"
            )
            == 2
        )


async def test_limit_data_count_survives_an_update(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("limit_data", "upstream", bytes=10)) as r:
        await r.client.send_all(b"12345678")
        assert await receive_exactly(r.server, 8) == b"12345678"
        r.proxy.update_toxic(toxic("limit_data", "upstream", bytes=12))
        await r.client.send_all(b"abcdef")
        assert await receive_exactly(r.server, 4) == b"abcd"
        await r.ended.wait()


# -- hello_delay -----------------------------------------------------------------------


async def test_hello_delay_holds_only_the_first_data(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("hello_delay", "upstream", delay=2000)) as r:
        t0 = trio.current_time()
        await r.client.send_all(b"ClientHello")
        await trio.sleep(0.5)
        await r.client.send_all(b"+more")  # sent while the hello is held: queued behind it
        assert await receive_exactly(r.server, 16) == b"ClientHello+more"
        assert abs(trio.current_time() - t0 - 2.0) < EPS
        t1 = trio.current_time()
        await r.client.send_all(b"data")
        assert await receive_exactly(r.server, 4) == b"data"
        assert trio.current_time() - t1 < EPS
        # the other direction is not touched
        await r.server.send_all(b"ServerHello")
        assert await receive_exactly(r.client, 11) == b"ServerHello"


async def test_hello_delay_added_mid_connection_does_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with rig() as r:
        await r.client.send_all(b"hello")
        assert await receive_exactly(r.server, 5) == b"hello"
        r.proxy.add_toxic(toxic("hello_delay", "upstream", delay=2000))
        t0 = trio.current_time()
        await r.client.send_all(b"data")
        assert await receive_exactly(r.server, 4) == b"data"
        assert trio.current_time() - t0 < EPS


# -- the contract ----------------------------------------------------------------------


async def test_removed_toxic_forwards_data_in_flight(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("latency", "upstream", latency=10_000)) as r:
        await r.client.send_all(b"in flight")
        await trio.sleep(1)
        t0 = trio.current_time()
        r.proxy.remove_toxic("latency_upstream")
        assert await receive_exactly(r.server, 9) == b"in flight"
        assert trio.current_time() - t0 < EPS  # released at once, not lost


async def test_updated_toxic_releases_what_it_holds(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("latency", "upstream", latency=10_000)) as r:
        await r.client.send_all(b"held")
        await trio.sleep(1)
        t0 = trio.current_time()
        r.proxy.update_toxic(toxic("latency", "upstream", latency=100))
        assert await receive_exactly(r.server, 4) == b"held"
        assert trio.current_time() - t0 < EPS
        t1 = trio.current_time()
        await r.client.send_all(b"next")
        assert await receive_exactly(r.server, 4) == b"next"
        assert abs(trio.current_time() - t1 - 0.1) < EPS


async def test_toxic_added_to_an_open_connection_applies(autojump_clock: trio.abc.Clock) -> None:
    async with rig() as r:
        r.proxy.add_toxic(toxic("latency", "downstream", latency=250))
        t0 = trio.current_time()
        await r.server.send_all(b"late")
        assert await receive_exactly(r.client, 4) == b"late"
        assert abs(trio.current_time() - t0 - 0.25) < EPS


async def test_eof_is_passed_on_after_the_data(autojump_clock: trio.abc.Clock) -> None:
    async with rig(toxic("latency", "upstream", latency=300)) as r:
        t0 = trio.current_time()
        await r.client.send_all(b"last words")
        await r.client.send_eof()
        assert await receive_exactly(r.server, 10) == b"last words"
        assert await r.server.receive_some(10) == b""  # the half-close came through
        assert abs(trio.current_time() - t0 - 0.3) < EPS
        # half-closed, not closed: the answer still reaches the client
        await r.server.send_all(b"answer")
        assert await receive_exactly(r.client, 6) == b"answer"
        await r.server.send_eof()
        assert await r.client.receive_some(10) == b""
        await r.ended.wait()  # both directions over: the connection ends


async def test_no_byte_lost_through_a_chain_changed_mid_transfer(
    autojump_clock: trio.abc.Clock,
) -> None:
    payload = random.Random(5).randbytes(300_000)
    async with rig(
        toxic("latency", "upstream", latency=50, jitter=20),
        toxic("slicer", "upstream", average_size=700, size_variation=300, delay=10),
        toxic("bandwidth", "upstream", rate=2000),
    ) as r:
        received = bytearray()

        async def sender() -> None:
            for i in range(0, len(payload), 4096):
                await r.client.send_all(payload[i : i + 4096])
                await trio.sleep(0.001)
            await r.client.send_eof()

        async def receiver() -> None:
            while data := await r.server.receive_some(65536):
                received.extend(data)

        async def meddler() -> None:
            await trio.sleep(0.05)
            r.proxy.add_toxic(toxic("hello_delay", "upstream", delay=100))
            await trio.sleep(0.05)
            r.proxy.update_toxic(toxic("latency", "upstream", latency=5))
            await trio.sleep(0.05)
            r.proxy.remove_toxic("slicer_upstream")
            await trio.sleep(0.02)
            r.proxy.remove_toxic("bandwidth_upstream")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
            nursery.start_soon(meddler)
        assert bytes(received) == payload
        assert r.sample("loadgen_faultproxy_bytes_total", direction="upstream") == len(payload)


def test_toxicity_is_drawn_per_connection() -> None:
    spec = toxic("latency", "upstream", toxicity=0.5, latency=100)
    delayed = 0
    rng = random.Random(11)
    for _ in range(200):
        chain = TcpChain(rng=rng)
        chain.add(spec, 0.0)
        chain.receive(Chunk(data=b"x", timestamp=0.0), 0.0)
        delayed += not chain.take_output()
    assert 70 < delayed < 130
    never = TcpChain(rng=rng)
    never.add(toxic("latency", "upstream", toxicity=0.0, latency=100), 0.0)
    never.receive(Chunk(data=b"x", timestamp=0.0), 0.0)
    assert never.take_output() == [Chunk(data=b"x", timestamp=0.0)]


def test_chain_passes_close_after_held_data() -> None:
    chain = TcpChain(rng=random.Random(1))
    chain.add(toxic("limit_data", "upstream", bytes=3), 0.0)
    chain.add(toxic("latency", "upstream", latency=1000), 0.0)
    chain.receive(Chunk(data=b"abcdef", timestamp=0.0), 0.0)
    assert chain.take_output() == []
    assert chain.get_timer() == 1.0
    chain.handle_timer(1.0)
    assert chain.take_output() == [Chunk(data=b"abc", timestamp=1.0), Close(reset=False)]
    chain.receive(EOF, 1.0)  # after the close: ignored
    assert chain.take_output() == []


# -- registry of types -----------------------------------------------------------------


def test_defaults_are_toxiproxys_zero_values() -> None:
    assert {name: dict(cls.defaults) for name, cls in TCP_TOXICS.items()} == {
        "latency": {"latency": 0, "jitter": 0},
        "bandwidth": {"rate": 0},
        "slow_close": {"delay": 0},
        "timeout": {"timeout": 0},
        "reset_peer": {"timeout": 0},
        "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
        "limit_data": {"bytes": 0},
        "hello_delay": {"delay": 0},
    }
    assert dict(toxic("latency", latency=5).attributes) == {"latency": 5, "jitter": 0}


@pytest.mark.parametrize(
    ("type_", "attrs"),
    [
        ("nosuch", {}),
        ("latency", {"latency": -1}),
        ("latency", {"delay": 5}),
        ("limit_data", {"bytes": 1.5}),
        ("blackhole", {}),  # a datagram toxic, not a TCP one
    ],
)
def test_bad_toxics_are_400(type_: str, attrs: dict[str, float]) -> None:
    with pytest.raises(ApiError) as info:
        check_tcp_toxic(ToxicSpec(name="x", type=type_, attributes=attrs))
    assert info.value.status == 400


def test_proxy_toxic_crud_errors() -> None:
    proxy = TcpProxy(
        name="p", listen="127.0.0.1:0", upstream="127.0.0.1:9", metrics=FaultProxyMetrics()
    )
    with pytest.raises(ApiError) as info:
        proxy.remove_toxic("nope")
    assert info.value.status == 404
    for bad in ("nocolon", "127.0.0.1:x", "udp://127.0.0.1:5"):
        with pytest.raises(ApiError) as info:
            TcpProxy(name="p", listen=bad, upstream="127.0.0.1:9", metrics=FaultProxyMetrics())
        assert info.value.status == 400


# -- held_bytes is kept as items move, not recounted: it must match a recount -------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("chunk"), st.integers(1, 3000), st.floats(0, 0.2)),
        st.tuples(st.just("timer"), st.just(0), st.floats(0, 0.5)),
        st.tuples(st.just("take"), st.just(0), st.just(0.0)),
        st.tuples(st.just("update"), st.just(0), st.just(0.0)),
        st.tuples(st.just("flush"), st.just(0), st.just(0.0)),
    ),
    max_size=40,
)


@pytest.mark.parametrize(
    "kind", ["latency", "bandwidth", "slicer", "hello_delay", "slow_close", "limit_data"]
)
@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(ops=_OPS)
def test_held_bytes_matches_a_recount(kind: str, ops: list[tuple[str, int, float]]) -> None:
    attrs = {
        "latency": {"latency": 50, "jitter": 10},
        "bandwidth": {"rate": 10},
        "slicer": {"average_size": 100, "size_variation": 20, "delay": 1000},
        "hello_delay": {"delay": 100},
        "slow_close": {"delay": 100},
        "limit_data": {"bytes": 5000},
    }[kind]
    spec = check_tcp_toxic(toxic(kind, **attrs))
    t = TCP_TOXICS[kind](spec.attributes, now=0.0, rng=random.Random(3))
    now = 0.0
    for op, size, dt in ops:
        now += dt
        if op == "chunk":
            t.receive(Chunk(data=b"x" * size, timestamp=now), now)
        elif op == "timer":
            t.handle_timer(now)
        elif op == "take":
            t.take_output()
        elif op == "update":
            t.update(spec.attributes, now)
        else:
            t.flush()
        recount = sum(item_size(i) for i in t._out) + sum(item_size(i) for _, i in t._queue)
        assert t.held_bytes == recount, (op, now)
