"""Session parameters, roles and counters of a DTLS association (protocol.md §7.2).

The states and their transition table are in ``states.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from loadgen.proto.dtls.ciphers import CipherSpec
from loadgen.proto.dtls.prf import MASTER_SECRET_LEN
from loadgen.proto.errors import LocalProtocolError

__all__ = [
    "DEFAULT_RETRANSMIT_SCHEDULE_S",
    "DtlsCounters",
    "DtlsSession",
    "Role",
    "SessionLookup",
]

#: Send at 0, 1, 3, 7, 15 s, give up at 31 s: the seed's AnyConnect back-off
#: (five attempts, 1 s doubling to 16 s, §7.9, §11.9).  The last offset is the give-up time.
DEFAULT_RETRANSMIT_SCHEDULE_S: tuple[float, ...] = (0.0, 1.0, 3.0, 7.0, 15.0, 31.0)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, kw_only=True)
class DtlsSession:
    """What the CONNECT exchange fixed: X-DTLS-Session-ID, X-DTLS-Master-Secret, the suite."""

    session_id: bytes
    master_secret: bytes = field(repr=False)
    cipher: CipherSpec

    def __post_init__(self) -> None:
        if not 1 <= len(self.session_id) <= 32:
            raise LocalProtocolError("a DTLS session id has 1 to 32 bytes")
        if len(self.master_secret) != MASTER_SECRET_LEN:
            raise LocalProtocolError("X-DTLS-Master-Secret must be 48 bytes (§11.3)")


SessionLookup = Callable[[bytes], DtlsSession | None]


@dataclass(slots=True)
class DtlsCounters:
    retransmits: int = 0
    records_protected: int = 0
    records_unprotected: int = 0
    #: failed MAC, padding or GCM tag: dropped silently, never alerted (§7.5)
    records_dropped_bad: int = 0
    records_dropped_replay: int = 0
    #: well-formed but not expected in the current state (or wrong epoch/version)
    records_dropped_unexpected: int = 0
    datagrams_undecodable: int = 0
