"""The UDP proxy end to end on 127.0.0.1: a trio echo server behind it, real sockets.

Time is trio's MockClock (autojump): loopback delivery is immediate, so the clock only
jumps when every task waits for a timer, and delays are checked to the tick.  The
pytest process runs in a private network namespace (tests/conftest.py).
"""

from __future__ import annotations

import functools
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import generate_latest

from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.model import ApiError, ToxicSpec
from loadgen.faultproxy.udp import UdpProxy, parse_udp_address

LIMIT_S = 120.0  # virtual seconds; every test is bounded by this
HELLO = bytes.fromhex("16 fefd 0000 000000000000 0004") + b"\x01\x00\x00\x00"
DATA = bytes.fromhex("17 fefd 0001 000000000000 0003") + b"abc"


@dataclass
class Echo:
    """A UDP echo server that records where each datagram came from."""

    port: int
    sources: list[Any] = field(default_factory=list)


async def serve_echo(
    *, port: int = 0, task_status: trio.TaskStatus[Echo] = trio.TASK_STATUS_IGNORED
) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", port))
        echo = Echo(port=sock.getsockname()[1])
        task_status.started(echo)
        while True:
            data, source = await sock.recvfrom(65536)
            echo.sources.append(source)
            await sock.sendto(data, source)


@dataclass
class Rig:
    proxy: UdpProxy
    metrics: FaultProxyMetrics
    echo: Echo
    port: int  # the proxy's listening port
    nursery: trio.Nursery
    scope: trio.CancelScope

    async def client(self) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.connect(("127.0.0.1", self.port))
        return sock

    def sample(self, metric: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(metric, {"proxy": "dtls", **labels})
        return 0.0 if value is None else value


@asynccontextmanager
async def rig(**kwargs: Any) -> AsyncIterator[Rig]:
    metrics = FaultProxyMetrics()
    metrics.proxy_added("dtls")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            echo: Echo = await nursery.start(serve_echo)
            proxy = UdpProxy(
                name="dtls",
                listen="udp://127.0.0.1:0",
                upstream=f"udp://127.0.0.1:{echo.port}",
                metrics=metrics,
                rng=random.Random(1),
                **kwargs,
            )
            scope = trio.CancelScope()

            async def run_proxy(task_status: trio.TaskStatus[str]) -> None:
                with scope:
                    await proxy.serve(task_status=task_status)

            address: str = await nursery.start(run_proxy)
            assert address.startswith("udp://127.0.0.1:")
            yield Rig(proxy, metrics, echo, int(address.rsplit(":", 1)[1]), nursery, scope)
            nursery.cancel_scope.cancel()


def toxic(type_: str, stream: str = "upstream", **attrs: float) -> ToxicSpec:
    return ToxicSpec(name=f"{type_}_{stream}", type=type_, stream=stream, attributes=attrs)


async def recv(sock: trio.socket.SocketType, timeout_s: float = 5.0) -> bytes | None:
    with trio.move_on_after(timeout_s):
        return await sock.recv(65536)
    return None


async def test_relays_both_ways_and_counts(autojump_clock: trio.testing.MockClock) -> None:
    async with rig() as r:
        c = await r.client()
        await c.send(b"hello")
        assert await recv(c) == b"hello"
        await c.send(b"again!")
        assert await recv(c) == b"again!"
        await trio.testing.wait_all_tasks_blocked()  # the proxy counts after its send
        assert r.proxy.flow_count == 1
        assert len(set(r.echo.sources)) == 1
        for direction in ("upstream", "downstream"):
            assert r.sample("loadgen_faultproxy_datagrams_total", direction=direction) == 2
            assert r.sample("loadgen_faultproxy_bytes_total", direction=direction) == 11
        assert r.sample("loadgen_faultproxy_connections_total") == 1
        assert r.sample("loadgen_faultproxy_connections_active") == 1
        text = generate_latest(r.metrics.registry).decode()
        assert "127.0.0.1" not in text and str(r.echo.port) not in text  # never addresses


async def test_two_clients_get_separate_flows(autojump_clock: trio.testing.MockClock) -> None:
    async with rig() as r:
        a, b = await r.client(), await r.client()
        await a.send(b"from a")
        await b.send(b"from b")
        assert await recv(a) == b"from a"
        assert await recv(b) == b"from b"
        assert r.proxy.flow_count == 2
        assert len(set(r.echo.sources)) == 2  # one upstream source port per client
        assert r.sample("loadgen_faultproxy_connections_total") == 2


async def test_any_bytes_and_big_datagrams_are_relayed_as_they_are(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig() as r:
        c = await r.client()
        for payload in (b"", bytes(range(256)), b"\xff" * 65000):
            await c.send(payload)
            assert await recv(c) == payload


async def test_blackhole_upstream_drops_and_removing_it_restores(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig() as r:
        c = await r.client()
        await c.send(b"before")
        assert await recv(c) == b"before"
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("blackhole")))  # on an open flow
        for _ in range(3):
            await c.send(b"lost")
        assert await recv(c, 2.0) is None
        assert len(r.echo.sources) == 1
        dropped = {"direction": "upstream", "toxic": "blackhole"}
        assert r.sample("loadgen_faultproxy_dropped_datagrams_total", **dropped) == 3
        assert r.sample("loadgen_faultproxy_dropped_bytes_total", **dropped) == 12
        r.proxy.remove_toxic("blackhole_upstream")
        await c.send(b"after")
        assert await recv(c) == b"after"


async def test_toxic_added_before_the_flow_applies_to_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig() as r:
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("blackhole", "downstream")))
        c = await r.client()
        await c.send(b"x")
        assert await recv(c, 2.0) is None
        assert len(r.echo.sources) == 1  # it went up; the answer was dropped


async def test_latency_adds_its_delay(autojump_clock: trio.testing.MockClock) -> None:
    async with rig() as r:
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("latency", "downstream", latency=500)))
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("latency", "upstream", latency=200)))
        c = await r.client()
        start = trio.current_time()
        await c.send(b"slow")
        assert await recv(c) == b"slow"
        assert trio.current_time() - start == pytest.approx(0.7, abs=0.01)
        await trio.testing.wait_all_tasks_blocked()
        held = {"toxic": "latency"}
        assert r.sample("loadgen_faultproxy_delayed_total", direction="downstream", **held) == 1
        assert r.sample(
            "loadgen_faultproxy_delay_seconds_total", direction="upstream", **held
        ) == pytest.approx(0.2)
        # an update reaches the open flow
        r.proxy.update_toxic(r.proxy.check_toxic(toxic("latency", "downstream", latency=0)))
        start = trio.current_time()
        await c.send(b"faster")
        assert await recv(c) == b"faster"
        assert trio.current_time() - start == pytest.approx(0.2, abs=0.01)


async def test_dtls_hello_is_delayed_and_data_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig() as r:
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("hello_delay", delay=2000)))
        c = await r.client()
        start = trio.current_time()
        await c.send(HELLO)
        await c.send(DATA)
        assert await recv(c) == DATA
        assert trio.current_time() - start < 0.01
        assert await recv(c) == HELLO
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)


async def test_removing_a_toxic_releases_what_it_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig() as r:
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("latency", latency=30_000)))
        c = await r.client()
        for i in range(3):
            await c.send(b"%d" % i)
        await trio.sleep(1.0)
        assert r.echo.sources == []
        r.proxy.remove_toxic("latency_upstream")
        got = [await recv(c) for _ in range(3)]
        assert got == [b"0", b"1", b"2"]


async def test_idle_flows_expire(autojump_clock: trio.testing.MockClock) -> None:
    async with rig(flow_idle_s=5.0) as r:
        c = await r.client()
        await c.send(b"a")
        assert await recv(c) == b"a"
        await trio.sleep(4.0)
        await c.send(b"b")  # activity keeps the flow
        assert await recv(c) == b"b"
        await trio.sleep(4.0)
        assert r.proxy.flow_count == 1
        await trio.sleep(1.5)
        assert r.proxy.flow_count == 0
        assert r.sample("loadgen_faultproxy_connections_active") == 0
        await c.send(b"c")  # a new flow, with a new upstream source port
        assert await recv(c) == b"c"
        assert r.sample("loadgen_faultproxy_connections_total") == 2
        assert len(set(r.echo.sources)) == 2


async def test_client_datagrams_alone_keep_a_flow(autojump_clock: trio.testing.MockClock) -> None:
    async with rig(flow_idle_s=5.0) as r:
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("blackhole")))  # no answers at all
        c = await r.client()
        for _ in range(4):
            await c.send(b"ping")
            await trio.sleep(3.0)
        assert r.proxy.flow_count == 1
        await trio.sleep(2.5)
        assert r.proxy.flow_count == 0
        assert r.sample("loadgen_faultproxy_connections_total") == 1


async def test_a_flow_holding_datagrams_does_not_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig(flow_idle_s=1.0) as r:
        r.proxy.add_toxic(r.proxy.check_toxic(toxic("latency", latency=3000)))
        c = await r.client()
        await c.send(b"late")
        assert await recv(c) == b"late"  # after 3 s, more than the idle time


async def test_flows_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async with rig(max_flows=1) as r:
        a, b = await r.client(), await r.client()
        await a.send(b"a")
        assert await recv(a) == b"a"
        await b.send(b"b")
        assert await recv(b, 2.0) is None
        assert r.proxy.refused_flows == 1
        assert r.proxy.flow_count == 1
        # no silent loss: the proxy's own limit is counted apart from the toxics
        assert (
            r.metrics.registry.get_sample_value(
                "loadgen_faultproxy_overload_dropped_total",
                {"proxy": "dtls", "direction": "upstream", "cause": "max_flows"},
            )
            == 1
        )


async def test_unreachable_upstream_does_not_crash_the_proxy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rig() as r:
        # a port with nobody on it: sends draw ICMP port unreachable
        probe = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
        probe.close()
        proxy = UdpProxy(
            name="dead",
            listen="udp://127.0.0.1:0",
            upstream=f"udp://127.0.0.1:{dead_port}",
            metrics=r.metrics,
        )
        address: str = await r.nursery.start(proxy.serve)
        c = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await c.connect(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        for i in range(5):
            await c.send(b"%d" % i)
            await trio.sleep(0.1)
        assert proxy.flow_count == 1
        # the upstream comes up on that port: the same flow now relays
        echo: Echo = await r.nursery.start(functools.partial(serve_echo, port=dead_port))
        await c.send(b"alive")
        assert await recv(c) == b"alive"
        assert echo.sources and proxy.flow_count == 1


async def test_cancelling_serve_closes_every_socket(autojump_clock: trio.testing.MockClock) -> None:
    async with rig() as r:
        c = await r.client()
        await c.send(b"x")
        assert await recv(c) == b"x"
        flows = list(r.proxy._flows.values())
        assert len(flows) == 1
        r.scope.cancel()
        await trio.sleep(0.1)
        assert flows[0].sock.fileno() == -1
        assert r.proxy.flow_count == 0 and r.proxy.address is None
        assert r.sample("loadgen_faultproxy_connections_active") == 0
        # the listening port is free again
        again = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with again:
            await again.bind(("127.0.0.1", r.port))


async def test_toxic_management_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with rig() as r:
        t = r.proxy.check_toxic(toxic("loss", percentage=50))
        r.proxy.add_toxic(t)
        with pytest.raises(ApiError) as info:
            r.proxy.add_toxic(t)
        assert info.value.status == 409
        with pytest.raises(ApiError) as info:
            r.proxy.remove_toxic("nosuch")
        assert info.value.status == 404
        with pytest.raises(ApiError) as info:
            r.proxy.check_toxic(toxic("bandwidth", rate=10))  # TCP only
        assert info.value.status == 400
        assert [x.name for x in r.proxy.toxics()] == ["loss_upstream"]


@pytest.mark.parametrize(
    ("address", "listen", "expected"),
    [
        ("udp://127.0.0.1:0", True, ("127.0.0.1", 0)),
        ("udp://[::1]:4443", False, ("::1", 4443)),
        ("udp://:0", True, ("0.0.0.0", 0)),
        ("udp://localhost:443", False, ("localhost", 443)),
    ],
)
def test_parse_udp_address(address: str, listen: bool, expected: tuple[str, int]) -> None:
    assert parse_udp_address(address, listen=listen) == expected


@pytest.mark.parametrize(
    ("address", "listen"),
    [
        ("127.0.0.1:0", True),
        ("udp://127.0.0.1", True),
        ("udp://127.0.0.1:x", True),
        ("udp://127.0.0.1:70000", True),
        ("udp://127.0.0.1:0", False),
        ("udp://:443", False),
    ],
)
def test_bad_udp_addresses_are_400(address: str, listen: bool) -> None:
    with pytest.raises(ApiError) as info:
        parse_udp_address(address, listen=listen)
    assert info.value.status == 400


async def test_listen_on_a_busy_port_is_an_api_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        busy = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with busy:
            await busy.bind(("127.0.0.1", 0))
            port = busy.getsockname()[1]
            proxy = UdpProxy(
                name="p",
                listen=f"udp://127.0.0.1:{port}",
                upstream="udp://127.0.0.1:9",
                metrics=FaultProxyMetrics(),
            )
            async with trio.open_nursery() as nursery:
                with pytest.raises(ApiError) as info:
                    await nursery.start(proxy.serve)
            assert info.value.status == 500
