"""The server side of HTTP/1.1 on one connection, over h11 (protocol.md §2.1, §4).

The gateway's counterpart of the client's ``HttpConnection``: feed it the
bytes a client sends, take whole requests out, and get back the bytes of
each answer.  Every client is hostile, so the request reader bounds what it
keeps (a 16 KiB head, a 64 KiB body) and turns any malformed HTTP into one
``BadRequestError`` carrying the ``loadgen_gateway_dropped_total`` reason.
The trio shell only moves bytes and applies the timeout; when the timeout
strikes, ``mid_request`` says whether the client was stalling (slowloris)
or merely idle between requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import h11

from loadgen.proto.errors import BadPacketError, LocalProtocolError
from loadgen.proto.http import Headers, request_cookies

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "BadRequestError",
    "ClientClosed",
    "HttpRequest",
    "HttpServerConnection",
    "printable",
]

#: A request head larger than this is hostile (real ones are below 2 KiB).
MAX_HEADER_BYTES: Final = 16 * 1024
#: Auth documents are a few hundred bytes.
MAX_BODY_BYTES: Final = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class HttpRequest:
    """A whole request: ``method`` and ``target`` decoded, headers as h11 gave them."""

    method: str
    target: str
    headers: Headers = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def cookies(self) -> dict[str, str]:
        return request_cookies(self.headers)


@dataclass(frozen=True, kw_only=True)
class ClientClosed:
    """The client ended the connection between requests (or gave it up to another protocol)."""


class BadRequestError(BadPacketError):
    """Malformed HTTP: the connection gets a 400 and ends; ``drop_label`` is the metric reason."""

    def __init__(self, message: str, *, drop_label: str = "http_malformed") -> None:
        super().__init__(message)
        self.drop_label = drop_label


def printable(text: str, limit: int = 80) -> str:
    """Client-chosen text, safe and short enough for a log line."""
    return ascii(text[:limit])[1:-1]


class HttpServerConnection:
    """Server side of HTTP/1.1 on one connection (sans-IO, over h11).

    Loop: ``next_request_untrusted``; on None, ``receive_data`` (``b""`` at
    EOF) and ask again.  Answer with ``respond`` (or ``refuse`` after a
    ``BadRequestError``), then ``next_cycle`` says whether another request
    may follow.  ``switch_protocol`` answers a CONNECT and hands back the
    bytes the client sent after it.
    """

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._request: h11.Request | None = None
        self._body = bytearray()

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client; ``b""`` means it closed its side."""
        self._h11.receive_data(data)

    def next_request_untrusted(self) -> HttpRequest | ClientClosed | None:
        """A whole request, ``ClientClosed``, or None when more bytes are needed."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequestError(f"malformed HTTP: {exc}") from None
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Request):
                # h11 bounds an incomplete head only; one that came whole is bounded here
                size = len(event.target) + sum(
                    len(k) + len(v) + 4 for k, v in event.headers.raw_items()
                )
                if size > MAX_HEADER_BYTES:
                    raise BadRequestError(
                        f"malformed HTTP: request head over {MAX_HEADER_BYTES} bytes"
                    )
                self._request = event
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY_BYTES:
                    raise BadRequestError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return self._finish()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return ClientClosed()

    @property
    def mid_request(self) -> bool:
        """Whether part of a request has arrived: a timeout now is a stalling client."""
        # h11 stays IDLE until a whole head arrived: a partial one is still in its buffer
        state = self._h11.their_state
        started = self._request is not None or state not in (h11.IDLE, h11.CLOSED)
        return started or bool(self._h11.trailing_data[0])

    def _finish(self) -> HttpRequest:
        request = self._request
        if request is None:  # h11 never ends a message it did not start
            raise LocalProtocolError("end of a request that never began")
        self._request = None
        body = bytes(self._body)
        self._body.clear()
        return HttpRequest(
            method=request.method.decode("ascii", "replace"),
            target=request.target.decode("ascii", "replace"),
            headers=list(request.headers.raw_items()),
            body=body,
        )

    # -- answering --------------------------------------------------------------------

    def respond(
        self,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        close: bool = False,
    ) -> bytes:
        """One whole response: ``Content-Length`` first, ``Connection: close`` last if ``close``."""
        all_headers = [("Content-Length", str(len(body))), *headers]
        if close:
            all_headers.append(("Connection", "close"))
        try:
            out = self._h11.send(
                h11.Response(status_code=status, reason=reason.encode(), headers=all_headers)
            )
            if body:
                out = (out or b"") + (self._h11.send(h11.Data(data=body)) or b"")
            out = (out or b"") + (self._h11.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot answer {status} {reason}: {exc}") from exc
        return out

    def refuse(self, status: int, reason: str) -> bytes:
        """A closing answer after bad input, or ``b""`` when none can be sent any more."""
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        try:
            return self.respond(status, reason, close=True)
        except LocalProtocolError:
            return b""

    def switch_protocol(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, bytes]:
        """The 2xx answer to a CONNECT, and the bytes that followed the request (§4)."""
        try:
            head = self._h11.send(
                h11.Response(status_code=status, reason=reason.encode(), headers=headers)
            )
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot answer the CONNECT: {exc}") from exc
        leftover, _closed = self._h11.trailing_data
        return head or b"", bytes(leftover)

    def next_cycle(self) -> bool:
        """After an answer: True when the connection may carry another request."""
        if self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state is h11.MUST_CLOSE:
            return False
        self._h11.start_next_cycle()
        return True
