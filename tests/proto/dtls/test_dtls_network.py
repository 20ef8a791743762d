"""A seeded fake network with loss, duplication and reordering, on virtual time.

Deterministic: the same seed gives the same trace.  Every loop is bounded.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from loadgen.proto.dtls import (
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    ApplicationDataReceived,
    DtlsConnection,
    DtlsEvent,
    HandshakeCompleted,
    HandshakeTimedOut,
    State,
)
from loadgen.proto.dtls.records import parse_records_untrusted
from tests.proto.dtls.dtls_testlib import events, make_pair, make_session

MAX_STEPS = 20_000


@dataclass
class FakeNet:
    seed: int
    loss: float = 0.0
    dup: float = 0.0
    jitter_s: float = 0.0
    latency_s: float = 0.05
    #: drop everything in one direction ("c2s" or "s2c")
    blackhole: str | None = None
    rng: random.Random = field(init=False)
    queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def send(self, now: float, direction: str, datagram: bytes) -> None:
        if direction == self.blackhole or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            self.counter += 1
            at = now + self.latency_s + self.rng.random() * self.jitter_s
            heapq.heappush(self.queue, (at, self.counter, direction, datagram))


@dataclass
class Outcome:
    client_events: list[tuple[float, DtlsEvent]] = field(default_factory=list)
    server_events: list[tuple[float, DtlsEvent]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    trace: list[tuple[float, str, bytes]] = field(default_factory=list)
    end: float = 0.0


def simulate(
    client: DtlsConnection, server: DtlsConnection, net: FakeNet, *, data: int = 0
) -> Outcome:
    """Run until nothing is scheduled.  Once both ends completed, the client sends ``data``
    numbered packets and the server echoes what it receives (through the same network).
    (Data racing the client's Finished is covered in test_dtls_connection.)"""
    out = Outcome()
    now = 0.0
    client.connect(now)
    sent_data = False
    for _ in range(MAX_STEPS):
        for conn, direction in ((client, "c2s"), (server, "s2c")):
            for datagram in conn.datagrams_to_send(now):
                out.sent[direction] += 1
                out.trace.append((now, direction, datagram))
                net.send(now, direction, datagram)
        for conn, log in ((client, out.client_events), (server, out.server_events)):
            for event in events(conn):
                log.append((now, event))
                if conn is server and isinstance(event, ApplicationDataReceived):
                    server.send_application_data(event.data)
        both_up = client.state is server.state is State.ESTABLISHED
        if data and not sent_data and both_up:
            sent_data = True
            for i in range(data):
                client.send_application_data(b"\x00" + i.to_bytes(2))
            continue
        candidates = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
        if net.queue:
            candidates.append(net.queue[0][0])
        if not candidates:
            out.end = now
            return out
        now = max(now, min(candidates))
        while net.queue and net.queue[0][0] <= now:
            _, _, direction, datagram = heapq.heappop(net.queue)
            (server if direction == "c2s" else client).receive_datagram(datagram, now)
        for conn in (client, server):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
    raise AssertionError("simulation did not settle")


def _kinds(log: list[tuple[float, DtlsEvent]]) -> list[type]:
    return [type(e) for _, e in log]


def _first_kinds(out: Outcome, direction: str) -> list[tuple[int, int, int]]:
    """(epoch, content type, handshake type or -1) of each datagram's first record."""
    kinds = []
    for _, d, datagram in out.trace:
        if d == direction:
            (record, *_rest) = parse_records_untrusted(datagram)
            hs_type = record.fragment[0] if record.content_type == 22 and record.epoch == 0 else -1
            kinds.append((record.epoch, record.content_type, hs_type))
    return kinds


def _check_invariants(out: Outcome, client: DtlsConnection, server: DtlsConnection) -> str:
    """Outcome, timing and retransmit-count rules; returns the client's outcome."""
    terminal = [
        (t, e)
        for t, e in out.client_events
        if isinstance(e, HandshakeCompleted | HandshakeTimedOut)
    ]
    assert len(terminal) == 1, out.client_events
    at, event = terminal[0]
    assert client.client_hello is not None
    cookie_hellos = 1 if client.client_hello.cookie else 0  # the HVR answer is a new flight
    client_kinds = _first_kinds(out, "c2s")
    hellos = client_kinds.count((0, 22, 1))
    finals = client_kinds.count((0, 20, -1))
    server_flights = _first_kinds(out, "s2c").count((0, 22, 2))
    # every flight (re)send is one retransmit, apart from the first of each flight
    assert server_flights == (1 + server.counters.retransmits if server_flights else 0)
    if isinstance(event, HandshakeTimedOut):
        assert at == 31.0  # the schedule's give-up offset, exactly
        assert event.retransmits == client.counters.retransmits == 4
        assert (hellos, finals) == (5 + cookie_hellos, 0)
        assert not any(isinstance(e, HandshakeCompleted) for _, e in out.server_events)
        return "timeout"
    assert isinstance(event, HandshakeCompleted)
    assert at < 31.0 and event.retransmits <= 4
    # the hello flight: first send + its timer re-sends; the final flight: first + triggered
    assert hellos + finals == 2 + cookie_hellos + client.counters.retransmits
    assert hellos == 1 + cookie_hellos + event.retransmits
    server_done = [e for _, e in out.server_events if isinstance(e, HandshakeCompleted)]
    if server_done:
        assert server.state is State.ESTABLISHED
    else:  # every re-send of ours or the server's was lost: it gave up on its schedule
        assert [type(e) for _, e in out.server_events] == [HandshakeTimedOut]
    return "completed"


SUITES = [
    (DTLS_CIPHERS_HEADER, "AES128-SHA"),
    (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM"),
    (DTLS12_CIPHERS_HEADER, "ECDHE-RSA-AES256-GCM-SHA384"),
]


@pytest.mark.parametrize("names", SUITES, ids=[n for _, n in SUITES])
@pytest.mark.parametrize("hello_verify", [False, True], ids=["plain", "hvr"])
def test_duplication_and_reordering_never_cost_a_retransmission(
    names: tuple[str, str], hello_verify: bool
) -> None:
    for seed in range(25):
        client, server = make_pair(
            make_session(*names, seed=seed), seed=seed, hello_verify=hello_verify
        )
        # jitter below the 1 s first retransmission even for the HVR's extra round trip
        net = FakeNet(seed, dup=0.5, jitter_s=0.15 if hello_verify else 0.4)
        out = simulate(client, server, net, data=40)
        assert _check_invariants(out, client, server) == "completed"
        assert _kinds(out.server_events)[0] is HandshakeCompleted
        for log in (out.client_events, out.server_events):
            assert next(e for _, e in log if isinstance(e, HandshakeCompleted)).retransmits == 0
        # duplicates are removed by the replay window; nothing is lost on this network
        got = [e.data for _, e in out.server_events if isinstance(e, ApplicationDataReceived)]
        assert sorted(got) == [b"\x00" + i.to_bytes(2) for i in range(40)]
        echoed = [e.data for _, e in out.client_events if isinstance(e, ApplicationDataReceived)]
        assert sorted(echoed) == sorted(got)
        assert client.counters.records_dropped_bad == server.counters.records_dropped_bad == 0


@pytest.mark.parametrize("names", SUITES, ids=[n for _, n in SUITES])
@pytest.mark.parametrize("hello_verify", [False, True], ids=["plain", "hvr"])
def test_lossy_network_completes_or_times_out_on_schedule(
    names: tuple[str, str], hello_verify: bool
) -> None:
    results = []
    for seed in range(60):
        client, server = make_pair(
            make_session(*names, seed=seed), seed=seed, hello_verify=hello_verify
        )
        net = FakeNet(seed, loss=0.45, dup=0.2, jitter_s=0.3)
        out = simulate(client, server, net, data=20)
        result = _check_invariants(out, client, server)
        results.append(result)
        if result == "completed":
            got = [e.data for _, e in out.server_events if isinstance(e, ApplicationDataReceived)]
            assert len(got) == len(set(got)) and set(got) <= {
                b"\x00" + i.to_bytes(2) for i in range(20)
            }
    # this loss rate exercises both outcomes
    assert 0 < results.count("timeout") < results.count("completed")


@pytest.mark.parametrize("hello_verify", [False, True], ids=["plain", "hvr"])
def test_black_hole_times_out_at_31s_with_four_retransmits(hello_verify: bool) -> None:
    client, server = make_pair(make_session(*SUITES[0]), hello_verify=hello_verify)
    out = simulate(client, server, FakeNet(1, loss=1.0))
    assert out.client_events == [(31.0, HandshakeTimedOut(retransmits=4))]
    assert [t for t, d, _ in out.trace if d == "c2s"] == [0.0, 1.0, 3.0, 7.0, 15.0]
    assert out.server_events == [] and server.state is State.WAIT_CLIENT_HELLO


def test_server_to_client_black_hole() -> None:
    """The server hears every ClientHello but the client hears nothing: the client times out
    at 31 s; the server re-sends once per retransmitted hello / timer tick (never twice at
    the same moment) and gives up 31 s after its first flight."""
    client, server = make_pair(make_session(*SUITES[1]))
    out = simulate(client, server, FakeNet(2, latency_s=0.2, blackhole="s2c"))
    assert out.client_events == [(31.0, HandshakeTimedOut(retransmits=4))]
    ((at, event),) = out.server_events
    assert at == pytest.approx(31.2) and event == HandshakeTimedOut(retransmits=4)
    assert out.sent["s2c"] == 3 * 5  # the three-datagram flight, sent 5 times
    assert server.counters.records_dropped_replay == 0


def test_final_flight_lost_server_timer_recovers() -> None:
    """Only the client's CCS+Finished is lost (first time): the server's own timer re-sends,
    the client answers with its final flight again, both complete."""
    client, server = make_pair(make_session(*SUITES[0]))

    class LoseFirstFinal(FakeNet):
        def send(self, now: float, direction: str, datagram: bytes) -> None:
            if direction == "c2s" and datagram[0] == 20 and not getattr(self, "lost", False):
                self.lost = True
                return
            super().send(now, direction, datagram)

    out = simulate(client, server, LoseFirstFinal(3))
    ((client_at, client_done),) = out.client_events
    assert client_at == pytest.approx(0.1) and isinstance(client_done, HandshakeCompleted)
    (at, done) = out.server_events[0]
    assert isinstance(done, HandshakeCompleted) and done.retransmits == 1
    assert at == pytest.approx(1.05 + 0.05 + 0.05)  # server timer at 1.05, round trip
    assert client.counters.retransmits == 1


def test_simulation_is_deterministic() -> None:
    traces = []
    for _ in range(2):
        client, server = make_pair(make_session(*SUITES[2], seed=5), seed=5, hello_verify=True)
        out = simulate(client, server, FakeNet(5, loss=0.3, dup=0.3, jitter_s=0.5), data=10)
        traces.append((out.trace, [(t, repr(e)) for t, e in out.client_events], out.end))
    assert traces[0] == traces[1]
