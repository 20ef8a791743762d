"""``loadgen faultproxy`` in front of the real ocserv 1.1.6, inside the test's namespace.

ocserv listens on 127.0.0.1 of the private netns (TCP and UDP); the fault proxy runs
as a separate process there, driven only by toxiproxy-python, with a TCP proxy and a
``udp://`` proxy on other ports of 127.0.0.1 forwarding to ocserv's two ports.
``loadgen connect`` goes through both (URL to the TCP proxy, ``--dtls-host/--dtls-port``
to the UDP one; ocserv's certificate covers 127.0.0.1, so no ``--servername``): it
gets DTLS, and with a UDP blackhole upstream it falls back to CSTP on the timeout and
echoes over CSTP; without the toxic DTLS is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from loadgen.lab.ocserv import OcservConfig, OcservServer
from tests.faultproxy.test_e2e_gateway import (
    DTLS_PROXY,
    SHORT_SCHEDULE,
    TLS_PROXY,
    FaultProxy,
    ProxyPair,
    assert_dtls_session,
    create_pair,
    running_faultproxy,
    sample,
    scrape,
)
from tests.faultproxy.test_e2e_gateway import connect_json as _connect_json
from tests.interop.test_ocserv_connect import _require_ocserv

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def ocserv() -> Iterator[OcservServer]:
    _require_ocserv()
    # distinct tunnel IPs: the downloader's extra ocserv session keeps exact echo counts
    with OcservServer(OcservConfig(predictable_ips=False)) as server:
        yield server


@pytest.fixture(scope="module")
def faultproxy() -> Iterator[FaultProxy]:
    yield from running_faultproxy()


@pytest.fixture
def pair(faultproxy: FaultProxy, ocserv: OcservServer) -> Iterator[ProxyPair]:
    assert ocserv.udp_port is not None
    yield create_pair(
        faultproxy.client, f"127.0.0.1:{ocserv.tcp_port}", f"127.0.0.1:{ocserv.udp_port}"
    )
    faultproxy.client.destroy_all()


def connect(ocserv: OcservServer, pair: ProxyPair, *args: str) -> tuple[int, dict[str, Any]]:
    assert pair.tls_port != ocserv.tcp_port and pair.dtls_port != ocserv.udp_port
    code, report, _ = _connect_json(
        f"https://127.0.0.1:{pair.tls_port}/",
        ocserv.ca_path,
        pair.dtls_port,
        "--download",
        "off",
        *args,
    )
    return code, report


def test_dtls_through_the_proxies(
    ocserv: OcservServer, pair: ProxyPair, faultproxy: FaultProxy
) -> None:
    code, report = connect(ocserv, pair, "--echo", "3")
    assert_dtls_session(code, report)
    assert report["echo"]["channels"] == {"dtls": 3}
    m = scrape(faultproxy.api_url)
    for direction in ("upstream", "downstream"):
        assert sample(m, "loadgen_faultproxy_bytes_total", proxy=TLS_PROXY, direction=direction) > 0
        assert (
            sample(m, "loadgen_faultproxy_datagrams_total", proxy=DTLS_PROXY, direction=direction)
            >= 3
        )
    assert sample(m, "loadgen_faultproxy_connections_total", proxy=DTLS_PROXY) == 1


def test_udp_blackhole_falls_back_to_cstp_and_echo_works(
    ocserv: OcservServer, pair: ProxyPair, faultproxy: FaultProxy
) -> None:
    labels = {"proxy": DTLS_PROXY, "toxic": "blackhole"}
    pair.dtls.add_toxic(type="blackhole", stream="upstream")
    assert sample(scrape(faultproxy.api_url), "loadgen_faultproxy_toxics_active", **labels) == 1

    code, report = connect(ocserv, pair, "--dtls-schedule", SHORT_SCHEDULE, "--echo", "3")
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
    dropped = sample(
        m,
        "loadgen_faultproxy_dropped_datagrams_total",
        proxy=DTLS_PROXY,
        direction="upstream",
        toxic="blackhole",
    )
    assert dropped >= report["dtls"]["retransmits"] + 1
    # ocserv saw nothing of it
    assert (
        sample(m, "loadgen_faultproxy_datagrams_total", proxy=DTLS_PROXY, direction="upstream") == 0
    )

    assert pair.dtls.destroy_toxic("blackhole_upstream") is True
    assert sample(scrape(faultproxy.api_url), "loadgen_faultproxy_toxics_active", **labels) == 0
    code, report = connect(ocserv, pair, "--echo", "3")
    assert_dtls_session(code, report)
