"""The sidecar frame protocol: round trips, known bytes, hostile frames, fuzzing."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.locust.protocol import (
    MAX_FRAME_BYTES,
    CommandRejected,
    Configure,
    Configured,
    Connect,
    Connected,
    Disconnect,
    Disconnected,
    Echo,
    EchoCompleted,
    FrameDecoder,
    FrameError,
    Message,
    PhaseCompleted,
    RequestFailed,
    Shutdown,
    SidecarReady,
    TunnelEnded,
    decode_message_untrusted,
    encode_message,
)
from loadgen.options import ClientOptions
from loadgen.proto.errors import BadPacketError, LocalProtocolError

SECRET = "s3cr3t-Pa55"

OPTIONS = ClientOptions(
    password=SECRET,
    group="Employees",
    cafile="ca.pem",
    insecure=True,
    no_dtls=True,
    dtls_ciphers=("AES256-SHA",),
    dtls12_ciphers=("AES256-GCM-SHA384", "AES128-GCM-SHA256"),
    dtls_schedule=(0.0, 0.5, 2.0),
    timeout_s=5.5,
)

EXAMPLES: list[Message] = [
    Connect(seq=1, id=7, profile=1, username="user1", password=SECRET),
    Connect(seq=2, id=8, profile=2, username="user2", group="Employees", hostname="lg-abc-0-1"),
    Configure(seq=5, profile=1, url="https://127.0.0.1:4443/", options=ClientOptions()),
    Configure(seq=6, profile=2, url="https://vpn.example.com/", options=OPTIONS),
    Configured(seq=6, profile=2),
    Echo(seq=3, id=7, count=5, spacing_s=0.0, timeout_s=1.0),
    Disconnect(seq=4, id=7),
    Shutdown(),
    SidecarReady(pid=1234),
    PhaseCompleted(seq=1, id=7, name="tls", seconds=0.0123),
    PhaseCompleted(seq=1, id=7, name="dtls", seconds=31.0, fallback="timeout"),
    Connected(seq=1, id=7, channel="dtls", seconds=0.05),
    RequestFailed(seq=1, id=7, phase="auth", reason="auth_rejected", message="Login failed"),
    EchoCompleted(seq=3, id=7, channel="dtls", sent=3, received=2, rtts_s=(0.001, 0.002)),
    EchoCompleted(seq=3, id=7, channel="cstp", sent=1, received=0),
    Disconnected(seq=4, id=7),
    TunnelEnded(id=7, phase="tunnel", reason="terminated", message="gateway sent TERMINATE"),
    CommandRejected(seq=9, message="session 7 is busy"),
]


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def decode_all(data: bytes) -> list[Message]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    out = []
    while (message := decoder.next_message_untrusted()) is not None:
        out.append(message)
    return out


# -- round trips and known bytes ---------------------------------------------------------


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = encode_message(message)
    (length,) = struct.unpack_from("!I", data)
    assert length == len(data) - 4
    assert decode_all(data) == [message]


def test_known_bytes() -> None:
    data = encode_message(Disconnect(seq=4, id=7))
    payload = b'{"type":"disconnect","seq":4,"id":7}'
    assert data == b"\x00\x00\x00\x24" + payload
    assert decode_message_untrusted(payload) == Disconnect(seq=4, id=7)


def test_defaults_fill_missing_optional_fields() -> None:
    message = decode_message_untrusted(
        b'{"type":"connect","seq":1,"id":2,"profile":1,"username":"u"}'
    )
    assert isinstance(message, Connect)
    assert (message.password, message.group) == (None, None)
    echo = decode_message_untrusted(b'{"type":"echo","seq":1,"id":2,"spacing_s":1}')
    assert echo == Echo(seq=1, id=2, count=3, spacing_s=1.0, timeout_s=2.0)
    assert isinstance(echo, Echo) and isinstance(echo.spacing_s, float)
    configure = decode_message_untrusted(
        b'{"type":"configure","seq":1,"profile":3,"url":"https://h/","options":{"timeout_s":5}}'
    )
    assert isinstance(configure, Configure)
    assert configure.options == ClientOptions(timeout_s=5.0)


def test_options_are_checked_as_the_table_checks_them() -> None:
    for bad in (b'{"dtls_port":0}', b'{"dtls_schedule":[1,2]}', b'{"echo_size":1}'):
        payload = b'{"type":"configure","seq":1,"profile":1,"url":"u","options":' + bad + b"}"
        with pytest.raises(FrameError, match="bad configure message"):
            decode_message_untrusted(payload)


def test_stream_fed_byte_by_byte() -> None:
    data = b"".join(encode_message(m) for m in EXAMPLES)
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(len(data)):
        decoder.receive_data(data[i : i + 1])
        while (message := decoder.next_message_untrusted()) is not None:
            out.append(message)
    assert out == EXAMPLES
    assert decoder.buffered_bytes == 0


def test_partial_frame_waits() -> None:
    data = encode_message(Disconnected(seq=1, id=1))
    decoder = FrameDecoder()
    decoder.receive_data(data[:3])
    assert decoder.next_message_untrusted() is None
    decoder.receive_data(data[3:-1])
    assert decoder.next_message_untrusted() is None
    decoder.receive_data(data[-1:])
    assert decoder.next_message_untrusted() == Disconnected(seq=1, id=1)


# -- secrets ------------------------------------------------------------------------------


def test_password_not_in_repr() -> None:
    for message in (EXAMPLES[0], EXAMPLES[3]):
        assert SECRET not in repr(message)
        assert SECRET not in str(message)


def test_password_not_in_errors() -> None:
    bad = json.dumps(
        {
            "type": "connect",
            "seq": 1,
            "id": 1,
            "profile": 1,
            "username": "u",
            "password": SECRET,
            "group": [SECRET],
        }
    ).encode()
    with pytest.raises(FrameError) as info:
        decode_message_untrusted(bad)
    assert SECRET not in str(info.value)
    assert "group" in str(info.value)
    wrong_type = bad.replace(b'"password"', b'"hostname":1,"password"').replace(
        f'"{SECRET}"'.encode(), b"12345", 1
    )
    with pytest.raises(FrameError) as info:
        decode_message_untrusted(wrong_type)
    assert "12345" not in str(info.value)


# -- hostile frames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "truncated JSON"),
        (b"[1,2]", "an array"),
        (b'"connect"', "a string"),
        (b"{}", "no type"),
        (b'{"type":5}', "numeric type"),
        (b'{"type":"launch_missiles","seq":1}', "unknown type"),
        (b'{"type":"disconnect","seq":1}', "missing id"),
        (b'{"type":"disconnect","seq":1,"id":2,"extra":0}', "unknown field"),
        (b'{"type":"disconnect","seq":true,"id":2}', "bool as int"),
        (b'{"type":"disconnect","seq":"1","id":2}', "string as int"),
        (b'{"type":"disconnect","seq":1.0,"id":2}', "float as int"),
        (b'{"type":"disconnect","seq":99999999999999999999,"id":2}', "huge int"),
        (b'{"type":"disconnect","seq":1,"id":null}', "null id"),
        (b'{"type":"echo","seq":1,"id":2,"spacing_s":NaN}', "NaN"),
        (b'{"type":"echo","seq":1,"id":2,"spacing_s":Infinity}', "Infinity"),
        (b'{"type":"echo","seq":1,"id":2,"spacing_s":1e400}', "overflowing float"),
        (b'{"type":"echo","seq":1,"id":2,"spacing_s":true}', "bool as float"),
        (
            b'{"type":"echo_result","seq":1,"id":2,"channel":"dtls","sent":1,"received":1,"rtts_s":[1,"x"]}',
            "bad array item",
        ),
        (
            b'{"type":"echo_result","seq":1,"id":2,"channel":"dtls","sent":1,"received":1,"rtts_s":{}}',
            "object as array",
        ),
        (
            b'{"type":"configure","seq":1,"profile":2,"url":"u","options":{"no_dtls":1}}',
            "int as bool",
        ),
        (b'{"type":"configure","seq":1,"profile":2,"url":"u","options":[]}', "array as options"),
        (
            b'{"type":"configure","seq":1,"profile":2,"url":"u","options":{"nope":1}}',
            "unknown option",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "deep nesting"),
        (
            b'{"type":"disconnect","seq":1,"id":2,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "deep field",
        ),
        (b"1" * 5000, "int beyond the digit limit"),
    ],
)
def test_hostile_payload(payload: bytes, why: str) -> None:
    with pytest.raises(FrameError):
        decode_message_untrusted(payload)
    decoder = FrameDecoder(max_frame_bytes=len(payload) + 1)
    decoder.receive_data(frame(payload))
    with pytest.raises(FrameError):
        decoder.next_message_untrusted()


def test_frame_error_is_a_bad_packet_error() -> None:
    assert issubclass(FrameError, BadPacketError)


@pytest.mark.parametrize("length", [0, MAX_FRAME_BYTES + 1, 0xFFFFFFFF])
def test_bad_length_refused_before_the_payload(length: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack("!I", length))  # no payload at all
    with pytest.raises(FrameError, match="frame length"):
        decoder.next_message_untrusted()


def test_decoder_refuses_use_after_an_error() -> None:
    good = encode_message(Disconnected(seq=1, id=1))
    decoder = FrameDecoder()
    decoder.receive_data(frame(b"nope"))
    with pytest.raises(FrameError):
        decoder.next_message_untrusted()
    decoder.receive_data(good)
    with pytest.raises(FrameError, match="broken"):
        decoder.next_message_untrusted()


def test_good_frames_before_a_bad_one_are_delivered() -> None:
    good = encode_message(Disconnected(seq=1, id=1))
    decoder = FrameDecoder()
    decoder.receive_data(good + good + frame(b"{}"))
    assert decoder.next_message_untrusted() == Disconnected(seq=1, id=1)
    assert decoder.next_message_untrusted() == Disconnected(seq=1, id=1)
    with pytest.raises(FrameError):
        decoder.next_message_untrusted()


# -- our own bugs are LocalProtocolError ------------------------------------------------------


def test_encode_refuses_nan() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(Connected(seq=1, id=1, channel="dtls", seconds=float("nan")))


def test_encode_refuses_wrong_types() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(Disconnect(seq="1", id=1))  # type: ignore[arg-type]


def test_encode_refuses_oversized() -> None:
    big = CommandRejected(seq=1, message="x" * MAX_FRAME_BYTES)
    with pytest.raises(LocalProtocolError):
        encode_message(big)


# -- fuzzing --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_stream(data: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=4096)
    decoder.receive_data(data)
    try:
        for _ in range(len(data) + 1):  # bounded: each message consumes >= 5 bytes
            if decoder.next_message_untrusted() is None:
                break
    except FrameError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_payload(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_message_untrusted(data)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_FIELD_NAMES = ("seq", "id", "profile", "url", "username", "password", "count", "spacing_s")
_field_names = st.sampled_from([*_FIELD_NAMES, "rtts_s", "options", "x"])
_TYPES = ("connect", "configure", "echo", "disconnect", "shutdown", "phase", "echo_result")
_types = st.sampled_from([*_TYPES, "ended", "nope"])


@settings(max_examples=500, deadline=None)
@given(_types, st.dictionaries(_field_names, _json_values, max_size=8))
def test_fuzz_structured(kind: str, fields: dict[str, object]) -> None:
    """Well-formed JSON objects with any fields: a message of that type, or FrameError."""
    payload = json.dumps({"type": kind, **fields}).encode()
    try:
        message = decode_message_untrusted(payload)
    except FrameError:
        return
    assert kind == message.TYPE
    # whatever was accepted encodes again to the same message
    assert decode_all(encode_message(message)) == [message]
