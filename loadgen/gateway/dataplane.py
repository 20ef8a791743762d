"""The gateway's tun-less data plane: ICMP echo and UDP echo (port 7) for its
own tunnel address, answered in-process; everything else is dropped and counted.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from loadgen.proto.errors import BadPacketError
from loadgen.proto.packets import (
    build_icmp_echo_reply,
    build_udp_reply,
    parse_icmp_untrusted,
    parse_ipv4_untrusted,
    parse_udp_untrusted,
)

__all__ = ["ECHO_PORT", "answer_untrusted"]

ECHO_PORT = 7
_ICMP = 1
_UDP = 17
_ECHO_REQUEST = 8


def answer_untrusted(packet: bytes, gateway: IPv4Address) -> bytes | None:
    """The reply to one IP packet from a client, or None when it is not ours to answer.

    Never routes anything: a packet for another address is simply dropped.
    """
    try:
        if not packet or packet[0] >> 4 != 4:
            return None
        ip = parse_ipv4_untrusted(packet)
        if ip.dst != gateway or ip.is_fragment:
            return None
        if ip.protocol == _ICMP:
            icmp = parse_icmp_untrusted(ip)
            if icmp.type == _ECHO_REQUEST and icmp.code == 0:
                return build_icmp_echo_reply(ip, icmp)
            return None
        if ip.protocol == _UDP:
            udp = parse_udp_untrusted(ip)
            if udp.dport == ECHO_PORT:
                return build_udp_reply(ip, udp)
        return None
    except BadPacketError:
        return None
