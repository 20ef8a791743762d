"""CSTP framing and the CSTP channel machine (loadgen.proto.cstp), as conversations."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.proto.cstp import (
    MAX_FRAME_PAYLOAD,
    ChannelState,
    CompressedDataError,
    CstpConnection,
    CstpEvent,
    DisconnectReason,
    DisconnectReceived,
    DpdResponseReceived,
    Frame,
    FrameDecoder,
    Liveness,
    LivenessAction,
    PacketReceived,
    PacketType,
    PeerDead,
    TerminateReceived,
    UnknownPacketReceived,
    decode_dtls_payload_untrusted,
    encode_dtls_payload,
    encode_frame,
)
from loadgen.proto.errors import BadPacketError, LocalProtocolError

# protocol.md §5.2, byte-exact examples (captured openconnect 9.01 <-> ocserv 1.1.6).
DPD_REQ_HELLO = bytes.fromhex("53 54 46 01 00 09 03 00 68 65 6c 6c 6f 2d 64 70 64")
DPD_RESP_HELLO = bytes.fromhex("53 54 46 01 00 09 04 00 68 65 6c 6c 6f 2d 64 70 64")
KEEPALIVE = bytes.fromhex("53 54 46 01 00 00 07 00")
OPENCONNECT_BYE = bytes.fromhex("53 54 46 01 00 12 05 00 b0") + b"Aborted by caller"
SERVER_DISCONNECT = bytes.fromhex("53 54 46 01 00 00 05 00")
IPV6_RS = bytes.fromhex("60 00 00 00 00 24 00 01 fe 80") + bytes(66)  # 76 bytes, as in §5.2
DATA_IPV6 = bytes.fromhex("53 54 46 01 00 4c 00 00") + IPV6_RS

ALL_EXAMPLES = DPD_REQ_HELLO + DPD_RESP_HELLO + KEEPALIVE + DATA_IPV6 + OPENCONNECT_BYE
ALL_FRAMES = [
    Frame(PacketType.DPD_REQ, b"hello-dpd"),
    Frame(PacketType.DPD_RESP, b"hello-dpd"),
    Frame(PacketType.KEEPALIVE, b""),
    Frame(PacketType.DATA, IPV6_RS),
    Frame(PacketType.DISCONNECT, b"\xb0Aborted by caller"),
]


def pump(src: CstpConnection, dst: CstpConnection, now: float) -> list[bytes]:
    frames = src.frames_to_send()
    for frame in frames:
        dst.receive_data(frame, now)
    return frames


def events(conn: CstpConnection) -> list[CstpEvent]:
    out: list[CstpEvent] = []
    for _ in range(1000):
        event = conn.next_event()
        if event is None:
            return out
        out.append(event)
    raise AssertionError("event queue does not drain")


def pair(
    *, dpd_s: float = 0, keepalive_s: float = 0, server_dpd_s: float | None = None
) -> tuple[CstpConnection, CstpConnection]:
    client = CstpConnection("client", dpd_s=dpd_s, keepalive_s=keepalive_s, now=0.0)
    server = CstpConnection(
        "server", dpd_s=dpd_s if server_dpd_s is None else server_dpd_s, keepalive_s=0, now=0.0
    )
    return client, server


# --- framing: the §5.2 bytes ---


def test_encode_matches_protocol_examples() -> None:
    assert encode_frame(PacketType.DPD_REQ, b"hello-dpd") == DPD_REQ_HELLO
    assert encode_frame(PacketType.DPD_RESP, b"hello-dpd") == DPD_RESP_HELLO
    assert encode_frame(PacketType.KEEPALIVE) == KEEPALIVE
    assert encode_frame(PacketType.DISCONNECT, b"\xb0Aborted by caller") == OPENCONNECT_BYE
    assert encode_frame(PacketType.DISCONNECT) == SERVER_DISCONNECT
    assert encode_frame(PacketType.DATA, IPV6_RS) == DATA_IPV6


def test_machine_produces_protocol_examples() -> None:
    client, server = pair()
    client.send_dpd_request(b"hello-dpd", now=1.0)
    assert pump(client, server, 1.0) == [DPD_REQ_HELLO]
    assert server.frames_to_send() == [DPD_RESP_HELLO]  # ocserv's answer
    client.send_keepalive(now=2.0)
    client.send_disconnect(DisconnectReason.USER, "Aborted by caller", now=3.0)
    assert client.frames_to_send() == [KEEPALIVE, OPENCONNECT_BYE]
    _, server = pair()
    server.send_disconnect(None, now=1.0)
    assert server.frames_to_send() == [SERVER_DISCONNECT]


def test_decoder_whole_stream_and_byte_by_byte() -> None:
    assert FrameDecoder().feed_untrusted(ALL_EXAMPLES) == ALL_FRAMES
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for i in range(len(ALL_EXAMPLES)):
        frames += decoder.feed_untrusted(ALL_EXAMPLES[i : i + 1])
    assert frames == ALL_FRAMES
    assert decoder.buffered_bytes == 0


@given(st.lists(st.integers(1, len(ALL_EXAMPLES)), max_size=20))
def test_decoder_any_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(ALL_EXAMPLES)]
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for lo, hi in itertools.pairwise(bounds):
        frames += decoder.feed_untrusted(ALL_EXAMPLES[lo:hi])
    assert frames == ALL_FRAMES


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"X", "magic 58"),  # detected at the first byte
        (b"STF\x02", "magic"),
        (b"HTTP/1.1 200 OK\r\n", "magic"),
        (bytes.fromhex("5354460100000701"), "byte 7"),
        (bytes.fromhex("53544601ffff0000"), "length 65535"),
        (KEEPALIVE + b"STX", "magic"),
    ],
)
def test_decoder_rejects(data: bytes, match: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(BadPacketError, match=match):
        decoder.feed_untrusted(data)
    with pytest.raises(BadPacketError, match="already failed"):
        decoder.feed_untrusted(KEEPALIVE)


def test_decoder_buffer_is_bounded_by_one_frame() -> None:
    decoder = FrameDecoder()
    big = encode_frame(PacketType.DATA, bytes(MAX_FRAME_PAYLOAD))
    assert decoder.feed_untrusted(big[:-1]) == []
    assert decoder.buffered_bytes == len(big) - 1
    assert decoder.feed_untrusted(big[-1:] + KEEPALIVE[:3]) == [
        Frame(PacketType.DATA, bytes(MAX_FRAME_PAYLOAD))
    ]
    assert decoder.buffered_bytes == 3
    with pytest.raises(BadPacketError):  # one byte longer than a TLS record allows
        FrameDecoder().feed_untrusted(
            b"STF\x01" + (MAX_FRAME_PAYLOAD + 1).to_bytes(2, "big") + b"\x00\x00"
        )


def test_encode_limits() -> None:
    assert len(encode_frame(PacketType.DATA, bytes(MAX_FRAME_PAYLOAD))) == 16384
    with pytest.raises(LocalProtocolError, match="TLS record"):
        encode_frame(PacketType.DATA, bytes(MAX_FRAME_PAYLOAD + 1))
    with pytest.raises(LocalProtocolError):
        encode_frame(256, b"")


# --- DTLS 1-byte framing (§7.7) ---


def test_dtls_framing() -> None:
    assert encode_dtls_payload(PacketType.DATA, b"\x45abc") == b"\x00\x45abc"
    assert encode_dtls_payload(PacketType.KEEPALIVE) == b"\x07"
    assert decode_dtls_payload_untrusted(b"\x03probe") == Frame(PacketType.DPD_REQ, b"probe")
    assert decode_dtls_payload_untrusted(b"\x07") == Frame(PacketType.KEEPALIVE, b"")
    assert decode_dtls_payload_untrusted(b"\xfe") == Frame(0xFE, b"")
    with pytest.raises(BadPacketError):
        decode_dtls_payload_untrusted(b"")
    with pytest.raises(LocalProtocolError):
        encode_dtls_payload(PacketType.DATA, bytes(16384))


@given(st.integers(0, 255), st.binary(max_size=2000))
def test_dtls_round_trip(ptype: int, payload: bytes) -> None:
    assert decode_dtls_payload_untrusted(encode_dtls_payload(ptype, payload)) == Frame(
        ptype, payload
    )


# --- data and DPD conversations ---


def test_data_both_ways_with_counters() -> None:
    client, server = pair()
    client.send_packet(b"\x45" + bytes(27), now=1.0)
    client.send_packet(b"\x45" + bytes(99), now=1.0)
    frames = pump(client, server, 1.0)
    assert len(frames) == 2  # one element per frame: one TLS write each (§5.1)
    assert [FrameDecoder().feed_untrusted(f) for f in frames] == [
        [Frame(0, b"\x45" + bytes(27))],
        [Frame(0, b"\x45" + bytes(99))],
    ]
    assert events(server) == [
        PacketReceived(data=b"\x45" + bytes(27)),
        PacketReceived(data=b"\x45" + bytes(99)),
    ]
    server.send_packet(b"\x45reply", now=2.0)
    pump(server, client, 2.0)
    assert events(client) == [PacketReceived(data=b"\x45reply")]
    c, s = client.counters, server.counters
    assert (c.packets_tx, c.bytes_tx, c.packets_rx, c.bytes_rx) == (2, 128, 1, 6)
    assert (s.packets_tx, s.bytes_tx, s.packets_rx, s.bytes_rx) == (1, 6, 2, 128)
    assert c.wire_bytes_tx == s.wire_bytes_rx == 128 + 16
    assert c.frames_tx == s.frames_rx == 2
    assert client.frames_to_send() == []


def test_dpd_round_trip_reports_rtt() -> None:
    client, server = pair()
    client.send_dpd_request(b"probe-1", now=10.0)
    pump(client, server, 10.1)
    assert events(server) == []  # answered automatically, no event
    assert server.counters.dpd_requests_rx == 1
    pump(server, client, 10.25)
    [event] = events(client)
    assert isinstance(event, DpdResponseReceived)
    assert event.payload == b"probe-1"
    assert event.rtt_s == pytest.approx(0.25)


def test_unsolicited_dpd_response_has_no_rtt() -> None:
    client, _ = pair()
    client.receive_data(DPD_RESP_HELLO, 5.0)
    assert events(client) == [DpdResponseReceived(payload=b"hello-dpd", rtt_s=None)]


def test_keepalive_is_not_answered() -> None:
    client, server = pair()
    client.send_keepalive(now=1.0)
    pump(client, server, 1.0)
    assert events(server) == []
    assert server.frames_to_send() == []
    assert server.counters.keepalives_rx == 1


def test_unknown_type_is_reported_and_ignored() -> None:
    client, _ = pair(dpd_s=30)
    client.receive_data(encode_frame(6, b"?") + encode_frame(0, b"\x45x"), 29.0)
    assert events(client) == [
        UnknownPacketReceived(ptype=6, payload=b"?"),
        PacketReceived(data=b"\x45x"),
    ]
    assert client.state is ChannelState.OPEN
    assert client.get_timer() == 59.0  # it counted as liveness


def test_compressed_data_is_a_protocol_error_after_earlier_events() -> None:
    client, _ = pair()
    client.receive_data(
        encode_frame(0, b"\x45a") + encode_frame(PacketType.COMPRESSED_DATA, b"zz"), 1.0
    )
    assert client.next_event() == PacketReceived(data=b"\x45a")
    with pytest.raises(CompressedDataError):
        client.next_event()
    with pytest.raises(BadPacketError):  # every call from then on
        client.next_event()
    assert client.state is ChannelState.ERROR
    assert client.get_timer() is None
    with pytest.raises(LocalProtocolError):
        client.receive_data(KEEPALIVE, 2.0)
    with pytest.raises(LocalProtocolError):
        client.send_packet(b"\x45", 2.0)


def test_garbage_on_stream_surfaces_from_next_event() -> None:
    client, _ = pair()
    client.receive_data(KEEPALIVE + b"<html>", 1.0)
    with pytest.raises(BadPacketError, match="magic"):
        client.next_event()


# --- timers: keepalive and DPD (§5.3) ---


def test_keepalive_schedule() -> None:
    client, _ = pair(keepalive_s=20)
    assert client.get_timer() == 20.0
    client.handle_timer(19.9)
    assert client.frames_to_send() == []
    client.handle_timer(20.0)
    assert client.frames_to_send() == [KEEPALIVE]
    assert client.get_timer() == 40.0
    client.send_packet(b"\x45", now=30.0)  # real traffic postpones the keepalive
    client.frames_to_send()
    assert client.get_timer() == 50.0
    client.handle_timer(50.0)
    assert client.frames_to_send() == [KEEPALIVE]
    assert client.counters.keepalives_tx == 2


def test_timers_disabled() -> None:
    client, server = pair()
    assert client.get_timer() is None and server.get_timer() is None
    client.handle_timer(1e9)
    assert client.frames_to_send() == [] and events(client) == []


def test_client_dpd_answered_keeps_the_channel_alive() -> None:
    client, server = pair(dpd_s=30, server_dpd_s=90)
    assert client.get_timer() == 30.0
    client.handle_timer(30.0)
    assert pump(client, server, 30.0) == [
        encode_frame(PacketType.DPD_REQ)
    ]  # empty, like openconnect
    pump(server, client, 30.5)
    [event] = events(client)
    assert isinstance(event, DpdResponseReceived)
    assert event.rtt_s == pytest.approx(0.5)
    assert client.get_timer() == 60.5  # dpd after the last received packet


def test_client_unanswered_dpd_repeats_then_peer_dead_at_2dpd() -> None:
    client, _ = pair(dpd_s=30)
    sent: dict[float, list[bytes]] = {}
    for _ in range(10):
        deadline = client.get_timer()
        if deadline is None:
            break
        client.handle_timer(deadline)
        sent[deadline] = client.frames_to_send()
    dpd = encode_frame(PacketType.DPD_REQ)
    assert sent == {30.0: [dpd], 45.0: [dpd], 60.0: []}
    assert events(client) == [PeerDead(silent_for_s=60.0)]
    assert client.state is ChannelState.CLOSED
    assert client.get_timer() is None
    with pytest.raises(LocalProtocolError, match="client in state closed"):
        client.send_packet(b"\x45", 61.0)


def test_client_not_dead_just_before_2dpd() -> None:
    client, _ = pair(dpd_s=30)
    client.handle_timer(30.0)
    client.handle_timer(59.99)
    assert events(client) == []
    client.handle_timer(60.0)
    assert events(client) == [PeerDead(silent_for_s=60.0)]


def test_keepalives_sent_do_not_prove_the_peer_alive() -> None:
    client, _ = pair(dpd_s=30, keepalive_s=10)
    t = 0.0
    for _ in range(50):
        deadline = client.get_timer()
        if deadline is None:
            break
        t = deadline
        client.handle_timer(t)
    assert t == 60.0
    assert events(client) == [PeerDead(silent_for_s=60.0)]
    assert client.counters.keepalives_tx >= 3
    assert client.counters.dpd_requests_tx == 2


def test_server_dpd_at_2dpd_and_dead_at_3dpd() -> None:
    _, server = pair(dpd_s=30)
    assert server.get_timer() == 60.0  # ocserv: nothing before 2*dpd of silence
    server.handle_timer(59.0)
    assert server.frames_to_send() == []
    server.handle_timer(60.0)
    assert server.frames_to_send() == [encode_frame(PacketType.DPD_REQ)]
    server.handle_timer(75.0)
    assert server.frames_to_send() == [encode_frame(PacketType.DPD_REQ)]
    server.handle_timer(89.0)
    assert events(server) == []
    server.handle_timer(90.0)
    assert events(server) == [PeerDead(silent_for_s=90.0)]


def test_server_kept_alive_by_client_keepalives() -> None:
    # §5.3's load-test consequence: keepalives on CSTP keep ocserv from cutting the session.
    client, server = pair(dpd_s=0, keepalive_s=20, server_dpd_s=30)
    for step in range(1, 31):
        now = step * 10.0
        client.handle_timer(now)
        pump(client, server, now)
        server.handle_timer(now)
        assert server.frames_to_send() == []
    assert events(server) == []
    assert server.state is ChannelState.OPEN
    assert server.counters.keepalives_rx == 15


def test_client_dpd_answered_by_server_forever() -> None:
    client, server = pair(dpd_s=30, server_dpd_s=30)
    for _ in range(40):
        deadline = client.get_timer()
        assert deadline is not None
        client.handle_timer(deadline)
        pump(client, server, deadline)
        pump(server, client, deadline + 0.1)
        server.handle_timer(deadline + 0.1)
        pump(server, client, deadline + 0.1)
    assert client.state is server.state is ChannelState.OPEN
    assert all(isinstance(e, DpdResponseReceived) for e in events(client))
    assert client.counters.dpd_requests_tx == 40


def test_rtt_of_a_repeated_dpd_uses_the_latest_request() -> None:
    client, server = pair(dpd_s=30)
    client.handle_timer(30.0)
    client.handle_timer(45.0)
    pump(client, server, 46.0)
    server.frames_to_send()  # two answers, deliver only one
    client.receive_data(encode_frame(PacketType.DPD_RESP), 46.5)
    assert events(client) == [DpdResponseReceived(payload=b"", rtt_s=1.5)]


def test_liveness_standalone_for_dtls() -> None:
    live = Liveness("client", dpd_s=10, keepalive_s=0, now=100.0)
    assert live.get_timer() == 110.0
    assert live.handle_timer(105.0) is None
    assert live.handle_timer(110.0) is LivenessAction.SEND_DPD
    assert live.handle_timer(110.0) is None
    assert live.get_timer() == 115.0
    live.packet_received(112.0)
    assert live.get_timer() == 122.0
    assert live.handle_timer(132.0) is LivenessAction.PEER_DEAD
    assert live.get_timer() is None
    with pytest.raises(LocalProtocolError):
        Liveness("server", dpd_s=-1, keepalive_s=0, now=0.0)


# --- DISCONNECT and TERMINATE (§5.4) ---


@pytest.mark.parametrize(
    ("reason", "text", "expected"),
    [
        (
            DisconnectReason.USER,
            "Aborted by caller",
            DisconnectReceived(reason_code=0xB0, text="Aborted by caller", cookie_invalidated=True),
        ),
        (None, "", DisconnectReceived(reason_code=None, text="", cookie_invalidated=False)),
        (
            DisconnectReason.RECONNECT,
            "",
            DisconnectReceived(reason_code=0x91, text="", cookie_invalidated=False),
        ),
        (
            DisconnectReason.LOCAL_ERROR,
            "oops",
            DisconnectReceived(reason_code=0x70, text="oops", cookie_invalidated=False),
        ),
    ],
)
def test_disconnect_from_client(
    reason: DisconnectReason | None, text: str, expected: DisconnectReceived
) -> None:
    client, server = pair(dpd_s=30)
    client.send_disconnect(reason, text, now=1.0)
    pump(client, server, 1.0)
    assert events(server) == [expected]
    assert server.state is ChannelState.CLOSED
    assert client.state is ChannelState.DISCONNECT_SENT
    assert client.get_timer() is None and server.get_timer() is None
    for conn in (client, server):
        with pytest.raises(LocalProtocolError):
            conn.send_packet(b"\x45", 2.0)
        with pytest.raises(LocalProtocolError):
            conn.send_disconnect(None, now=2.0)
        with pytest.raises(LocalProtocolError):
            conn.send_dpd_request(b"", 2.0)


def test_after_disconnect_sent_frames_are_still_read_but_dpd_not_answered() -> None:
    client, _ = pair()
    client.send_disconnect(DisconnectReason.USER, now=1.0)
    client.frames_to_send()
    client.receive_data(encode_frame(0, b"\x45late") + DPD_REQ_HELLO + SERVER_DISCONNECT, 1.1)
    assert events(client) == [
        PacketReceived(data=b"\x45late"),
        DisconnectReceived(reason_code=None, text="", cookie_invalidated=False),
    ]
    assert client.frames_to_send() == []
    assert client.state is ChannelState.CLOSED


def test_bytes_after_peer_disconnect_are_dropped() -> None:
    _, server = pair()
    server.receive_data(OPENCONNECT_BYE + encode_frame(0, b"\x45x") + b"garbage", 1.0)
    assert len(events(server)) == 1
    server.receive_data(b"more garbage", 2.0)  # closed: dropped, no error
    assert events(server) == []


def test_disconnect_now_positional_or_omitted() -> None:
    client, server = pair()
    client.send_disconnect(DisconnectReason.USER, "", 5.0)
    server.send_disconnect(None)
    assert client.frames_to_send() == [bytes.fromhex("53 54 46 01 00 01 05 00 b0")]
    assert server.frames_to_send() == [SERVER_DISCONNECT]


def test_disconnect_argument_checks() -> None:
    client, _ = pair()
    with pytest.raises(LocalProtocolError, match="empty DISCONNECT"):
        client.send_disconnect(None, "text", now=1.0)
    with pytest.raises(LocalProtocolError, match="ASCII"):
        client.send_disconnect(DisconnectReason.USER, "caf\u00e9", now=1.0)
    with pytest.raises(LocalProtocolError):
        client.send_disconnect(DisconnectReason.USER, "x" * MAX_FRAME_PAYLOAD, now=1.0)
    assert client.state is ChannelState.OPEN  # failed calls change nothing
    assert client.frames_to_send() == []


def test_terminate() -> None:
    client, server = pair()
    with pytest.raises(LocalProtocolError, match="server only"):
        client.send_terminate(1.0)
    server.send_terminate(1.0)
    assert pump(server, client, 1.0) == [bytes.fromhex("5354460100000900")]
    assert events(client) == [TerminateReceived()]
    assert client.state is ChannelState.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send_packet(b"\x45", 2.0)


def test_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        CstpConnection("gateway", dpd_s=0, keepalive_s=0, now=0.0)  # type: ignore[arg-type]
    client, _ = pair()
    with pytest.raises(LocalProtocolError, match="empty"):
        client.send_packet(b"", 1.0)
    with pytest.raises(LocalProtocolError):
        client.send_packet(bytes(MAX_FRAME_PAYLOAD + 1), 1.0)
    assert client.counters.packets_tx == 0


# --- fuzz: any bytes in -> frames or BadPacketError ---


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_fuzz_frame_decoder(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_payload=64)
    for chunk in chunks:
        try:
            for frame in decoder.feed_untrusted(chunk):
                assert 0 <= frame.type <= 255 and len(frame.payload) <= 64
        except BadPacketError:
            return
        assert decoder.buffered_bytes < 8 + 64


@given(
    st.lists(
        st.one_of(
            st.builds(encode_frame, st.integers(0, 255), st.binary(max_size=30)),
            st.binary(max_size=10),
        ),
        max_size=8,
    ),
    st.integers(1, 7),
)
def test_fuzz_frame_decoder_mostly_valid(parts: list[bytes], step: int) -> None:
    stream = b"".join(parts)
    decoder = FrameDecoder()
    try:
        for i in range(0, len(stream), step):
            decoder.feed_untrusted(stream[i : i + step])
    except BadPacketError:
        pass


@given(st.binary(max_size=100))
def test_fuzz_decode_dtls_payload(data: bytes) -> None:
    try:
        frame = decode_dtls_payload_untrusted(data)
    except BadPacketError:
        assert data == b""
    else:
        assert encode_dtls_payload(frame.type, frame.payload) == data


@given(
    st.lists(
        st.one_of(
            st.builds(encode_frame, st.sampled_from(list(range(11))), st.binary(max_size=20)),
            st.binary(max_size=12),
        ),
        max_size=10,
    ),
    st.sampled_from(["client", "server"]),
)
def test_fuzz_connection_receive(parts: list[bytes], role: str) -> None:
    conn = CstpConnection(role, dpd_s=30, keepalive_s=10, now=0.0)  # type: ignore[arg-type]
    for i, part in enumerate(parts):
        try:
            conn.receive_data(part, float(i))
        except LocalProtocolError:
            assert conn.state is ChannelState.ERROR
            break
        conn.frames_to_send()
    try:
        events(conn)
    except BadPacketError:
        assert conn.state is ChannelState.ERROR
