"""Client against server in memory: every suite, HelloVerifyRequest, failures, alerts,
replay, tampering, retransmission (protocol.md §7.1-§7.5, §7.7)."""

from __future__ import annotations

from typing import Any

import pytest

from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
    AlertDescription,
    AlertLevel,
    AlertReceived,
    ApplicationDataReceived,
    ConnectionTerminated,
    DtlsAlertError,
    DtlsConnection,
    DtlsSession,
    FinishedMismatchError,
    FullHandshakeRefusedError,
    HandshakeCompleted,
    HandshakeTimedOut,
    NegotiationMismatchError,
    Role,
    State,
    UnknownSessionError,
)
from loadgen.proto.dtls import handshake as hs
from loadgen.proto.dtls.prf import derive_key_block, finished_verify_data
from loadgen.proto.dtls.protection import make_reader
from loadgen.proto.dtls.records import Record, encode_record, parse_records_untrusted
from loadgen.proto.errors import LocalProtocolError
from tests.proto.dtls.dtls_testlib import (
    events,
    handshake,
    make_pair,
    make_session,
    pump,
    seeded_random,
)

ALL = [(DTLS_CIPHERS_HEADER, n) for n in KNOWN_DTLS_CIPHERS] + [
    (DTLS12_CIPHERS_HEADER, n) for n in KNOWN_DTLS12_CIPHERS
]
AES128_SHA = (DTLS_CIPHERS_HEADER, "AES128-SHA")
GCM256 = (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM")


def _records(datagram: bytes) -> list[Record]:
    return parse_records_untrusted(datagram)


def _handshake_messages(datagram: bytes) -> list[hs.HandshakeFragment]:
    out = []
    for record in _records(datagram):
        if record.content_type == 22 and record.epoch == 0:
            out.extend(hs.parse_handshake_fragments_untrusted(record.fragment))
    return out


def _established(*pair: DtlsConnection) -> None:
    for conn in pair:
        assert conn.state is State.ESTABLISHED
        assert [type(e) for e in events(conn)] == [HandshakeCompleted]


# -- every suite, both headers, with and without HelloVerifyRequest -----------------------


@pytest.mark.parametrize("hello_verify", [False, True], ids=["plain", "hvr"])
@pytest.mark.parametrize(("header", "name"), ALL)
def test_handshake_and_data_both_ways(header: str, name: str, hello_verify: bool) -> None:
    session = make_session(header, name)
    client, server = make_pair(session, hello_verify=hello_verify)
    client.connect(0.0)
    (hello_dgram,) = client.datagrams_to_send(0.0)
    server.receive_datagram(hello_dgram, 0.0)
    answer = server.datagrams_to_send(0.0)
    # HVR: one datagram; otherwise ServerHello | CCS | Finished as three datagrams (ocserv)
    assert len(answer) == (1 if hello_verify else 3)
    for datagram in answer:
        client.receive_datagram(datagram, 0.0)
    pump(client, server)
    spec = session.cipher
    for conn in (client, server):
        assert events(conn) == [
            HandshakeCompleted(version=spec.version, cipher_name=name, retransmits=0)
        ]
    payloads = [b"\x00" + bytes(range(256)) * 5, b"\x07", b"\x03" + b"\x00" * 1400, b"\x00"]
    for payload in payloads:
        client.send_application_data(payload)
        server.send_application_data(payload[::-1])
    to_server, to_client = client.datagrams_to_send(1.0), server.datagrams_to_send(1.0)
    assert all(r.version == spec.version and r.epoch == 1 for d in to_server for r in _records(d))
    for datagram in to_server:
        server.receive_datagram(datagram, 1.0)
    for datagram in to_client:
        client.receive_datagram(datagram, 1.0)
    assert events(server) == [ApplicationDataReceived(data=p) for p in payloads]
    assert [e.data for e in events(client)] == [p[::-1] for p in payloads]  # type: ignore[union-attr]
    assert client.counters.records_protected == 1 + len(payloads)  # Finished + data
    assert server.counters.records_unprotected == 1 + len(payloads)
    assert client.counters.records_dropped_bad == server.counters.records_dropped_bad == 0


@pytest.mark.parametrize(("header", "name"), ALL)
def test_client_hello_contents(header: str, name: str) -> None:
    """§7.4: the session id, one suite, null compression; no extensions for 0.9, only an
    empty renegotiation_info for 1.2; never extended_master_secret or encrypt_then_mac."""
    session = make_session(header, name)
    client, _ = make_pair(session)
    client.connect(0.0)
    (datagram,) = client.datagrams_to_send(0.0)
    (record,) = _records(datagram)
    assert (record.version, record.epoch, record.seq) == (session.cipher.version, 0, 0)
    (frag,) = hs.parse_handshake_fragments_untrusted(record.fragment)
    assert frag.message_seq == 0 and frag.is_complete
    hello = hs.parse_client_hello_untrusted(frag.body)
    assert hello.session_id == session.session_id
    assert hello.cipher_suites == (session.cipher.code,)
    assert hello.compression_methods == b"\x00" and hello.cookie == b""
    if session.cipher.version == DTLS0_9:
        assert hello.extensions is None
    else:
        assert hello.extensions == ((0xFF01, b"\x00"),)


def test_forbidden_extensions_are_refused_locally() -> None:
    session = make_session(*GCM256)
    for ext in (0x0017, 0x0016):
        with pytest.raises(LocalProtocolError):
            DtlsConnection(
                Role.CLIENT,
                session=session,
                random_bytes=seeded_random(1),
                hello_extensions=((ext, b""),),
            )


# -- HelloVerifyRequest: message_seq and transcript rules (§7.4, §11.2) ---------------------


@pytest.mark.parametrize("names", [AES128_SHA, GCM256], ids=["dtls0.9", "dtls1.2"])
def test_hello_verify_request_path(names: tuple[str, str]) -> None:
    session = make_session(*names)
    spec = session.cipher
    client, server = make_pair(session, hello_verify=True)
    client.connect(0.0)
    (ch1,) = client.datagrams_to_send(0.0)
    server.receive_datagram(ch1, 0.0)
    (hvr_dgram,) = server.datagrams_to_send(0.0)
    assert server.state is State.WAIT_CLIENT_HELLO  # stateless until the cookie comes back
    (hvr_msg,) = _handshake_messages(hvr_dgram)
    assert (hvr_msg.msg_type, hvr_msg.message_seq) == (3, 0)
    cookie = hs.parse_hello_verify_request_untrusted(hvr_msg.body).cookie
    client.receive_datagram(hvr_dgram, 0.1)
    (ch2,) = client.datagrams_to_send(0.1)
    assert client.counters.retransmits == 0  # a new flight, not a retransmission
    (record2,) = _records(ch2)
    assert record2.seq == 1  # the next record sequence number
    (first,) = _handshake_messages(ch1)
    (second,) = _handshake_messages(ch2)
    assert second.message_seq == 1
    hello1 = hs.parse_client_hello_untrusted(first.body)
    hello2 = hs.parse_client_hello_untrusted(second.body)
    assert hello2.cookie == cookie and hello1.cookie == b""
    assert (hello2.random, hello2.session_id) == (hello1.random, hello1.session_id)
    server.receive_datagram(ch2, 0.1)
    sh_dgram, ccs_dgram, fin_dgram = server.datagrams_to_send(0.1)
    (sh,) = _handshake_messages(sh_dgram)
    assert sh.message_seq == 1
    (ccs,) = _records(ccs_dgram)
    # DTLS 0.9: the CCS consumes message_seq 2, the Finished takes 3 (§7.4)
    fin_mseq = 3 if spec.version == DTLS0_9 else 2
    assert ccs.fragment == (b"\x01\x00\x02" if spec.version == DTLS0_9 else b"\x01")
    server_hello = hs.parse_server_hello_untrusted(sh.body)
    keys = derive_key_block(
        spec, session.master_secret, client_random=hello1.random, server_random=server_hello.random
    )
    (fin_record,) = _records(fin_dgram)
    plain = make_reader(spec, keys, client=False).unprotect(fin_record)
    assert plain is not None and plain[:12] == hs.encode_handshake(20, fin_mseq, bytes(12))[:12]
    # only the answered ClientHello starts the transcript, never ClientHello #1 or the HVR
    right = [
        hs.transcript_entry(spec.version, 1, 1, second.body),
        hs.transcript_entry(spec.version, 2, 1, sh.body),
    ]
    wrong = [
        hs.transcript_entry(spec.version, 1, 0, first.body),
        hs.transcript_entry(spec.version, 3, 0, hvr_msg.body),
        *right,
    ]
    master = session.master_secret
    assert plain[12:] == finished_verify_data(spec, master, from_server=True, messages=right)
    assert plain[12:] != finished_verify_data(spec, master, from_server=True, messages=wrong)
    for datagram in (sh_dgram, ccs_dgram, fin_dgram):
        client.receive_datagram(datagram, 0.2)
    (final,) = client.datagrams_to_send(0.2)
    client_ccs, client_fin = _records(final)
    assert client_ccs.fragment == (b"\x01\x00\x02" if spec.version == DTLS0_9 else b"\x01")
    client_plain = make_reader(spec, keys, client=True).unprotect(client_fin)
    assert client_plain is not None and client_plain[4:6] == fin_mseq.to_bytes(2)
    server.receive_datagram(final, 0.2)
    _established(client, server)


def test_server_ignores_a_wrong_cookie_and_asks_again() -> None:
    session = make_session(*GCM256)
    client, server = make_pair(session, hello_verify=True)
    client.connect(0.0)
    server.receive_datagram(client.datagrams_to_send(0.0)[0], 0.0)
    (hvr1,) = server.datagrams_to_send(0.0)
    forged = hs.ClientHello(
        client_version=session.cipher.version,
        random=b"r" * 32,
        session_id=session.session_id,
        cookie=b"not the cookie",
        cipher_suites=(session.cipher.code,),
    )
    server.receive_datagram(
        encode_record(22, 0xFEFD, 0, 5, hs.encode_handshake(1, 1, forged.encode())), 0.0
    )
    (hvr2,) = server.datagrams_to_send(0.0)
    assert _handshake_messages(hvr1)[0].body == _handshake_messages(hvr2)[0].body  # same cookie
    assert server.state is State.WAIT_CLIENT_HELLO


# -- refusals and failures ---------------------------------------------------------------


def _client_after_hello(names: tuple[str, str] = GCM256) -> tuple[DtlsConnection, DtlsSession]:
    session = make_session(*names)
    client = DtlsConnection(Role.CLIENT, session=session, random_bytes=seeded_random(3))
    client.connect(0.0)
    client.datagrams_to_send(0.0)
    return client, session


def _server_hello(session: DtlsSession, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "server_version": session.cipher.version,
        "random": b"S" * 32,
        "session_id": session.session_id,
        "cipher_suite": session.cipher.code,
    }
    fields.update(changes)
    body = hs.ServerHello(**fields).encode()
    return encode_record(22, session.cipher.version, 0, 0, hs.encode_handshake(2, 0, body))


def _alert_sent(conn: DtlsConnection) -> bytes:
    (datagram,) = conn.datagrams_to_send(0.0)
    (record,) = _records(datagram)
    assert record.content_type == 21 and record.epoch == 0
    return record.fragment


def test_full_handshake_is_refused() -> None:
    """§7.2: a ServerHello with another session id means a full handshake: refuse it."""
    client, session = _client_after_hello()
    client.receive_datagram(_server_hello(session, session_id=b"\x99" * 32), 0.1)
    (event,) = events(client)
    assert isinstance(event, ConnectionTerminated) and not event.by_peer
    assert isinstance(event.error, FullHandshakeRefusedError)
    assert _alert_sent(client) == bytes([2, AlertDescription.HANDSHAKE_FAILURE])
    assert client.state is State.CLOSED and client.get_timer() is None
    client.receive_datagram(_server_hello(session), 0.2)  # ignored once closed
    assert events(client) == [] and client.datagrams_to_send(0.2) == []


@pytest.mark.parametrize(
    "change",
    [{"cipher_suite": 0x009C}, {"server_version": 0xFEFF}, {"compression_method": 1}],
)
def test_server_hello_mismatch(change: dict[str, int]) -> None:
    client, session = _client_after_hello()
    client.receive_datagram(_server_hello(session, **change), 0.1)
    (event,) = events(client)
    assert isinstance(event, ConnectionTerminated)
    assert isinstance(event.error, NegotiationMismatchError)
    assert _alert_sent(client)[0] == AlertLevel.FATAL


@pytest.mark.parametrize("names", [AES128_SHA, GCM256], ids=["dtls0.9", "dtls1.2"])
def test_wrong_master_secret_means_undecryptable_finished(names: tuple[str, str]) -> None:
    """Different keys: the server Finished fails MAC/tag and is dropped silently; the client
    keeps retransmitting and finally times out."""
    session = make_session(*names)
    other = DtlsSession(
        session_id=session.session_id, master_secret=b"\x01" * 48, cipher=session.cipher
    )
    client, server = make_pair(session, server_session=other)
    client.connect(0.0)
    pump(client, server)
    assert events(client) == [] and client.counters.records_dropped_bad == 1
    assert client.state is State.WAIT_SERVER_FINISHED
    for _ in range(10):
        timer = client.get_timer()
        if timer is None:
            break
        client.handle_timer(timer)
        pump(client, server, timer)
    assert events(client) == [HandshakeTimedOut(retransmits=4)]
    assert client.counters.records_dropped_bad == 5  # each re-sent server Finished


@pytest.mark.parametrize("names", [AES128_SHA, GCM256], ids=["dtls0.9", "dtls1.2"])
def test_tampered_server_hello_fails_the_finished_check(names: tuple[str, str]) -> None:
    """Records in epoch 0 are unauthenticated; the Finished covers them.  An on-path change
    to the ServerHello makes the transcripts differ: FinishedMismatchError + decrypt_error."""
    session = make_session(*names)
    client, server = make_pair(session)
    client.connect(0.0)
    server.receive_datagram(client.datagrams_to_send(0.0)[0], 0.0)
    sh_dgram, ccs_dgram, fin_dgram = server.datagrams_to_send(0.0)
    (sh,) = _handshake_messages(sh_dgram)
    hello = hs.parse_server_hello_untrusted(sh.body)
    forged = hs.ServerHello(
        server_version=hello.server_version,
        random=hello.random,
        session_id=hello.session_id,
        cipher_suite=hello.cipher_suite,
        extensions=((0x001C, b"\x40\x00"),),
    )
    forged_dgram = encode_record(
        22, session.cipher.version, 0, 0, hs.encode_handshake(2, sh.message_seq, forged.encode())
    )
    for datagram in (forged_dgram, ccs_dgram, fin_dgram):
        client.receive_datagram(datagram, 0.0)
    (end,) = events(client)
    assert isinstance(end, ConnectionTerminated) and not end.by_peer
    assert isinstance(end.error, FinishedMismatchError)
    (alert_dgram,) = client.datagrams_to_send(0.0)
    assert _records(alert_dgram)[0].epoch == 0  # plaintext: we never reached epoch 1
    server.receive_datagram(alert_dgram, 0.0)
    alert, terminated = events(server)
    assert alert == AlertReceived(
        level=AlertLevel.FATAL, description=AlertDescription.DECRYPT_ERROR
    )
    assert isinstance(terminated, ConnectionTerminated) and terminated.by_peer
    assert isinstance(terminated.error, DtlsAlertError) and terminated.error.is_fatal
    assert terminated.error.description is AlertDescription.DECRYPT_ERROR


def test_server_rejects_unknown_session_and_client_sees_alert() -> None:
    session = make_session(*AES128_SHA)
    client, server = make_pair(session, server_session=make_session(*AES128_SHA, seed=99))
    client.connect(0.0)
    pump(client, server)
    (server_end,) = events(server)
    assert isinstance(server_end, ConnectionTerminated)
    assert isinstance(server_end.error, UnknownSessionError)
    alert, end = events(client)
    assert alert == AlertReceived(
        level=AlertLevel.FATAL, description=AlertDescription.HANDSHAKE_FAILURE
    )
    assert isinstance(end, ConnectionTerminated) and isinstance(end.error, DtlsAlertError)


@pytest.mark.parametrize(
    ("client_names", "alert"),
    [
        ((DTLS12_CIPHERS_HEADER, "AES128-SHA"), AlertDescription.PROTOCOL_VERSION),
        ((DTLS_CIPHERS_HEADER, "AES256-SHA"), AlertDescription.HANDSHAKE_FAILURE),
    ],
)
def test_server_rejects_wrong_version_or_suite(
    client_names: tuple[str, str], alert: AlertDescription
) -> None:
    server_session = make_session(*AES128_SHA)
    client_session = make_session(*client_names)
    client_session = DtlsSession(
        session_id=server_session.session_id,
        master_secret=server_session.master_secret,
        cipher=client_session.cipher,
    )
    client, server = make_pair(client_session, server_session=server_session)
    client.connect(0.0)
    server.receive_datagram(client.datagrams_to_send(0.0)[0], 0.0)
    (end,) = events(server)
    assert isinstance(end, ConnectionTerminated)
    assert isinstance(end.error, NegotiationMismatchError) and end.error.alert is alert
    assert _alert_sent(server) == bytes([2, alert])


# -- alerts after the handshake ----------------------------------------------------------


def test_close_notify_both_ways() -> None:
    client, server = handshake(make_session(*GCM256))
    _established(client, server)
    server.close()
    assert events(server) == [ConnectionTerminated(error=None, by_peer=False)]
    (datagram,) = server.datagrams_to_send(0.0)
    assert _records(datagram)[0].epoch == 1  # protected once keys exist
    client.receive_datagram(datagram, 0.0)
    assert events(client) == [
        AlertReceived(level=AlertLevel.WARNING, description=AlertDescription.CLOSE_NOTIFY),
        ConnectionTerminated(error=None, by_peer=True),
    ]
    with pytest.raises(LocalProtocolError):
        client.send_application_data(b"\x00x")


def _protected_alert(sender: DtlsConnection, level: int, description: int) -> bytes:
    # reach into the sender's epoch-1 writer: a peer speaking the same keys
    return sender._encode(21, 1, bytes([level, description]))


def test_fatal_and_warning_alerts_received() -> None:
    client, server = handshake(make_session(*AES128_SHA))
    _established(client, server)
    client.receive_datagram(_protected_alert(server, 1, 90), 0.0)  # warning user_canceled
    assert events(client) == [
        AlertReceived(level=AlertLevel.WARNING, description=AlertDescription.USER_CANCELED)
    ]
    assert client.state is State.ESTABLISHED
    # plaintext alerts are unauthenticated once keys exist: ignored
    client.receive_datagram(encode_record(21, DTLS0_9, 0, 50, b"\x02\x28"), 0.0)
    assert events(client) == [] and client.state is State.ESTABLISHED
    client.receive_datagram(_protected_alert(server, 2, 201), 0.0)  # unknown code kept as int
    alert, end = events(client)
    assert alert == AlertReceived(level=AlertLevel.FATAL, description=201)
    assert isinstance(end, ConnectionTerminated) and isinstance(end.error, DtlsAlertError)
    assert end.error.description == 201 and "201" in str(end.error)
    assert client.datagrams_to_send(0.0) == []  # no alert in answer to an alert


# -- replay, tampering, garbage ----------------------------------------------------------


@pytest.mark.parametrize("names", [AES128_SHA, GCM256], ids=["cbc", "gcm"])
def test_replayed_records_are_dropped(names: tuple[str, str]) -> None:
    client, server = handshake(make_session(*names))
    _established(client, server)
    for i in range(100):
        client.send_application_data(bytes([0, i]))
    datagrams = client.datagrams_to_send(0.0)
    order = [*range(40, 100), *range(39, -1, -1)]  # the oldest 40 arrive last
    for i in order:
        server.receive_datagram(datagrams[i], 0.0)
    got = [e.data[1] for e in events(server)]  # type: ignore[union-attr]
    # seq 1..99 in epoch 1 (seq 0 was the Finished); window 64 behind the top (seq 100)
    # payload i has seq i + 1; the top is seq 100, so seq 37..40 (payloads 36..39) still fit
    assert got == [*range(40, 100), 39, 38, 37, 36]
    assert server.counters.records_dropped_replay == 36
    for i in (50, 99, 40):
        server.receive_datagram(datagrams[i], 0.0)
    assert events(server) == [] and server.counters.records_dropped_replay == 39


@pytest.mark.parametrize("names", [AES128_SHA, GCM256], ids=["cbc", "gcm"])
def test_tampered_records_are_dropped_silently(names: tuple[str, str]) -> None:
    client, server = handshake(make_session(*names))
    _established(client, server)
    client.send_application_data(b"\x00" + b"payload" * 10)
    (datagram,) = client.datagrams_to_send(0.0)
    for position in range(13, len(datagram)):
        bad = bytearray(datagram)
        bad[position] ^= 0x80
        server.receive_datagram(bytes(bad), 0.0)
    assert events(server) == []
    assert server.counters.records_dropped_bad == len(datagram) - 13
    assert server.datagrams_to_send(0.0) == []  # never an alert for a bad record (§7.5)
    server.receive_datagram(datagram, 0.0)  # the genuine one still passes: window untouched
    assert len(events(server)) == 1 and server.state is State.ESTABLISHED


def test_several_records_in_one_datagram_and_garbage() -> None:
    client, server = handshake(make_session(*GCM256))
    _established(client, server)
    for i in range(3):
        client.send_application_data(bytes([0, i]))
    joined = b"".join(client.datagrams_to_send(0.0))
    server.receive_datagram(joined + b"\x17\xfe\xfd\x00", 0.0)  # trailing garbage after 3 good
    assert [e.data for e in events(server)] == [b"\x00\x00", b"\x00\x01", b"\x00\x02"]  # type: ignore[union-attr]
    assert server.counters.datagrams_undecodable == 1
    for junk in (b"", b"\x00", b"\xff" * 40, encode_record(22, 0xFEFD, 0, 999, b"\x01")):
        server.receive_datagram(junk, 0.0)
    # the last one is a well-framed record whose handshake body is undecodable
    assert server.state is State.ESTABLISHED and server.counters.datagrams_undecodable == 4
    # an epoch-2 record and a wrong version are counted as unexpected
    server.receive_datagram(encode_record(23, 0xFEFD, 2, 0, b"x" * 40), 0.0)
    assert server.counters.records_dropped_unexpected == 1
    client.send_application_data(b"\x00v")
    (good,) = client.datagrams_to_send(0.0)
    server.receive_datagram(good[:1] + b"\xfe\xff" + good[3:], 0.0)  # DTLS 1.0 version
    assert server.counters.records_dropped_unexpected == 2
    assert server.counters.records_dropped_bad == 0 and events(server) == []


def test_api_misuse_is_a_local_error() -> None:
    session = make_session(*GCM256)
    client, server = make_pair(session)
    with pytest.raises(LocalProtocolError):
        client.receive_datagram(b"x", 0.0)  # before connect()
    with pytest.raises(LocalProtocolError):
        client.send_application_data(b"\x00")
    with pytest.raises(LocalProtocolError):
        server.connect(0.0)
    client.connect(0.0)
    with pytest.raises(LocalProtocolError):
        client.connect(0.0)
    with pytest.raises(LocalProtocolError):
        DtlsConnection(Role.SERVER, random_bytes=seeded_random(1))
    with pytest.raises(LocalProtocolError):
        DtlsConnection(Role.CLIENT, random_bytes=seeded_random(1))
    with pytest.raises(LocalProtocolError):
        DtlsConnection(Role.CLIENT, session=session, random_bytes=bytes).connect(0.0)
    with pytest.raises(LocalProtocolError):
        DtlsSession(session_id=b"x" * 32, master_secret=b"short", cipher=session.cipher)
    c2, _s2 = handshake(session)
    with pytest.raises(LocalProtocolError):
        c2.send_application_data(b"x" * 16385)
