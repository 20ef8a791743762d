"""Events a ``DtlsConnection`` hands to its driver (style.md: facts, frozen, keyword-only).

Exactly one terminal event ends a connection: ``HandshakeTimedOut`` or
``ConnectionTerminated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadgen.proto.dtls.errors import AlertDescription, AlertLevel
from loadgen.proto.errors import ProtocolError

__all__ = [
    "AlertReceived",
    "ApplicationDataReceived",
    "ConnectionTerminated",
    "DtlsEvent",
    "HandshakeCompleted",
    "HandshakeTimedOut",
]


@dataclass(frozen=True, kw_only=True)
class HandshakeCompleted:
    #: wire version, 0x0100 (DTLS 0.9) or 0xFEFD (DTLS 1.2)
    version: int
    cipher_name: str
    #: flights re-sent before completion
    retransmits: int


@dataclass(frozen=True, kw_only=True)
class ApplicationDataReceived:
    #: one record's plaintext: packet type byte + payload (§7.7)
    data: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class AlertReceived:
    level: AlertLevel | int
    description: AlertDescription | int


@dataclass(frozen=True, kw_only=True)
class HandshakeTimedOut:
    """The retransmission schedule ran out (a DTLS fallback with reason ``timeout``)."""

    retransmits: int


@dataclass(frozen=True, kw_only=True)
class ConnectionTerminated:
    """The association is over.  ``error`` is None for a clean close_notify or a local close;
    ``by_peer`` says who ended it (a peer alert, or our own verdict on the peer)."""

    error: ProtocolError | None
    by_peer: bool


DtlsEvent = (
    HandshakeCompleted
    | ApplicationDataReceived
    | AlertReceived
    | HandshakeTimedOut
    | ConnectionTerminated
)
