"""Phases 1 to 5 against the real ocserv 1.1.6, inside the test's private netns.

The ``loadgen connect`` command is run as a user would run it (a subprocess
with the password on stdin); the cookie rules use the engine API directly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from loadgen.engine.session import SessionConfig, open_session
from loadgen.engine.tls import TlsOptions, build_client_context
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.lab.ocserv import OcservConfig, OcservServer
from loadgen.proto.cstp import DisconnectReason

pytestmark = pytest.mark.interop

FIVE_PHASES = {"tls", "group_select", "auth", "download", "cstp_connect"}


def _require_ocserv() -> None:
    for tool in ("ocserv", "ocpasswd", "occtl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install --test)")


@pytest.fixture(scope="module")
def ocserv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OcservServer]:
    _require_ocserv()
    config = OcservConfig(
        groups=["group1", "group2[Group Two]"],
        profile_xml="<?xml version='1.0'?><AnyConnectProfile><ServerList/></AnyConnectProfile>\n",
        udp_port=None,
        cookie_timeout_s=120,
        # Exact echo counts right after CONNECT need distinct IPs for the
        # downloader's extra ocserv session (see OcservConfig.predictable_ips).
        predictable_ips=False,
    )
    with OcservServer(config) as server:
        yield server


def loadgen_connect(
    server: OcservServer, *args: str, password: str = "test", user: str = "alice"
) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadgen",
            "connect",
            server.url,
            "--user",
            user,
            "--password-stdin",
            "--json",
            *args,
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report


def test_full_connect_non_default_group_by_alias(ocserv: OcservServer) -> None:
    code, report = loadgen_connect(
        ocserv, "--group", "Group Two", "--cafile", str(ocserv.ca_path), "--no-dtls", "--echo", "5"
    )
    assert code == 0, report
    assert report["ok"] is True
    assert report["error"] is None
    assert set(report["phases"]) >= FIVE_PHASES
    assert all(report["phases"][p] > 0 for p in FIVE_PHASES)
    assert report["channel"] == "cstp"
    assert report["echo"]["sent"] == 5 and report["echo"]["received"] == 5
    assert report["echo"]["target"] == ocserv.tunnel_peer_ipv4
    assert report["echo"]["rtt_p50"] > 0
    assert report["tunnel"]["address"].startswith("10.77.")
    assert report["tunnel"]["netmask"] == "255.255.0.0"
    # the profile really came from ocserv and matched its announced SHA-1
    assert report["profile"]["uri"].startswith("/profiles")
    assert "test" not in json.dumps(report["error"])


def test_wrong_password_is_a_typed_rejection(ocserv: OcservServer) -> None:
    code, report = loadgen_connect(
        ocserv, "--cafile", str(ocserv.ca_path), "--no-dtls", password="wrong-password"
    )
    assert code == 1
    assert report["ok"] is False
    assert report["error"]["phase"] == "auth"
    assert report["error"]["reason"] == "auth_rejected"
    assert "wrong-password" not in json.dumps(report)


def test_unknown_group(ocserv: OcservServer) -> None:
    code, report = loadgen_connect(ocserv, "--cafile", str(ocserv.ca_path), "--group", "nope")
    assert code == 1
    assert (report["error"]["phase"], report["error"]["reason"]) == (
        "group_select",
        "group_unknown",
    )


def test_untrusted_certificate_then_pins(ocserv: OcservServer) -> None:
    code, report = loadgen_connect(ocserv, "--echo", "0")
    assert code == 1
    assert (report["error"]["phase"], report["error"]["reason"]) == ("tls", "tls_verify")
    for pin in (ocserv.cert_pin_sha256, "sha1:" + ocserv.cert_sha1_hex):
        code, report = loadgen_connect(ocserv, "--servercert", pin, "--echo", "1")
        assert code == 0, report
    code, report = loadgen_connect(ocserv, "--servercert", "sha1:" + "00" * 20, "--echo", "0")
    assert report["error"]["reason"] == "tls_verify"


def test_download_on_the_same_connection_and_off(ocserv: OcservServer) -> None:
    code, report = loadgen_connect(
        ocserv, "--cafile", str(ocserv.ca_path), "--download", "same-connection", "--echo", "1"
    )
    assert code == 0, report
    assert "download" in report["phases"]
    code, report = loadgen_connect(
        ocserv, "--cafile", str(ocserv.ca_path), "--download", "off", "--echo", "1"
    )
    assert code == 0, report
    assert "download" not in report["phases"]


def _session_config(server: OcservServer, hostname: str, group: str | None = None) -> SessionConfig:
    return SessionConfig(
        url=parse_gateway_url(server.url),
        username="alice",
        password="test",
        group=group,
        tls=TlsOptions(cafile=str(server.ca_path)),
        hostname=hostname,
        timeout_s=20,
    )


async def test_dpd_and_cookie_reuse_rules(ocserv: OcservServer) -> None:
    cfg = _session_config(ocserv, "loadgen-cookie", group="Group Two")
    ctx = build_client_context(cfg.tls)
    async with open_session(cfg, ctx) as session:
        params = await session.connect()
        assert session.tunnel is not None
        # our DPD-REQ over CSTP is answered by ocserv with the same payload
        rtt = await session.tunnel.dpd_probe(5.0)
        assert rtt is not None and rtt > 0
        users = await trio.to_thread.run_sync(ocserv.occtl, "show", "users")
        ours = [u for u in users if u.get("Hostname") == "loadgen-cookie"]
        assert len(ours) == 1
        # the alias chose ocserv's real group, and the tunnel address is ours
        assert ours[0]["Groupname"] == "group2"
        assert ours[0]["IPv4"] == str(params.address)

        # an empty DISCONNECT keeps the cookie: a new TLS connection and CONNECT work
        await session.disconnect(None)
        again = await session.reconnect()
        assert again.address is not None and params.address is not None
        assert session.tunnel is not None
        echo = await session.tunnel.echo(
            session.echo_target(None), count=2, interval_s=0.05, timeout_s=2
        )
        assert echo.received == 2

        # DISCONNECT 0xb0 kills it; ocserv then refuses the cookie.  Wait for
        # sec-mod to act on the BYE: a CONNECT racing it still gets through.
        mark = len(ocserv.log_text())
        await session.disconnect(DisconnectReason.USER)
        await trio.to_thread.run_sync(
            lambda: ocserv.wait_for_log("invalidating session", 10.0, since=mark)
        )
        with pytest.raises(SessionFailedError) as info:
            await session.reconnect()
        assert (info.value.phase, info.value.reason) == (Phase.CSTP_CONNECT, Reason.COOKIE_REJECTED)
    log = ocserv.log_text()
    assert "received TLS DPD; sent response" in log or "DPD" in log
    assert "user disconnected" in log


async def test_closing_without_disconnect_keeps_the_cookie(ocserv: OcservServer) -> None:
    cfg = _session_config(ocserv, "loadgen-close")
    ctx = build_client_context(cfg.tls)
    async with open_session(cfg, ctx) as session:
        await session.connect()
        await session.aclose()  # TLS close, no DISCONNECT (roaming)
        await session.reconnect()
        assert session.tunnel is not None
        await session.disconnect(DisconnectReason.USER)
