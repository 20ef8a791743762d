"""The sans-IO DTLS server as conversations: client-role connections in memory, virtual
time, no trio, no sockets (protocol.md §7.1, §7.7-§7.9, §12)."""

from __future__ import annotations

import random

import pytest

from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    AlertDescription,
    AssociationDown,
    AssociationUp,
    DownReason,
    DropReason,
    DtlsAlertError,
    DtlsServer,
    DtlsSession,
    FrameReceived,
    State,
    lookup_cipher,
    screen_client_hello_untrusted,
)
from loadgen.proto.dtls.records import encode_record
from loadgen.proto.dtls.server import MAX_DATAGRAM_BYTES
from loadgen.proto.errors import LocalProtocolError
from tests.proto.dtls.dtls_testlib import make_session
from tests.proto.dtls.server_lab import (
    ALL_SUITES,
    Lab,
    Target,
    client_hello_bytes,
    down_reasons,
    new_peer_drops,
    stray_datagrams,
)

DATA = cstp.PacketType.DATA
A = ("127.0.0.1", 40000)
B = ("127.0.0.1", 40001)
C = ("::1", 40000, 0, 0)


# -- handshake and data ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"), ALL_SUITES, ids=[f"{h[2:6]}:{n}" for h, n in ALL_SUITES]
)
def test_handshake_frames_both_ways_and_close_notify(header: str, name: str) -> None:
    lab = Lab()
    session = make_session(header, name, seed=1)
    target = lab.add(session)
    client = lab.client(session, A)
    lab.handshake(client)
    (up,) = lab.take()
    assert isinstance(up, AssociationUp) and up.association.target is target
    assoc = up.association
    assert assoc.up and assoc.peer == A and assoc.state is State.ESTABLISHED
    assert lab.server.association_for(session.session_id) is assoc
    # >> a DATA frame; << FrameReceived; the session answers with send_frame
    lab.send_frame(client, DATA, b"\x45ping")
    (frame,) = lab.take()
    assert frame == FrameReceived(association=assoc, ptype=DATA, payload=b"\x45ping")
    assert lab.server.send_frame(assoc, DATA, b"\x45pong", lab.now)
    lab.collect()
    lab.deliver(client)
    assert client.frames == [(DATA, b"\x45pong")]
    assert (assoc.records_in, assoc.records_out) == (1, 1)
    assert assoc.bytes_in == sum(len(d) for d in client.sent)
    assert assoc.bytes_out == sum(len(d) for d, _ in lab.wire)
    # >> the client's close_notify; << AssociationDown(closed), nothing sent back
    client.conn.close()
    sent_before = len(lab.wire)
    lab.flush(client)
    (down,) = lab.take()
    assert down == AssociationDown(association=assoc, reason=DownReason.CLOSED)
    assert len(lab.wire) == sent_before and assoc.closed and not assoc.up
    assert not lab.server.send_frame(assoc, DATA, b"too late", lab.now)
    stats = lab.stats
    assert (stats.handshakes_ok, stats.associations_total, stats.associations_active) == (1, 1, 0)
    assert stats.down[DownReason.CLOSED] == 1 and new_peer_drops(lab.stats) == 0
    assert stats.datagrams_in == len(client.sent) and stats.internal_errors == 0
    assert lab.server.association_count == 0
    # its heap entry is stale: it fires once, finds nothing to do, and is gone
    timer = lab.server.get_timer()
    assert timer is not None
    lab.advance(timer)
    assert lab.server.get_timer() is None and lab.take() == []


def test_fifty_sessions_are_demultiplexed_by_address() -> None:
    lab = Lab()
    clients = []
    for i in range(50):
        session = make_session(*ALL_SUITES[i % len(ALL_SUITES)], seed=1000 + i)
        lab.add(session)
        client = lab.client(session, ("10.0.0.1", 20000 + i), seed=i)
        lab.handshake(client)
        clients.append(client)
    assoc_of = {e.association.peer: e.association for e in lab.take()}
    assert len(assoc_of) == 50 and lab.server.association_count == 50
    for i, client in enumerate(clients):
        lab.send_frame(client, DATA, f"from {i}".encode())
    frames = lab.take()
    assert [(e.association.peer, e.payload) for e in frames if isinstance(e, FrameReceived)] == [
        (c.address, f"from {i}".encode()) for i, c in enumerate(clients)
    ]
    for client in clients:
        assert lab.server.send_frame(assoc_of[client.address], DATA, b"back", lab.now)
    lab.collect()
    for client in clients:
        lab.deliver(client)
        assert client.frames == [(DATA, b"back")]  # its own answer, nobody else's


def test_a_handshake_retransmitted_from_the_same_address_reaches_its_association() -> None:
    lab = Lab()
    session = make_session(DTLS12_CIPHERS_HEADER, "AES128-SHA", seed=12)
    client = lab.start(session, A, seed=12)
    assert len(lab.inbox(A)) == 3  # the server's flight is "lost"
    timer = client.conn.get_timer()
    assert timer is not None
    lab.now = timer
    client.conn.handle_timer(timer)  # our retransmission, same address, within 3 s
    lab.converse(client)
    assert client.completed
    assert [type(e) for e in lab.take()] == [AssociationUp]
    assert lab.stats.dropped[DropReason.TOO_SOON] == 0 and lab.stats.associations_total == 1
    assoc = lab.server.association_for(session.session_id)
    assert assoc is not None and assoc.dtls_counters.retransmits >= 1


# -- screening datagrams from unknown addresses ------------------------------------------


def test_each_kind_of_stray_datagram_is_dropped_with_its_reason_and_leaves_no_state() -> None:
    lab = Lab()
    known = make_session(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384", seed=7)
    lab.add(known)
    catalog = stray_datagrams(known)
    assert all(len(d) > MAX_DATAGRAM_BYTES for d in catalog[DropReason.OVERSIZE])
    for datagrams in catalog.values():
        for datagram in datagrams:
            lab.send(A, datagram)
    for reason, datagrams in catalog.items():
        assert lab.stats.dropped[reason] == len(datagrams), reason
    assert new_peer_drops(lab.stats) == lab.stats.datagrams_in == sum(map(len, catalog.values()))
    server = lab.server
    assert server.association_count == 0 and server.timer_entries == 0
    assert server.handover_entries == 0 and server.get_timer() is None
    assert lab.take() == [] and lab.wire == []


def test_screening_says_why_or_gives_the_hello() -> None:
    known = make_session(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384", seed=7)
    for reason, datagrams in stray_datagrams(known).items():
        if reason in (DropReason.UNKNOWN_SESSION, DropReason.OVERSIZE):
            continue  # a well-formed hello (only the lookup refuses it), and a size check
        for datagram in datagrams:
            assert screen_client_hello_untrusted(datagram) is reason
    session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=3)
    hello = screen_client_hello_untrusted(client_hello_bytes(session, random_=b"\x05" * 32))
    assert not isinstance(hello, DropReason) and hello.session_id == session.session_id
    assert screen_client_hello_untrusted(b"") is DropReason.GARBAGE


def test_an_unknown_session_from_a_thousand_addresses_costs_nothing() -> None:
    lab = Lab()
    rng = random.Random(6)
    for k in range(1000):
        session = make_session(*ALL_SUITES[k % len(ALL_SUITES)], seed=10_000 + k)
        lab.send(("198.51.100.7", 1024 + k), client_hello_bytes(session, random_=rng.randbytes(32)))
    assert lab.stats.dropped[DropReason.UNKNOWN_SESSION] == 1000
    assert lab.server.association_count == lab.server.handover_entries == 0
    assert lab.server.timer_entries == 0 and lab.wire == []


def test_garbage_from_a_known_address_is_dropped_by_its_association() -> None:
    lab = Lab()
    session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=11)
    client, _ = lab.up(session, A, seed=11)
    lab.send_frame(client, DATA, b"one")
    record = client.sent[-1]
    forged = bytearray(record)
    forged[5:11] = (1000).to_bytes(6, "big")  # a fresh sequence number...
    forged[-1] ^= 0x55  # ...and a bad MAC/padding: dropped silently (§7.5)
    for datagram in (record, bytes(forged), record[:20], random.Random(3).randbytes(500)):
        lab.send(A, datagram)
    lab.send(A, b"")  # empty: garbage from anyone, not the association's business
    assert lab.stats.dropped[DropReason.BAD_RECORD] >= 4
    assert new_peer_drops(lab.stats) == lab.stats.dropped[DropReason.GARBAGE] == 1
    (assoc,) = [e.association for e in lab.take() if isinstance(e, FrameReceived)]
    counters = assoc.dtls_counters
    assert counters.records_dropped_replay == 1 and counters.records_dropped_bad == 1
    assert assoc.up and lab.wire[-1][0] != record  # nothing answered the garbage
    lab.send_frame(client, DATA, b"two")
    assert [e.payload for e in lab.take() if isinstance(e, FrameReceived)] == [b"two"]


def test_a_record_without_a_type_byte_is_a_bad_frame() -> None:
    lab = Lab()
    session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=4)
    client, _ = lab.up(session, A)
    client.conn.send_application_data(b"")
    lab.flush(client)
    assert lab.stats.dropped[DropReason.BAD_FRAME] == 1 and lab.take() == []


# -- the 3-second rule and hand-over ----------------------------------------------------


def test_a_new_address_within_the_guard_is_ignored_then_replaces_the_association() -> None:
    lab = Lab(handover_guard_s=3.0)
    session = make_session(DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM", seed=13)
    first, old = lab.up(session, A, seed=13)
    # 1 s later the same session from a second address: ocserv's "too soon"
    lab.now = 1.0
    second = lab.client(session, B, seed=14)
    second.conn.connect(lab.now)
    lab.flush(second)
    assert lab.inbox(B) == [] and lab.stats.dropped[DropReason.TOO_SOON] == 1
    assert lab.server.association_for(session.session_id) is old and old.up
    lab.send_frame(first, DATA, b"old path")  # the old address is unaffected
    assert [type(e) for e in lab.take()] == [FrameReceived]
    # at the guard's end the retransmission from the new address wins
    lab.now = 3.0
    second.conn.handle_timer(lab.now)
    lab.converse(second)
    assert second.completed
    events = lab.take()
    assert [type(e) for e in events] == [AssociationDown, AssociationUp]
    assert events[0] == AssociationDown(association=old, reason=DownReason.REPLACED)
    new = events[1].association
    assert new.peer == B and old.closed and new.up
    assert lab.server.association_for(session.session_id) is new
    assert lab.server.association_count == 1 and lab.stats.associations_total == 2
    # the old address got a close_notify; its later datagrams are strangers
    lab.deliver(first)
    assert first.terminated is not None and first.terminated.error is None
    lab.send(A, first.sent[-1])
    assert lab.stats.dropped[DropReason.NOT_CLIENT_HELLO] == 1


def test_the_guard_is_per_session_and_forgotten_after_it_ran_out() -> None:
    lab = Lab(handover_guard_s=3.0)
    sessions = [make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=s) for s in (40, 41)]
    for i, session in enumerate(sessions):
        lab.add(session)
        lab.handshake(lab.client(session, ("10.0.0.2", 1000 + i), seed=i))
    assert lab.server.handover_entries == 2
    lab.now = 5.0
    lab.send(
        ("10.0.0.3", 1),
        client_hello_bytes(
            make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=42), random_=b"\x01" * 32
        ),
    )
    assert lab.stats.dropped[DropReason.UNKNOWN_SESSION] == 1
    # pruned only on a hello that names a known session
    lab.handshake(lab.client(sessions[0], ("10.0.0.4", 1), seed=9))
    assert lab.server.handover_entries == 1 and lab.stats.down[DownReason.REPLACED] == 1


# -- DPD and the timer heap ----------------------------------------------------------------


def test_a_dpd_request_is_answered_and_passed_on() -> None:
    lab = Lab()
    session = make_session(DTLS_CIPHERS_HEADER, "AES256-SHA", seed=17)
    client, _ = lab.up(session, A, seed=17)
    probe = (1400).to_bytes(4, "little") + bytes(1396)  # an MTU probe (§7.8)
    lab.send_frame(client, cstp.PacketType.DPD_REQ, b"hello-dpd")
    lab.send_frame(client, cstp.PacketType.DPD_REQ, probe)
    lab.deliver(client)
    assert client.frames == [
        (cstp.PacketType.DPD_RESP, b"hello-dpd"),
        (cstp.PacketType.DPD_RESP, probe),
    ]
    assert [(e.ptype, e.payload) for e in lab.take() if isinstance(e, FrameReceived)] == [
        (cstp.PacketType.DPD_REQ, b"hello-dpd"),
        (cstp.PacketType.DPD_REQ, probe),
    ]
    assert lab.stats.dpd_requests_answered == 2


def test_server_dpd_declares_the_association_down_after_three_intervals_of_silence() -> None:
    dpd_s = 10.0
    lab = Lab(dpd_s=dpd_s)
    session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=19)
    client, _ = lab.up(session, A, seed=19)
    lab.advance(1.0)
    lab.send_frame(client, cstp.PacketType.KEEPALIVE, b"")  # the last sign of life
    lab.take()
    lab.advance(1.0 + 2 * dpd_s - 0.001)
    assert lab.deliver(client) == 0  # the heap entry of 2 x dpd after the handshake re-checked
    lab.advance(1.0 + 2 * dpd_s)
    lab.deliver(client)
    assert client.frames == [(cstp.PacketType.DPD_REQ, b"")]
    lab.advance(1.0 + 3 * dpd_s - 0.001)
    lab.deliver(client)
    assert len(client.frames) == 2  # repeated after dpd/2 while unanswered
    assert lab.take() == []
    lab.advance(1.0 + 3 * dpd_s)
    (down,) = lab.take()
    assert isinstance(down, AssociationDown) and down.reason is DownReason.DPD
    lab.deliver(client)
    assert client.terminated is not None and client.terminated.error is None  # close_notify
    assert lab.stats.dpd_requests_sent == 2 and lab.stats.down[DownReason.DPD] == 1
    assert lab.server.association_count == 0
    lab.advance(lab.now + 100.0)
    assert lab.server.get_timer() is None


def test_answered_dpd_keeps_the_association_up() -> None:
    dpd_s = 10.0
    lab = Lab(dpd_s=dpd_s)
    session = make_session(DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES128-GCM", seed=20)
    client, _ = lab.up(session, A, seed=20)
    for step in range(1, 9):
        lab.advance(step * dpd_s)
        lab.deliver(client)
        for ptype, payload in client.frames:
            if ptype == cstp.PacketType.DPD_REQ:
                lab.send_frame(client, cstp.PacketType.DPD_RESP, payload)
        client.frames.clear()
    assert lab.stats.dpd_requests_sent >= 2 and lab.stats.down[DownReason.DPD] == 0
    responses = [e for e in lab.take() if isinstance(e, FrameReceived)]
    assert len(responses) == lab.stats.dpd_requests_sent
    assert all(e.ptype == cstp.PacketType.DPD_RESP for e in responses)


def test_records_do_not_grow_the_timer_heap() -> None:
    """The per-record path pushes nothing: DPD moving later keeps the one heap entry."""
    lab = Lab(dpd_s=1.0)
    session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=30)
    client, _ = lab.up(session, A, seed=32)
    for i in range(1000):
        lab.now = 1.0 + i / 100
        lab.send_frame(client, DATA, b"x")
        lab.server.handle_timer(lab.now)
    (assoc,) = {e.association for e in lab.take()}
    assert assoc.records_in == 1000 and assoc.up
    assert lab.server.timer_entries <= 2
    # silence: the one entry fires, re-arms, and DPD runs its course (2x, then 3x dpd)
    last = 1.0 + 999 / 100
    lab.server.handle_timer(last + 2.0)
    assert lab.stats.dpd_requests_sent == 1 and assoc.up
    lab.server.handle_timer(last + 3.0)
    assert not assoc.up and lab.stats.down[DownReason.DPD] == 1
    assert lab.server.association_count == 0


def test_stale_heap_entries_are_dropped_when_they_outnumber_the_live_ones() -> None:
    lab = Lab()
    rng = random.Random(5)
    assocs = []
    for k in range(1100):  # each waits for the client's Finished: one timer each
        session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=50_000 + k)
        lab.add(session)
        lab.send(("10.1.0.1", 1000 + k), client_hello_bytes(session, random_=rng.randbytes(32)))
    assocs = [e.association for e in lab.take()]
    assert assocs == [] and lab.server.timer_entries == 1100
    for k in range(1100):
        session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=50_000 + k)
        found = lab.server.association_for(session.session_id)
        assert found is not None
        assocs.append(found)
    for assoc in assocs[:-1]:
        lab.server.close_association(assoc, lab.now)
    assert lab.server.timer_entries == 1100  # stale, left in place
    lab.collect()
    assert down_reasons(lab.take()) == [None] * 1099
    session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=1)
    lab.add(session)
    lab.send(B, client_hello_bytes(session, random_=b"\x09" * 32))  # one more push: rebuilt
    assert lab.server.timer_entries == 2 and lab.server.association_count == 2


def test_the_handshake_times_out_on_the_schedule() -> None:
    lab = Lab(retransmit_schedule_s=(0.0, 0.1, 0.3))
    session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=21)
    lab.start(session, A, seed=21)
    lab.advance(1.0)
    assert len(lab.inbox(A)) == 6  # the three-datagram flight, sent at 0 and 0.1 s
    (down,) = lab.take()
    assert isinstance(down, AssociationDown) and down.reason is DownReason.TIMEOUT
    assert lab.stats.handshakes_failed == 1 and lab.stats.down[DownReason.TIMEOUT] == 1
    assert lab.server.association_count == 0


# -- how associations end ------------------------------------------------------------------


def test_a_wrong_suite_is_refused_with_our_alert() -> None:
    lab = Lab()
    session = make_session(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384", seed=22)
    lab.add(session)
    other = DtlsSession(
        session_id=session.session_id,
        master_secret=session.master_secret,
        cipher=lookup_cipher(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256"),
    )
    client = lab.client(other, A, seed=22)
    client.conn.connect(0.0)
    lab.converse(client)
    assert client.terminated is not None and client.terminated.by_peer
    assert isinstance(client.terminated.error, DtlsAlertError)
    assert client.terminated.error.description == AlertDescription.HANDSHAKE_FAILURE
    assert down_reasons(lab.take()) == ["handshake_failed"]
    assert lab.stats.handshakes_failed == 1 and lab.stats.handshakes_ok == 0


def test_a_fatal_alert_from_the_client_ends_the_handshake() -> None:
    lab = Lab()
    session = make_session(DTLS_CIPHERS_HEADER, "AES256-SHA", seed=26)
    lab.start(session, A, seed=26)
    lab.send(A, encode_record(21, DTLS0_9, 0, 5, b"\x02\x28"))  # handshake_failure, epoch 0
    assert down_reasons(lab.take()) == ["alert"]
    assert lab.stats.down[DownReason.ALERT] == lab.stats.handshakes_failed == 1


def test_close_association_discards_its_pending_events_and_sends_close_notify() -> None:
    lab = Lab()
    session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=23)
    client, _ = lab.up(session, A, seed=23)
    for payload in (b"a", b"b"):
        client.conn.send_application_data(cstp.encode_dtls_payload(DATA, payload))
    joined = b"".join(client.conn.datagrams_to_send(lab.now))  # two records, one datagram
    lab.server.receive_datagram(joined, A, lab.now)
    first = lab.server.next_event()
    assert isinstance(first, FrameReceived) and first.payload == b"a"
    assoc = first.association
    lab.server.close_association(assoc, lab.now)  # the session ends it mid-datagram
    lab.server.close_association(assoc, lab.now)  # twice is harmless
    lab.collect()
    assert lab.take() == [AssociationDown(association=assoc, reason=None)]
    lab.deliver(client)
    assert client.terminated is not None and client.terminated.error is None
    assert lab.stats.down == dict.fromkeys(DownReason, 0)  # not the peer's doing
    assert not lab.server.send_frame(assoc, DATA, b"x", lab.now)
    assert lab.server.association_count == 0
    lab.advance(lab.now + 100.0)
    assert lab.server.get_timer() is None


def test_shutdown_ends_every_association_with_close_notify() -> None:
    lab = Lab()
    clients = []
    for i in range(3):
        session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=60 + i)
        lab.add(session)
        clients.append(lab.client(session, ("10.0.0.9", 3000 + i), seed=i))
    for client in clients[:2]:
        lab.handshake(client)
    clients[2].conn.connect(lab.now)
    lab.flush(clients[2])  # still in its handshake
    lab.take()
    lab.server.shutdown(lab.now)
    lab.collect()
    assert down_reasons(lab.take()) == ["shutdown"] * 3
    for client in clients[:2]:
        lab.deliver(client)
        assert client.terminated is not None and client.terminated.error is None
    assert lab.stats.handshakes_failed == 1 and lab.server.association_count == 0


def test_an_ipv6_peer_address_is_a_key_like_any_other() -> None:
    lab = Lab()
    session = make_session(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384", seed=70)
    _, assoc = lab.up(session, C)
    assert assoc.peer == C and lab.server.association_for(session.session_id) is assoc


# -- our bugs ------------------------------------------------------------------------------


def test_a_bug_inside_an_association_ends_only_that_association() -> None:
    sessions = [make_session(DTLS_CIPHERS_HEADER, "AES128-SHA", seed=80 + i) for i in range(2)]
    targets = {s.session_id: Target(s) for s in sessions}
    calls = 0
    rng = random.Random(1)

    def random_bytes(n: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("a bug of ours")
        return rng.randbytes(n)

    server = DtlsServer(lookup=targets.get, random_bytes=random_bytes, dpd_s=0.0)
    for i, session in enumerate(sessions):
        hello = client_hello_bytes(session, random_=bytes([i + 1]) * 32)
        server.receive_datagram(hello, ("10.0.0.1", i), 0.0)  # the first one works
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    (down,) = events
    assert isinstance(down, AssociationDown) and down.reason is DownReason.INTERNAL_ERROR
    assert (
        isinstance(down.error, RuntimeError)
        and down.association.session_id == sessions[1].session_id
    )
    assert server.stats.internal_errors == 1 and server.association_count == 1


def test_a_frame_too_large_for_a_record_is_our_bug() -> None:
    lab = Lab()
    session = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=90)
    lab.add(session)
    lab.handshake(lab.client(session, A))
    (up,) = lab.take()
    with pytest.raises(LocalProtocolError):
        lab.server.send_frame(up.association, DATA, bytes(16384), lab.now)


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        DtlsServer[Target](lookup=lambda sid: None, random_bytes=bytes, dpd_s=-1.0)
