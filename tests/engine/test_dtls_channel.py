"""The DTLS channel (loadgen/engine/dtls.py) on a seeded in-memory network and virtual time.

The gateway is the sans-IO server role (tests/helpers/fakenet.py, DtlsEchoServer);
trio's MockClock with autojump makes every timer exact: the seed's ClientHello
schedule (0, 1, 3, 7, 15 s, given up at 31 s, protocol.md §7.9), re-attempts,
DPD (dead after 2 x DPD of silence, §5.3) and keepalive are checked to the tick.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from loadgen.engine.dtls import DatagramSocket, DtlsChannel, DtlsOptions, DtlsState
from loadgen.failures import FallbackReason
from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS1_2,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
    AlertDescription,
    AlertLevel,
    ClientHello,
    DtlsConnection,
    DtlsSession,
    Role,
    parse_client_hello_datagram_untrusted,
)
from loadgen.proto.dtls.records import ContentType, encode_record
from loadgen.proto.errors import BadPacketError, LocalProtocolError
from tests.helpers.fakenet import (
    DtlsEchoServer,
    FakeEndpoint,
    FakeNetwork,
    Link,
    serving_socket_factory,
)
from tests.proto.dtls.dtls_testlib import make_session

LAT = 0.01  # one-way latency of the quiet network: a round trip is 0.02 s
SCHEDULE_S = (0.0, 1.0, 3.0, 7.0, 15.0, 31.0)  # the seed's five sends, given up at 31 s
LIMIT_S = 1000.0  # virtual seconds; every test is bounded by this

# protocol.md §7.3: (wire version, suite code) per name, per CONNECT response header
EXPECTED_WIRE = {
    (DTLS_CIPHERS_HEADER, "AES128-SHA"): (DTLS0_9, 0x002F),
    (DTLS_CIPHERS_HEADER, "AES256-SHA"): (DTLS0_9, 0x0035),
    (DTLS_CIPHERS_HEADER, "DHE-RSA-AES128-SHA"): (DTLS0_9, 0x0033),
    (DTLS_CIPHERS_HEADER, "DHE-RSA-AES256-SHA"): (DTLS0_9, 0x0039),
    (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES128-GCM"): (DTLS1_2, 0x009C),
    (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM"): (DTLS1_2, 0x009D),
    (DTLS12_CIPHERS_HEADER, "ECDHE-RSA-AES256-GCM-SHA384"): (DTLS1_2, 0xC030),
    (DTLS12_CIPHERS_HEADER, "ECDHE-RSA-AES128-GCM-SHA256"): (DTLS1_2, 0xC02F),
    (DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384"): (DTLS1_2, 0x009D),
    (DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256"): (DTLS1_2, 0x009C),
    (DTLS12_CIPHERS_HEADER, "DHE-RSA-AES256-SHA"): (DTLS1_2, 0x0039),
    (DTLS12_CIPHERS_HEADER, "DHE-RSA-AES128-SHA"): (DTLS1_2, 0x0033),
    (DTLS12_CIPHERS_HEADER, "AES256-SHA"): (DTLS1_2, 0x0035),
    (DTLS12_CIPHERS_HEADER, "AES128-SHA"): (DTLS1_2, 0x002F),
}
ALL_CIPHERS = [(DTLS_CIPHERS_HEADER, n) for n in KNOWN_DTLS_CIPHERS] + [
    (DTLS12_CIPHERS_HEADER, n) for n in KNOWN_DTLS12_CIPHERS
]


def ip_packet(n: int, size: int = 60) -> bytes:
    """A recognisable IPv4-looking packet (the channel does not parse it)."""
    head = bytes([0x45, 0]) + size.to_bytes(2, "big") + n.to_bytes(4, "big")
    return head + bytes((n + i) & 0xFF for i in range(size - len(head)))


def quiet_net(seed: int = 1) -> FakeNetwork:
    return FakeNetwork(seed, c2s=Link(latency_s=LAT), s2c=Link(latency_s=LAT))


SocketFactory = Callable[[], Awaitable[DatagramSocket]]


@dataclass
class Rig:
    net: FakeNetwork
    server: DtlsEchoServer
    session: DtlsSession
    start: float
    channel: DtlsChannel = field(init=False)
    states: list[tuple[float, DtlsState]] = field(default_factory=list)
    packets: list[tuple[float, bytes]] = field(default_factory=list)
    factory_calls: list[float] = field(default_factory=list)
    run_ended_at: float | None = None
    run_error: BaseException | None = None
    #: cancels run() only (the gateway keeps going)
    run_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _changed: trio.Event = field(default_factory=trio.Event)

    def now(self) -> float:
        """Virtual seconds since the channel started."""
        return trio.current_time() - self.start

    def rel(self, at: float) -> float:
        return at - self.start

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def on_state(self, state: DtlsState) -> None:
        self.states.append((self.now(), state))
        self._notify()

    def on_packet(self, packet: bytes) -> None:
        self.packets.append((self.now(), packet))
        self._notify()

    def state_log(self) -> list[DtlsState]:
        return [s for _, s in self.states]

    def state_times(self, state: DtlsState) -> list[float]:
        return [t for t, s in self.states if s is state]

    async def wait_state(self, state: DtlsState, count: int = 1) -> float:
        """Until ``state`` was entered ``count`` times; when it was (relative)."""
        while len(self.state_times(state)) < count:
            await self._changed.wait()
        return self.state_times(state)[count - 1]

    async def wait_packets(self, count: int) -> None:
        while len(self.packets) < count:
            await self._changed.wait()

    async def wait_run_end(self) -> float:
        while self.run_ended_at is None:
            await self._changed.wait()
        return self.run_ended_at

    def clients(self) -> list[FakeEndpoint]:
        return [client for client, _ in self.net.pairs]

    def hello_times(self, endpoint: FakeEndpoint | None = None) -> list[float]:
        """When ClientHellos were sent (relative), on one client socket or all."""
        endpoints = [endpoint] if endpoint is not None else self.clients()
        return [self.rel(d.at) for e in endpoints for d in e.sent if _hello(d.data) is not None]


def _hello(datagram: bytes) -> ClientHello | None:
    try:
        return parse_client_hello_datagram_untrusted(datagram)
    except BadPacketError:
        return None


@asynccontextmanager
async def running(
    net: FakeNetwork,
    *,
    header: str = DTLS_CIPHERS_HEADER,
    name: str = "AES128-SHA",
    dpd_s: float = 0.0,
    keepalive_s: float = 0.0,
    options: DtlsOptions | None = None,
    server: DtlsEchoServer | None = None,
    gateway: Callable[[FakeEndpoint, DtlsSession], Awaitable[None]] | None = None,
    wrap: Callable[[SocketFactory], SocketFactory] | None = None,
    seed: int = 1,
) -> AsyncIterator[Rig]:
    """The channel running against ``server`` (default: an echo gateway knowing the
    session), or against ``gateway(endpoint, session)`` per client socket.  An exception
    out of run() is kept in ``run_error``."""
    session = make_session(header, name, seed)
    if server is None:
        server = DtlsEchoServer([session], seed=seed)
    async with trio.open_nursery() as nursery:
        rig = Rig(net=net, server=server, session=session, start=trio.current_time())
        serving = serving_socket_factory(net, server, nursery)

        async def counted() -> DatagramSocket:
            rig.factory_calls.append(rig.now())
            if gateway is None:
                return await serving()
            client, server_end = net.pair()
            nursery.start_soon(gateway, server_end, session)
            return client

        factory: SocketFactory = counted if wrap is None else wrap(counted)
        rig.channel = DtlsChannel(
            session=session,
            header=header,
            cipher_name=name,
            dpd_s=dpd_s,
            keepalive_s=keepalive_s,
            options=options or DtlsOptions(reattempt_s=0),
            socket_factory=factory,
            on_packet=rig.on_packet,
            on_state=rig.on_state,
            random_bytes=random.Random(seed + 100).randbytes,
        )
        assert rig.channel.state is DtlsState.CONNECTING
        assert not rig.channel.up

        async def run() -> None:
            try:
                with rig.run_scope:
                    await rig.channel.run()
            except Exception as exc:
                rig.run_error = exc
            rig.run_ended_at = rig.now()
            rig._notify()

        nursery.start_soon(run)
        yield rig
        nursery.cancel_scope.cancel()


def expected_retransmits(schedule: tuple[float, ...], completed_at: float) -> int:
    """Timer re-sends before the handshake completed: the schedule points passed."""
    return sum(1 for s in schedule[1:-1] if s < completed_at)


# --- handshake and data, every cipher through each header ----------------------------------


@pytest.mark.parametrize(("header", "name"), ALL_CIPHERS)
async def test_every_cipher_comes_up_and_carries_data_both_ways(
    autojump_clock: trio.testing.MockClock, header: str, name: str
) -> None:
    version, code = EXPECTED_WIRE[(header, name)]
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), header=header, name=name) as rig:
            up_at = await rig.wait_state(DtlsState.UP)
            channel = rig.channel
            assert up_at == pytest.approx(2 * LAT)  # one round trip, no retransmission
            assert channel.up and rig.state_log() == [DtlsState.UP]  # from CONNECTING
            assert channel.first_outcome.is_set()  # set with UP, no await in between
            assert channel.handshake_s == pytest.approx(2 * LAT)
            report = channel.report
            assert report.version == ("DTLS0.9" if version == DTLS0_9 else "DTLS1.2")
            assert (report.header, report.cipher) == (header, name)
            assert (report.retransmits, report.attempts, report.fallback) == (0, 1, None)
            assert channel.cipher.code == code

            # the wire: one ClientHello resuming X-DTLS-Session-ID with the one suite (§7.4)
            (client,) = rig.clients()
            hello = _hello(client.sent[0].data)
            assert hello is not None
            assert client.sent[0].data[1:3] == version.to_bytes(2, "big")
            assert hello.client_version == version
            assert hello.cipher_suites == (code,)
            assert hello.session_id == rig.session.session_id

            # data both ways: the gateway sees the exact IP bytes; its echo reaches on_packet
            packets = [ip_packet(i, 40 + 300 * i) for i in range(3)]
            for packet in packets:
                await channel.send_ip(packet)
            await rig.wait_packets(3)
            assert rig.server.data() == packets
            assert [p for _, p in rig.packets] == packets
            await rig.server.send_frame(cstp.PacketType.DATA, b"\x60gateway-initiated")
            await rig.wait_packets(4)
            assert rig.packets[-1][1] == b"\x60gateway-initiated"
            assert (channel.tx_packets, channel.rx_packets) == (3, 4)
            assert rig.run_ended_at is None and rig.factory_calls == [0.0]


async def test_hello_verify_request_costs_no_retransmission(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cisco may answer with a HelloVerifyRequest (§7.2): a second ClientHello, same schedule."""
    session = make_session(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384", 1)
    server = DtlsEchoServer([session], hello_verify=True)
    with trio.fail_after(LIMIT_S):
        async with running(
            quiet_net(), header=DTLS12_CIPHERS_HEADER, name="AES256-GCM-SHA384", server=server
        ) as rig:
            up_at = await rig.wait_state(DtlsState.UP)
            assert up_at == pytest.approx(4 * LAT)
            assert rig.hello_times() == pytest.approx([0.0, 2 * LAT])
            assert rig.channel.report.retransmits == 0
            await rig.channel.send_ip(ip_packet(1))
            await rig.wait_packets(1)


# --- loss, duplication and reordering ----------------------------------------------------

IMPAIRED_LATENCY_S = 0.037  # completions never tie with a schedule point
PROFILES: dict[str, Callable[[], Link]] = {
    "loss": lambda: Link(latency_s=IMPAIRED_LATENCY_S, loss=0.35),
    "duplication": lambda: Link(latency_s=IMPAIRED_LATENCY_S, duplicate=0.5),
    "reordering": lambda: Link(latency_s=IMPAIRED_LATENCY_S, reorder=0.5, reorder_delay_s=0.8),
    "everything": lambda: Link(
        latency_s=IMPAIRED_LATENCY_S, loss=0.25, duplicate=0.3, reorder=0.4, reorder_delay_s=0.6
    ),
}


def _lossy_net(seed: int, profile: str) -> FakeNetwork:
    return FakeNetwork(seed, c2s=PROFILES[profile](), s2c=PROFILES[profile]())


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("seed", range(6))
async def test_impaired_network_handshake_follows_the_schedule(
    autojump_clock: trio.testing.MockClock, profile: str, seed: int
) -> None:
    lossy = PROFILES[profile]().loss > 0
    with trio.fail_after(LIMIT_S):
        async with running(_lossy_net(seed, profile), seed=seed) as rig:
            channel = rig.channel
            await channel.first_outcome.wait()
            report = channel.report
            (client,) = rig.clients()
            if not channel.up:
                # every ClientHello or every answer lost: given up exactly at 31 s
                assert lossy, "no loss, yet no handshake"
                assert report.fallback is FallbackReason.TIMEOUT
                assert rig.now() == pytest.approx(31.0)
                assert report.retransmits == 4
                assert rig.hello_times() == pytest.approx(list(SCHEDULE_S[:-1]))
                return
            up_at = rig.state_times(DtlsState.UP)[0]
            retransmits = expected_retransmits(SCHEDULE_S, up_at)
            assert report.retransmits == retransmits
            # the ClientHellos went out exactly on the schedule, until the answer came
            assert rig.hello_times(client) == pytest.approx(list(SCHEDULE_S[: 1 + retransmits]))

            # data flows: what comes back is what we sent, never twice (replay window)
            sent = [ip_packet(i) for i in range(40)]
            for packet in sent:
                await channel.send_ip(packet)
                await trio.sleep(0.1)
            await trio.sleep(5.0)
            echoed = [p for _, p in rig.packets]
            assert len(echoed) == len(set(echoed))
            assert set(echoed) <= set(sent)
            assert set(rig.server.data()) <= set(sent)
            if lossy:
                assert len(echoed) >= 5
            else:
                assert sorted(echoed) == sorted(sent)  # nothing lost, dups dropped
            assert channel.up and report.attempts == 1


# --- UDP blocked: the fallback timeout ---------------------------------------------------


async def test_udp_blocked_falls_back_at_31_s_after_4_retransmits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_net()
    net.set_blocked(True)
    with trio.fail_after(LIMIT_S):
        async with running(net) as rig:
            await trio.sleep(30.999)
            assert not rig.channel.first_outcome.is_set()
            assert rig.states == []
            await rig.channel.first_outcome.wait()
            report = rig.channel.report
            assert rig.now() == pytest.approx(31.0)
            assert rig.state_log() == [DtlsState.DOWN]
            assert rig.state_times(DtlsState.DOWN) == pytest.approx([31.0])
            assert report.fallback is FallbackReason.TIMEOUT
            assert report.fallbacks == [FallbackReason.TIMEOUT]
            assert (report.retransmits, report.attempts, report.version) == (4, 1, None)
            assert rig.hello_times() == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0])
            assert rig.channel.handshake_s is None
            # reattempt_s=0: run() returns at once and releases the socket
            await rig.wait_state(DtlsState.DOWN)
            assert await rig.wait_run_end() == pytest.approx(31.0)
            assert rig.run_error is None
            (client,) = rig.clients()
            assert client.closed
            assert net.c2s.stats.blocked == 5


async def test_custom_schedule_is_followed(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_net()
    net.set_blocked(True)
    schedule = (0.0, 0.25, 2.0, 2.5, 9.0)
    with trio.fail_after(LIMIT_S):
        async with running(net, options=DtlsOptions(schedule_s=schedule, reattempt_s=0)) as rig:
            await rig.channel.first_outcome.wait()
            assert rig.now() == pytest.approx(9.0)
            assert rig.hello_times() == pytest.approx([0.0, 0.25, 2.0, 2.5])
            assert rig.channel.report.retransmits == 3
            assert rig.channel.report.fallback is FallbackReason.TIMEOUT


async def test_answers_lost_only_one_way_also_time_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_net()
    net.s2c.blocked = True  # the gateway answers, nothing comes back
    with trio.fail_after(LIMIT_S):
        async with running(net) as rig:
            await rig.channel.first_outcome.wait()
            assert rig.now() == pytest.approx(31.0)
            assert rig.channel.report.retransmits == 4
            assert rig.channel.report.fallback is FallbackReason.TIMEOUT
            assert rig.server.connections and rig.server.handshakes == 0


# --- ICMP port unreachable ---------------------------------------------------------------


async def test_icmp_unreachable_falls_back_at_once(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_net()
    net.c2s.icmp_unreachable = True
    with trio.fail_after(LIMIT_S):
        async with running(net) as rig:
            await rig.channel.first_outcome.wait()
            # the ICMP comes back after one network latency: no retransmission waited for
            assert rig.now() == pytest.approx(LAT)
            report = rig.channel.report
            assert report.fallback is FallbackReason.ICMP_UNREACHABLE
            assert (report.retransmits, report.attempts) == (0, 1)
            assert rig.hello_times() == [0.0]
            assert rig.state_log() == [DtlsState.DOWN]


async def test_icmp_then_the_port_opens_same_socket_next_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_net()
    net.c2s.icmp_unreachable = True
    with trio.fail_after(LIMIT_S):
        async with running(net, options=DtlsOptions(reattempt_s=10.0)) as rig:
            await rig.wait_state(DtlsState.DOWN)
            net.c2s.icmp_unreachable = False
            up_at = await rig.wait_state(DtlsState.UP)
            assert up_at == pytest.approx(LAT + 10.0 + 2 * LAT)
            # a failed handshake keeps the socket: one source port per session (§7.1)
            assert len(rig.factory_calls) == 1
            assert rig.state_log() == [DtlsState.DOWN, DtlsState.CONNECTING, DtlsState.UP]
            assert rig.channel.report.attempts == 2


# --- alerts ------------------------------------------------------------------------------


async def test_gateway_that_does_not_know_the_session_alerts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = DtlsEchoServer([])  # fails the ClientHello: fatal handshake_failure alert
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), server=server) as rig:
            await rig.channel.first_outcome.wait()
            assert rig.now() == pytest.approx(2 * LAT)
            report = rig.channel.report
            assert report.fallback is FallbackReason.ALERT
            assert (report.retransmits, report.attempts) == (0, 1)
            assert rig.state_log() == [DtlsState.DOWN]


def _alert_datagram(version: int, level: int, description: int, seq: int = 0) -> bytes:
    return encode_record(ContentType.ALERT, version, 0, seq, bytes((level, description)))


@pytest.mark.parametrize(("header", "name"), [ALL_CIPHERS[0], ALL_CIPHERS[3], ALL_CIPHERS[-1]])
async def test_handshake_failure_alert_datagram(
    autojump_clock: trio.testing.MockClock, header: str, name: str
) -> None:
    """A gateway that answers any ClientHello with one plaintext fatal alert."""
    version, _code = EXPECTED_WIRE[(header, name)]
    answered: list[float] = []

    async def alerting_gateway(endpoint: FakeEndpoint, _session: DtlsSession) -> None:
        for _ in range(100):
            await endpoint.receive()
            answered.append(trio.current_time())
            alert = _alert_datagram(version, AlertLevel.FATAL, AlertDescription.HANDSHAKE_FAILURE)
            await endpoint.send(alert)

    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), header=header, name=name, gateway=alerting_gateway) as rig:
            assert await rig.wait_run_end() == pytest.approx(2 * LAT)
            assert rig.run_error is None
            assert rig.channel.report.fallback is FallbackReason.ALERT
            assert rig.state_log() == [DtlsState.DOWN]
            assert len(answered) == 1


async def test_warning_alert_during_the_handshake_is_not_a_fallback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_net()
    with trio.fail_after(LIMIT_S):
        async with running(net) as rig:
            await trio.sleep(LAT / 2)
            (_client, server_end) = net.pairs[0]
            # epoch-0 seq 5: unused by the gateway's flight (0, 1) and within the replay
            # window, so the flight that follows is not taken for a replay
            warning = _alert_datagram(
                DTLS0_9, AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION, seq=5
            )
            await server_end.send(warning)
            up_at = await rig.wait_state(DtlsState.UP)
            assert up_at == pytest.approx(2 * LAT)
            assert rig.channel.report.fallbacks == []


async def test_wrong_master_secret_is_a_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """The gateway resumes the session id with another secret: its epoch-1 Finished fails
    the MAC, is dropped silently (§7.5), and the attempt runs out of schedule."""
    ours = make_session(DTLS_CIPHERS_HEADER, "AES256-SHA", 1)
    theirs = DtlsSession(session_id=ours.session_id, master_secret=bytes(48), cipher=ours.cipher)
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), name="AES256-SHA", server=DtlsEchoServer([theirs])) as rig:
            await rig.channel.first_outcome.wait()
            assert rig.now() == pytest.approx(31.0)
            assert rig.channel.report.fallback is FallbackReason.TIMEOUT
            assert rig.channel.report.retransmits == 4
            assert rig.channel.report.version is None


async def test_gateway_close_notify_while_up_falls_back_and_reattempts_on_a_new_port(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), options=DtlsOptions(reattempt_s=5.0)) as rig:
            await rig.wait_state(DtlsState.UP)
            await trio.sleep(1.0)
            await rig.server.close_association()
            down_at = await rig.wait_state(DtlsState.DOWN)
            assert down_at == pytest.approx(2 * LAT + 1.0 + LAT)
            assert rig.channel.report.fallback is FallbackReason.ALERT
            assert rig.clients()[0].closed
            up_again = await rig.wait_state(DtlsState.UP, 2)
            assert up_again == pytest.approx(down_at + 5.0 + 2 * LAT)
            assert rig.factory_calls == pytest.approx([0.0, down_at + 5.0])


# --- re-attempts -------------------------------------------------------------------------


async def test_blocked_then_unblocked_comes_up_on_the_next_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_net()
    net.set_blocked(True)
    with trio.fail_after(LIMIT_S):
        async with running(net, options=DtlsOptions(reattempt_s=60.0)) as rig:
            await rig.wait_state(DtlsState.DOWN)
            await trio.sleep(9.0)  # UDP comes back at 40 s, during the wait
            net.set_blocked(False)
            assert rig.channel.state is DtlsState.DOWN
            up_at = await rig.wait_state(DtlsState.UP)
            # second attempt at 31 + 60 s; its first ClientHello gets through
            assert rig.state_times(DtlsState.CONNECTING) == pytest.approx([91.0])
            assert up_at == pytest.approx(91.0 + 2 * LAT)
            assert rig.hello_times() == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0, 91.0])
            report = rig.channel.report
            assert (report.attempts, report.retransmits) == (2, 4)
            assert report.fallbacks == [FallbackReason.TIMEOUT]
            assert rig.channel.handshake_s == pytest.approx(2 * LAT)
            assert len(rig.factory_calls) == 1  # the same socket (§7.1)
            await rig.channel.send_ip(ip_packet(7))
            await rig.wait_packets(1)


async def test_still_blocked_keeps_reattempting_on_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = quiet_net()
    net.set_blocked(True)
    with trio.fail_after(LIMIT_S):
        async with running(net, options=DtlsOptions(reattempt_s=60.0)) as rig:
            await rig.wait_state(DtlsState.DOWN, 3)
            assert rig.state_times(DtlsState.DOWN) == pytest.approx([31.0, 122.0, 213.0])
            assert rig.channel.report.retransmits == 12
            assert rig.channel.report.attempts == 3
            assert rig.run_ended_at is None


async def test_reattempt_zero_means_run_returns(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_net()
    net.c2s.icmp_unreachable = True
    with trio.fail_after(LIMIT_S):
        async with running(net, options=DtlsOptions(reattempt_s=0)) as rig:
            await rig.wait_run_end()
            net.c2s.icmp_unreachable = False
            await trio.sleep(500.0)
            assert rig.channel.report.attempts == 1
            assert rig.state_log() == [DtlsState.DOWN]
            assert len(rig.hello_times()) == 1


# --- DPD and keepalive -------------------------------------------------------------------


async def test_dpd_declares_a_silent_gateway_dead_and_reattempts_on_a_new_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dpd_s = 10.0
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), dpd_s=dpd_s, options=DtlsOptions(reattempt_s=30.0)) as rig:
            up_at = await rig.wait_state(DtlsState.UP)
            rig.server.silent = True
            down_at = await rig.wait_state(DtlsState.DOWN)
            # nothing received since UP: DPD-REQ at +DPD, again at +DPD/2, dead at 2 x DPD
            assert down_at == pytest.approx(up_at + 2 * dpd_s)
            dpds = rig.server.frames_of(cstp.PacketType.DPD_REQ)
            assert [rig.rel(f.at) for f in dpds] == pytest.approx(
                [up_at + dpd_s + LAT, up_at + 1.5 * dpd_s + LAT]
            )
            report = rig.channel.report
            assert report.fallback is FallbackReason.DPD
            assert not rig.channel.up
            first_socket = rig.clients()[0]
            assert first_socket.closed  # the association is gone with its port

            rig.server.silent = False
            up_again = await rig.wait_state(DtlsState.UP, 2)
            assert rig.factory_calls == pytest.approx([0.0, down_at + 30.0])
            assert up_again == pytest.approx(down_at + 30.0 + 2 * LAT)
            assert rig.state_log() == [
                DtlsState.UP,
                DtlsState.DOWN,
                DtlsState.CONNECTING,
                DtlsState.UP,
            ]
            assert report.attempts == 2 and report.fallbacks == [FallbackReason.DPD]
            second_socket = rig.clients()[1]
            assert second_socket is not first_socket and not second_socket.closed
            await rig.channel.send_ip(ip_packet(3))
            await rig.wait_packets(1)
            assert rig.server.data() == [ip_packet(3)]


async def test_answered_dpd_keeps_the_channel_up(autojump_clock: trio.testing.MockClock) -> None:
    dpd_s = 10.0
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), dpd_s=dpd_s) as rig:
            up_at = await rig.wait_state(DtlsState.UP)
            await trio.sleep(100.0)
            assert rig.state_log() == [DtlsState.UP]
            times = [rig.rel(f.at) for f in rig.server.frames_of(cstp.PacketType.DPD_REQ)]
            # each answer arrives one round trip later and restarts the DPD wait
            expected = [up_at + dpd_s + LAT + i * (dpd_s + 2 * LAT) for i in range(9)]
            assert times == pytest.approx(expected)


async def test_keepalive_after_keepalive_s_without_sending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keepalive_s = 5.0
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), keepalive_s=keepalive_s) as rig:
            up_at = await rig.wait_state(DtlsState.UP)
            await trio.sleep(12.0 - up_at)
            await rig.channel.send_ip(ip_packet(1))  # at 12 s: postpones the next one
            await trio.sleep(8.0)
            kinds = [
                (f.type, round(rig.rel(f.at) - LAT, 6))
                for f in rig.server.frames
                if f.type in (cstp.PacketType.KEEPALIVE, cstp.PacketType.DATA)
            ]
            assert kinds == [
                (cstp.PacketType.KEEPALIVE, round(up_at + 5.0, 6)),
                (cstp.PacketType.KEEPALIVE, round(up_at + 10.0, 6)),
                (cstp.PacketType.DATA, 12.0),
                (cstp.PacketType.KEEPALIVE, 17.0),
            ]
            assert all(f.payload == b"" for f in rig.server.frames_of(cstp.PacketType.KEEPALIVE))
            assert rig.state_log() == [DtlsState.UP]  # no answer to KEEPALIVE, no DPD


async def test_dpd_probe_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net()) as rig:
            assert await rig.channel.dpd_probe(1.0) is None  # not up yet
            await rig.wait_state(DtlsState.UP)
            rtt = await rig.channel.dpd_probe(1.0)
            assert rtt == pytest.approx(2 * LAT)
            (req,) = rig.server.frames_of(cstp.PacketType.DPD_REQ)
            assert len(req.payload) == 8  # random probe id, echoed (§5.2)

            rig.server.silent = True
            before = rig.now()
            assert await rig.channel.dpd_probe(3.0) is None
            assert rig.now() - before == pytest.approx(3.0)


async def test_gateway_dpd_request_is_answered_with_the_same_payload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net()) as rig:
            await rig.wait_state(DtlsState.UP)
            await trio.sleep(1.0)  # our Finished reached the gateway
            sent_at = rig.now()
            await rig.server.send_frame(cstp.PacketType.DPD_REQ, b"hello-dpd")
            await trio.sleep(1.0)
            (resp,) = rig.server.frames_of(cstp.PacketType.DPD_RESP)
            assert resp.payload == b"hello-dpd"
            assert rig.rel(resp.at) == pytest.approx(sent_at + 2 * LAT)
            assert rig.packets == []  # DPD is not data


async def test_unknown_dtls_packet_types_are_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net()) as rig:
            await rig.wait_state(DtlsState.UP)
            await trio.sleep(1.0)  # our Finished reached the gateway
            await rig.server.send_frame(0x42, b"what")
            await rig.server.send_frame(cstp.PacketType.KEEPALIVE)
            await rig.server.send_frame(cstp.PacketType.DATA, b"\x45after")
            await rig.wait_packets(1)
            assert [p for _, p in rig.packets] == [b"\x45after"]
            assert rig.state_log() == [DtlsState.UP]
            assert rig.server.frames == []  # nothing answered


# --- send_ip ------------------------------------------------------------------------------


async def test_send_ip_sends_one_data_record_with_the_exact_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(LIMIT_S):
        async with running(
            quiet_net(), header=DTLS12_CIPHERS_HEADER, name="AES128-GCM-SHA256"
        ) as rig:
            await rig.wait_state(DtlsState.UP)
            (client,) = rig.clients()
            before = len(client.sent)
            packet = ip_packet(9, 1400)
            await rig.channel.send_ip(packet)
            assert len(client.sent) == before + 1  # one datagram, one record
            record = client.sent[-1].data
            assert record[0] == ContentType.APPLICATION_DATA
            assert record[3:5] == b"\x00\x01"  # epoch 1
            # GCM: 13 header + 8 explicit nonce + (1 type byte + packet) + 16 tag (§7.7)
            assert len(record) == 13 + 8 + 1 + len(packet) + 16
            await trio.sleep(1.0)
            (frame,) = rig.server.frames
            assert (frame.type, frame.payload) == (cstp.PacketType.DATA, packet)
            assert rig.channel.tx_packets == 1


async def test_send_ip_when_not_up_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    net = quiet_net()
    net.set_blocked(True)
    with trio.fail_after(LIMIT_S):
        async with running(net) as rig:
            await trio.sleep(0.5)  # handshaking
            with pytest.raises(LocalProtocolError):
                await rig.channel.send_ip(ip_packet(1))


# --- robustness: errors around the channel (were bugs, fixed) -----------------------------


class _Faulty:
    """Wraps a socket: a set ``send_error`` / ``receive_error`` is raised by the next call,
    as a connected UDP socket reports a local or ICMP error."""

    def __init__(self, inner: DatagramSocket) -> None:
        self.inner = inner
        self.send_error: OSError | None = None
        self.receive_error: OSError | None = None

    async def send(self, data: bytes) -> None:
        if self.send_error is not None:
            await trio.lowlevel.checkpoint()
            raise self.send_error
        await self.inner.send(data)

    async def receive(self) -> bytes:
        if self.receive_error is not None:
            await trio.lowlevel.checkpoint()
            raise self.receive_error
        return await self.inner.receive()

    def close(self) -> None:
        self.inner.close()


def _faulty(sockets: list[_Faulty]) -> Callable[[SocketFactory], SocketFactory]:
    def wrap(factory: SocketFactory) -> SocketFactory:
        async def wrapped() -> DatagramSocket:
            sock = _Faulty(await factory())
            sockets.append(sock)
            return sock

        return wrapped

    return wrap


def _refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


async def test_hard_send_error_raises_local_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The documented part: the caller gets LocalProtocolError and re-queues to CSTP (§7.9)."""
    sockets: list[_Faulty] = []
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), wrap=_faulty(sockets)) as rig:
            await rig.wait_state(DtlsState.UP)
            sockets[0].send_error = _refused()
            with pytest.raises(LocalProtocolError):
                await rig.channel.send_ip(ip_packet(1))


async def test_local_error_before_up_is_a_fallback_and_a_new_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """run(): a local OSError (here EIO on receive) ends the attempt as icmp_unreachable."""
    sockets: list[_Faulty] = []
    net = quiet_net()
    net.set_blocked(True)
    with trio.fail_after(LIMIT_S):
        async with running(net, wrap=_faulty(sockets), options=DtlsOptions(reattempt_s=5.0)) as rig:
            await trio.sleep(2.0)
            sockets[0].receive_error = OSError(errno.EIO, "I/O error")
            net.set_blocked(False)
            # the receive after the 3 s retransmission fails
            down_at = await rig.wait_state(DtlsState.DOWN)
            assert down_at == pytest.approx(3.0)
            assert rig.channel.report.fallback is FallbackReason.ICMP_UNREACHABLE
            inner = sockets[0].inner
            assert isinstance(inner, FakeEndpoint) and inner.closed
            up_at = await rig.wait_state(DtlsState.UP)
            assert rig.factory_calls == pytest.approx([0.0, 8.0])
            assert up_at == pytest.approx(8.0 + 2 * LAT)


async def test_socket_factory_error_is_a_fallback(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []

    def wrap(factory: SocketFactory) -> SocketFactory:
        async def failing() -> DatagramSocket:
            calls.append(trio.current_time())
            if len(calls) == 1:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return await factory()

        return failing

    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), wrap=wrap, options=DtlsOptions(reattempt_s=3.0)) as rig:
            await rig.wait_state(DtlsState.UP)
            assert rig.channel.report.fallbacks == [FallbackReason.ICMP_UNREACHABLE]
            assert rig.state_log() == [DtlsState.DOWN, DtlsState.CONNECTING, DtlsState.UP]
            assert len(calls) == 2


async def test_hard_send_error_takes_the_channel_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sockets: list[_Faulty] = []
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), wrap=_faulty(sockets)) as rig:
            await rig.wait_state(DtlsState.UP)
            sockets[0].send_error = _refused()
            with pytest.raises(LocalProtocolError):
                await rig.channel.send_ip(ip_packet(1))
            await trio.sleep(1.0)
            assert not rig.channel.up
            assert rig.state_log() == [DtlsState.UP, DtlsState.DOWN]


async def test_send_ip_other_os_error_is_local_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sockets: list[_Faulty] = []
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), wrap=_faulty(sockets)) as rig:
            await rig.wait_state(DtlsState.UP)
            sockets[0].send_error = OSError(errno.EMSGSIZE, "Message too long")
            with pytest.raises(LocalProtocolError):
                await rig.channel.send_ip(ip_packet(1, 1400))


async def test_local_receive_error_while_up_is_a_fallback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sockets: list[_Faulty] = []
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), wrap=_faulty(sockets)) as rig:
            await rig.wait_state(DtlsState.UP)
            await trio.sleep(1.0)
            sockets[0].receive_error = OSError(errno.EIO, "I/O error")
            await rig.server.send_frame(cstp.PacketType.KEEPALIVE)  # wakes the reader
            await rig.wait_state(DtlsState.DOWN)
            assert rig.channel.report.fallback is FallbackReason.ICMP_UNREACHABLE


async def test_dpd_probe_send_error_gives_none(autojump_clock: trio.testing.MockClock) -> None:
    sockets: list[_Faulty] = []
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), wrap=_faulty(sockets)) as rig:
            await rig.wait_state(DtlsState.UP)
            sockets[0].send_error = _refused()
            assert await rig.channel.dpd_probe(1.0) is None


async def _coalescing_gateway(endpoint: FakeEndpoint, session: DtlsSession) -> None:
    """Answers the ClientHello with its flight plus a DPD-REQ record in the Finished's datagram.

    Premature (the gateway has not seen our Finished) but a datagram may hold several
    records (§7.1); the public API refuses application data before ESTABLISHED, hence
    the writer is used directly.
    """
    conn = DtlsConnection(Role.SERVER, session=session, random_bytes=random.Random(9).randbytes)
    conn.receive_datagram(await endpoint.receive(), trio.current_time())
    flight = conn.datagrams_to_send(trio.current_time())
    writer, seq = conn._writer, conn._write_seq1
    assert writer is not None
    early = cstp.encode_dtls_payload(cstp.PacketType.DPD_REQ, b"early")
    flight[-1] += writer.protect(ContentType.APPLICATION_DATA, (1 << 48) | seq, early)
    for datagram in flight:
        await endpoint.send(datagram)
    await trio.sleep_forever()


async def test_dpd_request_behind_the_finished_does_not_crash_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net(), gateway=_coalescing_gateway) as rig:
            await rig.channel.first_outcome.wait()
            await trio.sleep(1.0)
            assert rig.run_error is None
            assert rig.state_log() == [DtlsState.UP]


async def test_stopped_channel_is_not_up(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT_S):
        async with running(quiet_net()) as rig:
            await rig.wait_state(DtlsState.UP)
            rig.run_scope.cancel()  # what DataPath.stop() does
            await rig.wait_run_end()
            assert rig.clients()[0].closed
            assert not rig.channel.up
            with pytest.raises(LocalProtocolError):
                await rig.channel.send_ip(ip_packet(1))
