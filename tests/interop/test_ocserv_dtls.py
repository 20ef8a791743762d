"""Phase 6 against the real ocserv 1.1.6: every legacy cipher through each
header, the fallback to CSTP with UDP dropped (iptables inside the test's own
namespace), recovery by re-attempt, and DTLS declared dead by DPD."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from loadgen.engine.dtls import DtlsOptions, DtlsState
from loadgen.engine.session import SessionConfig, open_session
from loadgen.engine.tls import TlsOptions, build_client_context
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import FallbackReason, Phase
from loadgen.lab.ocserv import OcservConfig, OcservServer
from loadgen.proto.cstp import DisconnectReason
from tests.interop.test_ocserv_connect import _require_ocserv, loadgen_connect

pytestmark = pytest.mark.interop

SCHEDULE_DONE_S = 31.0


@pytest.fixture(scope="module")
def ocserv() -> Iterator[OcservServer]:
    _require_ocserv()
    with OcservServer(OcservConfig(predictable_ips=False)) as server:
        yield server


@contextmanager
def udp_dropped(port: int) -> Iterator[None]:
    """Drop UDP to ``port`` in this (private) namespace, both ways of the DTLS flow.

    Dropped on INPUT only, as a network would: an OUTPUT drop makes the
    sender's send() fail with EPERM, and ocserv 1.1.6 ends the whole session
    on such a DTLS push error ("Error in the push function").
    """
    rules = [
        ["INPUT", "-p", "udp", "--dport", str(port), "-j", "DROP"],
        ["INPUT", "-p", "udp", "--sport", str(port), "-j", "DROP"],
    ]
    for rule in rules:
        subprocess.run(["iptables", "-I", *rule], check=True, timeout=10)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=False, timeout=10)


@pytest.mark.parametrize(
    ("option", "cipher", "header", "version", "mtu"),
    [
        ("--dtls-ciphers", "AES128-SHA", "X-DTLS-CipherSuite", "DTLS0.9", 1406),
        ("--dtls-ciphers", "AES256-SHA", "X-DTLS-CipherSuite", "DTLS0.9", 1406),
        ("--dtls-ciphers", "OC-DTLS1_2-AES128-GCM", "X-DTLS-CipherSuite", "DTLS1.2", 1434),
        ("--dtls-ciphers", "OC-DTLS1_2-AES256-GCM", "X-DTLS-CipherSuite", "DTLS1.2", 1434),
        ("--dtls12-ciphers", "AES128-GCM-SHA256", "X-DTLS12-CipherSuite", "DTLS1.2", 1434),
        ("--dtls12-ciphers", "AES256-GCM-SHA384", "X-DTLS12-CipherSuite", "DTLS1.2", 1434),
    ],
)
def test_each_cipher_through_each_header(
    ocserv: OcservServer, option: str, cipher: str, header: str, version: str, mtu: int
) -> None:
    mark = len(ocserv.log_text())
    code, report = loadgen_connect(
        ocserv, "--cafile", str(ocserv.ca_path), option, cipher, "--echo", "3", "--download", "off"
    )
    assert code == 0, report
    assert report["channel"] == "dtls"
    assert report["dtls"]["cipher"] == cipher
    assert report["dtls"]["header"] == header
    assert report["dtls"]["version"] == version
    assert report["dtls"]["fallback"] is None
    assert report["phases"]["dtls"] > 0
    assert report["tunnel"]["mtu"] == mtu  # X-DTLS-MTU, as applied on DTLS
    assert report["echo"]["received"] == 3
    assert report["echo"]["channels"] == {"dtls": 3}
    assert report["dpd_rtt"]["dtls"] is not None
    log = ocserv.log_text()[mark:]
    assert "setting up legacy DTLS (resumption) connection" in log or "DTLS" in log


def test_default_offer_gets_the_dtls12_answer(ocserv: OcservServer) -> None:
    code, report = loadgen_connect(ocserv, "--cafile", str(ocserv.ca_path), "--echo", "1")
    assert code == 0, report
    # ocserv 1.1.6: a match in X-DTLS12-CipherSuite wins (protocol.md §6)
    assert report["dtls"]["header"] == "X-DTLS12-CipherSuite"
    assert report["dtls"]["cipher"] == "AES256-GCM-SHA384"
    assert report["channel"] == "dtls"


def test_udp_dropped_falls_back_after_the_schedule(ocserv: OcservServer) -> None:
    assert ocserv.udp_port is not None
    with udp_dropped(ocserv.udp_port):
        started = time.monotonic()
        code, report = loadgen_connect(
            ocserv, "--cafile", str(ocserv.ca_path), "--echo", "3", "--download", "off"
        )
        elapsed = time.monotonic() - started
    assert code == 0, report
    assert report["ok"] is True
    assert report["channel"] == "cstp"
    assert report["dtls"]["fallback"] == "timeout"
    # ClientHello at 0, 1, 3, 7, 15 s: four retransmits, given up at 31 s
    assert report["dtls"]["retransmits"] == 4
    assert SCHEDULE_DONE_S <= elapsed < SCHEDULE_DONE_S + 15
    assert "dtls" not in report["phases"]
    assert report["echo"]["received"] == 3
    assert report["echo"]["channels"] == {"cstp": 3}
    assert report["tunnel"]["mtu"] == 1434  # X-CSTP-MTU after the fallback


def _config(server: OcservServer, dtls: DtlsOptions) -> SessionConfig:
    return SessionConfig(
        url=parse_gateway_url(server.url),
        username="alice",
        password="test",
        tls=TlsOptions(cafile=str(server.ca_path)),
        dtls=dtls,
        timeout_s=20,
    )


async def test_reattempt_recovers_when_udp_returns(ocserv: OcservServer) -> None:
    assert ocserv.udp_port is not None
    cfg = _config(ocserv, DtlsOptions(schedule_s=(0, 0.5, 1.0), reattempt_s=1.0))
    async with open_session(cfg, build_client_context(cfg.tls)) as session:
        with udp_dropped(ocserv.udp_port):
            await session.connect()
            await session.wait_dtls()
            tunnel = session.tunnel
            assert tunnel is not None and tunnel.dtls is not None
            assert tunnel.channel == "cstp"
            assert tunnel.dtls.report.fallback is FallbackReason.TIMEOUT
            echo = await tunnel.echo(
                session.echo_target(None), count=2, interval_s=0.05, timeout_s=2
            )
            assert echo.channels == {"cstp": 2} and echo.received == 2
        # UDP is back: the periodic re-attempt brings DTLS up
        with trio.fail_after(10):
            while tunnel.dtls.state is not DtlsState.UP:
                await trio.sleep(0.05)
        assert tunnel.dtls.report.attempts >= 2
        echo = await tunnel.echo(session.echo_target(None), count=3, interval_s=0.05, timeout_s=2)
        assert echo.channels == {"dtls": 3} and echo.received == 3
        await session.disconnect(DisconnectReason.USER)


async def test_dead_dtls_moves_traffic_to_cstp() -> None:
    _require_ocserv()
    with OcservServer(OcservConfig(predictable_ips=False, dpd_s=2)) as server:
        assert server.udp_port is not None
        cfg = _config(server, DtlsOptions(reattempt_s=0))
        async with open_session(cfg, build_client_context(cfg.tls)) as session:
            await session.connect()
            await session.wait_dtls()
            tunnel = session.tunnel
            assert tunnel is not None and tunnel.dtls is not None
            assert tunnel.channel == "dtls"
            assert Phase.DTLS in session.phases
            with udp_dropped(server.udp_port):
                # client DPD (X-DTLS-DPD 2 s): dead after 2 x DPD of silence
                with trio.fail_after(15):
                    while tunnel.dtls.state is not DtlsState.DOWN:
                        await trio.sleep(0.1)
                assert tunnel.dtls.report.fallback is FallbackReason.DPD
                assert tunnel.channel == "cstp"
                echo = await tunnel.echo(
                    session.echo_target(None), count=3, interval_s=0.1, timeout_s=3
                )
            assert echo.channels == {"cstp": 3}
            assert echo.received == 3
            await session.disconnect(DisconnectReason.USER)


async def test_no_packet_lost_in_the_switch_to_dtls(ocserv: OcservServer) -> None:
    cfg = _config(ocserv, DtlsOptions())
    async with open_session(cfg, build_client_context(cfg.tls)) as session:
        await session.connect()
        tunnel = session.tunnel
        assert tunnel is not None
        # echo starts at once, on CSTP, and goes on while DTLS comes up
        echo = await tunnel.echo(session.echo_target(None), count=30, interval_s=0.005, timeout_s=3)
        assert tunnel.channel == "dtls"
        assert echo.channels.get("cstp", 0) >= 1
        assert echo.channels.get("dtls", 0) >= 1
        assert echo.received == echo.sent == 30
        await session.disconnect(DisconnectReason.USER)
