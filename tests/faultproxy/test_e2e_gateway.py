"""End to end: ``loadgen faultproxy`` in front of the reference gateway (issue 7, Done when).

The gateway (``loadgen gateway``) and the fault proxy (``loadgen faultproxy``) run as
child processes on 127.0.0.1; the proxy is driven only by toxiproxy-python 0.1.1
(blocking, its API address class-wide).  A TCP proxy and a ``udp://`` proxy sit in
front of the gateway's one port (TCP and UDP), and ``loadgen connect`` runs as a user
runs it, pointed at the TCP proxy by its URL and at the UDP proxy by
``--dtls-host/--dtls-port`` (the gateway advertises its own X-DTLS-Port).

The Done when, each a test: a UDP ``blackhole`` upstream gives ``"ok": true``,
``"channel": "cstp"``, ``dtls.fallback == "timeout"`` (with a short schedule, and once
with AnyConnect's 31 s one), and removing it brings DTLS back; an upstream UDP
``hello_delay`` of 2000 ms gives ``phases.dtls >= 2`` on DTLS; a TCP ``latency`` of
300 ms raises ``phases.tls`` by 300 ms.  ``/metrics`` on the API port shows the fault
windows (``loadgen_faultproxy_toxics_active``) and what the toxics did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from toxiproxy import Proxy, Toxiproxy
from toxiproxy.api import APIConsumer

from loadgen.faultproxy.embedded import start_faultproxy_process, stop_faultproxy_process
from tests.helpers.gateway import GatewayProcess, gateway_process

__all__ = [
    "FaultProxy",
    "Metrics",
    "ProxyPair",
    "background_connect",
    "connect_json",
    "finish_connect",
    "proxy_port",
    "running_faultproxy",
    "scrape",
]

TLS_PROXY = "vpn_tls"
DTLS_PROXY = "vpn_dtls"
#: ClientHello at 0 and 0.5 s, DTLS given up at 1.5 s: the fallback in seconds, not 31
SHORT_SCHEDULE = "0,0.5,1.5"
DEFAULT_SCHEDULE_DONE_S = 31.0
CONNECT_TIMEOUT_S = 90.0


# -- shared helpers (also used by tests/interop/test_ocserv_faultproxy.py) -------------


@dataclass(frozen=True, kw_only=True)
class FaultProxy:
    """A running ``loadgen faultproxy`` child and the toxiproxy-python client aimed at it."""

    api_url: str
    client: Toxiproxy


@dataclass(frozen=True, kw_only=True)
class ProxyPair:
    tls: Proxy
    dtls: Proxy

    @property
    def tls_port(self) -> int:
        return proxy_port(self.tls)

    @property
    def dtls_port(self) -> int:
        return proxy_port(self.dtls)


def proxy_port(proxy: Proxy) -> int:
    """The real port of a proxy created on port 0 (``127.0.0.1:N`` or ``udp://127.0.0.1:N``)."""
    port = int(str(proxy.listen).rsplit(":", 1)[1])
    assert port != 0
    return port


def running_faultproxy() -> Iterator[FaultProxy]:
    """Start the proxy as a separate process; aim toxiproxy-python's class-wide address at it."""
    proc, url = start_faultproxy_process(extra_args=["--seed", "7"])
    saved = (APIConsumer.host, APIConsumer.port)
    try:
        parts = urlsplit(url)
        client = Toxiproxy()
        client.update_api_consumer(parts.hostname, parts.port)
        assert client.running() is True
        yield FaultProxy(api_url=url, client=client)
    finally:
        APIConsumer.host, APIConsumer.port = saved
        stop_faultproxy_process(proc)


def create_pair(client: Toxiproxy, tcp_upstream: str, udp_upstream: str) -> ProxyPair:
    client.destroy_all()
    tls = client.create(upstream=tcp_upstream, name=TLS_PROXY)
    dtls = client.create(
        upstream=f"udp://{udp_upstream}", name=DTLS_PROXY, listen="udp://127.0.0.1:0"
    )
    assert str(dtls.listen).startswith("udp://127.0.0.1:")
    assert set(client.proxies()) == {TLS_PROXY, DTLS_PROXY}
    return ProxyPair(tls=tls, dtls=dtls)


Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(api_url: str) -> Metrics:
    """``GET /metrics`` on the API port, as samples keyed by name and labels."""
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value; KeyError (with what exists) when the series is missing."""
    key = (name, frozenset(labels.items()))
    if key not in metrics:
        have = sorted(str(dict(lbl)) for n, lbl in metrics if n == name)
        raise KeyError(f"{name}{labels} not exposed; series: {have}")
    return metrics[key]


def connect_argv(url: str, ca_path: Path, dtls_port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loadgen",
        "connect",
        url,
        "--user",
        "alice",
        "--password-stdin",
        "--cafile",
        str(ca_path),
        "--json",
        "--dtls-host",
        "127.0.0.1",
        "--dtls-port",
        str(dtls_port),
        *args,
    ]


def connect_json(
    url: str,
    ca_path: Path,
    dtls_port: int,
    *args: str,
    password: str = "test",
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> tuple[int, dict[str, Any], float]:
    """``loadgen connect ... --json`` as a user runs it: (exit status, report, seconds)."""
    started = time.monotonic()
    proc = subprocess.run(
        connect_argv(url, ca_path, dtls_port, *args),
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.stdout, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report, elapsed


@contextmanager
def background_connect(
    url: str, ca_path: Path, dtls_port: int, *args: str, password: str = "test"
) -> Iterator[subprocess.Popen[str]]:
    """The same in the background (to look at the proxy while the session runs);
    killed on the way out if still running."""
    read_end, write_end = os.pipe()
    os.write(write_end, (password + "\n").encode())  # far below the pipe's capacity
    os.close(write_end)
    try:
        proc = subprocess.Popen(
            connect_argv(url, ca_path, dtls_port, *args),
            stdin=read_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(read_end)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def finish_connect(
    proc: subprocess.Popen[str], timeout_s: float = CONNECT_TIMEOUT_S
) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout_s)
    assert out, err
    report: dict[str, Any] = json.loads(out)
    return proc.returncode, report


def assert_dtls_session(code: int, report: dict[str, Any], echo: int = 3) -> None:
    assert code == 0, report
    assert report["ok"] is True
    assert report["error"] is None
    assert report["channel"] == "dtls"
    assert report["dtls"]["fallback"] is None
    assert report["phases"]["dtls"] > 0
    assert report["echo"]["received"] == echo
    assert report["echo"]["channels"].get("dtls", 0) >= 1


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # no user options: the reference gateway accepts any user and password
    with gateway_process(tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


@pytest.fixture(scope="module")
def faultproxy() -> Iterator[FaultProxy]:
    yield from running_faultproxy()


@pytest.fixture
def pair(faultproxy: FaultProxy, gateway: GatewayProcess) -> Iterator[ProxyPair]:
    # the reference gateway listens for TCP and UDP on the same port
    upstream = f"127.0.0.1:{gateway.port}"
    yield create_pair(faultproxy.client, upstream, upstream)
    faultproxy.client.destroy_all()


def _through(gateway: GatewayProcess, pair: ProxyPair) -> str:
    url = f"https://127.0.0.1:{pair.tls_port}/"
    assert gateway.port not in (pair.tls_port, pair.dtls_port)
    return url


# -- the tests -------------------------------------------------------------------------


def test_baseline_through_both_proxies_is_dtls(
    gateway: GatewayProcess, pair: ProxyPair, faultproxy: FaultProxy
) -> None:
    code, report, _ = connect_json(_through(gateway, pair), gateway.ca_path, pair.dtls_port)
    assert_dtls_session(code, report)
    assert report["echo"]["channels"] == {"dtls": 3}
    # both channels really went through the proxies (not straight to X-DTLS-Port)
    m = scrape(faultproxy.api_url)
    for direction in ("upstream", "downstream"):
        assert sample(m, "loadgen_faultproxy_bytes_total", proxy=TLS_PROXY, direction=direction) > 0
        assert (
            sample(m, "loadgen_faultproxy_datagrams_total", proxy=DTLS_PROXY, direction=direction)
            >= 3  # handshake and echo datagrams
        )
    # the profile download opens a second TLS connection: two TCP connections, one UDP flow
    assert sample(m, "loadgen_faultproxy_connections_total", proxy=TLS_PROXY) == 2
    assert sample(m, "loadgen_faultproxy_connections_total", proxy=DTLS_PROXY) == 1


def test_udp_blackhole_falls_back_to_cstp_then_dtls_returns(
    gateway: GatewayProcess, pair: ProxyPair, faultproxy: FaultProxy
) -> None:
    url = _through(gateway, pair)
    labels = {"proxy": DTLS_PROXY, "toxic": "blackhole"}
    pair.dtls.add_toxic(type="blackhole", stream="upstream")
    assert list(pair.dtls.toxics()) == ["blackhole_upstream"]
    assert sample(scrape(faultproxy.api_url), "loadgen_faultproxy_toxics_active", **labels) == 1

    with background_connect(
        url, gateway.ca_path, pair.dtls_port, "--dtls-schedule", SHORT_SCHEDULE, "--echo", "3"
    ) as proc:
        # the fault window, as a dashboard sees it while the session runs
        time.sleep(0.5)
        assert proc.poll() is None
        during = scrape(faultproxy.api_url)
        assert sample(during, "loadgen_faultproxy_toxics_active", **labels) == 1
        code, report = finish_connect(proc)

    assert code == 0, report
    assert report["ok"] is True
    assert report["error"] is None
    assert report["channel"] == "cstp"
    assert report["dtls"]["fallback"] == "timeout"
    assert report["dtls"]["retransmits"] == 1  # hellos at 0 and 0.5 s, given up at 1.5 s
    assert "dtls" not in report["phases"]
    assert report["echo"]["received"] == 3
    assert report["echo"]["channels"] == {"cstp": 3}

    m = scrape(faultproxy.api_url)
    hellos = report["dtls"]["retransmits"] + 1
    assert (
        sample(
            m,
            "loadgen_faultproxy_dropped_datagrams_total",
            proxy=DTLS_PROXY,
            direction="upstream",
            toxic="blackhole",
        )
        >= hellos
    )
    assert (
        sample(m, "loadgen_faultproxy_datagrams_total", proxy=DTLS_PROXY, direction="upstream") == 0
    )
    assert (
        sample(
            m,
            "loadgen_faultproxy_dropped_datagrams_total",
            proxy=DTLS_PROXY,
            direction="downstream",
            toxic="blackhole",
        )
        == 0
    )

    # the toxic goes: the window closes, and the next session is on DTLS again
    assert pair.dtls.destroy_toxic("blackhole_upstream") is True
    assert pair.dtls.toxics() == {}
    assert sample(scrape(faultproxy.api_url), "loadgen_faultproxy_toxics_active", **labels) == 0
    code, report, _ = connect_json(url, gateway.ca_path, pair.dtls_port)
    assert_dtls_session(code, report)


def test_udp_blackhole_with_the_anyconnect_schedule(
    gateway: GatewayProcess, pair: ProxyPair
) -> None:
    """The Done-when literally: the default schedule, DTLS given up at 31 s."""
    url = _through(gateway, pair)
    pair.dtls.add_toxic(type="blackhole", stream="upstream")
    code, report, elapsed = connect_json(url, gateway.ca_path, pair.dtls_port, "--echo", "1")
    assert code == 0, report
    assert report["ok"] is True
    assert report["channel"] == "cstp"
    assert report["dtls"]["fallback"] == "timeout"
    assert report["dtls"]["retransmits"] == 4  # 0, 1, 3, 7, 15 s; given up at 31 s
    assert DEFAULT_SCHEDULE_DONE_S <= elapsed < DEFAULT_SCHEDULE_DONE_S + 10
    assert report["echo"]["channels"] == {"cstp": 1}
    pair.dtls.destroy_toxic("blackhole_upstream")
    code, report, _ = connect_json(url, gateway.ca_path, pair.dtls_port, "--echo", "1")
    assert_dtls_session(code, report, echo=1)


def test_udp_hello_delay_slows_dtls_but_ends_on_dtls(
    gateway: GatewayProcess, pair: ProxyPair, faultproxy: FaultProxy
) -> None:
    url = _through(gateway, pair)
    code, report, _ = connect_json(url, gateway.ca_path, pair.dtls_port, "--echo", "1")
    assert_dtls_session(code, report, echo=1)
    baseline_dtls = report["phases"]["dtls"]
    assert baseline_dtls < 1.0

    pair.dtls.add_toxic(type="hello_delay", stream="upstream", attributes={"delay": 2000})
    toxic = pair.dtls.toxics()["hello_delay_upstream"]
    assert (toxic.type, toxic.stream, toxic.attributes) == (
        "hello_delay",
        "upstream",
        {"delay": 2000},
    )
    # The toxic holds every handshake datagram, the client's last flight (CCS, Finished)
    # too: the gateway ends its handshake 2 s after the client does and keeps the
    # data records that came first until then.  An echo timeout above 2 s waits for
    # them: nothing is lost, only late.
    code, report, _ = connect_json(
        url, gateway.ca_path, pair.dtls_port, "--echo", "3", "--echo-timeout", "5"
    )
    assert_dtls_session(code, report)
    assert report["echo"]["channels"] == {"dtls": 3}
    assert report["phases"]["dtls"] >= 2.0
    assert report["phases"]["dtls"] < 2.0 + 5.0  # not a fallback and re-attempt

    m = scrape(faultproxy.api_url)
    labels = {"proxy": DTLS_PROXY, "direction": "upstream", "toxic": "hello_delay"}
    assert sample(m, "loadgen_faultproxy_delayed_total", **labels) >= 1
    assert sample(m, "loadgen_faultproxy_delay_seconds_total", **labels) >= 2.0
    assert sample(m, "loadgen_faultproxy_dropped_datagrams_total", **labels) == 0
    assert sample(m, "loadgen_faultproxy_toxics_active", proxy=DTLS_PROXY, toxic="hello_delay") == 1


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_tcp_latency_raises_the_tls_phase(
    gateway: GatewayProcess, pair: ProxyPair, faultproxy: FaultProxy, stream: str
) -> None:
    """Either stream adds the latency once to the TLS handshake: TLS 1.3's client is done
    when the server's flight arrives, which waits 300 ms on the way down (downstream,
    Toxiproxy's default) or leaves 300 ms late because the ClientHello did (upstream)."""
    url = _through(gateway, pair)
    args: Sequence[str] = ("--echo", "1", "--download", "off", "--no-dtls")
    code, report, _ = connect_json(url, gateway.ca_path, pair.dtls_port, *args)
    assert code == 0, report
    baseline_tls = report["phases"]["tls"]

    pair.tls.add_toxic(type="latency", stream=stream, attributes={"latency": 300})
    assert list(pair.tls.toxics()) == [f"latency_{stream}"]
    code, report, _ = connect_json(url, gateway.ca_path, pair.dtls_port, *args)
    assert code == 0, report
    assert report["ok"] is True
    toxic_tls = report["phases"]["tls"]
    assert toxic_tls >= baseline_tls + 0.3
    m = scrape(faultproxy.api_url)
    assert (
        sample(
            m,
            "loadgen_faultproxy_delayed_total",
            proxy=TLS_PROXY,
            direction=stream,
            toxic="latency",
        )
        >= 1
    )
    assert sample(m, "loadgen_faultproxy_toxics_active", proxy=TLS_PROXY, toxic="latency") == 1

    # the toxic goes: the handshake is fast again.  Compared with the run under the
    # toxic rather than with a fixed bound, so a loaded machine cannot fail it: the
    # 300 ms are gone, less a margin for scheduling noise.
    assert pair.tls.destroy_toxic(f"latency_{stream}") is True
    code, report, _ = connect_json(url, gateway.ca_path, pair.dtls_port, *args)
    assert code == 0, report
    assert report["phases"]["tls"] <= toxic_tls - 0.25, (report["phases"], toxic_tls)
