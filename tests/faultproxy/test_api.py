"""The HTTP API endpoint by endpoint: Toxiproxy v2's JSON shapes and status codes.

An in-process API on 127.0.0.1 port 0; requests go through ``http.client`` from a
worker thread, so the server sees a real, unrelated HTTP client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio

from loadgen.faultproxy.api import FaultProxyApi
from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.registry import ProxyRegistry

TIMEOUT_S = 20


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def _request(
    port: int,
    method: str,
    path: str,
    body: object = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class Api:
    port: int
    metrics: FaultProxyMetrics

    async def __call__(self, method: str, path: str, body: object = None, **kw: Any) -> Reply:
        return await trio.to_thread.run_sync(partial(_request, self.port, method, path, body, **kw))


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    metrics = FaultProxyMetrics()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            registry = ProxyRegistry(nursery, metrics)
            server = FaultProxyApi(registry, metrics)
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            yield Api(port, metrics)
            nursery.cancel_scope.cancel()


async def _echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        try:
            async for data in stream:
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _err(status: int, message: str) -> dict[str, Any]:
    return {"error": message, "status": status}


async def test_version(api: Api) -> None:
    r = await api("GET", "/version")
    assert r.status == 200
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json["version"], str)


async def test_proxy_lifecycle(api: Api) -> None:
    assert (await api("GET", "/proxies")).json == {}
    r = await api(
        "POST", "/proxies", {"name": "web", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    )
    assert r.status == 201
    proxy = r.json
    assert set(proxy) == {"name", "listen", "upstream", "enabled", "toxics"}
    assert proxy["name"] == "web" and proxy["upstream"] == "127.0.0.1:9"
    assert proxy["enabled"] is True and proxy["toxics"] == []
    assert proxy["listen"].startswith("127.0.0.1:") and _port(proxy["listen"]) != 0

    r = await api(
        "POST", "/proxies", {"name": "web", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    )
    assert (r.status, r.json) == (409, _err(409, "proxy already exists"))

    r = await api("GET", "/proxies")
    assert (r.status, r.json) == (200, {"web": proxy})
    r = await api("GET", "/proxies/web")
    assert (r.status, r.json) == (200, proxy)
    r = await api("GET", "/proxies/nope")
    assert (r.status, r.json) == (404, _err(404, "proxy not found"))

    r = await api("DELETE", "/proxies/web")
    assert (r.status, r.body) == (204, b"")
    assert (await api("DELETE", "/proxies/web")).status == 404
    assert (await api("GET", "/proxies")).json == {}


async def test_create_rejects_bad_bodies(api: Api) -> None:
    for body in (
        {"name": "x", "listen": "127.0.0.1:0"},
        {"listen": "127.0.0.1:0", "upstream": "a:1"},
        [1],
        "s",
    ):
        r = await api("POST", "/proxies", body)
        assert r.status == 400, body
        assert r.json["status"] == 400 and r.json["error"]
    for raw in (b"{not json", b"", b'{"name": NaN}', b"\xff\xfe", b"[" * 100_000):
        r = await api("POST", "/proxies", raw=raw)
        assert r.status == 400, raw[:20]
        assert r.json["error"].startswith("bad request body")
    r = await api(
        "POST", "/proxies", {"name": "x", "listen": "udp://127.0.0.1:0", "upstream": "127.0.0.1:9"}
    )
    assert r.status == 400


async def test_create_on_a_taken_port_is_500(api: Api) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = await api(
            "POST",
            "/proxies",
            {"name": "x", "listen": f"127.0.0.1:{port}", "upstream": "127.0.0.1:9"},
        )
    assert r.status == 500 and r.json["status"] == 500
    assert (await api("GET", "/proxies")).json == {}


async def test_toxics_crud(api: Api) -> None:
    await api(
        "POST", "/proxies", {"name": "db", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    )
    r = await api("POST", "/proxies/db/toxics", {"type": "latency", "attributes": {"latency": 300}})
    assert r.status == 200  # Toxiproxy's ToxicCreate answers 200, not 201
    latency = r.json
    assert latency == {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 300, "jitter": 0},
    }
    r = await api("POST", "/proxies/db/toxics", {"type": "latency", "attributes": {"latency": 1}})
    assert (r.status, r.json) == (409, _err(409, "toxic already exists"))
    r = await api("POST", "/proxies/db/toxics", {"type": "nope"})
    assert (r.status, r.json) == (400, _err(400, "invalid toxic type"))
    r = await api("POST", "/proxies/db/toxics", {"type": "latency", "stream": "sideways"})
    assert r.status == 400
    r = await api(
        "POST",
        "/proxies/db/toxics",
        {"type": "latency", "name": "l2", "attributes": {"latency": -5}},
    )
    assert r.status == 400
    r = await api("POST", "/proxies/db/toxics", {"type": "latency", "name": "l3", "toxicity": 2})
    assert r.status == 400
    r = await api("POST", "/proxies/nope/toxics", {"type": "latency"})
    assert (r.status, r.json) == (404, _err(404, "proxy not found"))

    r = await api(
        "POST",
        "/proxies/db/toxics",
        {
            "type": "bandwidth",
            "stream": "upstream",
            "name": "bw",
            "toxicity": 0.5,
            "attributes": {"rate": 100},
        },
    )
    bandwidth = r.json
    assert bandwidth == {
        "name": "bw",
        "type": "bandwidth",
        "stream": "upstream",
        "toxicity": 0.5,
        "attributes": {"rate": 100},
    }
    r = await api("GET", "/proxies/db/toxics")
    assert (r.status, r.json) == (200, [bandwidth, latency])  # upstream chain first
    assert (await api("GET", "/proxies/db")).json["toxics"] == [bandwidth, latency]
    r = await api("GET", "/proxies/db/toxics/bw")
    assert (r.status, r.json) == (200, bandwidth)
    r = await api("GET", "/proxies/db/toxics/nope")
    assert (r.status, r.json) == (404, _err(404, "toxic not found"))

    r = await api("PATCH", "/proxies/db/toxics/latency_downstream", {"attributes": {"jitter": 10}})
    assert r.status == 200
    assert r.json["attributes"] == {"latency": 300, "jitter": 10}
    r = await api(
        "POST", "/proxies/db/toxics/latency_downstream", {"toxicity": 0.25}
    )  # deprecated POST
    assert r.status == 200 and r.json["toxicity"] == 0.25
    assert r.json["attributes"] == {"latency": 300, "jitter": 10}
    r = await api("PATCH", "/proxies/db/toxics/nope", {"toxicity": 0.5})
    assert r.status == 404
    r = await api("PATCH", "/proxies/db/toxics/bw", {"attributes": {"bogus": 1}})
    assert r.status == 400

    r = await api("DELETE", "/proxies/db/toxics/bw")
    assert (r.status, r.body) == (204, b"")
    assert (await api("DELETE", "/proxies/db/toxics/bw")).status == 404
    assert [t["name"] for t in (await api("GET", "/proxies/db/toxics")).json] == [
        "latency_downstream"
    ]


async def test_disable_drops_connections_and_enable_listens_again(api: Api) -> None:
    async with trio.open_nursery() as nursery:
        echo = await _echo_server(nursery)
        r = await api(
            "POST",
            "/proxies",
            {"name": "e", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo}"},
        )
        port = _port(r.json["listen"])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"hi")
        assert await stream.receive_some(10) == b"hi"

        r = await api("POST", "/proxies/e", {"enabled": False})
        assert r.status == 200 and r.json["enabled"] is False
        assert r.json["listen"] == f"127.0.0.1:{port}"
        with contextlib.suppress(trio.BrokenResourceError):  # dropped: a reset is fine too
            assert await stream.receive_some(10) == b""
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)

        r = await api("PATCH", "/proxies/e", {"enabled": True})
        assert r.status == 200 and r.json["enabled"] is True and _port(r.json["listen"]) == port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"again")
        assert await stream.receive_some(10) == b"again"
        await stream.aclose()

        r = await api("PATCH", "/proxies/e", {"enabled": "yes"})
        assert r.status == 400
        r = await api("PATCH", "/proxies/nope", {"enabled": True})
        assert r.status == 404
        nursery.cancel_scope.cancel()


async def test_update_listen_restarts_the_proxy(api: Api) -> None:
    await api("POST", "/proxies", {"name": "m", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"})
    await api("POST", "/proxies/m/toxics", {"type": "latency"})
    r = await api("PATCH", "/proxies/m", {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:10"})
    assert r.status == 200
    assert r.json["upstream"] == "127.0.0.1:10" and r.json["enabled"] is True
    assert _port(r.json["listen"]) != 0
    assert [t["name"] for t in r.json["toxics"]] == ["latency_downstream"]  # toxics stay


async def test_toxic_applies_through_a_real_socket(api: Api) -> None:
    async with trio.open_nursery() as nursery:
        echo = await _echo_server(nursery)
        r = await api(
            "POST",
            "/proxies",
            {"name": "e", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo}"},
        )
        stream = await trio.open_tcp_stream("127.0.0.1", _port(r.json["listen"]))
        await api("POST", "/proxies/e/toxics", {"type": "latency", "attributes": {"latency": 200}})
        t0 = trio.current_time()
        await stream.send_all(b"slow")
        assert await stream.receive_some(10) == b"slow"
        assert trio.current_time() - t0 >= 0.2
        await api("DELETE", "/proxies/e/toxics/latency_downstream")
        t0 = trio.current_time()
        await stream.send_all(b"fast")
        assert await stream.receive_some(10) == b"fast"
        assert trio.current_time() - t0 < 0.15
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_reset_enables_all_and_removes_toxics(api: Api) -> None:
    await api(
        "POST",
        "/proxies",
        {"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9", "enabled": False},
    )
    await api("POST", "/proxies", {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"})
    await api("POST", "/proxies/b/toxics", {"type": "timeout"})
    assert (await api("GET", "/proxies/a")).json["enabled"] is False
    r = await api("POST", "/reset")
    assert (r.status, r.body) == (204, b"")
    proxies = (await api("GET", "/proxies")).json
    assert {n: (p["enabled"], p["toxics"]) for n, p in proxies.items()} == {
        "a": (True, []),
        "b": (True, []),
    }


async def test_populate(api: Api) -> None:
    body = [
        {"name": "one", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
        {"name": "two", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:10", "enabled": False},
    ]
    r = await api("POST", "/populate", body)
    assert r.status == 201
    assert [(p["name"], p["enabled"]) for p in r.json["proxies"]] == [("one", True), ("two", False)]
    one = r.json["proxies"][0]
    await api("POST", "/proxies/one/toxics", {"type": "latency"})

    # same listen and upstream: kept as it is (toxics too); a changed upstream: replaced
    body2 = [
        {"name": "one", "listen": one["listen"], "upstream": "127.0.0.1:9"},
        {"name": "two", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:11"},
    ]
    r = await api("POST", "/populate", body2)
    assert r.status == 201
    kept, replaced = r.json["proxies"]
    assert kept["listen"] == one["listen"] and [t["type"] for t in kept["toxics"]] == ["latency"]
    assert replaced["upstream"] == "127.0.0.1:11" and replaced["enabled"] is True

    r = await api(
        "POST",
        "/populate",
        [{"name": "ok", "listen": "127.0.0.1:0", "upstream": "a:1"}, {"name": "bad"}],
    )
    assert r.status == 400 and "at proxy 2" in r.json["error"]
    assert "ok" not in (await api("GET", "/proxies")).json  # nothing applied
    assert (await api("POST", "/populate", {"name": "x"})).status == 400
    dup = [{"name": "d", "listen": "127.0.0.1:0", "upstream": "a:1"}] * 2
    assert (await api("POST", "/populate", dup)).status == 400


async def test_metrics_endpoint(api: Api) -> None:
    await api(
        "POST", "/proxies", {"name": "vpn", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    )
    await api("POST", "/proxies/vpn/toxics", {"type": "latency", "name": "slow"})
    r = await api("GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    assert 'loadgen_faultproxy_toxics_active{proxy="vpn",toxic="latency"} 1.0' in text
    assert 'loadgen_faultproxy_bytes_total{direction="upstream",proxy="vpn"} 0.0' in text
    assert "127.0.0.1" not in text  # never an address in a label
    await api("DELETE", "/proxies/vpn/toxics/slow")
    text = (await api("GET", "/metrics")).body.decode()
    assert 'loadgen_faultproxy_toxics_active{proxy="vpn",toxic="latency"} 0.0' in text


async def test_routing_errors(api: Api) -> None:
    r = await api("GET", "/nope")
    assert (r.status, r.json) == (404, _err(404, "not found"))
    assert (await api("GET", "/proxies/a/toxics/b/c")).status == 404
    r = await api("DELETE", "/proxies")
    assert (r.status, r.json) == (405, _err(405, "method not allowed"))
    assert (await api("PUT", "/proxies/x")).status == 405
    assert (await api("GET", "/reset")).status == 405
    r = await api("GET", "/proxies", headers={"User-Agent": "Mozilla/5.0"})
    assert r.status == 403  # Toxiproxy refuses browsers


async def _raw(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    out = b""
    with trio.move_on_after(5):
        try:
            while chunk := await stream.receive_some(65536):
                out += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return out


async def test_hostile_input_never_kills_the_server(api: Api) -> None:
    big = b"POST /proxies HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
    assert (await _raw(api.port, big)).startswith(b"HTTP/1.1 413 ")
    chunked = b"POST /proxies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += (b"10000\r\n" + b"a" * 0x10000 + b"\r\n") * 17
    assert (await _raw(api.port, chunked)).startswith(b"HTTP/1.1 413 ")
    assert (await _raw(api.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert (await _raw(api.port, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 20000 + b"\r\n")).startswith(
        b"HTTP/1.1 4"
    )
    assert (await api("GET", "/version")).status == 200  # still serving


async def test_keep_alive(api: Api) -> None:
    def two_requests(port: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        statuses = []
        for _ in range(2):
            conn.request("GET", "/proxies")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()
        return statuses

    assert await trio.to_thread.run_sync(two_requests, api.port) == [200, 200]


async def test_udp_proxies_are_created_by_the_registry(api: Api) -> None:
    r = await api(
        "POST",
        "/proxies",
        {"name": "dtls", "listen": "udp://127.0.0.1:0", "upstream": "udp://127.0.0.1:9"},
    )
    assert r.status == 201, r.body
    assert r.json["listen"].startswith("udp://127.0.0.1:") and _port(r.json["listen"]) != 0
    r = await api("POST", "/proxies/dtls/toxics", {"type": "latency", "stream": "upstream"})
    assert r.status == 200
    r = await api("PATCH", "/proxies/dtls", {"enabled": False})
    assert r.json["enabled"] is False
    r = await api("PATCH", "/proxies/dtls", {"enabled": True})
    assert r.json["enabled"] is True and [t["type"] for t in r.json["toxics"]] == ["latency"]
