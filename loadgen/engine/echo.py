"""Tun-less echo: ICMP echo requests built in Python, replies matched by a stamp.

The echoer does not care which channel carries a packet: the session sends
through whichever channel is up and hands every received IP packet to
``on_packet``, from CSTP and DTLS alike.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import trio

from loadgen.failures import SessionFailedError
from loadgen.proto.errors import BadPacketError
from loadgen.proto.packets import (
    build_icmp_echo_request,
    build_udp,
    parse_icmp_untrusted,
    parse_ipv4_untrusted,
    parse_udp_untrusted,
)

__all__ = ["EchoResult", "Echoer"]

ICMP_PROTOCOL = 1
UDP_PROTOCOL = 17
ICMP_ECHO_REPLY = 0
#: the gateway's UDP echo service (RFC 862)
UDP_ECHO_PORT = 7
#: echo payload: our 8-byte stamp, then zero padding
_ECHO_STAMP = struct.Struct("!Q")
#: IPv4 header + ICMP header
ECHO_OVERHEAD_BYTES = 28


@dataclass
class EchoResult:
    sent: int = 0
    received: int = 0
    rtts_s: list[float] = field(default_factory=list)
    #: channel name -> requests sent on it
    channels: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    sent_at: float
    done: trio.Event = field(default_factory=trio.Event)
    rtt_s: float | None = None


class Echoer:
    """ICMP echo for one session.

    ``send`` transmits one IP packet and returns the channel name it used;
    ``check_alive`` raises the session's failure once the tunnel has ended.
    """

    def __init__(
        self,
        *,
        send: Callable[[bytes], Awaitable[str]],
        check_alive: Callable[[], None],
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._send = send
        self._check_alive = check_alive
        self._ident = int.from_bytes(random_bytes(2), "big")
        # our UDP source port: an ephemeral one, fixed per session
        self._udp_port = 49152 + int.from_bytes(random_bytes(2), "big") % 16384
        self._seq = 0
        self._stamp = int.from_bytes(random_bytes(4), "big") << 32
        self._pending: dict[int, _Pending] = {}
        self.unmatched_packets = 0

    def on_packet(self, data: bytes) -> None:
        """Any IP packet that came out of the tunnel."""
        try:
            if not data or data[0] >> 4 != 4:
                raise BadPacketError("not IPv4")
            ip = parse_ipv4_untrusted(data)
            if ip.protocol == ICMP_PROTOCOL:
                icmp = parse_icmp_untrusted(ip)
                ours = icmp.type == ICMP_ECHO_REPLY and icmp.ident == self._ident
                payload = icmp.data
            elif ip.protocol == UDP_PROTOCOL:
                udp = parse_udp_untrusted(ip)
                ours = udp.sport == UDP_ECHO_PORT and udp.dport == self._udp_port
                payload = udp.payload
            else:
                raise BadPacketError("neither ICMP nor UDP")
        except BadPacketError:
            # IPv6 router solicitations and the like: not ours
            self.unmatched_packets += 1
            return
        if not ours or len(payload) < _ECHO_STAMP.size:
            self.unmatched_packets += 1
            return
        (stamp,) = _ECHO_STAMP.unpack_from(payload)
        pending = self._pending.get(stamp)
        if pending is None or pending.done.is_set():
            self.unmatched_packets += 1
            return
        pending.rtt_s = trio.current_time() - pending.sent_at
        pending.done.set()

    def wake_all(self) -> None:
        """The tunnel ended: release every waiter now."""
        for pending in self._pending.values():
            pending.done.set()

    async def echo(
        self,
        src: IPv4Address,
        target: IPv4Address,
        *,
        count: int,
        interval_s: float,
        timeout_s: float,
        payload_bytes: int = 56,
        udp: bool = False,
    ) -> EchoResult:
        """Send ``count`` echo requests, ``interval_s`` apart; wait ``timeout_s`` for each.

        ICMP echo by default; ``udp`` sends to the UDP echo port (7) instead.
        """
        result = EchoResult()
        payload_bytes = max(payload_bytes, _ECHO_STAMP.size)
        failure: SessionFailedError | None = None
        async with trio.open_nursery() as nursery:
            # Failures stay out of the nursery so callers see them bare, not
            # wrapped in an ExceptionGroup.
            try:
                for i in range(count):
                    if i:
                        await trio.sleep(interval_s)
                    stamp, pending, channel = await self._send_one(src, target, payload_bytes, udp)
                    result.sent += 1
                    result.channels[channel] = result.channels.get(channel, 0) + 1
                    nursery.start_soon(self._await_reply, stamp, pending, timeout_s, result)
            except SessionFailedError as exc:
                failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        self._check_alive()
        return result

    async def _send_one(
        self, src: IPv4Address, target: IPv4Address, payload_bytes: int, udp: bool
    ) -> tuple[int, _Pending, str]:
        self._check_alive()
        self._seq = (self._seq + 1) & 0xFFFF
        self._stamp += 1
        stamp = self._stamp
        pending = _Pending(sent_at=trio.current_time())
        self._pending[stamp] = pending
        data = _ECHO_STAMP.pack(stamp) + bytes(payload_bytes - _ECHO_STAMP.size)
        if udp:
            packet = build_udp(
                src=src, dst=target, sport=self._udp_port, dport=UDP_ECHO_PORT, payload=data
            )
        else:
            packet = build_icmp_echo_request(
                src=src, dst=target, ident=self._ident, seq=self._seq, payload=data
            )
        channel = await self._send(packet)
        return stamp, pending, channel

    async def _await_reply(
        self, stamp: int, pending: _Pending, timeout_s: float, result: EchoResult
    ) -> None:
        with trio.move_on_after(timeout_s):
            await pending.done.wait()
        self._pending.pop(stamp, None)
        if pending.rtt_s is not None:
            result.received += 1
            result.rtts_s.append(pending.rtt_s)
