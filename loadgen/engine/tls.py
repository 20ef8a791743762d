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
import warnings
from dataclasses import dataclass

import trio

from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.pins import CertPin, PinKind, cert_pins, parse_pin

__all__ = [
    "DEFAULT_TLS_CIPHERS",
    "TLS_VERSIONS",
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


#: What AnyConnect and openconnect offer in TLS 1.2 and below: ECDHE and RSA key
#: exchange, AES-GCM and AES-CBC with SHA-1 or SHA-2 (older ASA "medium" settings and
#: ocserv priority strings without ECDHE need the latter ones).  TLS 1.3 suites are
#: OpenSSL's own: Python's ssl cannot set them.
DEFAULT_TLS_CIPHERS = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:RSA+AESGCM:RSA+AES"
    ":!aNULL:!eNULL:!MD5:!DSS:!3DES:!RC4:!PSK:!SRP:!CAMELLIA:!ARIA"
)
TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True, kw_only=True)
class TlsOptions:
    cafile: str | None = None
    servername: str | None = None
    pin: CertPin | None = None
    insecure: bool = False
    #: an OpenSSL cipher string for TLS 1.2 and below; None: DEFAULT_TLS_CIPHERS
    ciphers: str | None = None
    #: "1.0" to "1.3"; None: 1.2 (below needs allow_insecure_crypto) and the newest
    min_version: str | None = None
    max_version: str | None = None
    #: TLS below 1.2 and OpenSSL security level 0, for this context only
    allow_insecure_crypto: bool = False


def build_client_context(opts: TlsOptions) -> ssl.SSLContext:
    """A client context: one per run, or one per client certificate.

    Loading the whole system store costs about 830 KiB per context, too much
    for one context per identity; the hashed directory (``capath``) is read
    lazily, one CA when a handshake needs it (about 19 KiB per context).
    """
    ctx = _trust(opts)
    _offer(ctx, opts)
    # Never offer ALPN: Cisco gateways do not expect it (§1).
    return ctx


def _trust(opts: TlsOptions) -> ssl.SSLContext:
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
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.cafile)


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


def _offer(ctx: ssl.SSLContext, opts: TlsOptions) -> None:
    """The versions and suites offered (ValueError for ones OpenSSL does not know)."""
    ciphers = opts.ciphers or DEFAULT_TLS_CIPHERS
    if opts.allow_insecure_crypto:
        # SHA-1 signatures and small keys of old gateways; this context only
        ciphers = "@SECLEVEL=0:" + ciphers
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        raise ValueError(f"no cipher suite matches --tls-ciphers {opts.ciphers!r}") from None
    low = TLS_VERSIONS[opts.min_version] if opts.min_version else ssl.TLSVersion.TLSv1_2
    if low < ssl.TLSVersion.TLSv1_2 and not opts.allow_insecure_crypto:
        raise ValueError("TLS below 1.2 needs --allow-insecure-crypto")
    with warnings.catch_warnings():
        # TLS 1.0 and 1.1 are deprecated in Python; asked for by name here
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = low
    if opts.max_version:
        ctx.maximum_version = TLS_VERSIONS[opts.max_version]
    if ctx.maximum_version is not ssl.TLSVersion.MAXIMUM_SUPPORTED and (
        ctx.maximum_version < ctx.minimum_version
    ):
        raise ValueError("--tls-max-version is below --tls-min-version")
