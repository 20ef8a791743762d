"""Handshake codecs, fragment reassembly and transcript rules (protocol.md §7.1, §7.4)."""

from __future__ import annotations

import itertools
import random

import pytest

from loadgen.proto.dtls import DTLS0_9, DTLS1_2, DTLS_CIPHERS_HEADER, HandshakeCompleted, State
from loadgen.proto.dtls import handshake as hs
from loadgen.proto.dtls.records import encode_record, parse_records_untrusted
from loadgen.proto.errors import BadPacketError
from tests.proto.dtls.dtls_testlib import events, make_pair, make_session, pump

HELLO = hs.ClientHello(
    client_version=DTLS0_9,
    random=bytes(range(32)),
    session_id=b"\xab" * 32,
    cipher_suites=(0x002F,),
)


def test_handshake_header_layout() -> None:
    message = hs.encode_handshake(20, 2, b"v" * 12)
    assert message[:12] == bytes.fromhex("14 00000c 0002 000000 00000c")
    (frag,) = hs.parse_handshake_fragments_untrusted(message)
    assert frag == hs.HandshakeFragment(20, 12, 2, 0, b"v" * 12) and frag.is_complete


def test_client_hello_layout_without_extensions() -> None:
    """§7.4: version, random, 20||session id, 00 (cookie), 0002 suite, 01 00, no extensions."""
    body = HELLO.encode()
    assert body == (
        b"\x01\x00" + bytes(range(32)) + b"\x20" + b"\xab" * 32 + b"\x00" + b"\x00\x02\x00\x2f"
        b"\x01\x00"
    )
    assert hs.parse_client_hello_untrusted(body) == HELLO
    with_ext = hs.ClientHello(
        client_version=DTLS1_2,
        random=b"r" * 32,
        session_id=b"s",
        cookie=b"cookie",
        cipher_suites=(0x009D, 0x009C),
        extensions=((0xFF01, b"\x00"),),
    )
    assert with_ext.encode().endswith(b"\x00\x05\xff\x01\x00\x01\x00")
    assert hs.parse_client_hello_untrusted(with_ext.encode()) == with_ext
    empty_block = hs.ClientHello(
        client_version=DTLS1_2, random=b"r" * 32, session_id=b"", cipher_suites=(1,), extensions=()
    )
    assert hs.parse_client_hello_untrusted(empty_block.encode()).extensions == ()


def test_server_hello_and_hello_verify_request_round_trip() -> None:
    sh = hs.ServerHello(
        server_version=DTLS1_2, random=b"R" * 32, session_id=b"\x01" * 32, cipher_suite=0xC030
    )
    assert hs.parse_server_hello_untrusted(sh.encode()) == sh
    hvr = hs.HelloVerifyRequest(server_version=0xFEFF, cookie=b"C" * 16)
    assert hvr.encode() == b"\xfe\xff\x10" + b"C" * 16
    assert hs.parse_hello_verify_request_untrusted(hvr.encode()) == hvr


@pytest.mark.parametrize(
    ("parser", "body"),
    [
        (hs.parse_client_hello_untrusted, HELLO.encode()[:-1]),
        (hs.parse_client_hello_untrusted, HELLO.encode() + b"\x00"),  # half an ext block length
        (hs.parse_client_hello_untrusted, HELLO.encode() + b"\x00\x04\xff\x01\x00"),
        (
            hs.parse_client_hello_untrusted,
            HELLO.encode().replace(b"\x00\x02\x00\x2f", b"\x00\x01\x00\x2f"),
        ),
        (
            hs.parse_server_hello_untrusted,
            b"\xfe\xfd" + b"r" * 32 + b"\x21" + b"s" * 33 + b"\x00\x9d\x00",
        ),
        (
            hs.parse_server_hello_untrusted,
            b"\xfe\xfd" + b"r" * 32 + b"\x00\x00\x9d\x00\x00\x02\x00",
        ),
        (hs.parse_hello_verify_request_untrusted, b"\xfe\xff\x02a"),
        (hs.parse_hello_verify_request_untrusted, b"\xfe\xff\x01ab"),
        (hs.parse_finished_untrusted, b"x" * 11),
        (hs.parse_handshake_fragments_untrusted, b""),
        (
            hs.parse_handshake_fragments_untrusted,
            bytes.fromhex("14 00000c 0002 000000 00000d") + b"v" * 13,
        ),
        (
            hs.parse_handshake_fragments_untrusted,
            bytes.fromhex("14 00000c 0002 000000 00000c") + b"v" * 11,
        ),
        (
            hs.parse_handshake_fragments_untrusted,
            bytes.fromhex("01 ffffff 0000 000000 000001") + b"v",
        ),
    ],
)
def test_malformed_messages(parser: object, body: bytes) -> None:
    with pytest.raises(BadPacketError):
        parser(body)  # type: ignore[operator]


def test_change_cipher_spec_per_version() -> None:
    assert hs.encode_change_cipher_spec(DTLS0_9, 1) == b"\x01\x00\x01"
    assert hs.encode_change_cipher_spec(DTLS0_9, 2) == b"\x01\x00\x02"
    assert hs.encode_change_cipher_spec(DTLS1_2, 1) == b"\x01"
    hs.parse_change_cipher_spec_untrusted(DTLS0_9, b"\x01\x00\x07")  # value not checked (GnuTLS)
    for version, bad in ((DTLS0_9, b"\x01"), (DTLS1_2, b"\x01\x00\x01"), (DTLS1_2, b"\x02")):
        with pytest.raises(BadPacketError):
            hs.parse_change_cipher_spec_untrusted(version, bad)


def test_transcript_entry_rules() -> None:
    """DTLS 0.9: bodies only; DTLS 1.2: full messages with unfragmented headers (§7.4)."""
    assert hs.transcript_entry(DTLS0_9, 2, 0, b"body") == b"body"
    assert hs.transcript_entry(DTLS1_2, 2, 1, b"body") == hs.encode_handshake(2, 1, b"body")


def _fragments(message: bytes, cuts: list[int]) -> list[bytes]:
    msg_type, length, mseq = message[0], len(message) - 12, int.from_bytes(message[4:6])
    body = message[12:]
    bounds = [0, *sorted(cuts), length]
    return [
        bytes([msg_type])
        + length.to_bytes(3)
        + mseq.to_bytes(2)
        + a.to_bytes(3)
        + (b - a).to_bytes(3)
        + body[a:b]
        for a, b in itertools.pairwise(bounds)
    ]


@pytest.mark.parametrize("seed", range(20))
def test_reassembly_in_any_order_with_overlaps(seed: int) -> None:
    rng = random.Random(seed)
    message = hs.encode_handshake(1, 0, HELLO.encode())
    length = len(message) - 12
    cuts = rng.sample(range(1, length), rng.randint(1, 6))
    pieces = _fragments(message, cuts)
    pieces += rng.sample(pieces, min(2, len(pieces)))  # duplicates
    pieces.append(_fragments(message, [3, 40])[1])  # an overlapping fragment
    rng.shuffle(pieces)
    reassembler = hs.Reassembler()
    results = []
    for piece in pieces:
        (frag,) = hs.parse_handshake_fragments_untrusted(piece)
        results.append(reassembler.add(frag))
    complete = [r for r in results if r is not None]
    assert complete and all(r == HELLO.encode() for r in complete)


def test_reassembly_rejects_inconsistent_fragments_and_is_bounded() -> None:
    reassembler = hs.Reassembler(max_messages=2)
    first = hs.HandshakeFragment(1, 10, 0, 0, b"abc")
    assert reassembler.add(first) is None
    with pytest.raises(BadPacketError):
        reassembler.add(hs.HandshakeFragment(2, 10, 0, 3, b"def"))
    with pytest.raises(BadPacketError):
        reassembler.add(hs.HandshakeFragment(1, 11, 0, 3, b"def"))
    assert reassembler.add(hs.HandshakeFragment(1, 10, 1, 0, b"x")) is None
    # a third partial message is not buffered
    assert reassembler.add(hs.HandshakeFragment(1, 10, 2, 0, b"x")) is None
    assert reassembler.add(hs.HandshakeFragment(1, 10, 2, 1, b"y" * 9)) is None
    assert reassembler.add(hs.HandshakeFragment(1, 10, 1, 1, b"y" * 9)) == b"x" + b"y" * 9
    # completing one frees its slot
    assert reassembler.add(hs.HandshakeFragment(1, 10, 2, 0, b"x")) is None
    assert reassembler.add(hs.HandshakeFragment(1, 10, 2, 1, b"y" * 9)) == b"x" + b"y" * 9


def test_server_accepts_a_fragmented_client_hello_across_datagrams() -> None:
    """We send unfragmented but accept fragments (§7.1): split the ClientHello in three
    fragments over two datagrams, the middle one duplicated."""
    session = make_session(DTLS_CIPHERS_HEADER, "AES128-SHA")
    client, server = make_pair(session)
    client.connect(0.0)
    (datagram,) = client.datagrams_to_send(0.0)
    (record,) = parse_records_untrusted(datagram)
    a, b, c = _fragments(record.fragment, [30, 61])
    server.receive_datagram(
        encode_record(22, DTLS0_9, 0, 10, c) + encode_record(22, DTLS0_9, 0, 11, b), 0.0
    )
    assert server.state.value == "wait_client_hello"  # (.value: keep mypy from narrowing)
    # the client's own later records (CCS = seq 1) must not collide with these
    server.receive_datagram(encode_record(22, DTLS0_9, 0, 12, b + a), 0.0)
    assert server.state is State.WAIT_CLIENT_FINISHED
    assert server.client_hello == client.client_hello
    pump(server, client)
    assert [type(e) for e in events(client)] == [HandshakeCompleted]
    assert [type(e) for e in events(server)] == [HandshakeCompleted]
