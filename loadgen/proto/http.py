"""HTTP/1.1 exchanges of phases 1 to 5, over h11 (protocol.md §2.1, §4).

One ``HttpConnection`` is one TLS connection's worth of HTTP: keep-alive
between requests, the gateway's cookies kept and sent back (``webvpncontext``
must be echoed during auth, §2.5), and ``CONNECT`` switching the byte stream to
CSTP with any bytes already read handed back (§12 gotcha 10).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import h11

from loadgen.proto.errors import BadPacketError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "CookieJar",
    "HttpConnection",
    "HttpResponse",
    "build_common_headers",
    "cookie_pairs",
    "parse_cookies",
    "request_cookies",
]

#: Header block limit: ocserv sends about 1 KiB; ASA's ``X-CSTP-Post-Auth-XML``
#: can be a few KiB.  Anything beyond is hostile.
MAX_HEADER_BYTES = 64 * 1024
#: Bodies of auth responses and profiles.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, kw_only=True)
class HttpResponse:
    """A complete response: status line, headers and the whole body."""

    status: int
    reason: str
    headers: Headers = field(repr=False)
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


def _pair(text: str) -> tuple[str, str] | None:
    """``name=value`` with blanks around both removed; None without ``=`` or a name."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        return None
    return name, value.strip()


def cookie_pairs(text: str) -> Iterator[tuple[str, str]]:
    """The ``name=value`` pairs of one ``Cookie`` header value, in order (RFC 6265 §4.2)."""
    for part in text.split(";"):
        pair = _pair(part)
        if pair is not None:
            yield pair


def parse_cookies(values: Iterable[str]) -> dict[str, str]:
    """Cookies by name from ``Cookie`` header values: the last non-empty value wins.

    The one cookie parser of both roles: the gateway finds ``webvpncontext``
    and ``webvpn`` with it, and ``ConnectRequest`` its session token.  An
    empty value counts as absent, so ``webvpn=`` never hides an earlier one.
    """
    cookies: dict[str, str] = {}
    for value in values:
        for name, cookie in cookie_pairs(value):
            if cookie:
                cookies[name] = cookie
    return cookies


def request_cookies(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """``parse_cookies`` over every ``Cookie`` header of a request (Latin-1 decoded)."""
    return parse_cookies(
        value.decode("latin-1") for name, value in headers if name.lower() == b"cookie"
    )


class CookieJar:
    """The few cookies an AnyConnect gateway sets, by name.

    Gateways set values such as ``bu:/&p:t&sh:...`` that ``http.cookies``
    rejects, so this keeps to the RFC 6265 core: ``name=value`` up to the
    first ``;``, attributes ignored, an empty value or an ``expires`` in 1970
    deletes (ocserv clears cookies that way, §2.4).  Values are secrets: the
    repr shows names only.
    """

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"CookieJar(names={sorted(self._values)})"

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def set(self, name: str, value: str) -> None:
        self._values[name] = value

    def update_from_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        for key, raw in headers:
            if key.lower() != b"set-cookie":
                continue
            text = raw.decode("latin-1")
            first, _, attrs = text.partition(";")
            pair = _pair(first)
            if pair is None:
                continue
            name, value = pair
            expired = "1970" in attrs and "expires" in attrs.lower()
            if not value or expired:
                self._values.pop(name, None)
            else:
                self._values[name] = value

    def header_value(self, names: Sequence[str] | None = None) -> str | None:
        """The ``Cookie`` header value for ``names`` (all cookies when None)."""
        items = [(k, v) for k, v in self._values.items() if names is None or k in names]
        if not items:
            return None
        return "; ".join(f"{k}={v}" for k, v in items)


def build_common_headers(*, host: str, user_agent: str) -> Headers:
    """Headers every request of phases 2 to 4 carries (§2.1).

    ``X-Support-HTTP-Auth`` is deliberately absent: it makes a GSSAPI-enabled
    ocserv answer 401 Negotiate.
    """
    return [
        (b"Host", host.encode("idna") if not _is_ascii(host) else host.encode()),
        (b"User-Agent", user_agent.encode()),
        (b"Accept", b"*/*"),
        (b"Accept-Encoding", b"identity"),
        (b"X-Transcend-Version", b"1"),
        (b"X-Aggregate-Auth", b"1"),
    ]


def _is_ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)


class HttpConnection:
    """Client side of HTTP/1.1 on one connection (sans-IO, over h11).

    ``send_request`` returns bytes to write; feed what the peer sends to
    ``receive_data`` (``b""`` for EOF) and call ``next_response`` until it
    returns a response.  After a successful ``CONNECT`` the connection is
    ``switched`` and ``trailing_data`` holds the first CSTP bytes.
    """

    def __init__(self, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._max_body = max_body_bytes
        self._response: h11.Response | None = None
        self._body = bytearray()
        self.requests_sent = 0

    # -- state -------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """True when another request may be sent on this connection."""
        state = self._h11.our_state
        return state is h11.IDLE or (state is h11.DONE and self._h11.their_state is h11.DONE)

    @property
    def switched(self) -> bool:
        return self._h11.our_state is h11.SWITCHED_PROTOCOL

    @property
    def trailing_data(self) -> bytes:
        data, _closed = self._h11.trailing_data
        return bytes(data)

    # -- sending -----------------------------------------------------------

    def send_request(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes = b"",
    ) -> bytes:
        """Serialize one request; ``Content-Length`` is added when there is a body."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        if self._h11.our_state is not h11.IDLE:
            raise LocalProtocolError(
                f"cannot send {method}: connection is {self._h11.our_state.__name__}"
            )
        all_headers = list(headers)
        if body or method == "POST":
            all_headers.append((b"Content-Length", str(len(body)).encode()))
        try:
            out = self._h11.send(h11.Request(method=method, target=target, headers=all_headers))
            if body:
                out = (out or b"") + (self._h11.send(h11.Data(data=body)) or b"")
            # A CONNECT ends here too; h11 then waits for the 2xx that switches.
            out = (out or b"") + (self._h11.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"bad request {method} {target}: {exc}") from exc
        self.requests_sent += 1
        self._response = None
        self._body.clear()
        return out or b""

    # -- receiving -----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the connection; ``b""`` means the peer closed it."""
        try:
            self._h11.receive_data(data)
        except RuntimeError as exc:  # h11 refuses data after a close
            raise RemoteProtocolError(f"data after end of stream: {exc}") from exc

    def next_response_untrusted(self) -> HttpResponse | None:
        """A complete response, or None when more bytes are needed.

        Raises BadPacketError for malformed HTTP (bad status line, huge or
        broken headers, a body larger than allowed) and RemoteProtocolError
        when the peer closed the connection mid-response.
        """
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadPacketError(f"malformed HTTP response: {exc}") from exc
            if event is h11.NEED_DATA:
                return None
            if event is h11.PAUSED:
                # CONNECT succeeded: the response was complete at its headers.
                return self._finish()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                # h11 bounds an incomplete header block; bound a complete one too.
                size = sum(len(k) + len(v) + 4 for k, v in event.headers.raw_items())
                if size > MAX_HEADER_BYTES:
                    raise BadPacketError(f"response headers larger than {MAX_HEADER_BYTES} bytes")
                self._response = event
                if self._h11.their_state is h11.SWITCHED_PROTOCOL:
                    return self._finish()
                continue
            if isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._max_body:
                    raise BadPacketError(f"response body larger than {self._max_body} bytes")
                self._body += event.data
                continue
            if isinstance(event, h11.EndOfMessage):
                return self._finish()
            if isinstance(event, h11.ConnectionClosed):
                raise RemoteProtocolError("connection closed before a complete response")
            raise BadPacketError(f"unexpected HTTP event {type(event).__name__}")

    def _finish(self) -> HttpResponse:
        if self._response is None:
            raise BadPacketError("response ended before its status line")
        resp = HttpResponse(
            status=self._response.status_code,
            reason=self._response.reason.decode("latin-1", "replace"),
            headers=list(self._response.headers.raw_items()),
            body=bytes(self._body),
        )
        self._response = None
        self._body.clear()
        return resp
