"""``hello_delay``: hold DTLS handshake flights for ``delay`` ms; data passes at once.

Attributes: ``delay`` (ms, 0 to 600000, default 1000).

A datagram is a handshake datagram when its first byte, the content type of its first
DTLS record (protocol.md §7.1, record layer), is 22 (handshake) or 20
(ChangeCipherSpec).  Only the first record is looked at, on purpose: a DTLS datagram
that holds several records starts a flight with its first one (ChangeCipherSpec +
Finished begins with 20; a server flight begins with 22), the check needs no length
parsing of untrusted bytes, and an application-data datagram (23) is never held
because of what follows it.  Handshake datagrams keep their order among themselves;
everything else (23, alerts (21), empty or garbage datagrams) passes immediately and
so may overtake a held handshake datagram, as a slow handshake path would let it.
Every handshake datagram is held, retransmissions included.
"""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.faultproxy.datagram.base import AttributeRule, DatagramToxic
from loadgen.faultproxy.model import AttrValue

__all__ = ["CHANGE_CIPHER_SPEC", "HANDSHAKE", "HelloDelayToxic", "is_handshake_datagram"]

CHANGE_CIPHER_SPEC = 20  # DTLS record content types (RFC 6347 §4.1)
HANDSHAKE = 22


def is_handshake_datagram(datagram: bytes) -> bool:
    """True when the datagram's first record is a handshake or ChangeCipherSpec record."""
    return len(datagram) > 0 and datagram[0] in (HANDSHAKE, CHANGE_CIPHER_SPEC)


class HelloDelayToxic(DatagramToxic):
    type_name = "hello_delay"
    attribute_rules = (
        AttributeRule(name="delay", default=1000, minimum=0, maximum=600_000, unit="ms"),
    )

    def configure(self, attrs: Mapping[str, AttrValue], now: float) -> None:
        self.delay_s = float(attrs["delay"]) / 1000.0

    def receive(self, datagram: bytes, now: float) -> None:
        if is_handshake_datagram(datagram):
            self._hold_until(datagram, now + self.delay_s, now)
        else:
            self._emit(datagram)
