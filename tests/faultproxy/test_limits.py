"""The fault proxy's own resource limits: everything from the network is hostile.

- TCP: at most ``max_connections`` at once (one more is closed at once and counted),
  and the upstream connect is bounded in time.
- UDP: queues bounded in bytes per flow and direction, and all flows together.
- API: a cap on connections, an idle timeout and a request timeout, so idle or slow
  clients cannot lock the API out.

Time is trio's MockClock (autojump) over real loopback sockets, as in
test_udp_proxy.py: loopback delivery is immediate, so the clock only jumps when every
task waits for a timer, and the timeouts are checked in virtual seconds.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from loadgen.faultproxy.api import IDLE_TIMEOUT_S, MAX_CONNECTIONS, REQUEST_TIMEOUT_S, FaultProxyApi
from loadgen.faultproxy.metrics import OVERLOAD_CAUSES, FaultProxyMetrics
from loadgen.faultproxy.model import STREAMS, ToxicSpec
from loadgen.faultproxy.registry import ProxyRegistry
from loadgen.faultproxy.tcp import CONNECT_TIMEOUT_S, TcpProxy
from loadgen.faultproxy.tcp import MAX_CONNECTIONS as TCP_MAX_CONNECTIONS
from loadgen.faultproxy.udp import MAX_HELD_BYTES, MAX_QUEUE_BYTES, UdpProxy, _Flow

LIMIT_S = 300.0  # virtual seconds; every test is bounded by this
VERSION_REQUEST = b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _overload(metrics: FaultProxyMetrics, proxy: str, direction: str, cause: str) -> float:
    value = metrics.registry.get_sample_value(
        "loadgen_faultproxy_overload_dropped_total",
        {"proxy": proxy, "direction": direction, "cause": cause},
    )
    assert value is not None, "the series exists from proxy creation on"
    return value


async def _read_all(stream: trio.abc.ReceiveStream, timeout_s: float = 30.0) -> bytes:
    """Everything until EOF (or a reset, or the timeout)."""
    out = b""
    with trio.move_on_after(timeout_s):
        try:
            while chunk := await stream.receive_some(65536):
                out += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    return out


def test_limits_are_the_documented_ones() -> None:
    assert "max_connections" in OVERLOAD_CAUSES
    assert TCP_MAX_CONNECTIONS == 10_000 and CONNECT_TIMEOUT_S == 10.0
    assert MAX_QUEUE_BYTES == 1024 * 1024 and MAX_HELD_BYTES == 64 * 1024 * 1024
    assert MAX_CONNECTIONS == 64 and IDLE_TIMEOUT_S == 10.0 and REQUEST_TIMEOUT_S == 10.0


# -- TCP ----------------------------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@asynccontextmanager
async def tcp_proxy(upstream_port: int | None = None, **kwargs: Any) -> AsyncIterator[TcpProxy]:
    metrics = FaultProxyMetrics()
    metrics.proxy_added("web")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            if upstream_port is None:
                listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
                upstream_port = listeners[0].socket.getsockname()[1]
            proxy = TcpProxy(
                name="web",
                listen="127.0.0.1:0",
                upstream=f"127.0.0.1:{upstream_port}",
                metrics=metrics,
                rng=random.Random(1),
                **kwargs,
            )
            await nursery.start(lambda task_status: proxy.serve(task_status=task_status))
            yield proxy
            nursery.cancel_scope.cancel()


def _port(proxy: TcpProxy) -> int:
    assert proxy.address is not None
    return int(proxy.address.rsplit(":", 1)[1])


async def _round_trip(stream: trio.SocketStream, data: bytes) -> bytes:
    await stream.send_all(data)
    with trio.move_on_after(5):
        return bytes(await stream.receive_some(65536))
    return b""


async def test_tcp_connections_beyond_the_cap_are_closed_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tcp_proxy(max_connections=2) as proxy:
        a = await trio.open_tcp_stream("127.0.0.1", _port(proxy))
        b = await trio.open_tcp_stream("127.0.0.1", _port(proxy))
        assert await _round_trip(a, b"a") == b"a"
        assert await _round_trip(b, b"b") == b"b"
        assert proxy.active_connections == 2

        c = await trio.open_tcp_stream("127.0.0.1", _port(proxy))  # accepted, then closed
        assert await _read_all(c, 5.0) == b""
        assert proxy.refused_connections == 1
        assert _overload(proxy.metrics, "web", "upstream", "max_connections") == 1
        assert (
            proxy.metrics.registry.get_sample_value(
                "loadgen_faultproxy_connections_total", {"proxy": "web"}
            )
            == 2
        )  # the refused one is not a relayed connection
        await c.aclose()

        # a slot frees: a new client is relayed again
        await a.aclose()
        with trio.fail_after(5):
            while proxy.active_connections > 1:
                await trio.sleep(0.01)
        d = await trio.open_tcp_stream("127.0.0.1", _port(proxy))
        assert await _round_trip(d, b"d") == b"d"
        assert proxy.refused_connections == 1
        for s in (b, d):
            await s.aclose()


async def test_tcp_upstream_connect_times_out(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that never answers the connect (a black-holed SYN): the client is
    closed after the connect timeout instead of holding a connection forever."""
    real_open: Callable[..., Awaitable[trio.SocketStream]] = trio.open_tcp_stream
    silent_port = 9  # never contacted: the fake below stands in for the connect

    async def open_tcp_stream(host: str, port: int, **kw: Any) -> trio.SocketStream:
        if port == silent_port:
            await trio.sleep_forever()
        return await real_open(host, port, **kw)

    monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)  # tcp.py calls it
    async with tcp_proxy(upstream_port=silent_port, connect_timeout_s=10.0) as proxy:
        client = await real_open("127.0.0.1", _port(proxy))
        t0 = trio.current_time()
        assert await _read_all(client, 60.0) == b""
        assert 10.0 <= trio.current_time() - t0 <= 10.5
        with trio.fail_after(1):
            while proxy.active_connections:
                await trio.sleep(0.01)
        assert (
            proxy.metrics.registry.get_sample_value(
                "loadgen_faultproxy_connections_active", {"proxy": "web"}
            )
            == 0
        )
        await client.aclose()


# -- UDP ----------------------------------------------------------------------------


async def test_udp_queues_are_bounded_in_bytes_per_flow_and_in_total() -> None:
    metrics = FaultProxyMetrics()
    metrics.proxy_added("dtls")
    proxy = UdpProxy(
        name="dtls",
        listen="udp://127.0.0.1:0",
        upstream="udp://127.0.0.1:9",
        metrics=metrics,
        max_queue_bytes=3000,
        max_held_bytes=5000,
    )
    senders: dict[str, Any] = {}
    receivers: dict[str, Any] = {}
    for s in STREAMS:
        senders[s], receivers[s] = trio.open_memory_channel[bytes | None](1024)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flow = _Flow(
            client=("127.0.0.1", 1),
            sock=sock,
            chains={},
            senders=senders,
            receivers=receivers,
            last_activity_s=0.0,
        )
        # far below 1024 datagrams, but above 3000 bytes: the byte bound drops the 4th
        for _ in range(4):
            proxy._enqueue(flow, "upstream", b"u" * 1000)
        assert flow.queued["upstream"] == 3000
        assert _overload(metrics, "dtls", "upstream", "queue_full") == 1
        # the other direction has its own 3000 bytes, but all flows hold 5000 at most
        for _ in range(3):
            proxy._enqueue(flow, "downstream", b"d" * 1000)
        assert flow.queued["downstream"] == 2000
        assert proxy.held_bytes == 5000
        assert _overload(metrics, "dtls", "downstream", "queue_full") == 1
        assert proxy.overrun_drops == 2


@dataclass
class _UdpRig:
    proxy: UdpProxy
    metrics: FaultProxyMetrics
    client: trio.socket.SocketType  # connected to the proxy
    upstream: trio.socket.SocketType  # where the proxy sends

    async def received(self, count: int) -> list[bytes]:
        got: list[bytes] = []
        with trio.move_on_after(5):
            while len(got) < count:
                got.append(await self.upstream.recv(65536))
        return got


@asynccontextmanager
async def udp_rig(*toxics: ToxicSpec, max_held_bytes: int) -> AsyncIterator[_UdpRig]:
    """A UDP proxy with ``toxics``, a client and an upstream socket, on loopback."""
    metrics = FaultProxyMetrics()
    metrics.proxy_added("dtls")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await upstream.bind(("127.0.0.1", 0))
            proxy = UdpProxy(
                name="dtls",
                listen="udp://127.0.0.1:0",
                upstream=f"udp://127.0.0.1:{upstream.getsockname()[1]}",
                metrics=metrics,
                max_held_bytes=max_held_bytes,
            )
            for toxic in toxics:
                proxy.add_toxic(toxic)
            address: str = await nursery.start(
                lambda task_status: proxy.serve(task_status=task_status)
            )
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await client.connect(("127.0.0.1", int(address.rsplit(":", 1)[1])))
            with client, upstream:
                yield _UdpRig(proxy, metrics, client, upstream)
            nursery.cancel_scope.cancel()


def _upstream_toxic(name: str, type_: str, **attributes: float) -> ToxicSpec:
    return ToxicSpec(name=name, type=type_, stream="upstream", attributes=attributes)


async def test_udp_bytes_held_by_toxics_count_against_the_total(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A latency toxic holds datagrams: beyond ``max_held_bytes`` new ones are dropped
    as overload, and once they are released the budget is free again."""
    latency = _upstream_toxic("lat", "latency", latency=1000)
    async with udp_rig(latency, max_held_bytes=10_000) as r:
        for i in range(20):
            await r.client.send(bytes([i]) * 1000)
        await trio.sleep(0.5)  # all in; nothing released yet
        assert r.proxy.held_bytes == 10_000
        assert _overload(r.metrics, "dtls", "upstream", "queue_full") == 10
        got = await r.received(20)
        assert [d[0] for d in got] == list(range(10))  # the first ten, in order
        assert r.proxy.held_bytes == 0
        await r.client.send(b"x" * 1000)  # the budget is free again
        with trio.fail_after(5):
            assert await r.upstream.recv(65536) == b"x" * 1000


async def test_udp_copies_made_by_a_toxic_count_against_the_total(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The toxics' bytes are their chain's own count: the copies a ``duplicate`` adds
    are held bytes too, so they fill the budget, and all of it is freed on release."""
    duplicate = _upstream_toxic("dup", "duplicate", copies=2)
    latency = _upstream_toxic("lat", "latency", latency=1000)
    async with udp_rig(duplicate, latency, max_held_bytes=10_000) as r:
        for i in range(3):
            await r.client.send(bytes([i]) * 1000)
            await trio.sleep(0.01)
        assert r.proxy.held_bytes == 9000  # three datagrams, three times each
        await r.client.send(b"\x03" * 1000)  # 10 000 with it: still in the budget
        await trio.sleep(0.01)
        assert r.proxy.held_bytes == 12_000
        await r.client.send(b"\x04" * 1000)  # beyond: dropped at the proxy's bound
        await trio.sleep(0.01)
        assert _overload(r.metrics, "dtls", "upstream", "queue_full") == 1
        got = await r.received(13)
        assert [d[0] for d in got] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        assert r.proxy.held_bytes == 0


# -- API ----------------------------------------------------------------------------


@asynccontextmanager
async def api_server() -> AsyncIterator[int]:
    metrics = FaultProxyMetrics()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            api = FaultProxyApi(ProxyRegistry(nursery, metrics), metrics)
            port: int = await nursery.start(api.serve, "127.0.0.1", 0)
            yield port
            nursery.cancel_scope.cancel()


async def _get_version(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        try:
            await stream.send_all(VERSION_REQUEST)
        except trio.BrokenResourceError:
            return b""
        return await _read_all(stream, 5.0)
    finally:
        await stream.aclose()


async def test_idle_connections_cannot_lock_the_api_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with api_server() as port:
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS + 8)]
        await trio.sleep(1.0)
        t0 = trio.current_time()
        # every slot is held by an idle client: a new one is closed at once
        assert await _get_version(port) == b""
        # ... until the idle timeout frees the slots: then it is answered
        answer = b""
        for _ in range(60):
            answer = await _get_version(port)
            if answer:
                break
            await trio.sleep(0.5)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert trio.current_time() - t0 <= IDLE_TIMEOUT_S + 1.5
        # the idle clients were closed by the server (those beyond the cap at once)
        for stream in idle:
            assert await _read_all(stream, 1.0) == b""
            await stream.aclose()


async def test_a_slow_request_is_cut_off_with_408(autojump_clock: trio.testing.MockClock) -> None:
    """Slowloris: a header line every second keeps the connection busy, never idle;
    the request timer still ends it ``REQUEST_TIMEOUT_S`` after its first byte."""
    async with api_server() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        t0 = trio.current_time()
        answered_at: list[float] = []

        async def trickle() -> None:
            try:
                await stream.send_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")
                for _ in range(120):
                    await trio.sleep(1.0)
                    await stream.send_all(b"X-Slow: y\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            out = b""
            with trio.move_on_after(60):
                try:
                    while chunk := await stream.receive_some(65536):
                        answered_at.append(trio.current_time())
                        out += chunk
                except trio.BrokenResourceError:
                    pass
            nursery.cancel_scope.cancel()
        await stream.aclose()
        assert out.startswith(b"HTTP/1.1 408 "), out
        assert answered_at[0] - t0 <= REQUEST_TIMEOUT_S + 1.5
        assert (await _get_version(port)).startswith(b"HTTP/1.1 200 ")  # still serving
