"""Hostile clients against the reference gateway while healthy sessions echo.

Each test runs two healthy sessions (one on DTLS, one CSTP-only) that echo
without pause from start to end, then throws one kind of bad input at the
gateway.  Every bad input must end its own connection (or datagram) only,
count one ``loadgen_gateway_dropped_total{reason}``, leave a log line on
``loadgen.gateway``, and the healthy sessions must not lose a single reply.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from loadgen.engine.dtls import DtlsOptions
from loadgen.engine.session import SessionConfig, VpnSession, open_session
from loadgen.engine.tls import build_client_context
from loadgen.failures import Phase, Reason
from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.server import Gateway
from loadgen.metrics.gateway import DROP_REASONS
from loadgen.proto.cstp import DisconnectReason
from loadgen.proto.dtls import DtlsConnection, DtlsSession, Role, lookup_cipher
from loadgen.proto.tunnel import ConnectRequest
from tests.gateway.test_gateway_sessions import running_gateway, session_config, wait_until

#: short enough for quick tests, long enough for a loaded machine's handshakes
REQUEST_TIMEOUT_S = 0.5
HANDSHAKE_TIMEOUT_S = 0.5
#: how long a refused connection may take to close
CLOSE_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-pki")


@dataclass
class _EchoTally:
    sent: int = 0
    received: int = 0
    channels: dict[str, int] = field(default_factory=dict)


async def _keep_echoing(session: VpnSession, tally: _EchoTally, stop: trio.Event) -> None:
    tunnel = session.tunnel
    assert tunnel is not None
    target = session.echo_target(None)
    while not stop.is_set():
        result = await tunnel.echo(target, count=5, interval_s=0.005, timeout_s=3)
        tally.sent += result.sent
        tally.received += result.received
        for name, n in result.channels.items():
            tally.channels[name] = tally.channels.get(name, 0) + n


@dataclass
class Env:
    gateway: Gateway
    ca_path: Path
    caplog: pytest.LogCaptureFixture

    def dropped(self, reason: str) -> float:
        assert reason in DROP_REASONS
        value = self.gateway.metrics.registry.get_sample_value(
            "loadgen_gateway_dropped_total", {"reason": reason}
        )
        assert value is not None
        return value

    def all_dropped(self) -> dict[str, float]:
        return {reason: self.dropped(reason) for reason in DROP_REASONS}

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def session_config(self, **kw: object) -> SessionConfig:
        return session_config(self.gateway, self.ca_path, **kw)

    def logged(self, text: str) -> bool:
        return any(
            text in r.getMessage()
            for r in self.caplog.records
            if r.name.startswith("loadgen.gateway")
        )

    async def expect_drop(self, before: dict[str, float], reason: str, log_text: str) -> None:
        """Exactly one more drop of ``reason``, no other drop, and the log line."""
        await wait_until(lambda: self.dropped(reason) >= before[reason] + 1, CLOSE_WITHIN_S)
        after = self.all_dropped()
        expected = dict(before)
        expected[reason] += 1
        assert after == expected
        assert self.logged(log_text), [r.getMessage() for r in self.caplog.records]


@asynccontextmanager
async def hostile_env(
    cert_dir: Path, caplog: pytest.LogCaptureFixture, **config: object
) -> AsyncIterator[Env]:
    """The gateway with two healthy sessions echoing through the whole body."""
    caplog.set_level(logging.INFO, logger="loadgen.gateway")
    gw_config = GatewayConfig(
        request_timeout_s=REQUEST_TIMEOUT_S,
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        **config,  # type: ignore[arg-type]
    )
    with trio.fail_after(60):
        async with running_gateway(cert_dir, gw_config) as (gw, ca):
            env = Env(gateway=gw, ca_path=ca, caplog=caplog)
            on_dtls = env.session_config(hostname="healthy-dtls", dtls=DtlsOptions())
            on_cstp = env.session_config(hostname="healthy-cstp", dtls=None)
            stop = trio.Event()
            tallies = (_EchoTally(), _EchoTally())
            async with (
                open_session(on_dtls, build_client_context(on_dtls.tls)) as dtls_session,
                open_session(on_cstp, build_client_context(on_cstp.tls)) as cstp_session,
            ):
                await dtls_session.connect()
                await dtls_session.wait_dtls()
                await cstp_session.connect()
                healthy = (dtls_session, cstp_session)
                async with trio.open_nursery() as nursery:
                    for session, tally in zip(healthy, tallies, strict=True):
                        nursery.start_soon(_keep_echoing, session, tally, stop)
                    await wait_until(lambda: all(t.received >= 5 for t in tallies))
                    yield env
                    stop.set()
                for session in healthy:
                    assert session.tunnel is not None
                    assert session.tunnel.ended is None, session.tunnel.ended
                # nothing lost, and each stayed on its channel throughout
                assert tallies[0].sent == tallies[0].received >= 10
                assert tallies[1].sent == tallies[1].received >= 10
                assert set(tallies[0].channels) == {"dtls"}
                assert set(tallies[1].channels) == {"cstp"}
                assert gw.tunnels_active >= 2
                for session in healthy:
                    await session.disconnect(DisconnectReason.USER)
            await wait_until(lambda: gw.tunnels_active == 0)


# -- raw clients ---------------------------------------------------------------------------


async def _read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the gateway sends until it closes; fails if it never does."""
    data = bytearray()
    with trio.fail_after(CLOSE_WITHIN_S):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break  # a reset, or TLS without close_notify: closed all the same
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def _send_quietly(stream: trio.abc.SendStream, data: bytes) -> None:
    """Send; the gateway may already have closed (that is the point)."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def _tls(env: Env) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", env.gateway.port)
    stream = trio.SSLStream(tcp, env.client_context(), server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def _tls_exchange(env: Env, data: bytes) -> bytes:
    stream = await _tls(env)
    try:
        await _send_quietly(stream, data)
        return await _read_until_closed(stream)
    finally:
        await trio.aclose_forcefully(stream)


def _status(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


# -- before TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"\x00" * 64,
        b"SSH-2.0-OpenSSH_9.2\r\n",
        # a TLS record header announcing a handshake, then nonsense
        b"\x16\x03\x01\x00\x40" + b"\xee" * 64,
    ],
    ids=["plain-http", "zeros", "ssh", "bad-client-hello"],
)
async def test_garbage_before_tls(
    cert_dir: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        tcp = await trio.open_tcp_stream("127.0.0.1", env.gateway.port)
        async with tcp:
            await _send_quietly(tcp, garbage)
            reply = await _read_until_closed(tcp)
        assert b"HTTP" not in reply  # nothing but perhaps a TLS alert
        await env.expect_drop(before, "tls_handshake", "TLS handshake failed")
        assert (
            env.gateway.metrics.registry.get_sample_value(
                "loadgen_gateway_handshakes_total", {"protocol": "tls", "result": "failed"}
            )
            == 1
        )


@pytest.mark.parametrize(
    "partial",
    [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
    ids=["silent", "half-client-hello"],
)
async def test_stall_before_the_tls_handshake(
    cert_dir: Path, caplog: pytest.LogCaptureFixture, partial: bytes
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        started = trio.current_time()
        tcp = await trio.open_tcp_stream("127.0.0.1", env.gateway.port)
        async with tcp:
            if partial:
                await tcp.send_all(partial)
            await _read_until_closed(tcp)
        assert trio.current_time() - started >= HANDSHAKE_TIMEOUT_S * 0.9
        await env.expect_drop(before, "stalled", "no TLS handshake within")


# -- HTTP ------------------------------------------------------------------------------------


async def test_huge_headers(cert_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        request = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Huge: " + b"h" * (70 * 1024) + b"\r\n\r\n"
        reply = await _tls_exchange(env, request)
        # the answer may be lost to the reset of the unread bytes; if it came, it is a 400
        assert _status(reply) in (None, 400)
        await env.expect_drop(before, "http_malformed", "malformed HTTP")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nno colon in this header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 999999\r\n\r\n" + b"x" * 70000,
    ],
    ids=["not-http", "bad-length", "no-colon", "two-lengths", "no-host", "huge-body"],
)
async def test_malformed_http(
    cert_dir: Path, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        reply = await _tls_exchange(env, request_bytes)
        assert _status(reply) in (None, 400)
        await env.expect_drop(before, "http_malformed", "closed a connection")


def _post(body: bytes, path: bytes = b"/") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: text/xml\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b']>\n<config-auth client="vpn" type="init"><version who="vpn">&lol9;</version>'
    b"</config-auth>"
)


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><config-auth client="vpn" type="init"><version',
        b"this is not XML at all",
        b'<?xml version="1.0"?><other-root/>',
        _LAUGHS,
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<config-auth client="vpn" type="init">&e;</config-auth>',
    ],
    ids=["truncated", "not-xml", "wrong-root", "entity-bomb", "external-entity"],
)
async def test_malformed_xml(cert_dir: Path, caplog: pytest.LogCaptureFixture, body: bytes) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        with trio.fail_after(CLOSE_WITHIN_S):  # an entity bomb must not be expanded
            reply = await _tls_exchange(env, _post(body))
        assert _status(reply) == 400
        assert b"root:" not in reply
        await env.expect_drop(before, "xml_malformed", "malformed_xml")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n",
        _post(b"<x/>", b"/admin"),
        b"CONNECT /elsewhere HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=abc\r\n\r\n",
        b"DELETE / HTTP/1.1\r\nHost: gw\r\n\r\n",
    ],
    ids=["get", "post", "connect", "delete"],
)
async def test_unknown_path(
    cert_dir: Path, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        reply = await _tls_exchange(env, request_bytes)
        assert _status(reply) == 404
        await env.expect_drop(before, "http_not_found", "not found")


@pytest.mark.parametrize(
    "partial",
    [
        b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Le",
        b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n<config-auth",
        b"GE",
    ],
    ids=["mid-headers", "mid-body", "mid-request-line"],
)
async def test_client_stalling_mid_request(
    cert_dir: Path, caplog: pytest.LogCaptureFixture, partial: bytes
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        started = trio.current_time()
        reply = await _tls_exchange(env, partial)
        assert reply == b""
        assert trio.current_time() - started >= REQUEST_TIMEOUT_S * 0.9
        await env.expect_drop(before, "stalled", "stalled mid-request")


async def test_idle_connection_is_closed_without_a_drop(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        # a client that did its TLS handshake and then sent nothing is merely idle
        reply = await _tls_exchange(env, b"")
        assert reply == b""
        assert env.all_dropped() == before


# -- CONNECT ------------------------------------------------------------------------------------


def _connect_request(cookie: str) -> bytes:
    req = ConnectRequest(
        host="127.0.0.1", user_agent="AnyConnect Linux_64 4.10.07061", cookie=cookie, hostname="x"
    )
    head = b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n"
    return head + b"".join(k + b": " + v + b"\r\n" for k, v in req.to_headers()) + b"\r\n"


async def test_connect_with_a_bogus_cookie(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        reply = await _tls_exchange(env, _connect_request("bogus-cookie"))
        assert _status(reply) == 401
        await env.expect_drop(before, "cookie_rejected", "refused a CONNECT")
        # no cookie at all: ocserv's 503
        before = env.all_dropped()
        reply = await _tls_exchange(env, b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert _status(reply) == 503
        await env.expect_drop(before, "cookie_rejected", "without a webvpn cookie")
        # and a profile download with a bogus cookie
        before = env.all_dropped()
        reply = await _tls_exchange(
            env,
            b"GET /profiles/profile.xml HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=bogus\r\n\r\n",
        )
        assert _status(reply) == 401
        await env.expect_drop(before, "cookie_rejected", "refused a profile download")


async def test_profile_paths_with_a_valid_cookie(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # this gateway serves no profile: a valid cookie gets 404, not 401
    async with hostile_env(cert_dir, caplog) as env:
        cfg = env.session_config(hostname="prober", dtls=None)
        async with open_session(cfg, build_client_context(cfg.tls)) as prober:
            await prober.connect()
            cookie = prober.jar.get("webvpn")
            assert cookie
            before = env.all_dropped()
            reply = await _tls_exchange(
                env,
                b"GET /profiles/profile.xml HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=%s\r\n\r\n"
                % cookie.encode(),
            )
            assert _status(reply) == 404
            await env.expect_drop(before, "http_not_found", "refused a profile download")
            await prober.disconnect(DisconnectReason.USER)


async def test_garbage_cstp_frame_ends_that_tunnel_only(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()
        cfg = env.session_config(hostname="victim", dtls=None)
        async with open_session(cfg, build_client_context(cfg.tls)) as victim:
            await victim.connect()
            tunnel = victim.tunnel
            assert tunnel is not None
            await wait_until(lambda: env.gateway.tunnels_active == 3)
            await tunnel.cstp.stream.send_all(b"XXXXXXXXXXXXXXXXXXXXXXXX")
            with trio.fail_after(CLOSE_WITHIN_S):
                await tunnel.cstp.ended_event.wait()
            assert tunnel.ended is not None
            assert tunnel.ended.phase is Phase.TUNNEL
            assert tunnel.ended.reason in (Reason.CLOSED, Reason.RESET)
        await env.expect_drop(before, "cstp_malformed", "bad CSTP data")
        await wait_until(lambda: env.gateway.tunnels_active == 2)


async def test_garbage_right_behind_the_connect_request(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        cfg = env.session_config(hostname="victim", dtls=None)
        async with open_session(cfg, build_client_context(cfg.tls)) as victim:
            await victim.connect()
            cookie = victim.jar.get("webvpn")
            assert cookie
        # left without DISCONNECT: the cookie lives on for a reconnect
        await wait_until(lambda: env.gateway.tunnels_active == 2)
        before = env.all_dropped()
        # the frame garbage comes in the same write as the CONNECT: it is
        # what h11 hands back as the bytes after the request
        reply = await _tls_exchange(env, _connect_request(cookie) + b"\x00" * 24)
        assert reply.startswith(b"HTTP/1.1 200 CONNECTED\r\n")
        await env.expect_drop(before, "cstp_malformed", "bad CSTP data")
        await wait_until(lambda: env.gateway.tunnels_active == 2)


# -- UDP ------------------------------------------------------------------------------------------


async def _udp_send(port: int, datagrams: list[bytes]) -> None:
    sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    with sock:
        await sock.connect(("127.0.0.1", port))
        for datagram in datagrams:
            await sock.send(datagram)


async def test_garbage_datagrams(cert_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    garbage = [
        b"",
        b"\x00",
        os.urandom(200),
        b"\x17\xfe\xfd" + bytes(10) + b"\x00\x10" + os.urandom(16),  # data record, no session
        b"\x16\xfe\xfd" + bytes(8),  # a handshake record header cut short
        b"\x16\x03\x03" + bytes(8) + b"\x00\x04\x01\x00\x00\x00",  # TLS, not DTLS, version
        b"\x16\xfe\xfd" + bytes(8) + b"\x00\x10" + b"\x01" + os.urandom(15),  # broken hello
        b"\x16\xfe\xfd" + bytes(8) + b"\x40\x00" + bytes(17000),  # larger than any record
    ]
    async with hostile_env(cert_dir, caplog) as env:
        associations = env.gateway.dtls_stats.associations_total
        before = env.all_dropped()
        await _udp_send(env.gateway.udp_port, garbage)
        await wait_until(
            lambda: env.dropped("dtls_garbage") == before["dtls_garbage"] + len(garbage)
        )
        after = env.all_dropped()
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
            "dtls_garbage": len(garbage)
        }
        assert env.logged("dropped a DTLS datagram")
        # nothing was allocated for any of them
        assert env.gateway.dtls_stats.associations_total == associations


async def test_client_hello_for_an_unknown_session(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_env(cert_dir, caplog) as env:
        associations = env.gateway.dtls_stats.associations_total
        before = env.all_dropped()
        hellos = []
        for header, name in (
            ("X-DTLS-CipherSuite", "AES256-SHA"),
            ("X-DTLS12-CipherSuite", "AES256-GCM-SHA384"),
        ):
            conn = DtlsConnection(
                Role.CLIENT,
                session=DtlsSession(
                    session_id=os.urandom(32),
                    master_secret=os.urandom(48),
                    cipher=lookup_cipher(header, name),
                ),
                random_bytes=os.urandom,
            )
            conn.connect(0.0)
            hellos += conn.datagrams_to_send(0.0)
        assert len(hellos) == 2
        await _udp_send(env.gateway.udp_port, hellos)
        await wait_until(
            lambda: env.dropped("dtls_unknown_session") == before["dtls_unknown_session"] + 2
        )
        after = env.all_dropped()
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
            "dtls_unknown_session": 2
        }
        assert env.logged("unknown_session")
        assert env.gateway.dtls_stats.associations_total == associations


# -- all of it at once ------------------------------------------------------------------------------


async def test_a_storm_of_bad_clients(cert_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    rounds = 10
    async with hostile_env(cert_dir, caplog) as env:
        before = env.all_dropped()

        async def garbage_tcp() -> None:
            tcp = await trio.open_tcp_stream("127.0.0.1", env.gateway.port)
            async with tcp:
                await _send_quietly(tcp, os.urandom(300))
                await _read_until_closed(tcp)

        async def stall_tcp() -> None:
            tcp = await trio.open_tcp_stream("127.0.0.1", env.gateway.port)
            async with tcp:
                await _read_until_closed(tcp)

        async def tls(data: bytes) -> None:
            await _tls_exchange(env, data)

        async with trio.open_nursery() as nursery:
            for _ in range(rounds):
                nursery.start_soon(garbage_tcp)
                nursery.start_soon(stall_tcp)
                nursery.start_soon(tls, b"NOT HTTP\r\n\r\n")
                nursery.start_soon(tls, _post(_LAUGHS))
                nursery.start_soon(tls, b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n")
                nursery.start_soon(tls, b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Le")
                nursery.start_soon(tls, _connect_request("bogus"))
                nursery.start_soon(_udp_send, env.gateway.udp_port, [os.urandom(100)])
        expected = {
            "tls_handshake": rounds,
            "stalled": 2 * rounds,
            "http_malformed": rounds,
            "xml_malformed": rounds,
            "http_not_found": rounds,
            "cookie_rejected": rounds,
            "dtls_garbage": rounds,
        }
        await wait_until(lambda: env.dropped("dtls_garbage") >= before["dtls_garbage"] + rounds)
        after = env.all_dropped()
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == expected
        assert (
            env.gateway.metrics.registry.get_sample_value("loadgen_gateway_connections_active") == 2
        )
