"""IPv4 / ICMP echo / UDP codecs (loadgen.proto.packets)."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.proto.errors import BadPacketError, LocalProtocolError
from loadgen.proto.packets import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    IPV4_FLAG_DF,
    IPV4_FLAG_MF,
    PROTO_ICMP,
    PROTO_UDP,
    build_icmp_echo_reply,
    build_icmp_echo_request,
    build_udp,
    build_udp_reply,
    internet_checksum,
    parse_icmp_untrusted,
    parse_ipv4_untrusted,
    parse_udp_untrusted,
)

A = IPv4Address("10.0.0.1")
B = IPv4Address("10.0.0.2")
LO = IPv4Address("127.0.0.1")

# Hand-summed (16-bit words, end-around carry) in the comments of each vector.
# IP header words 4500 0020 0000 0000 4001 . 0a00 0001 0a00 0002 -> sum 9924 -> 66db;
# ICMP words 0800 . 1234 0001 6162 6364 -> sum defb -> 2104.
ICMP_ECHO_HAND = bytes.fromhex("4500002000000000400166db0a0000010a000002080021041234000161626364")
# Pseudo header 0a00 0001 0a00 0002 0011 000a + UDP 9c40 0007 000a . 6869 -> sum 18d9 -> e726;
# IP header ... 001e ... 4011 -> sum 9932 -> 66cd.
UDP_HAND = bytes.fromhex("4500001e00000000401166cd0a0000010a0000029c400007000ae7266869")
# Captured from Linux 6.x inside `unshare -n`: the kernel's reply to
# build_icmp_echo_request(src=LO, dst=LO, ident=0x1234, seq=7, payload=b"loadgen-echo",
# ip_id=0x4242); the kernel accepted our request and dropped it when one bit was flipped.
KERNEL_ECHO_REQUEST = bytes.fromhex(
    "450000284242000040013a917f0000017f0000010800748b123400076c6f616467656e2d6563686f"
)
KERNEL_ECHO_REPLY = bytes.fromhex(
    "45000028ce1300004001aebf7f0000017f00000100007c8b123400076c6f616467656e2d6563686f"
)
# The header example in Wikipedia's "Internet checksum" / "IPv4 header checksum" article.
WIKIPEDIA_HEADER = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")


def _naive_checksum(data: bytes) -> int:
    """RFC 1071 §4.1 word by word, as a reference for the fast version."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- checksum ---


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


def test_checksum_wikipedia_header() -> None:
    assert internet_checksum(WIKIPEDIA_HEADER) == 0xB861


def test_checksum_edge_cases() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\x00\x00") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0x0000  # negative zero sums to ffff
    assert internet_checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length pads on the right


@given(st.binary(max_size=300))
def test_checksum_matches_word_by_word(data: bytes) -> None:
    assert internet_checksum(data) == _naive_checksum(data)


@given(st.binary(max_size=300))
def test_checksum_verifies_to_zero(data: bytes) -> None:
    data = data + b"\x00" * (len(data) % 2)
    assert internet_checksum(data + internet_checksum(data).to_bytes(2, "big")) == 0


# --- known bytes ---


def test_icmp_echo_request_hand_checked() -> None:
    pkt = build_icmp_echo_request(src=A, dst=B, ident=0x1234, seq=1, payload=b"abcd")
    assert pkt == ICMP_ECHO_HAND


def test_udp_hand_checked() -> None:
    assert build_udp(src=A, dst=B, sport=40000, dport=7, payload=b"hi") == UDP_HAND


def test_echo_request_accepted_by_linux_is_reproduced() -> None:
    pkt = build_icmp_echo_request(
        src=LO, dst=LO, ident=0x1234, seq=7, payload=b"loadgen-echo", ip_id=0x4242
    )
    assert pkt == KERNEL_ECHO_REQUEST


def test_linux_echo_reply_parses_and_gateway_reply_matches_it() -> None:
    ip = parse_ipv4_untrusted(KERNEL_ECHO_REPLY)
    icmp = parse_icmp_untrusted(ip)
    assert (ip.src, ip.dst, ip.ttl, ip.ident, ip.protocol) == (LO, LO, 64, 0xCE13, PROTO_ICMP)
    assert (icmp.type, icmp.code, icmp.ident, icmp.seq) == (ICMP_ECHO_REPLY, 0, 0x1234, 7)
    assert icmp.data == b"loadgen-echo"
    # Our gateway answers the same request with exactly the kernel's bytes.
    req = parse_ipv4_untrusted(KERNEL_ECHO_REQUEST)
    assert build_icmp_echo_reply(req, parse_icmp_untrusted(req), ip_id=0xCE13) == KERNEL_ECHO_REPLY


def test_parse_wikipedia_header_flags() -> None:
    header = bytearray(WIKIPEDIA_HEADER)
    header[10:12] = b"\xb8\x61"
    ip = parse_ipv4_untrusted(bytes(header) + bytes(0x73 - 20))
    assert ip.flags == IPV4_FLAG_DF
    assert ip.fragment_offset == 0
    assert not ip.is_fragment
    assert (ip.ttl, ip.protocol, ip.header_length) == (64, PROTO_UDP, 20)
    assert ip.src == IPv4Address("192.168.0.1")
    assert ip.dst == IPv4Address("192.168.0.199")
    assert len(ip.payload) == 0x73 - 20


def test_udp_zero_checksum_is_sent_as_ffff() -> None:
    # With payload 4f90 the sum of UDP_HAND's words becomes ffff, so the checksum computes to 0.
    pkt = build_udp(src=A, dst=B, sport=40000, dport=7, payload=b"\x4f\x90")
    assert pkt[26:28] == b"\xff\xff"
    assert parse_udp_untrusted(parse_ipv4_untrusted(pkt)).payload == b"\x4f\x90"


# --- round trips ---


@given(
    ident=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=1500),
    ttl=st.integers(0, 255),
    ip_id=st.integers(0, 0xFFFF),
)
def test_icmp_round_trip(ident: int, seq: int, payload: bytes, ttl: int, ip_id: int) -> None:
    pkt = build_icmp_echo_request(
        src=A, dst=B, ident=ident, seq=seq, payload=payload, ttl=ttl, ip_id=ip_id
    )
    ip = parse_ipv4_untrusted(pkt)
    assert (ip.src, ip.dst, ip.ttl, ip.ident, ip.flags) == (A, B, ttl, ip_id, 0)
    icmp = parse_icmp_untrusted(ip)
    assert (icmp.type, icmp.code, icmp.ident, icmp.seq, icmp.data) == (
        ICMP_ECHO_REQUEST,
        0,
        ident,
        seq,
        payload,
    )
    reply = parse_ipv4_untrusted(build_icmp_echo_reply(ip, icmp))
    assert (reply.src, reply.dst) == (B, A)
    answer = parse_icmp_untrusted(reply)
    assert (answer.type, answer.ident, answer.seq, answer.data) == (
        ICMP_ECHO_REPLY,
        ident,
        seq,
        payload,
    )


@given(
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=1500),
)
def test_udp_round_trip(sport: int, dport: int, payload: bytes) -> None:
    ip = parse_ipv4_untrusted(build_udp(src=A, dst=B, sport=sport, dport=dport, payload=payload))
    udp = parse_udp_untrusted(ip)
    assert (udp.sport, udp.dport, udp.payload) == (sport, dport, payload)
    reply_ip = parse_ipv4_untrusted(build_udp_reply(ip, udp))
    reply = parse_udp_untrusted(reply_ip)
    assert (reply_ip.src, reply_ip.dst) == (B, A)
    assert (reply.sport, reply.dport, reply.payload) == (dport, sport, payload)


def test_trailing_bytes_after_total_length_are_ignored() -> None:
    ip = parse_ipv4_untrusted(ICMP_ECHO_HAND + b"\x00padding")
    assert parse_icmp_untrusted(ip).data == b"abcd"


def test_header_options_are_skipped() -> None:
    # IHL 6: one 4-byte option word (NOP x4), checksum recomputed.
    options = b"\x01\x01\x01\x01"
    header = bytearray(ICMP_ECHO_HAND[:20] + options)
    header[0] = 0x46
    header[2:4] = (len(ICMP_ECHO_HAND) + 4).to_bytes(2, "big")
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    ip = parse_ipv4_untrusted(bytes(header) + ICMP_ECHO_HAND[20:])
    assert ip.header_length == 24
    assert parse_icmp_untrusted(ip).seq == 1


def test_udp_checksum_zero_means_unchecked() -> None:
    pkt = bytearray(UDP_HAND)
    pkt[26:28] = b"\x00\x00"
    pkt[-1] ^= 0x55  # the payload changes, nobody can tell
    assert parse_udp_untrusted(parse_ipv4_untrusted(bytes(pkt))).payload == b"h<"


# --- corruption and malformed input ---


@pytest.mark.parametrize("pos", range(len(ICMP_ECHO_HAND)))
def test_any_flipped_bit_in_icmp_echo_is_detected(pos: int) -> None:
    bad = bytearray(ICMP_ECHO_HAND)
    bad[pos] ^= 0x10
    with pytest.raises(BadPacketError):
        parse_icmp_untrusted(parse_ipv4_untrusted(bytes(bad)))


@pytest.mark.parametrize("pos", range(20, len(UDP_HAND)))
def test_any_flipped_bit_in_udp_is_detected(pos: int) -> None:
    bad = bytearray(UDP_HAND)
    bad[pos] ^= 0x04
    with pytest.raises(BadPacketError):
        parse_udp_untrusted(parse_ipv4_untrusted(bytes(bad)))


def test_udp_checksum_covers_the_pseudo_header() -> None:
    ip = parse_ipv4_untrusted(UDP_HAND)
    spoofed = type(ip)(
        src=IPv4Address("10.0.0.3"),
        dst=ip.dst,
        protocol=ip.protocol,
        ttl=ip.ttl,
        ident=ip.ident,
        flags=ip.flags,
        fragment_offset=ip.fragment_offset,
        header_length=ip.header_length,
        payload=ip.payload,
    )
    with pytest.raises(BadPacketError, match="checksum"):
        parse_udp_untrusted(spoofed)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "too short"),
        (ICMP_ECHO_HAND[:19], "too short"),
        (bytes([0x65]) + ICMP_ECHO_HAND[1:], "version 6"),
        (bytes([0x44]) + ICMP_ECHO_HAND[1:], "IHL 4"),
        (ICMP_ECHO_HAND[:-1], "total length"),
        (ICMP_ECHO_HAND[:2] + b"\x00\x10" + ICMP_ECHO_HAND[4:], "total length 16"),
    ],
)
def test_malformed_ipv4(data: bytes, match: str) -> None:
    with pytest.raises(BadPacketError, match=match):
        parse_ipv4_untrusted(data)


def test_fragments_are_reported_not_parsed() -> None:
    header = bytearray(ICMP_ECHO_HAND[:20])
    header[6:8] = ((IPV4_FLAG_MF << 13) | 0).to_bytes(2, "big")
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    ip = parse_ipv4_untrusted(bytes(header) + ICMP_ECHO_HAND[20:])
    assert ip.is_fragment and ip.flags == IPV4_FLAG_MF
    with pytest.raises(BadPacketError, match="fragment"):
        parse_icmp_untrusted(ip)


def test_wrong_protocol_and_short_messages() -> None:
    icmp_ip = parse_ipv4_untrusted(ICMP_ECHO_HAND)
    udp_ip = parse_ipv4_untrusted(UDP_HAND)
    with pytest.raises(BadPacketError, match="not UDP"):
        parse_udp_untrusted(icmp_ip)
    with pytest.raises(BadPacketError, match="not ICMP"):
        parse_icmp_untrusted(udp_ip)
    # UDP length field larger than the IP payload
    bad = bytearray(UDP_HAND)
    bad[24:26] = b"\x00\x0b"
    with pytest.raises(BadPacketError, match="UDP length 11"):
        parse_udp_untrusted(parse_ipv4_untrusted(bytes(bad)))


def test_builders_refuse_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        build_icmp_echo_request(src=A, dst=B, ident=0x10000, seq=0, payload=b"")
    with pytest.raises(LocalProtocolError):
        build_udp(src=A, dst=B, sport=-1, dport=7, payload=b"")
    with pytest.raises(LocalProtocolError):
        build_udp(src=A, dst=B, sport=1, dport=7, payload=bytes(65536 - 28))
    with pytest.raises(LocalProtocolError):
        build_icmp_echo_request(src=A, dst=B, ident=1, seq=1, payload=b"", ttl=256)
    reply = parse_icmp_untrusted(parse_ipv4_untrusted(KERNEL_ECHO_REPLY))
    with pytest.raises(LocalProtocolError, match="not an echo request"):
        build_icmp_echo_reply(parse_ipv4_untrusted(KERNEL_ECHO_REPLY), reply)


def test_largest_packet_fits() -> None:
    pkt = build_udp(src=A, dst=B, sport=1, dport=7, payload=bytes(65535 - 28))
    assert len(pkt) == 65535
    assert len(parse_udp_untrusted(parse_ipv4_untrusted(pkt)).payload) == 65535 - 28


# --- fuzz: any bytes in -> a result or BadPacketError ---


def _parse_all(data: bytes) -> None:
    try:
        ip = parse_ipv4_untrusted(data)
    except BadPacketError:
        return
    for parser in (parse_icmp_untrusted, parse_udp_untrusted):
        with contextlib.suppress(BadPacketError):
            parser(ip)


@given(st.binary(max_size=200))
def test_fuzz_parsers_random_bytes(data: bytes) -> None:
    _parse_all(data)


@given(
    base=st.sampled_from([ICMP_ECHO_HAND, UDP_HAND, KERNEL_ECHO_REPLY]),
    edits=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 60),
    fix_checksum=st.booleans(),
)
def test_fuzz_parsers_mutated_packets(
    base: bytes, edits: list[tuple[int, int]], cut: int, fix_checksum: bool
) -> None:
    data = bytearray(base)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    data = data[: max(len(data) - cut, 0)] if cut < 40 else data
    if fix_checksum and len(data) >= 20:
        # Reach past the header check, into the ICMP/UDP parsers.
        ihl = (data[0] & 0x0F) * 4
        if 20 <= ihl <= len(data):
            data[10:12] = b"\x00\x00"
            data[10:12] = internet_checksum(bytes(data[:ihl])).to_bytes(2, "big")
    _parse_all(bytes(data))


@given(st.binary(max_size=100))
def test_fuzz_icmp_udp_behind_valid_header(body: bytes) -> None:
    for proto in (PROTO_ICMP, PROTO_UDP):
        header = bytearray(20)
        struct.pack_into(
            "!BBHHHBBH4s4s",
            header,
            0,
            0x45,
            0,
            20 + len(body),
            0,
            0,
            64,
            proto,
            0,
            A.packed,
            B.packed,
        )
        header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
        _parse_all(bytes(header) + body)
