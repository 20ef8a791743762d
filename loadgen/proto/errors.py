"""The two sides of a protocol error (after h11).

``LocalProtocolError`` is our own bug or misuse of a state machine.
``RemoteProtocolError`` is the peer's fault: a finding that the engine counts
and reports.  ``BadPacketError`` is the only exception that functions whose
names end in ``_untrusted`` may raise.
"""

from __future__ import annotations

__all__ = [
    "AuthRejectedError",
    "AuthUnsupportedError",
    "BadPacketError",
    "CertificateRequiredError",
    "GroupUnknownError",
    "HostScanRequiredError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SecondFactorRequiredError",
    "SsoRequiredError",
]


class ProtocolError(Exception):
    """Base of every protocol error raised by ``loadgen.proto``."""


class LocalProtocolError(ProtocolError):
    """We broke the protocol or misused a state machine (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class BadPacketError(RemoteProtocolError):
    """Bytes from the network could not be parsed (raised by ``*_untrusted``)."""


class AuthRejectedError(RemoteProtocolError):
    """The gateway refused the credentials (401, ``<error>``, or a repeated form).

    ``message`` is the gateway's text, which never contains our secrets.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthUnsupportedError(RemoteProtocolError):
    """The gateway asked for something a synthetic client cannot give
    (single sign-on, HostScan/CSD, a certificate, a form field we have no value for)."""


class CertificateRequiredError(AuthUnsupportedError):
    """The gateway wants a client certificate we do not have (or cannot give: the
    ``multiple-client-cert-request`` signature flow)."""


class SecondFactorRequiredError(AuthUnsupportedError):
    """The gateway asks for a second factor (one-time code, ASA ``secondary_password``,
    a RADIUS challenge) and none is configured."""


class SsoRequiredError(AuthUnsupportedError):
    """The gateway asks for single sign-on (SAML, an external browser)."""


class HostScanRequiredError(AuthUnsupportedError):
    """The gateway asks for HostScan / Cisco Secure Desktop posture results."""


class GroupUnknownError(ProtocolError):
    """The wanted group is neither a name nor an alias in the gateway's ``group_list``."""

    def __init__(self, wanted: str, available: list[str]) -> None:
        super().__init__(f"group {wanted!r} not offered; the gateway offers {available}")
        self.wanted = wanted
        self.available = available
