"""HTTP exchanges over h11: keep-alive, cookies, CONNECT leftovers, hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.proto.errors import BadPacketError, LocalProtocolError, RemoteProtocolError
from loadgen.proto.http import (
    MAX_HEADER_BYTES,
    CookieJar,
    HttpConnection,
    build_common_headers,
    cookie_pairs,
    parse_cookies,
    request_cookies,
)
from loadgen.proto.tunnel import ConnectRequest, NoSessionCookieError

HEADERS = build_common_headers(host="127.0.0.1:4443", user_agent="AnyConnect Linux_64 4.10.07061")

# ocserv 1.1.6 success response, protocol.md §2.6 (cookie values shortened)
OCSERV_SUCCESS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Connection: Keep-Alive\r\n"
    b"Content-Type: text/xml\r\n"
    b"Content-Length: 5\r\n"
    b"X-Transcend-Version: 1\r\n"
    b"Set-Cookie: webvpncontext=AJe3dh4O+Qq=; Secure; HttpOnly\r\n"
    b"Set-Cookie: webvpn=AJe3dh4O+Qq=; Secure; HttpOnly\r\n"
    b"Set-Cookie: webvpnc=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure; HttpOnly\r\n"
    b"Set-Cookie: webvpnc=bu:/&p:t&iu:1/&sh:02E40E0EA75FFC892CFBF9CC05E068F3D88ED017; path=/; Secure; HttpOnly\r\n"
    b"\r\n<xml>"
)


def test_request_carries_the_aggregate_auth_headers() -> None:
    conn = HttpConnection()
    out = conn.send_request("POST", "/", HEADERS, b"<x/>")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"POST / HTTP/1.1\r\n")
    assert b"X-Aggregate-Auth: 1" in head
    assert b"X-Transcend-Version: 1" in head
    assert b"Content-Length: 4" in head
    assert b"X-Support-HTTP-Auth" not in head
    assert body == b"<x/>"


def test_keep_alive_and_cookies() -> None:
    conn = HttpConnection()
    jar = CookieJar()
    conn.send_request("POST", "/", HEADERS, b"a")
    conn.receive_data(OCSERV_SUCCESS)
    resp = conn.next_response_untrusted()
    assert resp is not None and resp.status == 200 and resp.body == b"<xml>"
    jar.update_from_headers(resp.headers)
    assert jar.get("webvpn") == "AJe3dh4O+Qq="
    assert jar.get(
        "webvpnc",
    ) is not None and jar.get(
        "webvpnc",
    ).startswith("bu:/&p:t")
    assert conn.reusable
    out = conn.send_request("GET", "/profiles/p.xml", HEADERS)
    assert out.startswith(b"GET /profiles/p.xml HTTP/1.1\r\n")


def test_cookie_jar_deletes_expired_and_hides_values() -> None:
    jar = CookieJar()
    jar.update_from_headers([(b"Set-Cookie", b"webvpncontext=secret; Secure")])
    assert jar.header_value() == "webvpncontext=secret"
    assert "secret" not in repr(jar)
    jar.update_from_headers(
        [(b"set-cookie", b"webvpncontext=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/")]
    )
    assert jar.get("webvpncontext") is None
    assert jar.header_value() is None


def test_connect_switches_and_keeps_leftover_bytes() -> None:
    conn = HttpConnection()
    out = conn.send_request("CONNECT", "/CSCOSSLC/tunnel", [(b"Host", b"gw")])
    assert out == b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\n\r\n"
    first_frame = b"STF\x01\x00\x00\x07\x00"
    conn.receive_data(b"HTTP/1.1 200 CONNECTED\r\nX-CSTP-MTU: 1399\r\n\r\n" + first_frame)
    resp = conn.next_response_untrusted()
    assert resp is not None and resp.status == 200 and resp.reason == "CONNECTED"
    assert resp.header("x-cstp-mtu") == "1399"
    assert conn.switched
    assert conn.trailing_data == first_frame


def test_connect_refused_does_not_switch() -> None:
    conn = HttpConnection()
    conn.send_request("CONNECT", "/CSCOSSLC/tunnel", [(b"Host", b"gw")])
    conn.receive_data(b"HTTP/1.1 401 Cookie is not acceptable\r\nContent-Length: 0\r\n\r\n")
    resp = conn.next_response_untrusted()
    assert resp is not None and resp.status == 401
    assert not conn.switched


def test_response_split_in_single_bytes() -> None:
    conn = HttpConnection()
    conn.send_request("POST", "/", HEADERS, b"a")
    for i in range(len(OCSERV_SUCCESS) - 1):
        conn.receive_data(OCSERV_SUCCESS[i : i + 1])
        assert conn.next_response_untrusted() is None
    conn.receive_data(OCSERV_SUCCESS[-1:])
    resp = conn.next_response_untrusted()
    assert resp is not None and resp.body == b"<xml>"


def test_huge_headers_are_a_bad_packet() -> None:
    conn = HttpConnection()
    conn.send_request("POST", "/", HEADERS, b"a")
    conn.receive_data(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10))
    with pytest.raises(BadPacketError):
        conn.next_response_untrusted()


def test_body_over_the_limit_is_a_bad_packet() -> None:
    conn = HttpConnection(max_body_bytes=10)
    conn.send_request("GET", "/", HEADERS)
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20)
    with pytest.raises(BadPacketError, match="larger than 10"):
        conn.next_response_untrusted()


def test_close_mid_response_is_remote_error() -> None:
    conn = HttpConnection()
    conn.send_request("GET", "/", HEADERS)
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nabc")
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_response_untrusted()


def test_second_request_before_response_is_our_bug() -> None:
    conn = HttpConnection()
    conn.send_request("GET", "/", HEADERS)
    with pytest.raises(LocalProtocolError):
        conn.send_request("GET", "/", HEADERS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_response_parser(data: bytes) -> None:
    conn = HttpConnection(max_body_bytes=512)
    conn.send_request("POST", "/", HEADERS, b"a")
    conn.receive_data(data)
    with contextlib.suppress(BadPacketError):
        conn.next_response_untrusted()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_fuzz_cookie_parser(values: list[bytes]) -> None:
    jar = CookieJar()
    jar.update_from_headers([(b"Set-Cookie", v) for v in values])
    value = jar.header_value()
    assert value is None or isinstance(value, str)


def test_complete_but_huge_header_block_is_a_bad_packet() -> None:
    conn = HttpConnection()
    conn.send_request("POST", "/", HEADERS, b"a")
    conn.receive_data(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n")
    with pytest.raises(BadPacketError):
        conn.next_response_untrusted()


# -- the one Cookie parser (gateway, auth server, ConnectRequest) ----------------------------


def test_cookie_pairs_and_their_blanks() -> None:
    assert list(cookie_pairs(" a=1 ;b = 2;;noequals; =nameless;c=")) == [
        ("a", "1"),
        ("b", "2"),
        ("c", ""),
    ]
    assert list(cookie_pairs("v=bu:/&p:t=x")) == [("v", "bu:/&p:t=x")]


def test_the_last_non_empty_value_wins() -> None:
    assert parse_cookies(["webvpn=first; webvpncontext=c", "webvpn=second"]) == {
        "webvpn": "second",
        "webvpncontext": "c",
    }
    # an empty value is no value: it never hides an earlier one
    assert parse_cookies(["webvpn=first", "webvpn="]) == {"webvpn": "first"}
    assert parse_cookies(["webvpn="]) == {}


def test_request_cookies_read_every_cookie_header() -> None:
    headers = [
        (b"Host", b"gw"),
        (b"Cookie", b"webvpncontext=abc"),
        (b"cookie", b"webvpn=tok\xe9"),
        (b"X-Cookie", b"webvpn=no"),
    ]
    assert request_cookies(headers) == {"webvpncontext": "abc", "webvpn": "tok\u00e9"}


def test_jar_cookies_come_back_as_sent() -> None:
    jar = CookieJar()
    jar.update_from_headers([(b"Set-Cookie", b" webvpn = tok ; Secure"), (b"Set-Cookie", b"a=b")])
    assert parse_cookies([jar.header_value() or ""]) == {"webvpn": "tok", "a": "b"}


cookie_text_st = st.text(st.sampled_from("ab=; \tw"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(cookie_text_st, max_size=4))
def test_the_gateway_and_connect_agree_on_the_session_cookie(values: list[str]) -> None:
    headers = [(b"Cookie", v.encode()) for v in values]
    wanted = request_cookies(headers).get("webvpn")
    try:
        cookie = ConnectRequest.from_headers_untrusted(headers).cookie
    except NoSessionCookieError:
        cookie = None
    assert cookie == wanted
