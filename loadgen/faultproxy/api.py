"""The fault proxy's HTTP API: Toxiproxy v2's endpoints on trio + h11.

| method | path | answer |
|---|---|---|
| GET | /proxies | 200, ``{name: proxy}`` |
| POST | /proxies | 201, proxy (409 if the name exists) |
| POST | /populate | 201, ``{"proxies": [proxy, ...]}`` |
| GET | /proxies/{proxy} | 200, proxy |
| POST, PATCH | /proxies/{proxy} | 200, proxy (``enabled``, ``listen``, ``upstream``) |
| DELETE | /proxies/{proxy} | 204 |
| GET | /proxies/{proxy}/toxics | 200, ``[toxic, ...]`` |
| POST | /proxies/{proxy}/toxics | 200, toxic (Toxiproxy answers 200 here, not 201) |
| GET | /proxies/{proxy}/toxics/{toxic} | 200, toxic |
| POST, PATCH | /proxies/{proxy}/toxics/{toxic} | 200, toxic |
| DELETE | /proxies/{proxy}/toxics/{toxic} | 204 |
| POST | /reset | 204 |
| GET | /version | 200, ``{"version": "..."}`` |
| GET | /metrics | 200, Prometheus text (``loadgen_faultproxy_*``) |

Errors are ``{"error": "...", "status": N}`` with Toxiproxy's codes and messages
(400 bad body, 404 unknown proxy or toxic, 409 already exists, 500 cannot listen);
an unknown path is 404 and a known path with another method 405.  Like Toxiproxy,
requests whose User-Agent starts with ``Mozilla/`` get 403, so that a web page a
browser visits cannot drive the proxy.  Hostile input is bounded: heads of 64 KiB,
bodies of 1 MiB (413), 10 s to send a request once its first byte came (408, so a
slowloris cannot hold a slot), 10 s idle between requests (then the connection is
closed), 10 s to take an answer, and at most 64 connections at once (one more is
closed at once).  So idle or slow clients free their slots within about 10 s, and
a new client gets an answer again.  A bad request answers an error and never takes
the server down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loadgen import __version__
from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.model import ApiError, ProxySpec
from loadgen.faultproxy.registry import ProxyRegistry

__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "REQUEST_TIMEOUT_S",
    "SEND_TIMEOUT_S",
    "VERSION",
    "FaultProxyApi",
    "parse_json_untrusted",
]

log = logging.getLogger(__name__)

VERSION = f"{__version__} (loadgen faultproxy, Toxiproxy v2 API)"
MAX_BODY_BYTES = 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
# Toxiproxy has 15 s to read and 60 s idle; shorter here, so that a handful of idle
# keep-alive sockets cannot hold every slot for long
REQUEST_TIMEOUT_S = 10.0  # from a request's first byte to its end
IDLE_TIMEOUT_S = 10.0  # waiting for the next request's first byte
SEND_TIMEOUT_S = 10.0  # a client that does not read its answer
MAX_CONNECTIONS = 64
LINGER_S = 1.0  # after an error answer, how long to drain the client's rest
LINGER_BYTES = 4 * MAX_BODY_BYTES
_RECEIVE = 65536
_JSON = "application/json"
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, kw_only=True)
class _Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes


@dataclass(frozen=True, kw_only=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str = _JSON


class _HttpError(Exception):
    """The request cannot be read: answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(status: int, obj: object) -> _Response:
    return _Response(status=status, body=json.dumps(obj).encode() + b"\n")


def _error(status: int, message: str) -> _Response:
    return _json(status, {"error": message, "status": status})


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json_untrusted(body: bytes) -> object:
    """A request body as JSON; ApiError(400) (Toxiproxy's "bad request body") if not."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        reason = "EOF" if not body.strip() else str(exc)
        raise ApiError(400, f"bad request body: {reason}") from None


class FaultProxyApi:
    """The HTTP API over a :class:`ProxyRegistry`."""

    def __init__(self, registry: ProxyRegistry, metrics: FaultProxyMetrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port``, report the bound port, serve until cancelled.
        OSError (address in use) propagates before the start is reported."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        await trio.serve_listeners(self.handle_connection, listeners)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        try:
            try:
                self._limiter.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                log.warning("API: too many connections, refusing one")
                return
            try:
                await self._serve_connection(stream)
            finally:
                self._limiter.release_on_behalf_of(stream)
        except (*_STREAM_ERRORS, trio.TooSlowError):
            pass
        except Exception:  # one connection never takes the API down
            log.exception("API: unexpected error on a connection")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                request = await self._read_request(stream, conn)
            except _HttpError as exc:
                await self._send_error_and_close(stream, conn, exc.status, exc.message)
                await _linger(stream)
                return
            if request is None:
                return
            response = await self.dispatch(request)
            await self._send(stream, conn, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self, stream: trio.abc.Stream, conn: h11.Connection) -> _Request | None:
        """The next request; None when the client closes or stays idle too long.

        The idle timer runs until the request's first byte, then the request timer
        until its end (408), so a client sending a byte now and then cannot keep
        the connection for longer than both."""
        head: h11.Request | None = None
        body = bytearray()
        started = False

        def start() -> None:
            nonlocal started
            if not started:
                started = True
                scope.deadline = trio.current_time() + REQUEST_TIMEOUT_S

        with trio.move_on_after(IDLE_TIMEOUT_S) as scope:
            event = await self._next_event(stream, conn, start)
            start()
            while True:
                if isinstance(event, h11.Request):
                    head = event
                    length = dict(head.headers).get(b"content-length")
                    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
                        raise _HttpError(413, "request body too large")
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY_BYTES:
                        raise _HttpError(413, "request body too large")
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return _Request(
                        method=head.method.decode("ascii", "replace"),
                        path=head.target.decode("ascii", "replace").split("?", 1)[0],
                        headers=dict(head.headers),
                        body=bytes(body),
                    )
                else:  # ConnectionClosed, PAUSED
                    return None
                event = await self._next_event(stream, conn, start)
        if scope.cancelled_caught and started:
            raise _HttpError(408, "request timeout")
        return None  # idle: close quietly, as Toxiproxy's IdleTimeout does

    @staticmethod
    async def _next_event(
        stream: trio.abc.Stream, conn: h11.Connection, on_data: Callable[[], None]
    ) -> Any:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                raise _HttpError(status, f"malformed HTTP request: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            data = await stream.receive_some(_RECEIVE)
            if data:
                on_data()
            conn.receive_data(bytes(data))

    async def _send(self, stream: trio.abc.Stream, conn: h11.Connection, resp: _Response) -> None:
        headers: list[tuple[str, str]] = [("Server", "loadgen-faultproxy")]
        if resp.status != 204:
            headers += [
                ("Content-Type", resp.content_type),
                ("Content-Length", str(len(resp.body))),
            ]
        if conn.their_state is h11.MUST_CLOSE:
            headers.append(("Connection", "close"))
        reason = _REASONS.get(resp.status, "").encode()
        out = conn.send(h11.Response(status_code=resp.status, reason=reason, headers=headers))
        if resp.body and resp.status != 204:
            out = (out or b"") + (conn.send(h11.Data(data=resp.body)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        with trio.fail_after(SEND_TIMEOUT_S):  # TooSlowError ends the connection
            await stream.send_all(out)

    async def _send_error_and_close(
        self, stream: trio.abc.Stream, conn: h11.Connection, status: int, message: str
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        resp = _error(status, message)
        headers = [
            ("Content-Type", _JSON),
            ("Content-Length", str(len(resp.body))),
            ("Connection", "close"),
        ]
        try:
            out = conn.send(
                h11.Response(
                    status_code=status, reason=_REASONS.get(status, "").encode(), headers=headers
                )
            )
            out = (out or b"") + (conn.send(h11.Data(data=resp.body)) or b"")
            out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            return
        with trio.fail_after(SEND_TIMEOUT_S):
            await stream.send_all(out)

    # -- routing --------------------------------------------------------------------

    async def dispatch(self, req: _Request) -> _Response:
        """Answer one request (never raises)."""
        if req.headers.get(b"user-agent", b"").startswith(b"Mozilla/"):
            return _error(403, "User agent not allowed")
        try:
            handler = self._route(req)
            return await handler(req)
        except ApiError as exc:
            return _json(exc.status, exc.to_json())
        except Exception:
            log.exception("API: %s %s failed", req.method, _printable(req.path))
            return _error(500, "internal error")

    def _route(self, req: _Request) -> Callable[[_Request], Awaitable[_Response]]:
        parts = [unquote(p) for p in req.path.split("/")[1:]]
        table: dict[str, Callable[..., Awaitable[_Response]]]
        args: tuple[str, ...] = ()
        match parts:
            case ["proxies"]:
                table = {"GET": self._proxy_index, "POST": self._proxy_create}
            case ["populate"]:
                table = {"POST": self._populate}
            case ["reset"]:
                table = {"POST": self._reset}
            case ["version"]:
                table = {"GET": self._version}
            case ["metrics"]:
                table = {"GET": self._metrics}
            case ["proxies", proxy] if proxy:
                table = {
                    "GET": self._proxy_show,
                    "POST": self._proxy_update,
                    "PATCH": self._proxy_update,
                    "DELETE": self._proxy_delete,
                }
                args = (proxy,)
            case ["proxies", proxy, "toxics"] if proxy:
                table = {"GET": self._toxic_index, "POST": self._toxic_create}
                args = (proxy,)
            case ["proxies", proxy, "toxics", toxic] if proxy and toxic:
                table = {
                    "GET": self._toxic_show,
                    "POST": self._toxic_update,
                    "PATCH": self._toxic_update,
                    "DELETE": self._toxic_delete,
                }
                args = (proxy, toxic)
            case _:
                raise ApiError(404, "not found")
        handler = table.get(req.method)
        if handler is None:
            raise ApiError(405, "method not allowed")

        async def bound(r: _Request) -> _Response:
            return await handler(r, *args)

        return bound

    async def _proxy_index(self, req: _Request) -> _Response:
        return _json(200, self.registry.proxies_json())

    async def _proxy_create(self, req: _Request) -> _Response:
        spec = ProxySpec.from_json_untrusted(parse_json_untrusted(req.body))
        return _json(201, await self.registry.create(spec))

    async def _populate(self, req: _Request) -> _Response:
        body = parse_json_untrusted(req.body)
        if not isinstance(body, list):
            raise ApiError(400, "bad request body: expected a JSON list of proxies")
        specs = []
        for i, item in enumerate(body, 1):
            try:
                specs.append(ProxySpec.from_json_untrusted(item))
            except ApiError as exc:
                raise ApiError(exc.status, f"{exc.message} at proxy {i}") from None
        try:
            proxies = await self.registry.populate(specs)
        except ApiError as exc:
            return _json(exc.status, exc.to_json())
        return _json(201, {"proxies": proxies})

    async def _reset(self, req: _Request) -> _Response:
        await self.registry.reset()
        return _Response(status=204)

    async def _version(self, req: _Request) -> _Response:
        return _Response(
            status=200,
            body=json.dumps({"version": VERSION}).encode() + b"\n",
            content_type="application/json;charset=utf-8",
        )

    async def _metrics(self, req: _Request) -> _Response:
        return _Response(
            status=200,
            body=generate_latest(self.metrics.registry),
            content_type=CONTENT_TYPE_LATEST,
        )

    async def _proxy_show(self, req: _Request, proxy: str) -> _Response:
        return _json(200, self.registry.proxy_json(proxy))

    async def _proxy_update(self, req: _Request, proxy: str) -> _Response:
        self.registry.proxy_json(proxy)  # 404 before looking at the body, as Toxiproxy
        return _json(200, await self.registry.update(proxy, parse_json_untrusted(req.body)))

    async def _proxy_delete(self, req: _Request, proxy: str) -> _Response:
        await self.registry.delete(proxy)
        return _Response(status=204)

    async def _toxic_index(self, req: _Request, proxy: str) -> _Response:
        return _json(200, self.registry.toxics_json(proxy))

    async def _toxic_create(self, req: _Request, proxy: str) -> _Response:
        self.registry.proxy_json(proxy)
        return _json(200, self.registry.add_toxic(proxy, parse_json_untrusted(req.body)))

    async def _toxic_show(self, req: _Request, proxy: str, toxic: str) -> _Response:
        return _json(200, self.registry.toxic_json(proxy, toxic))

    async def _toxic_update(self, req: _Request, proxy: str, toxic: str) -> _Response:
        self.registry.toxic_json(proxy, toxic)
        body = parse_json_untrusted(req.body)
        return _json(200, self.registry.update_toxic(proxy, toxic, body))

    async def _toxic_delete(self, req: _Request, proxy: str, toxic: str) -> _Response:
        self.registry.remove_toxic(proxy, toxic)
        return _Response(status=204)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read and drop what the client still sends, for a bounded while:
    closing with unread data would send RST, and the client could lose our answer."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_S):
        await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES and (data := await stream.receive_some(_RECEIVE)):
            drained += len(data)


def _printable(text: str) -> str:
    return text[:200].encode("ascii", "backslashreplace").decode()
