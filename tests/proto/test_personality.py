"""The personality seam (issue 12): the registry, and the ocserv personality's own parts:
its status lines, its routes, its DTLS suite choice (protocol.md §6) and its CONNECT answer
(§4.3).  Its auth dialect is tested through ``AuthServer`` in test_auth_server.py."""

from __future__ import annotations

import ipaddress

import pytest

from loadgen.gateway.config import GatewayConfig
from loadgen.proto.dtls import KNOWN_DTLS12_CIPHERS, KNOWN_DTLS_CIPHERS
from loadgen.proto.personality import (
    DEFAULT_PERSONALITY,
    personality_for,
    personality_names,
)
from loadgen.proto.personality.base import Answer, DtlsGrant, Personality, Route, TunnelSettings
from loadgen.proto.personality.ocserv import (
    OCSERV,
    OCSERV_DTLS12_PRIORITIES,
    OCSERV_LEGACY_PRIORITIES,
    choose_dtls_cipher,
)
from loadgen.proto.tunnel import (
    DTLS12_CIPHER_HEADER,
    DTLS_CIPHER_HEADER,
    ConnectRequest,
    TunnelParams,
    parse_connect_response_untrusted,
)
from tests.proto.test_tunnel import (
    MASTER_SECRET,
    OC_DTLS12_OFFER,
    OC_DTLS_OFFER,
    SESSION_ID,
    minimal_request,
)

# -- the registry ---------------------------------------------------------------------


def test_the_registry_names_ocserv_the_default() -> None:
    assert personality_names() == ("ocserv",)
    assert DEFAULT_PERSONALITY == "ocserv"
    assert personality_for("ocserv") is OCSERV
    assert isinstance(OCSERV, Personality) and OCSERV.name == "ocserv"
    with pytest.raises(ValueError, match="choose from ocserv"):
        personality_for("asa")


def test_the_gateway_config_names_a_registered_personality() -> None:
    assert GatewayConfig().personality == "ocserv"
    with pytest.raises(ValueError, match="unknown personality 'asa'"):
        GatewayConfig(personality="asa")


# -- ocserv's lines and routes (§2.7, §3, §4.2) --------------------------------------------


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        (Answer.NOT_FOUND, (404, "Not found", ())),
        (Answer.BAD_REQUEST, (400, "Bad Request", ())),
        (Answer.METHOD_NOT_ALLOWED, (405, "Method Not Allowed", (("Allow", "GET, POST"),))),
        (Answer.NO_PASSWORD, (401, "No password", ())),
        (Answer.AUTH_FAILED, (401, "Authentication failed", ())),
        # worker-auth.c MSG_NO_CERT_ERROR, a certificate mode without a certificate
        (Answer.NO_CERTIFICATE, (401, "No certificate", ())),
        (Answer.NO_SESSION_COOKIE, (503, "Service Unavailable", ())),
        (Answer.COOKIE_REJECTED, (401, "Cookie is not acceptable", ())),
        (
            Answer.TOO_MANY_SESSIONS,
            (503, "Service Unavailable", (("X-Reason", "Too many sessions"),)),
        ),
        (Answer.CONNECTED, (200, "CONNECTED", ())),
        (Answer.DOWNLOADED, (200, "OK", (("Content-Type", "text/xml"),))),
    ],
)
def test_ocserv_status_lines(kind: Answer, line: tuple[int, str, tuple[object, ...]]) -> None:
    answer = OCSERV.answer(kind)
    assert (answer.status, answer.reason, answer.headers) == line


def test_ocserv_answers_every_kind() -> None:
    for kind in Answer:
        assert 200 <= OCSERV.answer(kind).status < 600


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/", Route.AUTH),
        ("POST", "/auth", Route.AUTH),
        ("POST", "/VPN", Route.AUTH),
        ("POST", "/admin", None),
        ("GET", "/", None),  # ocserv's GET form is for browsers; the gateway 404s it
        ("DELETE", "/", None),
        ("GET", "/profiles/profile.xml", Route.DOWNLOAD),
        ("GET", "/profilesX", Route.DOWNLOAD),  # the download role 404s what it lacks
        ("CONNECT", "/CSCOSSLC/tunnel", Route.CONNECT),
        ("CONNECT", "/elsewhere", Route.CONNECT),  # admission answers 404
    ],
)
def test_ocserv_routes(method: str, path: str, route: Route | None) -> None:
    assert OCSERV.route(method, path) is route


def test_ocserv_paths() -> None:
    assert OCSERV.auth_paths == frozenset({"/", "/auth", "/VPN"})
    assert OCSERV.connect_target == "/CSCOSSLC/tunnel"


# -- the CONNECT answer (§4.3) ---------------------------------------------------------------

SETTINGS = TunnelSettings(
    server_name="loadgen gateway", mtu=1406, dtls_mtu=None, dpd_s=90, keepalive_s=32400
)


def ocserv_params(dtls: DtlsGrant | None) -> TunnelParams:
    return OCSERV.tunnel_params(
        minimal_request(hostname="h1"),
        address=ipaddress.IPv4Address("10.200.0.2"),
        netmask=ipaddress.IPv4Address("255.255.0.0"),
        settings=SETTINGS,
        dtls=dtls,
    )


def test_ocserv_connect_headers_without_dtls() -> None:
    params = ocserv_params(None)
    assert [f"{k.decode()}: {v.decode()}" for k, v in params.to_headers()] == [
        "X-CSTP-Version: 1",
        "X-CSTP-Server-Name: loadgen gateway",
        "X-CSTP-Hostname: h1",
        "X-CSTP-DPD: 90",
        "X-CSTP-Address: 10.200.0.2",
        "X-CSTP-Netmask: 255.255.0.0",
        "X-CSTP-Keepalive: 32400",
        "X-CSTP-Base-MTU: 1500",
        "X-CSTP-MTU: 1406",
    ]


def test_ocserv_connect_headers_with_dtls() -> None:
    grant = DtlsGrant(
        port=4443,
        session_id=bytes.fromhex(SESSION_ID),
        cipher="AES256-GCM-SHA384",
        header=DTLS12_CIPHER_HEADER,
    )
    params = ocserv_params(grant)
    lines = [f"{k.decode()}: {v.decode()}" for k, v in params.to_headers()]
    assert lines[6:13] == [
        "X-CSTP-Keepalive: 32400",
        "X-DTLS-DPD: 90",
        "X-DTLS-Port: 4443",
        "X-DTLS-Keepalive: 32400",
        f"X-DTLS-Session-ID: {SESSION_ID}",
        "X-DTLS12-CipherSuite: AES256-GCM-SHA384",
        "X-DTLS-MTU: 1406",
    ]
    assert parse_connect_response_untrusted(params.to_headers()) == params


def test_the_gateway_tables_answer_every_suite_we_implement() -> None:
    for name in KNOWN_DTLS_CIPHERS:
        assert OCSERV.choose_dtls_cipher(
            offer(name),
            legacy_prefs=OCSERV.legacy_priorities,
            dtls12_prefs=OCSERV.dtls12_priorities,
        ) == (name, DTLS_CIPHER_HEADER)
    for name in KNOWN_DTLS12_CIPHERS:
        assert OCSERV.choose_dtls_cipher(
            offer(None, name),
            legacy_prefs=OCSERV.legacy_priorities,
            dtls12_prefs=OCSERV.dtls12_priorities,
        ) == (name, DTLS12_CIPHER_HEADER)


# -- choosing the DTLS cipher (§6) ------------------------------------------------


def offer(dtls: str | None, dtls12: str | None = None, secret: bool = True) -> ConnectRequest:
    return minimal_request(
        dtls_ciphers=None if dtls is None else tuple(dtls.split(":")),
        dtls12_ciphers=None if dtls12 is None else tuple(dtls12.split(":")),
        dtls_master_secret=MASTER_SECRET if secret else None,
    )


def test_cipher_choice_rule() -> None:
    # openconnect's default offer: X-DTLS12 wins (vector "via X-DTLS12-CipherSuite").
    assert choose_dtls_cipher(offer(OC_DTLS_OFFER, OC_DTLS12_OFFER)) == (
        "AES256-GCM-SHA384",
        DTLS12_CIPHER_HEADER,
    )
    assert choose_dtls_cipher(offer("AES128-SHA")) == ("AES128-SHA", DTLS_CIPHER_HEADER)
    # Server priority, not client order.
    assert choose_dtls_cipher(offer("AES128-SHA:AES256-SHA")) == ("AES256-SHA", DTLS_CIPHER_HEADER)
    assert choose_dtls_cipher(offer(OC_DTLS_OFFER)) == ("OC-DTLS1_2-AES256-GCM", DTLS_CIPHER_HEADER)
    # ASA-style list; ECDHE from ocserv master's table.
    assert choose_dtls_cipher(
        offer(None, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    ) == (
        "ECDHE-RSA-AES256-GCM-SHA384",
        DTLS12_CIPHER_HEADER,
    )
    # Nothing known in X-DTLS12: fall back to X-DTLS-CipherSuite.
    assert choose_dtls_cipher(offer("AES128-SHA", "DHE-RSA-AES256-SHA")) == (
        "AES128-SHA",
        DTLS_CIPHER_HEADER,
    )
    # PSK-NEGOTIATE alone, unknown names, or no master secret: no DTLS.
    assert choose_dtls_cipher(offer("PSK-NEGOTIATE")) is None
    assert choose_dtls_cipher(offer("OC2-DTLS1_2-CHACHA20-POLY1305", "PSK-NEGOTIATE")) is None
    assert choose_dtls_cipher(offer(None)) is None
    assert choose_dtls_cipher(offer("AES128-SHA", secret=False)) is None


def test_cipher_choice_with_custom_tables() -> None:
    ocserv_116 = {"AES256-GCM-SHA384": 90, "AES128-GCM-SHA256": 50}
    req = offer("AES256-SHA", "ECDHE-RSA-AES256-GCM-SHA384")
    assert choose_dtls_cipher(req, dtls12_prefs=ocserv_116) == ("AES256-SHA", DTLS_CIPHER_HEADER)
    tie = {"AES128-SHA": 5, "AES256-SHA": 5}
    assert choose_dtls_cipher(offer("AES128-SHA:AES256-SHA"), legacy_prefs=tie) == (
        "AES128-SHA",
        DTLS_CIPHER_HEADER,
    )
    assert OCSERV_LEGACY_PRIORITIES["OC-DTLS1_2-AES256-GCM"] == 90
    assert OCSERV_DTLS12_PRIORITIES["ECDHE-RSA-AES128-GCM-SHA256"] == 70
