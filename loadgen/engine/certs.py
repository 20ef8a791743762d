"""Client certificates: loading one into a TLS context, and one context per identity.

The options are openconnect's: ``--certificate FILE`` (PEM, or PKCS#12 told by its
content or a ``.p12``/``.pfx`` name), ``--sslkey FILE`` (PEM; default: the key is in
the certificate file) and ``--key-password``.  :func:`load_into` loads one into an
``ssl.SSLContext``; every failure is a :class:`CertificateError` whose message names
the files and what is wrong, never the key password.

The ``ssl`` module reads certificates from files only, so a PKCS#12 bundle is
decoded with ``cryptography`` and handed over as a PEM file that lives for one
``load_cert_chain`` call: mode 0600, its key re-encrypted under a random password,
removed in ``finally``.

A context holds its certificate, so sessions of different identities need
different contexts; :class:`ContextCache` builds one per identity and shares it
between the sessions of that identity (LRU-bounded, evictions counted).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

__all__ = ["CertificateError", "ClientCertificate", "ContextCache", "load_into"]

#: A certificate or key file is small; anything bigger is not one (and is not read whole).
MAX_FILE_BYTES = 1 << 20

_PKCS12_SUFFIXES = (".p12", ".pfx")


class CertificateError(ValueError):
    """A client certificate or key that cannot be used.  The message names the
    files and the cause, never the key password."""


@dataclass(frozen=True)
class ClientCertificate:
    """openconnect's ``--certificate``, ``--sslkey`` and ``--key-password``.

    Frozen and hashable: it is the key of :class:`ContextCache`.
    """

    #: PEM (certificate, chain, maybe the key) or PKCS#12 file
    certificate: str
    #: PEM private key; None: the key is in ``certificate``
    sslkey: str | None = None
    #: decrypts the key (PEM) or the bundle (PKCS#12)
    key_password: str | None = field(default=None, repr=False)


class _PasswordNeededError(Exception):
    """Raised from the password callback: OpenSSL would otherwise prompt on the terminal."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CertificateError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CertificateError(f"{what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _password_bytes(cert: ClientCertificate) -> bytes | None:
    return None if cert.key_password is None else cert.key_password.encode("utf-8")


def load_into(ctx: ssl.SSLContext, cert: ClientCertificate) -> None:
    """Load the certificate (with its chain) and its key into ``ctx``.

    Raises CertificateError: unreadable file, wrong or missing key password, key
    that does not match the certificate, file that is neither PEM nor PKCS#12.
    """
    data = _read(cert.certificate, "certificate")
    if b"-----BEGIN " in data:
        _load_pem(ctx, cert)
    elif cert.certificate.lower().endswith(_PKCS12_SUFFIXES) or data[:1] == b"\x30":
        # 0x30: a DER SEQUENCE, which a PKCS#12 PFX is (RFC 7292 §4)
        _load_pkcs12(ctx, cert, data)
    else:
        raise CertificateError(f"certificate {cert.certificate} is neither PEM nor PKCS#12")


# -- PEM ---------------------------------------------------------------------------


def _load_pem(ctx: ssl.SSLContext, cert: ClientCertificate) -> None:
    password = _password_bytes(cert)
    keyfile = cert.sslkey or cert.certificate

    def callback() -> bytes:
        if password is None:
            raise _PasswordNeededError
        return password

    try:
        ctx.load_cert_chain(cert.certificate, cert.sslkey, password=callback)
    except _PasswordNeededError:
        raise CertificateError(
            f"the private key in {keyfile} is encrypted: give its key password"
        ) from None
    except ssl.SSLError as exc:  # before OSError, its base class
        raise _diagnose_pem(cert, keyfile, password, exc) from None
    except OSError as exc:  # the key file (the certificate was read above)
        raise CertificateError(f"cannot read key {keyfile}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a password longer than OpenSSL's buffer
        raise CertificateError(f"cannot use the key password for {keyfile}: {exc}") from None


def _diagnose_pem(
    cert: ClientCertificate, keyfile: str, password: bytes | None, exc: ssl.SSLError
) -> CertificateError:
    """Why OpenSSL refused the files: its own message is often only "PEM lib"."""
    if _reason(exc) == "KEY_VALUES_MISMATCH":
        return _mismatch(cert, keyfile)
    try:
        key_data = _read(keyfile, "key")
    except CertificateError as err:
        return err
    try:
        key = _load_pem_key(key_data, password)
    except ValueError:
        if b"ENCRYPTED" in key_data:
            return CertificateError(
                f"cannot decrypt the private key in {keyfile}: wrong key password"
            )
        return CertificateError(f"no usable private key in {keyfile}")
    except Exception:  # unsupported algorithm and the like
        return CertificateError(f"unsupported private key in {keyfile}")
    try:
        leaf = x509.load_pem_x509_certificates(_read(cert.certificate, "certificate"))[0]
    except CertificateError as err:
        return err
    except Exception:
        return CertificateError(f"no usable certificate in {cert.certificate}")
    if leaf.public_key() != key.public_key():
        return _mismatch(cert, keyfile)
    return CertificateError(
        f"cannot load the client certificate {cert.certificate}: {_reason(exc)}"
    )


def _load_pem_key(data: bytes, password: bytes | None) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:
        if password is None:  # encrypted, no password: the callback said so already
            raise ValueError("encrypted") from None
        # a password for a key that is not encrypted: OpenSSL ignores it, so do we
        return serialization.load_pem_private_key(data, None)


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason code; an SSLError made in Python has none."""
    return str(
        getattr(exc, "reason", None) or getattr(exc, "library", None) or "rejected by OpenSSL"
    )


def _mismatch(cert: ClientCertificate, keyfile: str) -> CertificateError:
    return CertificateError(
        f"the private key in {keyfile} does not match the certificate in {cert.certificate}"
    )


# -- PKCS#12 -----------------------------------------------------------------------


def _load_pkcs12(ctx: ssl.SSLContext, cert: ClientCertificate, data: bytes) -> None:
    path = cert.certificate
    if cert.sslkey is not None:
        raise CertificateError(f"{path} is PKCS#12, which holds its own key: drop the sslkey")
    try:
        key, leaf, chain = pkcs12.load_key_and_certificates(data, _password_bytes(cert))
    except Exception:  # ValueError for both a wrong password and damaged data
        raise CertificateError(
            f"cannot read PKCS#12 file {path}: wrong key password, or not PKCS#12"
        ) from None
    if key is None or leaf is None:
        raise CertificateError(f"PKCS#12 file {path} holds no private key or no certificate")
    transient = secrets.token_bytes(32)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, *chain))
    pem += key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(transient),
    )
    fd, name = tempfile.mkstemp(prefix="loadgen-cert-", suffix=".pem")  # mode 0600
    try:
        with open(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(name, password=transient)
    except ssl.SSLError as exc:  # before OSError, its base class
        if _reason(exc) == "KEY_VALUES_MISMATCH":
            raise CertificateError(
                f"the private key in {path} does not match its certificate"
            ) from None
        raise CertificateError(
            f"cannot load the client certificate {path}: {_reason(exc)}"
        ) from None
    except OSError as exc:
        raise CertificateError(f"cannot stage {path} for OpenSSL: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


# -- one context per identity ------------------------------------------------------


class ContextCache:
    """TLS contexts by client certificate: sessions of one identity share one.

    ``get(None)`` is the base context (no certificate), built once.  Otherwise a
    context is ``build()`` plus :func:`load_into`, kept in an LRU of at most
    ``max_entries``; an evicted context lives on in the sessions that hold it, and
    the next session of that identity builds it again (``evictions`` counts these).
    A certificate that fails to load is not cached: each attempt raises again.
    """

    def __init__(self, build: Callable[[], ssl.SSLContext], max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._build = build
        self._max_entries = max_entries
        self._base: ssl.SSLContext | None = None
        self._entries: OrderedDict[ClientCertificate, ssl.SSLContext] = OrderedDict()
        self._evictions = 0

    @property
    def size(self) -> int:
        """Contexts with a certificate held now (the base context not counted)."""
        return len(self._entries)

    @property
    def evictions(self) -> int:
        return self._evictions

    def get(self, cert: ClientCertificate | None) -> ssl.SSLContext:
        if cert is None:
            if self._base is None:
                self._base = self._build()
            return self._base
        ctx = self._entries.get(cert)
        if ctx is not None:
            self._entries.move_to_end(cert)
            return ctx
        ctx = self._build()
        load_into(ctx, cert)
        self._entries[cert] = ctx
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1
        return ctx
