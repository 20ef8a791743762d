"""Our client (the engine) against the in-process reference gateway: every DTLS
suite through each header, the embedded default's six phases, groups by alias,
rejections, the MTU rules, the cookie rules, limits, delays, the echo services,
the metrics and 200 concurrent sessions."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio

from loadgen.cli.gateway import build_config
from loadgen.cli.main import build_parser
from loadgen.engine.dtls import DtlsOptions, DtlsState
from loadgen.engine.echo import Echoer
from loadgen.engine.session import DownloadMode, SessionConfig, VpnSession, open_session
from loadgen.engine.tls import TlsOptions, build_client_context
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import FallbackReason, Phase, Reason, SessionFailedError
from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.server import Gateway
from loadgen.lab.netns import in_private_netns
from loadgen.proto.auth_server import AuthPolicy, GroupSpec, UserSpec
from loadgen.proto.cstp import CstpConnection, DisconnectReason
from loadgen.proto.dtls import KNOWN_DTLS12_CIPHERS, KNOWN_DTLS_CIPHERS
from loadgen.proto.errors import BadPacketError
from loadgen.proto.packets import build_udp, parse_ipv4_untrusted, parse_udp_untrusted
from loadgen.proto.tunnel import ConnectRequest
from tests.helpers.gateway import start_gateway, url_of

#: IPv4 header + ICMP header + the echoer's 56-byte payload
ECHO_PACKET_BYTES = 84
ALL_PHASES = {
    Phase.TLS,
    Phase.GROUP_SELECT,
    Phase.AUTH,
    Phase.DOWNLOAD,
    Phase.CSTP_CONNECT,
    Phase.DTLS,
}


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-pki")


@asynccontextmanager
async def running_gateway(
    cert_dir: Path, config: GatewayConfig, *, profile: bytes | None = None
) -> AsyncIterator[tuple[Gateway, Path]]:
    """An in-process gateway for the body of the ``async with``."""
    try:
        async with trio.open_nursery() as nursery:
            gateway, ca_path = await start_gateway(nursery, cert_dir, config, profile=profile)
            yield gateway, ca_path
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # a failed assertion of the body reads better bare than in a group
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def session_config(gateway: Gateway, ca_path: Path, **kw: object) -> SessionConfig:
    opts: dict[str, object] = {
        "url": parse_gateway_url(url_of(gateway)),
        "username": "alice",
        "password": "test",
        "tls": TlsOptions(cafile=str(ca_path)),
        "timeout_s": 10.0,
    }
    opts.update(kw)
    return SessionConfig(**opts)  # type: ignore[arg-type]


def cli_config(*args: str) -> tuple[GatewayConfig, bytes | None]:
    """What ``loadgen gateway ARGS`` would serve, on a free port of 127.0.0.1."""
    config, profile = build_config(build_parser().parse_args(["gateway", *args]))
    return dataclasses.replace(config, host="127.0.0.1", port=0), profile


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def dropped(gateway: Gateway, reason: str) -> float:
    return sample(gateway, "loadgen_gateway_dropped_total", reason=reason)


async def wait_until(predicate: object, timeout_s: float = 5.0) -> None:
    """Poll ``predicate()`` until true; fails the test after ``timeout_s``."""
    assert callable(predicate)
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


async def echo_ok(session: VpnSession, count: int = 3) -> dict[str, int]:
    tunnel = session.tunnel
    assert tunnel is not None
    result = await tunnel.echo(session.echo_target(None), count=count, interval_s=0.01, timeout_s=2)
    assert result.sent == count
    assert result.received == count
    return result.channels


@contextmanager
def udp_dropped(port: int) -> Iterator[None]:
    """Drop UDP to and from ``port`` on INPUT, in the test's private namespace only."""
    if not in_private_netns():
        pytest.skip("iptables rules need the private network namespace (run as root)")
    rules = [
        ["INPUT", "-p", "udp", "--dport", str(port), "-j", "DROP"],
        ["INPUT", "-p", "udp", "--sport", str(port), "-j", "DROP"],
    ]
    added: list[list[str]] = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-I", *rule], check=True, timeout=10)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-D", *rule], check=False, timeout=10)


# -- DTLS suites ---------------------------------------------------------------------

CIPHER_CASES = [
    pytest.param(
        "X-DTLS-CipherSuite",
        name,
        "DTLS1.2" if name.startswith("OC-DTLS1_2") else "DTLS0.9",
        id=f"legacy-{name}",
    )
    for name in KNOWN_DTLS_CIPHERS
] + [
    pytest.param("X-DTLS12-CipherSuite", name, "DTLS1.2", id=f"dtls12-{name}")
    for name in KNOWN_DTLS12_CIPHERS
]


@pytest.mark.parametrize(("header", "cipher", "version"), CIPHER_CASES)
async def test_every_single_cipher_offer_is_answered(
    cert_dir: Path, header: str, cipher: str, version: str
) -> None:
    if header == "X-DTLS-CipherSuite":
        offer = DtlsOptions(ciphers=(cipher,), ciphers12=None)
    else:
        offer = DtlsOptions(ciphers=None, ciphers12=(cipher,))
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):
            cfg = session_config(gw, ca, dtls=offer)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                params = await session.connect()
                assert params.dtls_cipher == cipher
                assert params.dtls_cipher_header == header
                await session.wait_dtls()
                tunnel = session.tunnel
                assert tunnel is not None and tunnel.dtls is not None
                assert tunnel.channel == "dtls"
                report = tunnel.dtls.report
                assert (report.cipher, report.header, report.version) == (cipher, header, version)
                assert report.fallback is None
                assert await echo_ok(session, 4) == {"dtls": 4}
                assert (
                    sample(gw, "loadgen_gateway_packets_total", channel="dtls", direction="rx") == 4
                )
                assert (
                    sample(gw, "loadgen_gateway_packets_total", channel="dtls", direction="tx") == 4
                )
                await session.disconnect(DisconnectReason.USER)


async def test_configured_cipher_list_is_the_servers_preference(cert_dir: Path) -> None:
    config, _ = cli_config("--accept-any", "--dtls-ciphers", "AES128-SHA:AES256-SHA")
    offer = DtlsOptions(ciphers=("AES256-SHA", "AES128-SHA"), ciphers12=None)
    with trio.fail_after(20):
        async with running_gateway(cert_dir, config) as (gw, ca):
            cfg = session_config(gw, ca, dtls=offer)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                params = await session.connect()
                # the gateway's order wins over the client's
                assert params.dtls_cipher == "AES128-SHA"
                await session.wait_dtls()
                assert await echo_ok(session) == {"dtls": 3}
                await session.disconnect(DisconnectReason.USER)
            # a suite the gateway was not told to accept: no DTLS answer, CSTP only
            cfg = session_config(
                gw, ca, dtls=DtlsOptions(ciphers=None, ciphers12=("AES256-GCM-SHA384",))
            )
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                params = await session.connect()
                assert params.dtls_cipher is None and params.dtls_session_id is None
                assert await echo_ok(session) == {"cstp": 3}
                await session.disconnect(DisconnectReason.USER)


# -- the embedded default, groups, rejections -----------------------------------------


async def test_embedded_default_runs_all_six_phases(cert_dir: Path) -> None:
    config, profile = cli_config()
    assert config.auth.users is None
    assert [g.alias for g in config.auth.groups] == [None, "Engineering"]
    assert profile is not None and config.auth.profile is not None
    with trio.fail_after(20):
        async with running_gateway(cert_dir, config, profile=profile) as (gw, ca):
            cfg = session_config(
                gw, ca, username="anyone", password="anything", group="Engineering"
            )
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                await session.wait_dtls()
                assert set(session.phases) == ALL_PHASES
                assert all(v > 0 for v in session.phases.values())
                assert session.profile is not None
                assert session.profile.size_bytes == len(profile)
                assert await echo_ok(session) == {"dtls": 3}
                await session.disconnect(DisconnectReason.USER)
            # the downloader's own TLS connection is a second handshake
            assert sample(gw, "loadgen_gateway_handshakes_total", protocol="tls", result="ok") == 2


async def test_group_is_chosen_by_alias_or_name(cert_dir: Path) -> None:
    policy = AuthPolicy(
        users={"bob": UserSpec(password="pw", groups=("engineering",))},
        groups=(GroupSpec("default"), GroupSpec("engineering", "Engineering")),
    )
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig(auth=policy)) as (gw, ca):
            for group in ("Engineering", "engineering", "ENGINEERING"):
                cfg = session_config(gw, ca, username="bob", password="pw", group=group, dtls=None)
                async with open_session(cfg, build_client_context(cfg.tls)) as session:
                    await session.connect()
                    assert Phase.GROUP_SELECT in session.phases
                    await session.disconnect(DisconnectReason.USER)
            # bob is not a member of the default group: refused like a wrong password
            cfg = session_config(gw, ca, username="bob", password="pw", dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                with pytest.raises(SessionFailedError) as info:
                    await session.connect()
            assert (info.value.phase, info.value.reason) == (Phase.AUTH, Reason.AUTH_REJECTED)


async def test_wrong_password_is_auth_rejected(cert_dir: Path) -> None:
    config, profile = cli_config("--user", "alice:test")
    assert profile is None and config.auth.groups == ()
    with trio.fail_after(20):
        async with running_gateway(cert_dir, config) as (gw, ca):
            cfg = session_config(gw, ca, password="not-the-password")
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                with pytest.raises(SessionFailedError) as info:
                    await session.connect()
            assert (info.value.phase, info.value.reason) == (Phase.AUTH, Reason.AUTH_REJECTED)
            assert "not-the-password" not in info.value.message
            assert Phase.CSTP_CONNECT not in session.phases
            reason = "wrong_password"
            assert sample(gw, "loadgen_gateway_auth_failures_total", reason=reason) == 1
            # a refused login is not malformed input
            assert dropped(gw, "http_malformed") == 0
            assert dropped(gw, "xml_malformed") == 0
            # the right password still works
            cfg = session_config(gw, ca)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                await session.disconnect(DisconnectReason.USER)


async def test_reject_ratio_one_refuses_every_login(cert_dir: Path) -> None:
    config = GatewayConfig(auth=AuthPolicy(reject_ratio=1.0))
    with trio.fail_after(20):
        async with running_gateway(cert_dir, config) as (gw, ca):
            for _ in range(3):
                cfg = session_config(gw, ca)
                async with open_session(cfg, build_client_context(cfg.tls)) as session:
                    with pytest.raises(SessionFailedError) as info:
                        await session.connect()
                assert (info.value.phase, info.value.reason) == (Phase.AUTH, Reason.AUTH_REJECTED)
            assert gw.tunnels_active == 0


# -- MTU --------------------------------------------------------------------------------


async def test_mtu_is_the_dtls_one_on_dtls_and_the_cstp_one_after_fallback(
    cert_dir: Path,
) -> None:
    config = GatewayConfig(mtu=1300, dtls_mtu=1200)
    fast = DtlsOptions(schedule_s=(0.0, 0.2, 0.4, 0.8), reattempt_s=0)
    with trio.fail_after(30):
        async with running_gateway(cert_dir, config) as (gw, ca):
            cfg = session_config(gw, ca, dtls=fast)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                params = await session.connect()
                assert (params.mtu, params.dtls_mtu) == (1300, 1200)
                await session.wait_dtls()
                tunnel = session.tunnel
                assert tunnel is not None and tunnel.channel == "dtls"
                assert tunnel.mtu == 1200
                assert await echo_ok(session) == {"dtls": 3}
                await session.disconnect(DisconnectReason.USER)
            with udp_dropped(gw.udp_port):
                async with open_session(cfg, build_client_context(cfg.tls)) as session:
                    await session.connect()
                    await session.wait_dtls()
                    tunnel = session.tunnel
                    assert tunnel is not None and tunnel.dtls is not None
                    assert tunnel.dtls.state is DtlsState.DOWN
                    assert tunnel.dtls.report.fallback is FallbackReason.TIMEOUT
                    assert tunnel.channel == "cstp"
                    assert tunnel.mtu == 1300
                    assert Phase.DTLS not in session.phases
                    assert await echo_ok(session) == {"cstp": 3}
                    await session.disconnect(DisconnectReason.USER)


# -- cookies ------------------------------------------------------------------------------


async def test_empty_disconnect_keeps_the_cookie_and_0xb0_kills_it(cert_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):
            cfg = session_config(gw, ca)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                first = await session.connect()
                await session.wait_dtls()
                await session.disconnect(None)  # empty DISCONNECT: a temporary one
                await wait_until(lambda: gw.tunnels_active == 0)
                again = await session.reconnect()
                assert again.address == first.address
                assert Phase.AUTH in session.phases  # no second login
                await session.wait_dtls()
                assert await echo_ok(session) == {"dtls": 3}
                await session.disconnect(DisconnectReason.USER)  # 0xb0: logout
                await wait_until(lambda: gw.tunnels_active == 0)
                with pytest.raises(SessionFailedError) as info:
                    await session.reconnect()
                assert (info.value.phase, info.value.reason) == (
                    Phase.CSTP_CONNECT,
                    Reason.COOKIE_REJECTED,
                )
            assert dropped(gw, "cookie_rejected") == 1


async def test_closing_without_disconnect_keeps_the_cookie(cert_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):
            cfg = session_config(gw, ca, dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                first = await session.connect()
                assert session.tunnel is not None
                session.tunnel.stop()  # the connection just goes away
                await session.aclose()
                await wait_until(lambda: gw.tunnels_active == 0)
                again = await session.reconnect()
                assert again.address == first.address
                await session.disconnect(DisconnectReason.USER)


# -- limits and delays ------------------------------------------------------------------------


async def test_max_sessions_refuses_the_extra_one_with_503(cert_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig(max_sessions=2)) as (gw, ca):
            cfg = session_config(gw, ca, dtls=None)
            async with (
                open_session(cfg, build_client_context(cfg.tls)) as one,
                open_session(cfg, build_client_context(cfg.tls)) as two,
                open_session(cfg, build_client_context(cfg.tls)) as three,
            ):
                await one.connect()
                await two.connect()
                with pytest.raises(SessionFailedError) as info:
                    await three.connect()
                assert (info.value.phase, info.value.reason) == (
                    Phase.CSTP_CONNECT,
                    Reason.HTTP_STATUS,
                )
                assert "503" in info.value.message
                assert gw.tunnels_active == 2
                assert dropped(gw, "max_sessions") == 1
                assert sample(gw, "loadgen_gateway_sessions_total", outcome="rejected") == 1
                # the first two are unaffected
                assert await echo_ok(one) == {"cstp": 3}
                await one.disconnect(DisconnectReason.USER)
                await wait_until(lambda: gw.tunnels_active == 1)
                # a slot is free again: the refused session's cookie still works
                await three.reconnect()
                assert await echo_ok(three) == {"cstp": 3}
                await two.disconnect(DisconnectReason.USER)
                await three.disconnect(DisconnectReason.USER)


async def test_a_reconnect_replaces_its_tunnel_even_at_the_limit(cert_dir: Path) -> None:
    # the cookie's own tunnel is going away, so its slot counts for the new one
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig(max_sessions=1)) as (gw, ca):
            cfg = session_config(gw, ca, dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as one:
                await one.connect()
                cookie = one.jar.get("webvpn")
                tunnel = one.tunnel
                assert cookie and tunnel is not None
                again = ConnectRequest(
                    host="127.0.0.1", user_agent="AnyConnect", cookie=cookie, hostname="again"
                )
                head = b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n" + b"".join(
                    k + b": " + v + b"\r\n" for k, v in again.to_headers()
                )
                tcp = await trio.open_tcp_stream("127.0.0.1", gw.port)
                context = ssl.create_default_context(cafile=str(ca))
                stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
                try:
                    await stream.do_handshake()
                    await stream.send_all(head + b"\r\n")
                    reply = b""
                    while b"\r\n\r\n" not in reply:
                        reply += await stream.receive_some(65536)
                    assert reply.startswith(b"HTTP/1.1 200 CONNECTED\r\n"), reply
                    await tunnel.cstp.ended_event.wait()
                    assert tunnel.ended is not None
                    assert tunnel.ended.reason is Reason.TERMINATED
                    await wait_until(lambda: gw.tunnels_active == 1)
                    assert dropped(gw, "max_sessions") == 0
                finally:
                    await trio.aclose_forcefully(stream)


async def test_delay_auth_lengthens_the_auth_phases_only(cert_dir: Path) -> None:
    delay_s = 0.25
    config = GatewayConfig(delay_auth_ms=int(delay_s * 1000))
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):
            cfg = session_config(gw, ca, dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                baseline = dict(session.phases)
                await session.disconnect(DisconnectReason.USER)
        async with running_gateway(cert_dir, config) as (gw, ca):
            cfg = session_config(gw, ca, dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                delayed = dict(session.phases)
                await session.disconnect(DisconnectReason.USER)
    assert baseline[Phase.AUTH] < delay_s
    # username and password: two delayed answers in the auth phase
    assert delayed[Phase.AUTH] >= 2 * delay_s
    assert delayed[Phase.GROUP_SELECT] >= delay_s
    assert delayed[Phase.TLS] < delay_s
    assert delayed[Phase.CSTP_CONNECT] < delay_s


# -- the data plane ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtls", [True, False], ids=["dtls", "cstp"])
async def test_udp_echo_port_7_is_answered(
    cert_dir: Path, monkeypatch: pytest.MonkeyPatch, dtls: bool
) -> None:
    received: list[bytes] = []
    original = Echoer.on_packet

    def capture(self: Echoer, data: bytes) -> None:
        received.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(Echoer, "on_packet", capture)
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):
            cfg = session_config(gw, ca, dtls=DtlsOptions() if dtls else None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                await session.wait_dtls()
                tunnel = session.tunnel
                assert tunnel is not None
                me, gateway_ip = tunnel.address, session.echo_target(None)
                assert gateway_ip == IPv4Address("10.200.0.1")
                payload = b"loadgen udp echo \x00\xff" * 10
                packet = build_udp(src=me, dst=gateway_ip, sport=40007, dport=7, payload=payload)
                assert await tunnel.send_ip(packet) == ("dtls" if dtls else "cstp")
                await wait_until(lambda: any(_udp_from(p, 7) for p in received))
                reply = parse_ipv4_untrusted(next(p for p in received if _udp_from(p, 7)))
                udp = parse_udp_untrusted(reply)
                assert (reply.src, reply.dst) == (gateway_ip, me)
                assert (udp.sport, udp.dport, udp.payload) == (7, 40007, payload)
                # another port, or another address: dropped and counted, never routed
                before = dropped(gw, "not_for_gateway")
                await tunnel.send_ip(
                    build_udp(src=me, dst=gateway_ip, sport=40007, dport=9, payload=b"x")
                )
                other = IPv4Address("10.200.0.99")
                await tunnel.send_ip(build_udp(src=me, dst=other, sport=1, dport=7, payload=b"x"))
                await wait_until(lambda: dropped(gw, "not_for_gateway") == before + 2)
                assert sum(1 for p in received if _udp_from(p, 7)) == 1
                await session.disconnect(DisconnectReason.USER)


def _udp_from(packet: bytes, port: int) -> bool:
    try:
        return parse_udp_untrusted(parse_ipv4_untrusted(packet)).sport == port
    except BadPacketError:
        return False


async def test_metrics_follow_a_session(cert_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):

            def active(channel: str) -> float:
                return sample(gw, "loadgen_gateway_sessions_active", channel=channel)

            assert active("dtls") == active("cstp") == 0
            cfg = session_config(gw, ca)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                await session.wait_dtls()
                await wait_until(lambda: active("dtls") == 1)
                assert active("cstp") == 0
                assert gw.tunnels_active == 1
                assert (
                    sample(gw, "loadgen_gateway_handshakes_total", protocol="tls", result="ok") == 1
                )
                assert (
                    sample(gw, "loadgen_gateway_handshakes_total", protocol="dtls", result="ok")
                    == 1
                )
                assert sample(gw, "loadgen_gateway_sessions_total", outcome="established") == 1
                assert await echo_ok(session, 5) == {"dtls": 5}
                for direction in ("rx", "tx"):
                    labels = {"channel": "dtls", "direction": direction}
                    assert sample(gw, "loadgen_gateway_packets_total", **labels) == 5
                    assert (
                        sample(gw, "loadgen_gateway_bytes_total", **labels) == 5 * ECHO_PACKET_BYTES
                    )
                    labels["channel"] = "cstp"
                    assert sample(gw, "loadgen_gateway_packets_total", **labels) == 0
                await session.disconnect(DisconnectReason.USER)
            await wait_until(lambda: gw.tunnels_active == 0)
            assert active("dtls") == active("cstp") == 0
            assert sample(gw, "loadgen_gateway_sessions_total", outcome="closed") == 1
            assert sample(gw, "loadgen_gateway_connections_active") == 0
            # a CSTP-only session counts on its own channel
            cfg = session_config(gw, ca, dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                await wait_until(lambda: active("cstp") == 1)
                assert await echo_ok(session, 2) == {"cstp": 2}
                labels = {"channel": "cstp", "direction": "rx"}
                assert sample(gw, "loadgen_gateway_packets_total", **labels) == 2
                assert sample(gw, "loadgen_gateway_bytes_total", **labels) == 2 * ECHO_PACKET_BYTES
                await session.disconnect(DisconnectReason.USER)
            await wait_until(lambda: active("cstp") == 0)


async def test_an_idle_tunnel_does_not_spin(
    cert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the tunnel's timer task woke itself with its own flush and
    # ran flat out, one busy task per tunnel.
    calls = {"server": 0}
    original = CstpConnection.handle_timer

    def counting(self: CstpConnection, now: float) -> None:
        if self.role == "server":
            calls["server"] += 1
        original(self, now)

    monkeypatch.setattr(CstpConnection, "handle_timer", counting)
    with trio.fail_after(20):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):
            cfg = session_config(gw, ca)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                await session.wait_dtls()
                await echo_ok(session)
                calls["server"] = 0
                await trio.sleep(0.5)
                # DPD is 90 s: nothing is due while idle
                assert calls["server"] <= 2
                await session.disconnect(DisconnectReason.USER)


async def test_200_concurrent_sessions(cert_dir: Path) -> None:
    count = 200
    failures: list[SessionFailedError] = []
    channels: dict[str, int] = {}
    addresses: set[IPv4Address] = set()
    arrived = 0
    all_up = trio.Event()

    def arrive() -> None:
        # every session holds its tunnel until all are up, so their
        # addresses are leased at the same time and must all differ
        nonlocal arrived
        arrived += 1
        if arrived == count:
            all_up.set()

    async def one(gw: Gateway, ca: Path, index: int) -> None:
        cfg = session_config(
            gw, ca, username=f"user{index}", hostname=f"client-{index}", timeout_s=30.0
        )
        async with open_session(cfg, build_client_context(cfg.tls)) as session:
            try:
                await session.connect()
                await session.wait_dtls()
                tunnel = session.tunnel
                assert tunnel is not None
                addresses.add(tunnel.address)
                result = await tunnel.echo(
                    session.echo_target(None), count=3, interval_s=0.05, timeout_s=10
                )
                assert result.received == 3
                for name, n in result.channels.items():
                    channels[name] = channels.get(name, 0) + n
                arrive()
                await all_up.wait()
                await session.disconnect(DisconnectReason.USER)
            except SessionFailedError as exc:
                failures.append(exc)
                arrive()

    with trio.fail_after(120):
        async with running_gateway(cert_dir, GatewayConfig()) as (gw, ca):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, gw, ca, i)
            assert failures == []
            assert len(addresses) == count
            assert sum(channels.values()) == 3 * count
            await wait_until(lambda: gw.tunnels_active == 0, timeout_s=10)
            assert sample(gw, "loadgen_gateway_sessions_total", outcome="established") == count
            assert sample(gw, "loadgen_gateway_sessions_active", channel="dtls") == 0
            assert sample(gw, "loadgen_gateway_sessions_active", channel="cstp") == 0


async def test_profile_is_served_at_its_uri_only(cert_dir: Path) -> None:
    config, profile = cli_config()
    assert profile is not None and config.auth.profile is not None
    with trio.fail_after(20):
        async with running_gateway(cert_dir, config, profile=profile) as (gw, ca):
            cfg = session_config(gw, ca, dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                cookie = session.jar.get("webvpn")
                assert cookie
                ctx = ssl.create_default_context(cafile=str(ca))
                for path, status in (
                    (config.auth.profile.uri, b"200"),
                    ("/profiles/other.xml", b"404"),
                ):
                    stream = await trio.open_ssl_over_tcp_stream(
                        "127.0.0.1", gw.port, ssl_context=ctx
                    )
                    async with stream:
                        await stream.send_all(
                            f"GET {path} HTTP/1.1\r\nHost: gw\r\nCookie: webvpn={cookie}\r\n"
                            "Connection: close\r\n\r\n".encode()
                        )
                        reply = b""
                        with trio.fail_after(5):
                            while b"\r\n\r\n" not in reply:
                                reply += await stream.receive_some(65536)
                    assert reply.startswith(b"HTTP/1.1 " + status), reply[:40]
                await session.disconnect(DisconnectReason.USER)
            assert dropped(gw, "http_not_found") == 1


async def test_download_on_the_same_connection(cert_dir: Path) -> None:
    config, profile = cli_config()
    with trio.fail_after(20):
        async with running_gateway(cert_dir, config, profile=profile) as (gw, ca):
            cfg = session_config(gw, ca, download=DownloadMode.SAME_CONNECTION, dtls=None)
            async with open_session(cfg, build_client_context(cfg.tls)) as session:
                await session.connect()
                assert Phase.DOWNLOAD in session.phases
                await session.disconnect(DisconnectReason.USER)
            assert sample(gw, "loadgen_gateway_handshakes_total", protocol="tls", result="ok") == 1
