"""Certificate pins, contexts and transport error classification."""

from __future__ import annotations

import base64
import errno
import hashlib
import ssl

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loadgen.engine.tls import (
    PinKind,
    TlsOptions,
    build_client_context,
    cert_pins,
    check_pin,
    classify_transport_error,
    parse_pin,
)
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import Reason, SessionFailedError
from loadgen.gateway.pki import make_ca


def _self_signed_der() -> bytes:
    cert, _ = make_ca("gw", valid_days=1)
    return cert.public_bytes(serialization.Encoding.DER)


def test_pins_match_independent_computation() -> None:
    der = _self_signed_der()
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_pin, sha1_pin = cert_pins(der)
    assert str(spki_pin) == "pin-sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert str(sha1_pin) == "sha1:" + hashlib.sha1(der).hexdigest().upper()
    # both spellings are accepted and round trip
    assert parse_pin(str(spki_pin)) == spki_pin
    assert parse_pin(str(sha1_pin).lower()) == sha1_pin
    check_pin(spki_pin, der)
    check_pin(sha1_pin, der)


def test_sha1_pin_with_colons() -> None:
    digest = hashlib.sha1(b"x").hexdigest().upper()
    pin = parse_pin("sha1:" + ":".join(digest[i : i + 2] for i in range(0, 40, 2)))
    assert pin.kind is PinKind.CERT_SHA1 and pin.digest.hex().upper() == digest


def test_wrong_pin_is_tls_verify() -> None:
    der = _self_signed_der()
    other = cert_pins(_self_signed_der())[0]
    with pytest.raises(SessionFailedError) as info:
        check_pin(other, der)
    assert info.value.reason is Reason.TLS_VERIFY


@pytest.mark.parametrize(
    "text", ["", "md5:00", "sha1:zz", "sha1:00", "pin-sha256:!!!", "pin-sha256:AAAA"]
)
def test_bad_pins_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pin(text)


def test_context_is_strict_by_default_and_relaxed_only_when_asked() -> None:
    strict = build_client_context(TlsOptions())
    assert strict.verify_mode is ssl.CERT_REQUIRED and strict.check_hostname
    pinned = build_client_context(TlsOptions(pin=parse_pin("sha1:" + "00" * 20)))
    assert pinned.verify_mode is ssl.CERT_NONE
    insecure = build_client_context(TlsOptions(insecure=True))
    assert insecure.verify_mode is ssl.CERT_NONE


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "x"), Reason.REFUSED),
        (ConnectionResetError(errno.ECONNRESET, "x"), Reason.RESET),
        (OSError(errno.EMFILE, "too many"), Reason.RESOURCE),
        (OSError(errno.ENETUNREACH, "x"), Reason.UNREACHABLE),
        (trio.TooSlowError(), Reason.TIMEOUT),
        (ssl.SSLError(1, "alert"), Reason.TLS_HANDSHAKE),
        (ValueError("bug"), Reason.INTERNAL),
    ],
)
def test_transport_errors_are_classified(exc: BaseException, reason: Reason) -> None:
    assert classify_transport_error(exc)[0] is reason


def test_trio_connect_failure_group_is_unwrapped() -> None:
    outer = OSError("all attempts to connect failed")
    outer.__cause__ = ExceptionGroup("x", [ConnectionRefusedError(errno.ECONNREFUSED, "no")])
    assert classify_transport_error(outer)[0] is Reason.REFUSED


def test_gateway_urls() -> None:
    u = parse_gateway_url("https://127.0.0.1:4443/")
    assert (u.host, u.port, u.host_header, u.url) == (
        "127.0.0.1",
        4443,
        "127.0.0.1:4443",
        "https://127.0.0.1:4443/",
    )
    assert parse_gateway_url("vpn.example.com/Eng").host_header == "vpn.example.com"
    assert parse_gateway_url("https://[::1]:443/").host_header == "[::1]"
    with pytest.raises(ValueError):
        parse_gateway_url("http://vpn.example.com/")


# -- the offer (issue 14: the real client's TLS offer) -------------------------------------


def test_default_offer_is_the_real_clients() -> None:
    from loadgen.engine.tls import TlsOptions, build_client_context

    names = {c["name"] for c in build_client_context(TlsOptions()).get_ciphers()}
    # RSA key exchange and AES-CBC with SHA-1, as older ASA and ocserv settings need
    for wanted in ("AES128-SHA", "AES256-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"):
        assert wanted in names, wanted
    assert "ECDHE-ECDSA-AES256-GCM-SHA384" in names
    assert not any("RC4" in n or "DES-CBC3" in n or "NULL" in n for n in names)


def test_offer_restrictions_and_their_errors() -> None:
    import ssl as _ssl

    from loadgen.engine.tls import TlsOptions, build_client_context

    ctx = build_client_context(TlsOptions(ciphers="ECDHE+AESGCM", max_version="1.2"))
    assert ctx.maximum_version is _ssl.TLSVersion.TLSv1_2
    # TLS 1.3 suites are OpenSSL's own; the string restricts 1.2 and below
    below13 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert below13 and all(n.startswith("ECDHE") and "GCM" in n for n in below13)
    with pytest.raises(ValueError, match="no cipher suite"):
        build_client_context(TlsOptions(ciphers="NOTHING-KNOWN"))
    with pytest.raises(ValueError, match="allow-insecure-crypto"):
        build_client_context(TlsOptions(min_version="1.0"))
    old = build_client_context(TlsOptions(min_version="1.0", allow_insecure_crypto=True))
    assert old.minimum_version is _ssl.TLSVersion.TLSv1
    with pytest.raises(ValueError, match="below"):
        build_client_context(TlsOptions(min_version="1.3", max_version="1.2"))
