"""The session driver against a scripted TLS gateway on loopback: every phase,
and every hostile answer turned into a typed failure that stays in its session."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from loadgen.engine.session import DownloadMode, SessionConfig, open_session
from loadgen.engine.tls import TlsOptions, build_client_context, parse_pin
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.proto.cstp import DisconnectReason
from tests.helpers.certs import ServerPki, make_server_pki
from tests.helpers.scripted_gateway import COOKIE, Script, ScriptedGateway, frame


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return make_server_pki(tmp_path_factory.mktemp("pki"), key_type="ec")


def _cfg(pki: ServerPki, url: str, **kw: object) -> SessionConfig:
    opts = dict(
        url=parse_gateway_url(url),
        username="alice",
        password="test",
        tls=TlsOptions(cafile=str(pki.ca_cert_path)),
        timeout_s=5.0,
    )
    opts.update(kw)
    return SessionConfig(**opts)  # type: ignore[arg-type]


async def _run(
    pki: ServerPki, script: Script, *, echo: int = 3, **kw: object
) -> tuple[dict[Phase, float], SessionFailedError | None, int]:
    async with trio.open_nursery() as nursery:
        gw = ScriptedGateway(pki.server_cert_path, pki.server_key_path, script)
        await gw.start(nursery)
        cfg = _cfg(pki, gw.url, **kw)
        ctx = build_client_context(cfg.tls)
        error: SessionFailedError | None = None
        received = 0
        async with open_session(cfg, ctx) as session:
            try:
                await session.connect()
                assert session.tunnel is not None
                if echo:
                    res = await session.tunnel.echo(
                        session.echo_target(None), count=echo, interval_s=0.01, timeout_s=2
                    )
                    received = res.received
                rtt = await session.tunnel.dpd_probe(2.0)
                if session.tunnel.ended is not None:
                    raise session.tunnel.ended
                assert rtt is not None
                await session.disconnect(DisconnectReason.USER)
            except SessionFailedError as exc:
                error = exc
            phases = dict(session.phases)
        nursery.cancel_scope.cancel()
    return phases, error, received


async def test_full_session_runs_every_phase(pki: ServerPki) -> None:
    script = Script()
    phases, error, received = await _run(pki, script, group="Group Two")
    assert error is None
    assert set(phases) == {
        Phase.TLS,
        Phase.GROUP_SELECT,
        Phase.AUTH,
        Phase.DOWNLOAD,
        Phase.CSTP_CONNECT,
    }
    assert all(v > 0 for v in phases.values())
    assert received == 3
    # group2 is not the default: a second init POST selects it, then two auth steps
    posts = [r for r in script.requests if r.startswith("POST")]
    assert len(posts) == 4
    assert "GET /profiles/profile.xml" in script.requests
    assert script.requests[-1] == "CONNECT /CSCOSSLC/tunnel"
    assert script.disconnect_payloads == [b"\xb0"]


async def test_default_group_needs_no_second_post(pki: ServerPki) -> None:
    script = Script()
    _, error, _ = await _run(pki, script, group="group1", echo=0)
    assert error is None
    assert len([r for r in script.requests if r.startswith("POST")]) == 3


async def test_wrong_password_is_auth_rejected(pki: ServerPki) -> None:
    script = Script(password="other")
    phases, error, _ = await _run(pki, script)
    assert error is not None
    assert (error.phase, error.reason) == (Phase.AUTH, Reason.AUTH_REJECTED)
    assert "test" not in error.message
    assert Phase.CSTP_CONNECT not in phases


async def test_unknown_group(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(), group="nope")
    assert error is not None
    assert (error.phase, error.reason) == (Phase.GROUP_SELECT, Reason.GROUP_UNKNOWN)


def _http200(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n<config-a",
        _http200(
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
            b"<config-auth>&a;&a;&a;</config-auth>"
        ),
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 70000 + b"\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    ],
    ids=["truncated-xml", "entity-dtd", "huge-header", "not-http"],
)
async def test_hostile_first_answer_is_protocol(pki: ServerPki, raw: bytes) -> None:
    _, error, _ = await _run(pki, Script(first_response=raw))
    assert error is not None
    assert error.phase is Phase.GROUP_SELECT
    assert error.reason is Reason.PROTOCOL


async def test_profile_hash_mismatch(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(profile_sha1="00" * 20))
    assert error is not None
    assert (error.phase, error.reason) == (Phase.DOWNLOAD, Reason.PROFILE_HASH)


async def test_download_off_skips_the_phase(pki: ServerPki) -> None:
    script = Script(profile_sha1="00" * 20)
    phases, error, _ = await _run(pki, script, download=DownloadMode.OFF, echo=0)
    assert error is None
    assert Phase.DOWNLOAD not in phases
    assert not any("profiles" in r for r in script.requests)


async def test_cookie_rejected_on_connect(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(connect_status=b"401 Cookie is not acceptable"))
    assert error is not None
    assert (error.phase, error.reason) == (Phase.CSTP_CONNECT, Reason.COOKIE_REJECTED)
    assert COOKIE not in error.message


async def test_connect_without_address_is_protocol(pki: ServerPki) -> None:
    script = Script()
    script.connect_headers = [h for h in script.connect_headers if h[0] != "X-CSTP-Address"]
    _, error, _ = await _run(pki, script)
    assert error is not None
    assert (error.phase, error.reason) == (Phase.CSTP_CONNECT, Reason.PROTOCOL)


async def test_garbage_frame_after_connect_ends_the_tunnel(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(after_connect=b"XXXXXXXXXXXXXXXX"))
    assert error is not None
    assert (error.phase, error.reason) == (Phase.TUNNEL, Reason.PROTOCOL)


async def test_gateway_disconnect_is_terminated(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(after_connect=frame(5, b"")))
    assert error is not None
    assert (error.phase, error.reason) == (Phase.TUNNEL, Reason.TERMINATED)


async def test_stall_is_a_timeout_of_its_phase(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(stall_s=3.0), timeout_s=0.3)
    assert error is not None
    assert (error.phase, error.reason) == (Phase.GROUP_SELECT, Reason.TIMEOUT)


async def test_untrusted_certificate_is_tls_verify(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(), tls=TlsOptions())
    assert error is not None
    assert (error.phase, error.reason) == (Phase.TLS, Reason.TLS_VERIFY)


async def test_pin_replaces_ca_trust(pki: ServerPki) -> None:
    _, error, _ = await _run(pki, Script(), tls=TlsOptions(pin=parse_pin(pki.pin_sha256)), echo=0)
    assert error is None
    wrong = parse_pin("sha1:" + hashlib.sha1(b"other").hexdigest())
    _, error, _ = await _run(pki, Script(), tls=TlsOptions(pin=wrong), echo=0)
    assert error is not None and error.reason is Reason.TLS_VERIFY


async def test_refused_port(pki: ServerPki, tmp_path: Path) -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cfg = _cfg(pki, f"https://127.0.0.1:{port}/")
    async with open_session(cfg, build_client_context(cfg.tls)) as session:
        with pytest.raises(SessionFailedError) as info:
            await session.connect()
    assert (info.value.phase, info.value.reason) == (Phase.TLS, Reason.REFUSED)


async def test_one_hostile_session_does_not_disturb_others(pki: ServerPki) -> None:
    results: list[SessionFailedError | None] = []

    async def one(script: Script) -> None:
        _, error, _ = await _run(pki, script, echo=2)
        results.append(error)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, Script(after_connect=b"garbage!" * 2) if i == 3 else Script())
    assert sum(e is None for e in results) == 5
    assert [e.reason for e in results if e is not None] == [Reason.PROTOCOL]


async def test_idle_tunnel_does_not_spin(pki: ServerPki) -> None:
    """The timer task sleeps until a deadline; it must not wake itself."""
    async with trio.open_nursery() as nursery:
        gw = ScriptedGateway(pki.server_cert_path, pki.server_key_path, Script())
        await gw.start(nursery)
        cfg = _cfg(pki, gw.url)
        async with open_session(cfg, build_client_context(cfg.tls)) as session:
            await session.connect()
            assert session.tunnel is not None
            conn = session.tunnel.cstp.conn
            calls = 0
            original = conn.handle_timer

            def counting(now: float) -> None:
                nonlocal calls
                calls += 1
                original(now)

            conn.handle_timer = counting  # type: ignore[method-assign]
            await trio.sleep(0.5)
            await session.disconnect(DisconnectReason.USER)
        nursery.cancel_scope.cancel()
    # DPD 90 s, keepalive 32400 s: nothing is due within half a second
    assert calls <= 2


async def test_login_redirect_moves_connect_to_the_gateway_that_issued_the_cookie(
    pki: ServerPki,
) -> None:
    async with trio.open_nursery() as nursery:
        target = ScriptedGateway(pki.server_cert_path, pki.server_key_path, Script())
        await target.start(nursery)
        front = Script(redirect_to=target.url + "engineering")
        first = ScriptedGateway(pki.server_cert_path, pki.server_key_path, front)
        await first.start(nursery)
        cfg = _cfg(pki, first.url)
        async with open_session(cfg, build_client_context(cfg.tls)) as session:
            await session.connect()
            assert session.url.url == target.url + "engineering"
            await session.disconnect(DisconnectReason.USER)
        nursery.cancel_scope.cancel()
    assert front.requests == ["POST /"]
    assert target.script.requests[0] == "POST /engineering"
    assert any(r.startswith("CONNECT") for r in target.script.requests)
    assert (
        b"<group-access>" + target.url.encode() + b"engineering</group-access>"
        in (target.script.inits[0])
    )


@pytest.mark.parametrize("has_certificate", [True, False])
async def test_client_cert_request(pki: ServerPki, has_certificate: bool) -> None:
    script = Script(cert_request=True)
    phases, error, _ = await _run(pki, script, echo=0, has_certificate=has_certificate)
    assert error is None, error
    assert len(script.inits) == 2
    if has_certificate:
        # reconnect to present the certificate, then a plain init
        assert script.connections >= 2
        assert b"client-cert-fail" not in script.inits[1]
    else:
        assert b"<client-cert-fail/>" in script.inits[1]
    assert Phase.CSTP_CONNECT in phases
