"""TLS for phase 1 and the downloader: contexts, pins, and error translation.

Verification is strict by default (system store or ``--cafile``, host name or
IP checked).  ``--servercert`` pins the gateway instead of trusting a CA, as
openconnect's option does; ``--insecure`` turns checks off only when asked.
"""

from __future__ import annotations

import errno
import hmac
import os
import socket
import ssl
from dataclasses import dataclass

import trio

from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.pins import CertPin, PinKind, cert_pins, parse_pin

__all__ = [
    "CertPin",
    "TlsOptions",
    "build_client_context",
    "check_pin",
    "classify_transport_error",
    "parse_pin",
]


def check_pin(pin: CertPin, der: bytes | None) -> None:
    """Raise SessionFailedError(tls, tls_verify) unless the certificate matches."""
    if der is None:
        raise SessionFailedError(Phase.TLS, Reason.TLS_VERIFY, "gateway sent no certificate")
    spki_pin, sha1_pin = cert_pins(der)
    actual = spki_pin if pin.kind is PinKind.SPKI_SHA256 else sha1_pin
    if not hmac.compare_digest(actual.digest, pin.digest):
        raise SessionFailedError(
            Phase.TLS,
            Reason.TLS_VERIFY,
            f"server certificate does not match the pin (it is {actual})",
        )


@dataclass(frozen=True, kw_only=True)
class TlsOptions:
    cafile: str | None = None
    servername: str | None = None
    pin: CertPin | None = None
    insecure: bool = False


def build_client_context(opts: TlsOptions) -> ssl.SSLContext:
    """A client context: one per run, or one per client certificate.

    Loading the whole system store costs about 830 KiB per context, too much
    for one context per identity; the hashed directory (``capath``) is read
    lazily, one CA when a handshake needs it (about 19 KiB per context).
    """
    if opts.pin is not None or opts.insecure:
        # The pin replaces CA trust (checked after the handshake); insecure
        # replaces everything: no store at all.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    capath = ssl.get_default_verify_paths().capath
    overridden = "SSL_CERT_FILE" in os.environ or "SSL_CERT_DIR" in os.environ
    if opts.cafile is None and not overridden and capath and os.path.isdir(capath):
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=capath)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.cafile)
    # Never offer ALPN: Cisco gateways do not expect it (§1).
    return ctx


def classify_transport_error(exc: BaseException) -> tuple[Reason, str]:
    """Map a transport exception to a failure reason and a safe message."""
    if isinstance(exc, trio.TooSlowError):
        return Reason.TIMEOUT, "timed out"
    if isinstance(exc, ssl.SSLEOFError):
        return Reason.CLOSED, "gateway closed the connection (no TLS close_notify)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Reason.TLS_VERIFY, f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return Reason.TLS_HANDSHAKE, f"TLS error: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, socket.gaierror):
        return Reason.UNREACHABLE, f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return Reason.REFUSED, "connection refused"
    if isinstance(exc, ConnectionResetError):
        return Reason.RESET, "connection reset by peer"
    if isinstance(exc, trio.BrokenResourceError):
        cause = exc.__cause__
        if isinstance(cause, BaseException) and not isinstance(cause, trio.BrokenResourceError):
            return classify_transport_error(cause)
        return Reason.RESET, "connection broken"
    if isinstance(exc, trio.ClosedResourceError):
        return Reason.CLOSED, "connection closed"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL, errno.ENOBUFS):
            return Reason.RESOURCE, f"local resource exhausted: {exc.strerror}"
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
            return Reason.UNREACHABLE, f"unreachable: {exc.strerror}"
        if exc.errno == errno.ETIMEDOUT:
            return Reason.TIMEOUT, "connect timed out"
        if exc.errno == errno.ECONNREFUSED:
            return Reason.REFUSED, "connection refused"
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return Reason.RESET, "connection reset by peer"
        # trio.open_tcp_stream wraps every failed attempt in an ExceptionGroup
        cause = exc.__cause__
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            return classify_transport_error(cause.exceptions[0])
        if isinstance(cause, OSError):
            return classify_transport_error(cause)
        return Reason.UNREACHABLE, f"network error: {exc.strerror or exc}"
    return Reason.INTERNAL, f"{type(exc).__name__}"
