"""Legacy AnyConnect DTLS (protocol.md §7.1-§7.5, §7.7), sans-IO, both roles.

Cisco's "resumption" mode: the client-chosen ``X-DTLS-Master-Secret`` is the
master secret of a session that never existed, and an abbreviated handshake
resumes ``X-DTLS-Session-ID`` (DTLS 0.9 with CBC suites, DTLS 1.2 with GCM or
CBC).  Built on `cryptography` primitives only.  ``DtlsConnection`` is one
association, either role; ``DtlsServer`` is the gateway's many associations
behind one port (§7.1).
"""

from __future__ import annotations

from loadgen.proto.dtls.association import (
    AssociationDown,
    AssociationUp,
    DownReason,
    DropReason,
    EndpointStats,
    FrameReceived,
    ServerAssociation,
    ServerEvent,
    SessionTarget,
)
from loadgen.proto.dtls.ciphers import (
    DTLS0_9,
    DTLS1_2,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
    CipherSpec,
    UnknownCipherError,
    lookup_cipher,
)
from loadgen.proto.dtls.connection import DtlsConnection
from loadgen.proto.dtls.errors import (
    AlertDescription,
    AlertLevel,
    DtlsAlertError,
    DtlsHandshakeError,
    FinishedMismatchError,
    FullHandshakeRefusedError,
    NegotiationMismatchError,
    UnknownSessionError,
)
from loadgen.proto.dtls.events import (
    AlertReceived,
    ApplicationDataReceived,
    ConnectionTerminated,
    DtlsEvent,
    HandshakeCompleted,
    HandshakeTimedOut,
)
from loadgen.proto.dtls.handshake import ClientHello, parse_client_hello_datagram_untrusted
from loadgen.proto.dtls.server import (
    HANDOVER_GUARD_S,
    SERVER_RETRANSMIT_SCHEDULE_S,
    DtlsServer,
    screen_client_hello_untrusted,
)
from loadgen.proto.dtls.session import (
    DEFAULT_RETRANSMIT_SCHEDULE_S,
    DtlsCounters,
    DtlsSession,
    Role,
    SessionLookup,
)
from loadgen.proto.dtls.states import State

__all__ = [
    "DEFAULT_RETRANSMIT_SCHEDULE_S",
    "DTLS0_9",
    "DTLS1_2",
    "DTLS12_CIPHERS_HEADER",
    "DTLS_CIPHERS_HEADER",
    "HANDOVER_GUARD_S",
    "KNOWN_DTLS12_CIPHERS",
    "KNOWN_DTLS_CIPHERS",
    "SERVER_RETRANSMIT_SCHEDULE_S",
    "AlertDescription",
    "AlertLevel",
    "AlertReceived",
    "ApplicationDataReceived",
    "AssociationDown",
    "AssociationUp",
    "CipherSpec",
    "ClientHello",
    "ConnectionTerminated",
    "DownReason",
    "DropReason",
    "DtlsAlertError",
    "DtlsConnection",
    "DtlsCounters",
    "DtlsEvent",
    "DtlsHandshakeError",
    "DtlsServer",
    "DtlsSession",
    "EndpointStats",
    "FinishedMismatchError",
    "FrameReceived",
    "FullHandshakeRefusedError",
    "HandshakeCompleted",
    "HandshakeTimedOut",
    "NegotiationMismatchError",
    "Role",
    "ServerAssociation",
    "ServerEvent",
    "SessionLookup",
    "SessionTarget",
    "State",
    "UnknownCipherError",
    "UnknownSessionError",
    "lookup_cipher",
    "parse_client_hello_datagram_untrusted",
    "screen_client_hello_untrusted",
]
