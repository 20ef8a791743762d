"""Retransmission: the client's schedule, the server's timer, re-sends triggered by the
peer's repeated flight, reordering and early data (protocol.md §7.1, §7.9)."""

from __future__ import annotations

import pytest

from loadgen.proto.dtls import (
    DEFAULT_RETRANSMIT_SCHEDULE_S,
    DTLS0_9,
    DTLS_CIPHERS_HEADER,
    ApplicationDataReceived,
    DtlsConnection,
    HandshakeCompleted,
    HandshakeTimedOut,
    State,
)
from loadgen.proto.dtls import handshake as hs
from loadgen.proto.dtls.records import Record, encode_record, parse_records_untrusted
from loadgen.proto.errors import LocalProtocolError
from tests.proto.dtls.dtls_testlib import events, make_pair, make_session, pump

AES128_SHA = (DTLS_CIPHERS_HEADER, "AES128-SHA")
GCM256 = (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM")


def _records(datagram: bytes) -> list[Record]:
    return parse_records_untrusted(datagram)


def _established(*pair: DtlsConnection) -> None:
    for conn in pair:
        assert conn.state is State.ESTABLISHED
        assert [type(e) for e in events(conn)] == [HandshakeCompleted]


def _server_answered(names: tuple[str, str]) -> tuple[DtlsConnection, DtlsConnection, list[bytes]]:
    client, server = make_pair(make_session(*names))
    client.connect(0.0)
    server.receive_datagram(client.datagrams_to_send(0.0)[0], 0.0)
    return client, server, server.datagrams_to_send(0.0)


# -- retransmission ----------------------------------------------------------------------


def test_client_schedule_and_timeout_with_no_server() -> None:
    client, _ = make_pair(make_session(*AES128_SHA))
    client.connect(100.0)
    (first,) = client.datagrams_to_send(100.0)
    sent = [first]
    timers = []
    for _ in range(10):
        timer = client.get_timer()
        if timer is None:
            break
        timers.append(timer)
        client.handle_timer(timer - 0.001)  # early: nothing happens
        assert client.datagrams_to_send(timer - 0.001) == []
        client.handle_timer(timer)
        sent += client.datagrams_to_send(timer)
    assert timers == [101.0, 103.0, 107.0, 115.0, 131.0]  # sends at 0,1,3,7,15; give up at 31
    assert len(sent) == 5
    assert events(client) == [HandshakeTimedOut(retransmits=4)]
    assert client.state is State.CLOSED
    # the same ClientHello each time, with a fresh record sequence number
    assert [_records(d)[0].seq for d in sent] == [0, 1, 2, 3, 4]
    assert len({_records(d)[0].fragment for d in sent}) == 1
    assert DEFAULT_RETRANSMIT_SCHEDULE_S == (0.0, 1.0, 3.0, 7.0, 15.0, 31.0)


def test_custom_schedule_and_late_timer_calls() -> None:
    client, _ = make_pair(make_session(*GCM256), retransmit_schedule_s=(0, 0.5, 2.0))
    client.connect(0.0)
    client.datagrams_to_send(0.0)
    assert client.get_timer() == 0.5
    client.handle_timer(1.9)  # late: one retransmission, next deadline is the give-up
    assert len(client.datagrams_to_send(1.9)) == 1 and client.get_timer() == 2.0
    client.handle_timer(5.0)
    assert events(client) == [HandshakeTimedOut(retransmits=1)]
    with pytest.raises(LocalProtocolError):
        make_pair(make_session(*GCM256), retransmit_schedule_s=(0, 3, 1))
    with pytest.raises(LocalProtocolError):
        make_pair(make_session(*GCM256), retransmit_schedule_s=(0,))


def test_server_resends_its_flight_for_a_retransmitted_client_hello() -> None:
    client, server, first_flight = _server_answered(AES128_SHA)  # the flight is lost
    client.handle_timer(1.0)
    (retransmitted,) = client.datagrams_to_send(1.0)
    server.receive_datagram(retransmitted, 1.0)
    server.receive_datagram(retransmitted, 1.0)  # duplicated: a replay, dropped
    second_flight = server.datagrams_to_send(1.0)
    assert len(second_flight) == 3 and server.counters.retransmits == 1
    assert server.counters.records_dropped_replay == 1
    # same messages, new record sequence numbers (epoch 0: 3,4; epoch 1: 1)
    assert [_records(d)[0].seq for d in first_flight] == [0, 1, 0]
    assert [_records(d)[0].seq for d in second_flight] == [2, 3, 1]
    for datagram in second_flight:
        client.receive_datagram(datagram, 1.1)
    pump(client, server, 1.1)
    assert events(client) == [
        HandshakeCompleted(version=DTLS0_9, cipher_name="AES128-SHA", retransmits=1)
    ]
    assert events(server) == [
        HandshakeCompleted(version=DTLS0_9, cipher_name="AES128-SHA", retransmits=1)
    ]


def test_client_resends_ccs_finished_when_the_server_repeats_its_flight() -> None:
    client, server = make_pair(make_session(*GCM256))
    client.connect(0.0)
    server.receive_datagram(client.datagrams_to_send(0.0)[0], 0.0)
    flight = server.datagrams_to_send(0.0)
    for datagram in flight:
        client.receive_datagram(datagram, 0.0)
    (lost,) = client.datagrams_to_send(0.0)
    assert [type(e) for e in events(client)] == [HandshakeCompleted]
    assert server.get_timer() == 1.0  # the server retransmits on its own schedule too
    server.handle_timer(1.0)
    repeated = server.datagrams_to_send(1.0)
    for datagram in repeated:  # all three arrive: one coalesced re-send
        client.receive_datagram(datagram, 1.0)
    (again,) = client.datagrams_to_send(1.0)
    assert client.counters.retransmits == 1
    assert [r.content_type for r in _records(again)] == [20, 22]
    assert [r.seq for r in _records(again)] == [2, 1]
    assert _records(lost)[0].fragment == _records(again)[0].fragment
    server.receive_datagram(again, 1.0)
    assert events(server) == [
        HandshakeCompleted(version=0xFEFD, cipher_name="OC-DTLS1_2-AES256-GCM", retransmits=1)
    ]
    assert server.get_timer() is None


@pytest.mark.parametrize("order", [(2, 1, 0), (1, 2, 0), (2, 0, 1), (1, 0, 2)])
def test_reordered_server_flight(order: tuple[int, int, int]) -> None:
    """Finished before CCS, CCS before ServerHello: buffered, not lost (§7.1)."""
    client, server = make_pair(make_session(*AES128_SHA))
    client.connect(0.0)
    server.receive_datagram(client.datagrams_to_send(0.0)[0], 0.0)
    flight = server.datagrams_to_send(0.0)
    for i in order:
        client.receive_datagram(flight[i], 0.0)
    pump(client, server)
    _established(client, server)


def test_early_application_data_is_delivered_after_the_finished() -> None:
    client, server = make_pair(make_session(*AES128_SHA))
    client.connect(0.0)
    server.receive_datagram(client.datagrams_to_send(0.0)[0], 0.0)
    for datagram in server.datagrams_to_send(0.0):
        client.receive_datagram(datagram, 0.0)
    (final,) = client.datagrams_to_send(0.0)
    client.send_application_data(b"\x00early")
    (data,) = client.datagrams_to_send(0.0)
    server.receive_datagram(data, 0.0)  # before CCS: buffered
    ccs, fin = _records(final)
    server.receive_datagram(encode_record(20, DTLS0_9, 0, 1, ccs.fragment), 0.0)
    server.receive_datagram(data, 0.0)  # after CCS, before Finished: held
    server.receive_datagram(final, 0.0)
    assert events(server) == [
        HandshakeCompleted(version=DTLS0_9, cipher_name="AES128-SHA", retransmits=0),
        ApplicationDataReceived(data=b"\x00early"),
    ]
    assert fin.epoch == 1


@pytest.mark.parametrize("start", [0.1 + 0.2, 1e9 + 0.123456789, 7.77])
def test_timer_fires_exactly_at_awkward_float_times(start: float) -> None:
    """Regression: handle_timer(get_timer()) must always advance, whatever the rounding of
    start + offset (an un-advanced due timer would spin the driver's loop)."""
    client, _ = make_pair(make_session(*GCM256), retransmit_schedule_s=(0, 0.1, 0.3, 0.7))
    client.connect(start)
    deadlines = []
    for _ in range(10):
        timer = client.get_timer()
        if timer is None:
            break
        deadlines.append(timer)
        client.handle_timer(timer)
    assert len(deadlines) == 3
    assert events(client) == [HandshakeTimedOut(retransmits=2)]


def test_a_different_client_hello_does_not_trigger_a_resend() -> None:
    client, server, _ = _server_answered(AES128_SHA)
    assert client.client_hello is not None
    other = hs.ClientHello(
        client_version=DTLS0_9,
        random=b"\x42" * 32,
        session_id=client.client_hello.session_id,
        cipher_suites=client.client_hello.cipher_suites,
    )
    server.receive_datagram(
        encode_record(22, DTLS0_9, 0, 9, hs.encode_handshake(1, 0, other.encode())), 0.5
    )
    assert server.datagrams_to_send(0.5) == []
    assert server.counters.retransmits == 0 and server.counters.records_dropped_unexpected == 1


@pytest.mark.parametrize("timer_first", [True, False])
def test_timer_and_trigger_at_the_same_moment_send_once(timer_first: bool) -> None:
    """The server's timer and a retransmitted ClientHello coincide: one re-send, whatever
    the order the driver handles them in."""
    client, server, _ = _server_answered(AES128_SHA)
    client.handle_timer(1.0)
    (again,) = client.datagrams_to_send(1.0)
    assert server.get_timer() == 1.0
    if timer_first:
        server.handle_timer(1.0)
        server.receive_datagram(again, 1.0)
    else:
        server.receive_datagram(again, 1.0)
        server.handle_timer(1.0)
    assert len(server.datagrams_to_send(1.0)) == 3
    assert server.counters.retransmits == 1
    # a trigger a little later is honoured again
    client.handle_timer(3.0)
    server.receive_datagram(client.datagrams_to_send(3.0)[0], 3.0)
    assert len(server.datagrams_to_send(3.0)) == 3 and server.counters.retransmits == 2
