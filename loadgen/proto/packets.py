"""IPv4, ICMP echo and UDP: the packets a tun-less client pushes through the tunnel.

There is no tun device (architecture.md): a synthetic client builds an ICMP
echo request or a UDP datagram itself, sends it as one CSTP/DTLS DATA packet
(protocol.md §5.2, §7.7), and parses what comes back.  The reference gateway
uses the same code to answer echo for its own tunnel address.

Only what the echo needs: no IPv4 options are ever built (options in received
headers are skipped), no reassembly (fragments are reported as they are and
refused by the ICMP/UDP parsers), no IPv6 (``parse_ipv4_untrusted`` refuses
version 6, which ocserv sends as router solicitations: check ``data[0] >> 4``
first to ignore them quietly).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "IPV4_FLAG_DF",
    "IPV4_FLAG_MF",
    "IPV4_HEADER",
    "IPV4_HEADER_LEN",
    "PROTO_ICMP",
    "PROTO_UDP",
    "IPv4Packet",
    "IcmpMessage",
    "UdpDatagram",
    "build_icmp_echo_reply",
    "build_icmp_echo_request",
    "build_udp",
    "build_udp_reply",
    "internet_checksum",
    "parse_icmp_untrusted",
    "parse_ipv4_untrusted",
    "parse_udp_untrusted",
]

# RFC 791 §3.1, without options:
#
#   0                   1                   2                   3
#   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
#  +-------+-------+---------------+-------------------------------+
#  |Version|  IHL  |Type of Service|          Total Length         |
#  +-------+-------+---------------+-----+-------------------------+
#  |         Identification        |Flags|      Fragment Offset    |
#  +---------------+---------------+-----+-------------------------+
#  |  Time to Live |    Protocol   |         Header Checksum       |
#  +---------------+---------------+-------------------------------+
#  |                       Source Address                          |
#  +---------------------------------------------------------------+
#  |                    Destination Address                        |
#  +---------------------------------------------------------------+
#: version_ihl, tos, total_length, ident, flags_fragment, ttl, protocol, checksum, src, dst
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV4_HEADER_LEN = IPV4_HEADER.size
IPV4_MAX_LEN = 0xFFFF
IPV4_FLAG_DF = 0b010
IPV4_FLAG_MF = 0b001

# RFC 792, echo / echo reply:
#
#  +---------------+---------------+-------------------------------+
#  |     Type      |     Code      |          Checksum             |
#  +---------------+---------------+-------------------------------+
#  |           Identifier          |        Sequence Number        |
#  +-------------------------------+-------------------------------+
#  |     Data ...
#: type, code, checksum, ident, seq
ICMP_HEADER = struct.Struct("!BBHHH")

# RFC 768:
#
#  +-------------------------------+-------------------------------+
#  |          Source Port          |       Destination Port        |
#  +-------------------------------+-------------------------------+
#  |            Length             |           Checksum            |
#  +-------------------------------+-------------------------------+
#  |     Data ...
#: sport, dport, length, checksum
UDP_HEADER = struct.Struct("!HHHH")

#: RFC 768 pseudo header for the UDP checksum: src, dst, zero, protocol, UDP length
UDP_PSEUDO_HEADER = struct.Struct("!4s4sBBH")

PROTO_ICMP = 1
PROTO_UDP = 17
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8


@dataclass(frozen=True, slots=True)
class IPv4Packet:
    """A parsed IPv4 packet; ``payload`` is cut to the header's total length."""

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    ttl: int
    ident: int
    #: the 3 flag bits (``IPV4_FLAG_DF``, ``IPV4_FLAG_MF``)
    flags: int
    #: in 8-byte units, as on the wire
    fragment_offset: int
    #: in bytes (IHL * 4), options included
    header_length: int
    payload: bytes = field(repr=False)

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags & IPV4_FLAG_MF) or self.fragment_offset != 0


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    """An ICMP message; ``ident``/``seq`` are bytes 4..7, meaningful for echo types only."""

    type: int
    code: int
    ident: int
    seq: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    sport: int
    dport: int
    payload: bytes = field(repr=False)


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words.

    Because 2**16 is 1 modulo 0xFFFF, the one's complement sum of the words
    equals the whole big-endian integer modulo 0xFFFF, except that a non-zero
    input whose sum is a multiple of 0xFFFF sums to 0xFFFF (one's complement
    "negative zero"), never 0.  One ``int.from_bytes`` is much faster in
    CPython than a loop over words.  Verifying: the checksum of data that
    includes its own correct checksum field is 0.
    """
    if len(data) % 2:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    if total == 0 and value != 0:
        total = 0xFFFF
    return ~total & 0xFFFF


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{name} {value} does not fit 16 bits")


def _ipv4(
    *, src: IPv4Address, dst: IPv4Address, protocol: int, payload: bytes, ttl: int, ip_id: int
) -> bytes:
    total_length = IPV4_HEADER_LEN + len(payload)
    if total_length > IPV4_MAX_LEN:
        raise LocalProtocolError(f"IPv4 packet of {total_length} bytes exceeds 65535")
    if not 0 <= ttl <= 0xFF:
        raise LocalProtocolError(f"ttl {ttl} does not fit 8 bits")
    _check_u16("ip_id", ip_id)
    header = bytearray(
        IPV4_HEADER.pack(0x45, 0, total_length, ip_id, 0, ttl, protocol, 0, src.packed, dst.packed)
    )
    struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
    return bytes(header) + payload


def _icmp_echo(*, type_: int, ident: int, seq: int, payload: bytes) -> bytes:
    _check_u16("ident", ident)
    _check_u16("seq", seq)
    unsummed = ICMP_HEADER.pack(type_, 0, 0, ident, seq) + payload
    return ICMP_HEADER.pack(type_, 0, internet_checksum(unsummed), ident, seq) + payload


def _udp_checksum(src: IPv4Address, dst: IPv4Address, segment: bytes) -> int:
    pseudo = UDP_PSEUDO_HEADER.pack(src.packed, dst.packed, 0, PROTO_UDP, len(segment))
    return internet_checksum(pseudo + segment)


def build_icmp_echo_request(
    *,
    src: IPv4Address,
    dst: IPv4Address,
    ident: int,
    seq: int,
    payload: bytes,
    ttl: int = 64,
    ip_id: int = 0,
) -> bytes:
    """A whole IPv4 packet carrying an ICMP echo request (type 8), checksums set."""
    icmp = _icmp_echo(type_=ICMP_ECHO_REQUEST, ident=ident, seq=seq, payload=payload)
    return _ipv4(src=src, dst=dst, protocol=PROTO_ICMP, payload=icmp, ttl=ttl, ip_id=ip_id)


def build_udp(
    *,
    src: IPv4Address,
    dst: IPv4Address,
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int = 64,
    ip_id: int = 0,
) -> bytes:
    """A whole IPv4 packet carrying a UDP datagram, checksum over the pseudo header."""
    _check_u16("sport", sport)
    _check_u16("dport", dport)
    length = UDP_HEADER.size + len(payload)
    _check_u16("UDP length", length)
    checksum = _udp_checksum(src, dst, UDP_HEADER.pack(sport, dport, length, 0) + payload)
    # RFC 768: a computed 0 is sent as all ones; 0 on the wire means "no checksum".
    segment = UDP_HEADER.pack(sport, dport, length, checksum or 0xFFFF) + payload
    return _ipv4(src=src, dst=dst, protocol=PROTO_UDP, payload=segment, ttl=ttl, ip_id=ip_id)


def parse_ipv4_untrusted(data: bytes) -> IPv4Packet:
    """Parse one IPv4 packet; bytes after the header's total length are ignored.

    Fragments are returned as they are (``is_fragment``); nothing is reassembled.
    """
    if len(data) < IPV4_HEADER_LEN:
        raise BadPacketError(f"IPv4 packet too short ({len(data)} bytes)")
    (
        version_ihl,
        _tos,
        total_length,
        ident,
        flags_fragment,
        ttl,
        protocol,
        _checksum,
        src,
        dst,
    ) = IPV4_HEADER.unpack_from(data)
    version, ihl = version_ihl >> 4, version_ihl & 0x0F
    if version != 4:
        raise BadPacketError(f"IP version {version}, expected 4")
    header_length = ihl * 4
    if ihl < 5:
        raise BadPacketError(f"IPv4 IHL {ihl} < 5")
    if total_length < header_length:
        raise BadPacketError(f"IPv4 total length {total_length} < header length {header_length}")
    if total_length > len(data):
        raise BadPacketError(f"IPv4 total length {total_length} > {len(data)} bytes received")
    if internet_checksum(data[:header_length]) != 0:
        raise BadPacketError("IPv4 header checksum mismatch")
    return IPv4Packet(
        src=IPv4Address(src),
        dst=IPv4Address(dst),
        protocol=protocol,
        ttl=ttl,
        ident=ident,
        flags=flags_fragment >> 13,
        fragment_offset=flags_fragment & 0x1FFF,
        header_length=header_length,
        payload=bytes(data[header_length:total_length]),
    )


def _refuse_fragment(ip: IPv4Packet, what: str) -> None:
    if ip.is_fragment:
        # A fragment holds part of the message: its checksum cannot be checked.
        raise BadPacketError(f"{what} in an IPv4 fragment (not reassembled)")


def parse_icmp_untrusted(ip: IPv4Packet) -> IcmpMessage:
    """The ICMP message of an IPv4 packet, checksum verified."""
    if ip.protocol != PROTO_ICMP:
        raise BadPacketError(f"IP protocol {ip.protocol} is not ICMP")
    _refuse_fragment(ip, "ICMP")
    data = ip.payload
    if len(data) < ICMP_HEADER.size:
        raise BadPacketError(f"ICMP message too short ({len(data)} bytes)")
    if internet_checksum(data) != 0:
        raise BadPacketError("ICMP checksum mismatch")
    type_, code, _checksum, ident, seq = ICMP_HEADER.unpack_from(data)
    return IcmpMessage(type=type_, code=code, ident=ident, seq=seq, data=data[ICMP_HEADER.size :])


def parse_udp_untrusted(ip: IPv4Packet) -> UdpDatagram:
    """The UDP datagram of an IPv4 packet; length checked, checksum verified unless 0."""
    if ip.protocol != PROTO_UDP:
        raise BadPacketError(f"IP protocol {ip.protocol} is not UDP")
    _refuse_fragment(ip, "UDP")
    data = ip.payload
    if len(data) < UDP_HEADER.size:
        raise BadPacketError(f"UDP datagram too short ({len(data)} bytes)")
    sport, dport, length, checksum = UDP_HEADER.unpack_from(data)
    if not UDP_HEADER.size <= length <= len(data):
        raise BadPacketError(f"UDP length {length} outside 8..{len(data)}")
    segment = data[:length]
    if checksum != 0 and _udp_checksum(ip.src, ip.dst, segment) != 0:
        raise BadPacketError("UDP checksum mismatch")
    return UdpDatagram(sport=sport, dport=dport, payload=segment[UDP_HEADER.size :])


def build_icmp_echo_reply(
    request: IPv4Packet, icmp: IcmpMessage, *, ttl: int = 64, ip_id: int = 0
) -> bytes:
    """The gateway's answer to an echo request: addresses swapped, same ident/seq/data."""
    if icmp.type != ICMP_ECHO_REQUEST or icmp.code != 0:
        raise LocalProtocolError(f"ICMP type {icmp.type} code {icmp.code} is not an echo request")
    reply = _icmp_echo(type_=ICMP_ECHO_REPLY, ident=icmp.ident, seq=icmp.seq, payload=icmp.data)
    return _ipv4(
        src=request.dst, dst=request.src, protocol=PROTO_ICMP, payload=reply, ttl=ttl, ip_id=ip_id
    )


def build_udp_reply(
    request: IPv4Packet, udp: UdpDatagram, *, ttl: int = 64, ip_id: int = 0
) -> bytes:
    """The gateway's UDP echo answer: addresses and ports swapped, same payload."""
    return build_udp(
        src=request.dst,
        dst=request.src,
        sport=udp.dport,
        dport=udp.sport,
        payload=udp.payload,
        ttl=ttl,
        ip_id=ip_id,
    )
