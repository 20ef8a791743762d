"""toxiproxy-python 0.1.1, unchanged, against ``loadgen faultproxy`` in its own process.

The client is blocking and keeps its API address class-wide (``APIConsumer.host`` and
``.port``), so the proxy runs as a child process (the blocking embedded helper) and
the tests point the class at it through the client's own ``update_api_consumer``.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from toxiproxy import Proxy, Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from loadgen.faultproxy.embedded import start_faultproxy_process, stop_faultproxy_process


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[Toxiproxy]:
    proc, url = start_faultproxy_process(extra_args=["--seed", "1"])
    saved = (APIConsumer.host, APIConsumer.port)
    try:
        parts = urlsplit(url)
        toxiproxy = Toxiproxy()
        toxiproxy.update_api_consumer(parts.hostname, parts.port)
        yield toxiproxy
    finally:
        APIConsumer.host, APIConsumer.port = saved
        stop_faultproxy_process(proc)


@pytest.fixture
def clean(server: Toxiproxy) -> Iterator[Toxiproxy]:
    server.destroy_all()
    yield server
    server.destroy_all()


def _round_trip_s(port: int, payload: bytes = b"ping") -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        t0 = time.monotonic()
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            got += chunk
        assert got == payload
        return time.monotonic() - t0


def _port(proxy: Proxy) -> int:
    return int(proxy.listen.rsplit(":", 1)[1])


def test_running_and_version(server: Toxiproxy) -> None:
    assert server.running() is True
    assert b"version" in server.version()


def test_create_list_get_and_destroy(clean: Toxiproxy, echo_port: int) -> None:
    proxy = clean.create(upstream=f"127.0.0.1:{echo_port}", name="echo")
    assert proxy.name == "echo" and proxy.enabled is True
    assert proxy.listen.startswith("127.0.0.1:") and _port(proxy) != 0  # listen 0: real port shown
    assert set(clean.proxies()) == {"echo"}
    assert clean.get_proxy("echo").listen == proxy.listen
    with pytest.raises(ProxyExists):
        clean.create(upstream=f"127.0.0.1:{echo_port}", name="echo")
    assert clean.destroy(proxy) is True
    assert clean.get_proxy("echo") is None
    assert clean.proxies() == {}


def test_latency_toxic_delays_a_real_echo(clean: Toxiproxy, echo_port: int) -> None:
    proxy = clean.create(upstream=f"127.0.0.1:{echo_port}", name="echo")
    port = _port(proxy)
    assert _round_trip_s(port) < 1.0  # no toxic: quick (bound loose for a busy machine)
    proxy.add_toxic(type="latency", attributes={"latency": 300})
    toxics = proxy.toxics()
    assert list(toxics) == ["latency_downstream"]
    toxic = toxics["latency_downstream"]
    assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1.0)
    assert toxic.attributes == {"latency": 300, "jitter": 0}
    assert _round_trip_s(port) >= 0.3
    proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 200})
    assert _round_trip_s(port) >= 0.5
    assert proxy.destroy_toxic("latency_downstream") is True
    assert proxy.destroy_toxic("latency_upstream") is True
    assert proxy.toxics() == {}
    assert _round_trip_s(port) < 0.3  # the 300 ms toxic alone would exceed this


def test_down_drops_and_restores(clean: Toxiproxy, echo_port: int) -> None:
    proxy = clean.create(upstream=f"127.0.0.1:{echo_port}", name="echo")
    port = _port(proxy)
    with proxy.down():
        assert clean.get_proxy("echo").enabled is False
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert clean.get_proxy("echo").enabled is True
    assert _round_trip_s(port) < 1.0


def test_errors_map_to_the_clients_exceptions(clean: Toxiproxy, echo_port: int) -> None:
    proxy = clean.create(upstream=f"127.0.0.1:{echo_port}", name="echo")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="no_such_toxic")
    proxy.add_toxic(type="timeout", attributes={"timeout": 0})
    with pytest.raises(ProxyExists):  # 409 on a duplicate toxic
        proxy.add_toxic(type="timeout")
    ghost = Proxy(name="ghost", upstream="x:1", enabled=True, listen="x:2")
    with pytest.raises(NotFound):
        ghost.toxics()
    with pytest.raises(NotFound):
        ghost.destroy()


def test_reset_and_populate(clean: Toxiproxy, echo_port: int) -> None:
    created = clean.populate(
        [
            {"name": "a", "upstream": f"127.0.0.1:{echo_port}", "listen": "127.0.0.1:0"},
            {"name": "b", "upstream": f"127.0.0.1:{echo_port}", "listen": "127.0.0.1:0"},
        ]
    )
    assert sorted(p.name for p in created) == ["a", "b"]
    a = clean.get_proxy("a")
    a.add_toxic(type="bandwidth", attributes={"rate": 1})
    a.disable()
    assert clean.reset() is True
    a = clean.get_proxy("a")
    assert a.enabled is True and a.toxics() == {}
    assert _round_trip_s(_port(a)) < 1.0
