"""The failure vocabulary: one closed set of phases and reasons.

Defined once here and used unchanged by ``loadgen connect --json``, the run
summary, the Prometheus labels and the Locust reports (architecture.md,
Metrics).  Nothing else may invent a reason string.
"""

from __future__ import annotations

import enum

__all__ = ["FallbackReason", "Phase", "Reason", "SessionFailedError"]


class Phase(enum.StrEnum):
    """Connection phases of the Cisco flow (seed, phases 1 to 6), plus the whole."""

    TLS = "tls"
    GROUP_SELECT = "group_select"
    AUTH = "auth"
    DOWNLOAD = "download"
    CSTP_CONNECT = "cstp_connect"
    DTLS = "dtls"
    #: the whole connect, phases 1 to 6
    CONNECT = "connect"
    #: after the tunnel is up (echo, DPD, disconnect)
    TUNNEL = "tunnel"


class Reason(enum.StrEnum):
    """Why a session failed.  Small and closed: these are metric label values."""

    #: a phase or the run's deadline expired
    TIMEOUT = "timeout"
    #: TCP connection refused
    REFUSED = "refused"
    #: connection reset by the peer
    RESET = "reset"
    #: the peer closed the connection where the protocol did not allow it
    CLOSED = "closed"
    #: no route / network unreachable / host name did not resolve
    UNREACHABLE = "unreachable"
    #: the server certificate failed verification or did not match the pin
    TLS_VERIFY = "tls_verify"
    #: the TLS handshake failed for another reason (alert, version, cipher)
    TLS_HANDSHAKE = "tls_handshake"
    #: an unexpected HTTP status (other than an auth or cookie rejection)
    HTTP_STATUS = "http_status"
    #: the gateway refused the credentials
    AUTH_REJECTED = "auth_rejected"
    #: the gateway asked for a form field we cannot answer (and none of the below)
    AUTH_UNSUPPORTED = "auth_unsupported"
    #: the gateway wants a client certificate: none configured, or one it did not take
    CERTIFICATE_REQUIRED = "certificate_required"
    #: the gateway asks for a second factor (OTP, secondary password, challenge) we lack
    SECOND_FACTOR_REQUIRED = "second_factor_required"
    #: the gateway asks for single sign-on (SAML); not supported
    SSO_REQUIRED = "sso_required"
    #: the gateway asks for HostScan / Secure Desktop posture; not supported
    HOSTSCAN_REQUIRED = "hostscan_required"
    #: the requested group is not in the gateway's group list
    GROUP_UNKNOWN = "group_unknown"
    #: the downloaded profile does not match its advertised SHA-1
    PROFILE_HASH = "profile_hash"
    #: CONNECT answered 401: the session cookie is unknown, expired or logged out
    COOKIE_REJECTED = "cookie_rejected"
    #: the gateway broke the protocol (malformed XML, headers, frames)
    PROTOCOL = "protocol"
    #: the gateway ended the tunnel (DISCONNECT, TERMINATE) or DPD declared it dead
    TERMINATED = "terminated"
    #: a local resource ran out (file descriptors, ports)
    RESOURCE = "resource"
    #: the run was stopped before the session finished
    CANCELLED = "cancelled"
    #: a bug in loadgen itself; always worth a report
    INTERNAL = "internal"


class FallbackReason(enum.StrEnum):
    """Why DTLS was given up for CSTP.  A fallback is an outcome, not a failure."""

    TIMEOUT = "timeout"
    ALERT = "alert"
    ICMP_UNREACHABLE = "icmp_unreachable"
    DPD = "dpd"
    #: the gateway's DTLS answer cannot be used (a suite we did not offer)
    PROTOCOL = "protocol"
    #: the CONNECT answer has no usable legacy DTLS parameters (e.g. ocserv dtls-legacy =
    #: false, PSK-only DTLS, which Python's ssl cannot do)
    NOT_OFFERED = "not_offered"
    #: ``--no-dtls``: never asked for (not an attempt)
    DISABLED = "disabled"


class SessionFailedError(Exception):
    """A session failed in ``phase`` for ``reason``.

    ``message`` is for humans and must never contain a password, cookie,
    session token or key: build it from the gateway's status text and our own
    words only.
    """

    def __init__(self, phase: Phase, reason: Reason, message: str) -> None:
        super().__init__(f"{phase}/{reason}: {message}")
        self.phase = phase
        self.reason = reason
        self.message = message

    @property
    def label(self) -> str:
        """``phase/reason``, as Locust failures and summary keys show it."""
        return f"{self.phase}/{self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"phase": str(self.phase), "reason": str(self.reason), "message": self.message}
