"""CONNECT header codecs (protocol.md §4.1-§4.4, §6), on the captured ocserv 1.1.6 bytes."""

from __future__ import annotations

import dataclasses
import ipaddress
import string

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.proto.errors import BadPacketError, LocalProtocolError
from loadgen.proto.tunnel import (
    CISCO_PROTOCOL,
    DTLS12_CIPHER_HEADER,
    DTLS_CIPHER_HEADER,
    CipherHeader,
    ConnectRequest,
    NoSessionCookieError,
    TunnelParams,
    openconnect_tunnel_mtu,
    parse_connect_response_untrusted,
)

# -- captured bytes (protocol.md §4.3, §4.1, §10.1) -----------------------------

PSK_CAPTURE = """\
X-CSTP-Version: 1
X-CSTP-Server-Name: ocserv 1.1.6
X-CSTP-Hostname: vm
X-CSTP-DPD: 90
X-CSTP-Address: 10.77.63.50
X-CSTP-Netmask: 255.255.0.0
X-CSTP-Tunnel-All-DNS: false
X-CSTP-Client-Bypass-Protocol: false
X-CSTP-Keepalive: 32400
X-CSTP-Idle-Timeout: none
X-CSTP-Smartcard-Removal-Disconnect: true
X-CSTP-Rekey-Time: 172823
X-CSTP-Rekey-Method: ssl
X-CSTP-Session-Timeout: 0
X-CSTP-Session-Timeout-Remaining: 0
X-CSTP-Disconnected-Timeout: none
X-CSTP-Keep: true
X-CSTP-TCP-Keepalive: true
X-CSTP-License: accept
X-DTLS-DPD: 90
X-DTLS-Port: 4443
X-DTLS-Rekey-Time: 172833
X-DTLS-Rekey-Method: ssl
X-DTLS-Keepalive: 32400
X-DTLS-App-ID: 4cdd1146d4831016b23d1850e18e5ee9d32ef037882a1b3022b4475a302a6b93
X-DTLS-CipherSuite: PSK-NEGOTIATE
X-CSTP-Base-MTU: 1500
X-CSTP-MTU: 1434
"""
APP_ID = "4cdd1146d4831016b23d1850e18e5ee9d32ef037882a1b3022b4475a302a6b93"
SESSION_ID = "ab6e0ae8e1ab43d4072aeef5841e8d0b4f5608e1b3d8808b8b09fc2bfef23d6a"
# The legacy DTLS block of §4.3 in place of the PSK one; MTUs per §4.4 (AES128-SHA: 1406).
LEGACY_CAPTURE = PSK_CAPTURE.replace(
    f"X-DTLS-App-ID: {APP_ID}\nX-DTLS-CipherSuite: PSK-NEGOTIATE\n",
    f"X-DTLS-Session-ID: {SESSION_ID}\nX-DTLS-CipherSuite: AES128-SHA\nX-DTLS-MTU: 1406\n",
).replace("X-CSTP-MTU: 1434", "X-CSTP-MTU: 1406")
MASTER_SECRET_HEX = (
    "1B9604F7AC18E21228E4F0355B4457ABC9C4F23C3CB795C53EBDC629E552473F"
    "FB684D5405EB74B97B543ADF7D344B57"
)
MASTER_SECRET = bytes.fromhex(MASTER_SECRET_HEX)
COOKIE = "AfzLCYSXxJy04oVxpdyhC7H6epZvnVxoFCMJAxe/zek="
MINIMAL_REQUEST = (
    "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n"
    "Host: 127.0.0.1:4443\r\n"
    "User-Agent: AnyConnect Linux_64 4.10.07061\r\n"
    f"Cookie: webvpn={COOKIE}\r\n"
    "X-CSTP-Version: 1\r\n"
    "X-CSTP-Hostname: loadgen-1\r\n"
    "X-CSTP-Base-MTU: 1500\r\n"
    "X-CSTP-Address-Type: IPv4\r\n"
    f"X-DTLS-Master-Secret: {MASTER_SECRET_HEX}\r\n"
    "X-DTLS-CipherSuite: AES128-SHA\r\n"
    "\r\n"
).encode()
# openconnect 9.01's default offers (§4.1).
OC_DTLS_OFFER = (
    "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:OC-DTLS1_2-AES128-GCM:"
    "DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA"
)
OC_DTLS12_OFFER = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:"
    "AES128-GCM-SHA256:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA"
)


def headers_of(text: str) -> list[tuple[bytes, bytes]]:
    out = []
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        out.append((name.encode(), value.encode()))
    return out


def minimal_request(**changes: object) -> ConnectRequest:
    base = ConnectRequest(
        host="127.0.0.1:4443",
        user_agent="AnyConnect Linux_64 4.10.07061",
        cookie=COOKIE,
        hostname="loadgen-1",
        protocol=None,
        dtls_master_secret=MASTER_SECRET,
        dtls_ciphers=("AES128-SHA",),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- the response: ocserv's capture -------------------------------------------


def test_psk_capture_parses_into_fields() -> None:
    p = parse_connect_response_untrusted(headers_of(PSK_CAPTURE))
    assert p.version == 1
    assert p.server_name == "ocserv 1.1.6"
    assert p.hostname == "vm"
    assert p.address == ipaddress.IPv4Address("10.77.63.50")
    assert p.netmask == ipaddress.IPv4Address("255.255.0.0")
    assert p.address_ip6 is None
    assert (p.tunnel_all_dns, p.client_bypass_protocol) == (False, False)
    assert (p.cstp_dpd_s, p.dtls_dpd_s) == (90, 90)
    assert (p.cstp_keepalive_s, p.dtls_keepalive_s) == (32400, 32400)
    assert (p.cstp_rekey_time_s, p.cstp_rekey_method) == (172823, "ssl")
    assert (p.dtls_rekey_time_s, p.dtls_rekey_method) == (172833, "ssl")
    assert p.idle_timeout_s is None
    assert p.disconnected_timeout_s is None
    assert (p.session_timeout_s, p.session_timeout_remaining_s) == (0, 0)
    assert (p.keep, p.tcp_keepalive, p.smartcard_removal_disconnect) == (True, True, True)
    assert p.license == "accept"
    assert p.dtls_port == 4443
    assert p.dtls_app_id == bytes.fromhex(APP_ID)
    assert p.dtls_session_id is None
    assert (p.dtls_cipher, p.dtls_cipher_header) == ("PSK-NEGOTIATE", DTLS_CIPHER_HEADER)
    assert (p.base_mtu, p.mtu, p.dtls_mtu) == (1500, 1434, None)
    assert p.gateway_tunnel_address == ipaddress.IPv4Address("10.77.0.1")
    assert p.unknown == ()
    assert p.dns == p.split_include == ()


def test_legacy_capture_parses_into_fields() -> None:
    p = parse_connect_response_untrusted(headers_of(LEGACY_CAPTURE))
    assert p.dtls_session_id == bytes.fromhex(SESSION_ID)
    assert p.dtls_app_id is None
    assert (p.dtls_cipher, p.dtls_cipher_header) == ("AES128-SHA", DTLS_CIPHER_HEADER)
    assert (p.mtu, p.dtls_mtu) == (1406, 1406)


def test_dtls12_answer_and_precedence() -> None:
    dtls12 = LEGACY_CAPTURE.replace(
        "X-DTLS-CipherSuite: AES128-SHA", "X-DTLS12-CipherSuite: AES256-GCM-SHA384"
    )
    p = parse_connect_response_untrusted(headers_of(dtls12))
    assert (p.dtls_cipher, p.dtls_cipher_header) == ("AES256-GCM-SHA384", DTLS12_CIPHER_HEADER)
    # Both answered: the DTLS 1.2 one wins whatever the order (§6).
    both = [*headers_of(dtls12), (b"X-DTLS-CipherSuite", b"AES128-SHA")]
    p = parse_connect_response_untrusted(both)
    assert (p.dtls_cipher, p.dtls_cipher_header) == ("AES256-GCM-SHA384", DTLS12_CIPHER_HEADER)


@pytest.mark.parametrize("capture", [PSK_CAPTURE, LEGACY_CAPTURE])
def test_reemitting_the_capture_keeps_its_order(capture: str) -> None:
    p = parse_connect_response_untrusted(headers_of(capture))
    expected = [h for h in headers_of(capture) if h[1] != b"none"]
    assert p.to_headers() == expected
    assert parse_connect_response_untrusted(p.to_headers()) == p


def test_capture_through_h11_on_both_sides() -> None:
    params = parse_connect_response_untrusted(headers_of(LEGACY_CAPTURE))
    server = h11.Connection(h11.SERVER)
    client = h11.Connection(h11.CLIENT)
    request = minimal_request()
    wire = client.send(
        h11.Request(method="CONNECT", target=request.target, headers=request.to_headers())
    )
    wire = (wire or b"") + (client.send(h11.EndOfMessage()) or b"")
    server.receive_data(wire)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    assert ConnectRequest.from_headers_untrusted(event.headers) == request
    answer = server.send(
        h11.Response(status_code=200, reason=b"CONNECTED", headers=params.to_headers())
    )
    client.receive_data((answer or b"") + b"STF\x01\x00\x00\x07\x00")
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert client.their_state is h11.SWITCHED_PROTOCOL
    assert parse_connect_response_untrusted(response.headers) == params  # names arrive lower-case
    assert client.trailing_data[0] == b"STF\x01\x00\x00\x07\x00"


def test_names_are_case_insensitive() -> None:
    upper = [(n.upper(), v) for n, v in headers_of(PSK_CAPTURE)]
    lower = [(n.lower(), v) for n, v in headers_of(PSK_CAPTURE)]
    expected = parse_connect_response_untrusted(headers_of(PSK_CAPTURE))
    assert parse_connect_response_untrusted(upper) == expected
    assert parse_connect_response_untrusted(lower) == expected
    p = parse_connect_response_untrusted(
        [(b"x-cstp-address", b"10.0.0.2"), (b"X-dtls-MTU", b"1400")]
    )
    assert (p.address, p.dtls_mtu, p.mtu) == (ipaddress.IPv4Address("10.0.0.2"), 1400, None)


def test_repeated_and_unknown_headers() -> None:
    extra = """\
X-CSTP-DNS: 10.77.0.1
X-CSTP-DNS: 2001:db8::53
X-CSTP-DNS-IP6: 2001:db8::54
X-CSTP-NBNS: 10.77.0.2
X-CSTP-Split-Include: 10.0.0.0/255.0.0.0
X-CSTP-Split-Include: 192.168.0.0/16
X-CSTP-Split-Include-IP6: 2001:db8::/32
X-CSTP-Split-Exclude: 10.1.0.0/255.255.0.0
X-CSTP-Split-DNS: corp.example
X-CSTP-Split-DNS: lab.example
X-CSTP-Default-Domain: example.com
X-CSTP-Banner: Welcome
X-CSTP-Post-Auth-XML: <config-auth client="vpn" type="complete"/>
X-CSTP-Frobnicate: 7
x-dtls12-rekey-time: 5
X-DTLS-Content-Encoding: lzs
Date: Mon, 01 Jan 2024 00:00:00 GMT
Strict-Transport-Security: max-age=31536000"""
    p = parse_connect_response_untrusted(headers_of(PSK_CAPTURE + extra))
    ip = ipaddress.ip_address
    assert p.dns == (ip("10.77.0.1"), ip("2001:db8::53"))
    assert p.dns_ip6 == (ip("2001:db8::54"),)
    assert p.nbns == (ip("10.77.0.2"),)
    net = ipaddress.ip_network
    assert p.split_include == (net("10.0.0.0/8"), net("192.168.0.0/16"))
    assert p.split_include_ip6 == (net("2001:db8::/32"),)
    assert p.split_exclude == (net("10.1.0.0/16"),)
    assert p.split_dns == ("corp.example", "lab.example")
    assert (p.default_domain, p.banner, p.dtls_content_encoding) == (
        "example.com",
        "Welcome",
        "lzs",
    )
    assert p.post_auth_xml == '<config-auth client="vpn" type="complete"/>'
    assert p.unknown == (("X-CSTP-Frobnicate", "7"), ("x-dtls12-rekey-time", "5"))
    assert parse_connect_response_untrusted(p.to_headers()) == p
    emitted = dict(p.to_headers())
    assert emitted[b"X-CSTP-Split-Include"] == b"192.168.0.0/255.255.0.0"  # last of the two
    assert b"Date" not in emitted


def test_repeated_scalar_last_wins() -> None:
    p = parse_connect_response_untrusted(
        headers_of(PSK_CAPTURE + "X-CSTP-DPD: 30\nX-CSTP-Idle-Timeout: 600")
    )
    assert (p.cstp_dpd_s, p.idle_timeout_s) == (30, 600)


def test_ipv6_legacy_and_full_styles() -> None:
    legacy = "X-CSTP-Address: fd00::5\nX-CSTP-Netmask: fd00::/64\nX-CSTP-MTU: 1400"
    p = parse_connect_response_untrusted(headers_of(legacy))
    assert p.address is None
    assert p.address_ip6 == ipaddress.IPv6Interface("fd00::5/64")
    assert p.ip6_legacy_headers
    assert p.to_headers() == headers_of(legacy)
    full = parse_connect_response_untrusted(
        headers_of("X-CSTP-Address-IP6: fd00::5/64\nX-CSTP-MTU: 1400")
    )
    assert full.address_ip6 == p.address_ip6 and not full.ip6_legacy_headers
    assert full.gateway_tunnel_address is None


@pytest.mark.parametrize(
    "text",
    [
        "X-CSTP-MTU: 1400",  # no address
        "X-CSTP-Netmask: 255.255.255.0\nX-CSTP-MTU: 1400",
        "X-CSTP-Address: 10.0.0.2\nX-CSTP-Base-MTU: 1500",  # no MTU
        "X-CSTP-Address: 10.0.0.2",
        "",
    ],
)
def test_missing_address_or_mtu(text: str) -> None:
    with pytest.raises(BadPacketError, match="without"):
        parse_connect_response_untrusted(headers_of(text))


@pytest.mark.parametrize(
    "session_id", [SESSION_ID[:-2], SESSION_ID + "00", SESSION_ID[:-1], "zz" * 32, ""]
)
def test_session_id_must_be_32_bytes_of_hex(session_id: str) -> None:
    text = LEGACY_CAPTURE.replace(SESSION_ID, session_id)
    with pytest.raises(BadPacketError, match="X-DTLS-Session-ID"):
        parse_connect_response_untrusted(headers_of(text))


def test_session_id_upper_case_and_app_id_bounds() -> None:
    p = parse_connect_response_untrusted(
        headers_of(LEGACY_CAPTURE.replace(SESSION_ID, SESSION_ID.upper()))
    )
    assert p.dtls_session_id == bytes.fromhex(SESSION_ID)
    assert dict(p.to_headers())[b"X-DTLS-Session-ID"] == SESSION_ID.encode()
    with pytest.raises(BadPacketError, match="X-DTLS-App-ID"):
        parse_connect_response_untrusted(headers_of(PSK_CAPTURE.replace(APP_ID, APP_ID + "ab")))
    short = parse_connect_response_untrusted(headers_of(PSK_CAPTURE.replace(APP_ID, "0a0b")))
    assert short.dtls_app_id == b"\x0a\x0b"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-CSTP-DPD", "9O"),
        ("X-CSTP-DPD", "-1"),
        ("X-CSTP-DPD", "+90"),
        ("X-CSTP-Keepalive", "\u0663"),  # an Arabic-Indic digit
        ("X-CSTP-MTU", "0"),
        ("X-CSTP-MTU", "70000"),
        ("X-DTLS-Port", "1e3"),
        ("X-CSTP-Address", "10.77.63.500"),
        ("X-CSTP-Netmask", "255.0.255.0"),
        ("X-CSTP-DNS", "dns.example"),
        ("X-CSTP-Split-Include", "10.0.0.0/33"),
        ("X-CSTP-Keep", "yes"),
        ("X-CSTP-Address-IP6", "fd00::1/129"),
    ],
)
def test_bad_values_name_their_header(header: str, value: str) -> None:
    with pytest.raises(BadPacketError, match=header):
        parse_connect_response_untrusted(headers_of(PSK_CAPTURE + f"{header}: {value}"))


def test_post_auth_xml_never_shown() -> None:
    token = "SECRET-TOKEN-1234"
    xml = f"<config-auth><session-token>{token}</session-token></config-auth>"
    p = parse_connect_response_untrusted(headers_of(PSK_CAPTURE + f"X-CSTP-Post-Auth-XML: {xml}"))
    assert p.post_auth_xml == xml
    assert token not in repr(p) and "post_auth_xml=<elided>" in repr(p)
    assert "address=IPv4Address('10.77.63.50')" in repr(p) and "idle_timeout_s" not in repr(p)
    assert "tunnel_all_dns=False" in repr(p) and "ip6_legacy_headers" not in repr(p)
    assert f"dtls_app_id='{APP_ID}'" in repr(p)
    bad = [*headers_of(PSK_CAPTURE), (b"X-CSTP-Post-Auth-XML", f"{token}\x00".encode())]
    with pytest.raises(BadPacketError) as info:
        parse_connect_response_untrusted(bad)
    assert "X-CSTP-Post-Auth-XML" in str(info.value) and token not in str(info.value)


def test_gateway_tunnel_address_edges() -> None:
    def gw(address: str, netmask: str | None) -> object:
        return TunnelParams(
            address=ipaddress.IPv4Address(address),
            netmask=None if netmask is None else ipaddress.IPv4Address(netmask),
            mtu=1400,
        ).gateway_tunnel_address

    assert gw("192.168.7.77", "255.255.255.0") == ipaddress.IPv4Address("192.168.7.1")
    assert gw("192.168.7.1", "255.255.255.0") is None  # that is us
    assert gw("192.168.7.77", "255.255.255.255") is None
    assert gw("192.168.7.77", None) is None


def test_tunnel_params_invariants() -> None:
    with pytest.raises(LocalProtocolError):
        TunnelParams(mtu=1400)
    with pytest.raises(LocalProtocolError):
        TunnelParams(address=ipaddress.IPv4Address("10.0.0.2"))
    ok = TunnelParams(address=ipaddress.IPv4Address("10.0.0.2"), mtu=1400)
    for bad in (
        {"dtls_session_id": b"\x00" * 31},
        {"dtls_cipher": "AES128-SHA"},
        {"dtls_cipher": "AES128-SHA", "dtls_cipher_header": "X-Other"},
        {"unknown": (("X-CSTP-MTU", "1"),)},
        {"unknown": (("Date", "x"),)},
    ):
        with pytest.raises(LocalProtocolError):
            dataclasses.replace(ok, **bad)
    with pytest.raises(LocalProtocolError):
        dataclasses.replace(ok, banner="two\r\nlines").to_headers()


# -- the request -----------------------------------------------------------------


def test_minimal_request_of_section_4_1() -> None:
    req = minimal_request()
    conn = h11.Connection(h11.CLIENT)
    wire = conn.send(h11.Request(method=req.method, target=req.target, headers=req.to_headers()))
    assert wire == MINIMAL_REQUEST


def test_openconnect_style_request_order() -> None:
    req = minimal_request(
        protocol=CISCO_PROTOCOL,
        mtu=openconnect_tunnel_mtu(1500),
        address_type="IPv6,IPv4",
        full_ipv6=True,
        previous_address="10.77.63.50",
        previous_address_ip6="fd00::5",
        dtls_ciphers=tuple(OC_DTLS_OFFER.split(":")),
        dtls12_ciphers=tuple(OC_DTLS12_OFFER.split(":")),
        extra=(("X-AnyConnect-Identifier-Platform", "android"),),
    )
    names = [n.decode() for n, _ in req.to_headers()]
    assert names == [
        "Host",
        "User-Agent",
        "Cookie",
        "X-CSTP-Version",
        "X-CSTP-Hostname",
        "X-CSTP-Protocol",
        "X-AnyConnect-Identifier-Platform",
        "X-CSTP-Base-MTU",
        "X-CSTP-MTU",
        "X-CSTP-Address-Type",
        "X-CSTP-Address",
        "X-CSTP-Full-IPv6-Capability",
        "X-CSTP-Address",
        "X-DTLS-Master-Secret",
        "X-DTLS-CipherSuite",
        "X-DTLS12-CipherSuite",
    ]
    values = dict(req.to_headers())
    assert values[b"X-CSTP-MTU"] == b"1390"
    assert values[b"X-CSTP-Protocol"] == b"Copyright (c) 2004 Cisco Systems, Inc."
    assert values[b"X-DTLS12-CipherSuite"] == OC_DTLS12_OFFER.encode()
    assert ConnectRequest.from_headers_untrusted(req.to_headers()) == req
    assert req.wants_ipv4 and req.wants_ipv6
    assert not minimal_request().wants_ipv6


def test_openconnect_mtu_arithmetic() -> None:
    assert openconnect_tunnel_mtu(1500) == 1390
    assert openconnect_tunnel_mtu(1500, ipv6=True) == 1370
    assert openconnect_tunnel_mtu(1000) == 1280 - 110  # openconnect clamps Base-MTU to 1280


def test_server_reads_minimal_request() -> None:
    server = h11.Connection(h11.SERVER)
    server.receive_data(MINIMAL_REQUEST)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    req = ConnectRequest.from_headers_untrusted(event.headers)
    assert req == minimal_request()
    assert req.previous_address is None and req.mtu is None


def test_server_cookie_rules() -> None:
    base = [(b"Host", b"gw"), (b"X-CSTP-Hostname", b"h")]
    req = ConnectRequest.from_headers_untrusted(
        [*base, (b"Cookie", f"webvpncontext=abc; webvpn={COOKIE} ; webvpnc=x".encode())]
    )
    assert req.cookie == COOKIE
    last = ConnectRequest.from_headers_untrusted(
        [*base, (b"Cookie", b"webvpn=first"), (b"cookie", b"webvpn=second")]
    )
    assert last.cookie == "second"
    for cookies in ([], [(b"Cookie", b"webvpncontext=abc")], [(b"Cookie", b"webvpn=")]):
        with pytest.raises(NoSessionCookieError):
            ConnectRequest.from_headers_untrusted([*base, *cookies])


def test_server_master_secret_rules() -> None:
    base = [(b"Cookie", b"webvpn=t")]
    longer = MASTER_SECRET_HEX.lower() + "ffff"  # ocserv decodes the first 96 digits
    req = ConnectRequest.from_headers_untrusted([*base, (b"X-DTLS-Master-Secret", longer.encode())])
    assert req.dtls_master_secret == MASTER_SECRET
    for bad in (MASTER_SECRET_HEX[:-1], "Z" + MASTER_SECRET_HEX[1:]):
        with pytest.raises(BadPacketError, match="X-DTLS-Master-Secret") as info:
            ConnectRequest.from_headers_untrusted([*base, (b"X-DTLS-Master-Secret", bad.encode())])
        assert MASTER_SECRET_HEX[2:40] not in str(info.value)


def test_server_keeps_unknown_request_headers_and_checks_numbers() -> None:
    base = [(b"Cookie", b"webvpn=t")]
    req = ConnectRequest.from_headers_untrusted(
        [*base, (b"X-AnyConnect-Identifier-Platform", b"android"), (b"Accept", b"*/*")]
    )
    assert req.extra == (("X-AnyConnect-Identifier-Platform", "android"), ("Accept", "*/*"))
    assert (req.base_mtu, req.address_type, req.protocol) == (None, None, None)
    assert req.wants_ipv4 and req.wants_ipv6
    with pytest.raises(BadPacketError, match="X-CSTP-Base-MTU"):
        ConnectRequest.from_headers_untrusted([*base, (b"X-CSTP-Base-MTU", b"15OO")])
    with pytest.raises(BadPacketError, match="X-CSTP-Address"):
        ConnectRequest.from_headers_untrusted([*base, (b"X-CSTP-Address", b"10.0.0.256")])


def test_request_repr_hides_credentials() -> None:
    text = repr(minimal_request())
    assert COOKIE not in text
    for form in (MASTER_SECRET_HEX, MASTER_SECRET_HEX.lower(), repr(MASTER_SECRET)[2:30]):
        assert form not in text
    assert "loadgen-1" in text


def test_request_invariants() -> None:
    for bad in (
        {"dtls_master_secret": b"\x01" * 47},
        {"mtu": 0},
        {"base_mtu": 65536},
        {"dtls_ciphers": ()},
        {"dtls_ciphers": ("A:B",)},
        {"cookie": ""},
        {"previous_address": "fd00::1"},
        {"extra": (("cookie", "webvpn=x"),)},
    ):
        with pytest.raises(LocalProtocolError):
            minimal_request(**bad)
    with pytest.raises(LocalProtocolError) as info:
        minimal_request(cookie="tok\nen").to_headers()
    assert "tok" not in str(info.value)


# -- the header names the DTLS tables use -------------------------------------------


def test_cipher_header_names_match_the_dtls_tables() -> None:
    ciphers = pytest.importorskip("loadgen.proto.dtls.ciphers")
    assert ciphers.DTLS_CIPHERS_HEADER == DTLS_CIPHER_HEADER
    assert ciphers.DTLS12_CIPHERS_HEADER == DTLS12_CIPHER_HEADER


# -- hypothesis: round trips of valid objects, fuzz of both parsers -------------

text_st = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20).map(
    lambda s: s.strip(" \t")
)
word_st = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
opt = st.none
ipv4_st = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
CIPHER_HEADERS: tuple[CipherHeader, ...] = (DTLS_CIPHER_HEADER, DTLS12_CIPHER_HEADER)
ip_st = st.ip_addresses()
net_st = st.builds(
    lambda ip, plen: ipaddress.ip_network(
        f"{ip}/{plen % (33 if ip.version == 4 else 129)}", strict=False
    ),
    ip_st,
    st.integers(0, 128),
)
mask_st = st.integers(0, 32).map(lambda n: ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask)
iface6_st = st.builds(
    lambda ip, n: ipaddress.IPv6Interface((ip, n)), st.ip_addresses(v=6), st.integers(0, 128)
)
secs_st = opt() | st.integers(0, 9_999_999_999)
bool_st = opt() | st.booleans()
mtu_st = st.integers(1, 65535)
unknown_st = st.lists(st.tuples(word_st.map(lambda w: f"X-CSTP-Zz{w}"), text_st), max_size=3).map(
    tuple
)


@st.composite
def tunnel_params_st(draw: st.DrawFn) -> TunnelParams:
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(TunnelParams):
        name = f.name
        if name == "dtls_cipher":
            continue
        if name.endswith("_s"):
            kwargs[name] = draw(secs_st)
        elif f.type == "bool | None":
            kwargs[name] = draw(bool_st)
        elif f.type == "str | None":
            kwargs[name] = draw(opt() | text_st)
    cipher = draw(opt() | st.tuples(word_st, st.sampled_from(CIPHER_HEADERS)))
    address = draw(opt() | ipv4_st)
    address_ip6 = draw(iface6_st if address is None else opt() | iface6_st)
    return TunnelParams(
        **kwargs,  # type: ignore[arg-type]
        version=draw(opt() | st.integers(0, 9)),
        address=address,
        netmask=draw(opt() | mask_st),
        address_ip6=address_ip6,
        ip6_legacy_headers=address_ip6 is not None and draw(st.booleans()),
        dns=tuple(draw(st.lists(ip_st, max_size=3))),
        dns_ip6=tuple(draw(st.lists(ip_st, max_size=2))),
        nbns=tuple(draw(st.lists(ipv4_st, max_size=2))),
        split_include=tuple(draw(st.lists(net_st, max_size=3))),
        split_exclude=tuple(draw(st.lists(net_st, max_size=2))),
        split_include_ip6=tuple(draw(st.lists(net_st, max_size=2))),
        split_exclude_ip6=tuple(draw(st.lists(net_st, max_size=2))),
        split_dns=tuple(draw(st.lists(text_st, max_size=2))),
        mtu=draw(mtu_st),
        base_mtu=draw(opt() | mtu_st),
        dtls_mtu=draw(opt() | mtu_st),
        dtls_port=draw(opt() | mtu_st),
        dtls_session_id=draw(opt() | st.binary(min_size=32, max_size=32)),
        dtls_app_id=draw(opt() | st.binary(min_size=1, max_size=32)),
        dtls_cipher=None if cipher is None else cipher[0],
        dtls_cipher_header=None if cipher is None else cipher[1],
        unknown=draw(unknown_st),
    )


@st.composite
def connect_request_st(draw: st.DrawFn) -> ConnectRequest:
    ciphers = opt() | st.lists(word_st, min_size=1, max_size=4).map(tuple)
    return ConnectRequest(
        host=draw(text_st),
        user_agent=draw(text_st),
        cookie=draw(word_st),
        hostname=draw(text_st),
        base_mtu=draw(opt() | mtu_st),
        mtu=draw(opt() | mtu_st),
        address_type=draw(opt() | st.sampled_from(["IPv4", "IPv6,IPv4"])),
        full_ipv6=draw(st.booleans()),
        previous_address=draw(opt() | ipv4_st.map(str)),
        previous_address_ip6=draw(opt() | st.ip_addresses(v=6).map(str)),
        protocol=draw(opt() | st.just(CISCO_PROTOCOL)),
        dtls_master_secret=draw(opt() | st.binary(min_size=48, max_size=48)),
        dtls_ciphers=draw(ciphers),
        dtls12_ciphers=draw(ciphers),
        extra=draw(
            st.lists(st.tuples(word_st.map(lambda w: f"X-Extra-{w}"), text_st), max_size=2).map(
                tuple
            )
        ),
    )


@settings(max_examples=300)
@given(tunnel_params_st())
def test_tunnel_params_round_trip(params: TunnelParams) -> None:
    assert parse_connect_response_untrusted(params.to_headers()) == params


@settings(max_examples=300)
@given(connect_request_st())
def test_connect_request_round_trip(req: ConnectRequest) -> None:
    assert ConnectRequest.from_headers_untrusted(req.to_headers()) == req


RESPONSE_NAMES = [spec.split(": ")[0] for spec in PSK_CAPTURE.splitlines()] + [
    "X-CSTP-Address-IP6",
    "X-CSTP-DNS",
    "X-CSTP-Split-Include",
    "X-CSTP-Netmask",
    "X-DTLS-Session-ID",
    "X-DTLS12-CipherSuite",
    "X-DTLS-MTU",
    "X-CSTP-Post-Auth-XML",
    "X-CSTP-Foo",
    "Date",
]
REQUEST_NAMES = [
    "Host",
    "User-Agent",
    "Cookie",
    "X-CSTP-Base-MTU",
    "X-CSTP-MTU",
    "X-CSTP-Address",
    "X-CSTP-Address-Type",
    "X-CSTP-Full-IPv6-Capability",
    "X-DTLS-Master-Secret",
    "X-DTLS-CipherSuite",
    "X-DTLS12-CipherSuite",
    "X-Other",
]
VALUES = [
    "1",
    "0",
    "90",
    "none",
    "true",
    "false",
    "10.77.63.50",
    "255.255.0.0",
    "fd00::5/64",
    "fd00::/64",
    "10.0.0.0/8",
    SESSION_ID,
    APP_ID,
    MASTER_SECRET_HEX,
    "AES128-SHA",
    f"webvpn={COOKIE}",
    "PSK-NEGOTIATE:AES128-SHA",
    "",
]


def header_lists(names: list[str]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Known names in any case and plausible values, with some raw noise mixed in."""
    known = (
        st.sampled_from(names)
        .flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()]))
        .map(str.encode)
    )
    plausible = st.sampled_from(VALUES).map(str.encode)
    noisy = st.tuples(known | st.binary(max_size=12), plausible | st.binary(max_size=40))
    clean = st.tuples(known, plausible)
    return st.lists(clean, max_size=12) | st.lists(clean | noisy, max_size=30)


@settings(max_examples=500)
@given(header_lists(RESPONSE_NAMES))
def test_fuzz_parse_connect_response(headers: list[tuple[bytes, bytes]]) -> None:
    mtu_and_address = [(b"X-CSTP-MTU", b"1400"), (b"X-CSTP-Address", b"10.0.0.2")]
    for candidate in (headers, mtu_and_address + headers):
        try:
            params = parse_connect_response_untrusted(candidate)
        except BadPacketError:
            continue
        assert isinstance(params, TunnelParams)
        assert parse_connect_response_untrusted(params.to_headers()) == params


@settings(max_examples=500)
@given(header_lists(REQUEST_NAMES))
def test_fuzz_connect_request_from_headers(headers: list[tuple[bytes, bytes]]) -> None:
    for candidate in (headers, [(b"Cookie", b"webvpn=tok"), *headers]):
        try:
            req = ConnectRequest.from_headers_untrusted(candidate)
        except BadPacketError:
            continue
        assert isinstance(req, ConnectRequest)
        assert ConnectRequest.from_headers_untrusted(req.to_headers()) == req
