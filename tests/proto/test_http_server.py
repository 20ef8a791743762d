"""The gateway's HTTP server role without trio: requests in pieces, keep-alive, the head and
body limits, the stalled-mid-request rule, the answers' exact bytes, and CONNECT's hand-over."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.proto.errors import BadPacketError
from loadgen.proto.http_server import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    BadRequestError,
    ClientClosed,
    HttpRequest,
    HttpServerConnection,
    printable,
)

POST = (
    b"POST /auth?x=1 HTTP/1.1\r\nHost: gw\r\nCookie: webvpncontext=abc; webvpn=tok\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)
REFUSAL = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def feed(conn: HttpServerConnection, data: bytes) -> HttpRequest | ClientClosed | None:
    conn.receive_data(data)
    return conn.next_request_untrusted()


def test_a_request_byte_by_byte() -> None:
    conn = HttpServerConnection()
    assert conn.next_request_untrusted() is None
    assert not conn.mid_request
    results = [feed(conn, POST[i : i + 1]) for i in range(len(POST))]
    assert results[:-1] == [None] * (len(POST) - 1)
    request = results[-1]
    assert isinstance(request, HttpRequest)
    assert (request.method, request.target, request.path) == ("POST", "/auth?x=1", "/auth")
    assert request.body == b"hello"
    assert request.cookies() == {"webvpncontext": "abc", "webvpn": "tok"}
    assert (b"Host", b"gw") in request.headers
    assert "tok" not in repr(request) and "hello" not in repr(request)


def test_keep_alive_requests_and_answers() -> None:
    conn = HttpServerConnection()
    first = feed(conn, POST + POST)
    assert isinstance(first, HttpRequest)
    out = conn.respond(200, "OK", [("Content-Type", "text/xml")], b"<x/>")
    assert out == (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Type: text/xml\r\n\r\n<x/>")
    assert conn.next_cycle()
    assert isinstance(conn.next_request_untrusted(), HttpRequest)
    out = conn.respond(404, "Not found", close=True)
    assert out == b"HTTP/1.1 404 Not found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert not conn.next_cycle()


def test_repeated_headers_are_written_as_given() -> None:
    # the auth answers carry their own Content-Length and Connection: h11 keeps
    # the first Content-Length, and every Connection
    conn = HttpServerConnection()
    feed(conn, POST)
    headers = [("Connection", "close"), ("Content-Length", "0"), ("X-Transcend-Version", "1")]
    assert conn.respond(401, "No password", headers, close=True) == (
        b"HTTP/1.1 401 No password\r\nContent-Length: 0\r\nConnection: close\r\n"
        b"X-Transcend-Version: 1\r\nConnection: close\r\n\r\n"
    )


def test_the_client_closing_between_requests() -> None:
    conn = HttpServerConnection()
    assert isinstance(feed(conn, b""), ClientClosed)
    assert not conn.mid_request


@pytest.mark.parametrize(
    "partial",
    [b"GE", b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Le", POST[:-2]],
    ids=["mid-request-line", "mid-headers", "mid-body"],
)
def test_a_partial_request_is_mid_request(partial: bytes) -> None:
    conn = HttpServerConnection()
    assert feed(conn, partial) is None
    assert conn.mid_request


def test_a_finished_request_is_not_mid_request() -> None:
    conn = HttpServerConnection()
    feed(conn, POST)
    conn.respond(200, "OK")
    assert conn.next_cycle()
    assert conn.next_request_untrusted() is None
    assert not conn.mid_request


def test_the_head_limit() -> None:
    conn = HttpServerConnection()
    head = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"h" * (MAX_HEADER_BYTES - 200)
    assert feed(conn, head + b"\r\n\r\n") is not None  # just inside
    conn = HttpServerConnection()
    with pytest.raises(BadRequestError, match="malformed HTTP") as info:
        feed(conn, head + b"h" * 400 + b"\r\n\r\n")
    assert info.value.drop_label == "http_malformed"


def test_the_body_limit() -> None:
    size = MAX_BODY_BYTES + 1
    conn = HttpServerConnection()
    with pytest.raises(BadRequestError, match="body too large") as info:
        feed(
            conn, b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
        )
    assert info.value.drop_label == "http_malformed"
    conn = HttpServerConnection()
    body = b"x" * MAX_BODY_BYTES
    request = feed(
        conn, b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert isinstance(request, HttpRequest) and request.body == body


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_and_the_refusal(data: bytes) -> None:
    conn = HttpServerConnection()
    with pytest.raises(BadRequestError):
        feed(conn, data)
    assert conn.refuse(400, "Bad Request") == REFUSAL


def test_no_refusal_once_an_answer_went_out() -> None:
    conn = HttpServerConnection()
    feed(conn, POST)
    conn.respond(200, "OK")
    assert conn.refuse(400, "Bad Request") == b""


def test_connect_hands_back_the_bytes_after_it() -> None:
    conn = HttpServerConnection()
    request = feed(
        conn, b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\n\r\nSTF\x01\x00\x00\x07\x00"
    )
    assert isinstance(request, HttpRequest) and request.method == "CONNECT"
    head, leftover = conn.switch_protocol(200, "CONNECTED", [(b"X-CSTP-MTU", b"1406")])
    assert head == b"HTTP/1.1 200 CONNECTED\r\nX-CSTP-MTU: 1406\r\n\r\n"
    assert leftover == b"STF\x01\x00\x00\x07\x00"


def test_printable() -> None:
    assert printable("/a\x00b\u00e9") == "/a\\x00b\\xe9"
    assert printable("x" * 200) == "x" * 80


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_the_reader(chunks: list[bytes]) -> None:
    conn = HttpServerConnection()
    try:
        for chunk in chunks:
            event = feed(conn, chunk)
            while isinstance(event, HttpRequest):
                conn.respond(200, "OK")
                if not conn.next_cycle():
                    return
                event = conn.next_request_untrusted()
            if isinstance(event, ClientClosed):
                return
    except BadPacketError as exc:
        assert isinstance(exc, BadRequestError)
        assert conn.refuse(400, "Bad Request") in (b"", REFUSAL)
