"""Alerts and typed DTLS errors (RFC 5246 §7.2, protocol.md §7.2).

Received alerts become ``DtlsAlertError`` (one class, the description kept
as an enum value); handshake failures that we detect have their own classes
so the engine can tell "the gateway refused resumption" from "bad Finished".
"""

from __future__ import annotations

import enum
from typing import TypeVar

from loadgen.proto.errors import RemoteProtocolError

__all__ = [
    "AlertDescription",
    "AlertLevel",
    "DtlsAlertError",
    "DtlsHandshakeError",
    "FinishedMismatchError",
    "FullHandshakeRefusedError",
    "NegotiationMismatchError",
    "UnknownSessionError",
]


class AlertLevel(enum.IntEnum):
    WARNING = 1
    FATAL = 2


class AlertDescription(enum.IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    DECRYPTION_FAILED = 21
    RECORD_OVERFLOW = 22
    DECOMPRESSION_FAILURE = 30
    HANDSHAKE_FAILURE = 40
    NO_CERTIFICATE = 41
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    EXPORT_RESTRICTION = 60
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    UNSUPPORTED_EXTENSION = 110
    UNRECOGNIZED_NAME = 112
    UNKNOWN_PSK_IDENTITY = 115


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum_or_int(kind: type[_E], value: int) -> _E | int:
    try:
        return kind(value)
    except ValueError:
        return value


class DtlsAlertError(RemoteProtocolError):
    """The peer sent an alert.  Unknown codes are kept as plain ints."""

    def __init__(self, level: int, description: int) -> None:
        self.level: AlertLevel | int = _enum_or_int(AlertLevel, level)
        self.description: AlertDescription | int = _enum_or_int(AlertDescription, description)
        name = getattr(self.description, "name", str(description)).lower()
        kind = getattr(self.level, "name", str(level)).lower()
        super().__init__(f"DTLS alert received: {kind} {name}")

    @property
    def is_fatal(self) -> bool:
        return self.level != AlertLevel.WARNING


class DtlsHandshakeError(RemoteProtocolError):
    """The peer's handshake broke the legacy-mode rules; we answer with ``alert``."""

    alert: AlertDescription = AlertDescription.HANDSHAKE_FAILURE


class FullHandshakeRefusedError(DtlsHandshakeError):
    """The ServerHello did not echo our session id: the server wants a full handshake,
    which legacy mode cannot do (and openconnect refuses as a possible MITM, §7.2)."""


class FinishedMismatchError(DtlsHandshakeError):
    """The peer's Finished verify_data is wrong (different master secret or transcript)."""

    alert = AlertDescription.DECRYPT_ERROR


class NegotiationMismatchError(DtlsHandshakeError):
    """Version, cipher suite or compression differ from the session the gateway named."""

    alert = AlertDescription.ILLEGAL_PARAMETER


class UnknownSessionError(DtlsHandshakeError):
    """Server side: the ClientHello resumes a session id we do not know."""
