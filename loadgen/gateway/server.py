"""The reference gateway's server: TLS listener, HTTP over h11, CONNECT, DTLS.

One trio task per TLS connection.  Every client's input is hostile: a bad
handshake, malformed HTTP, huge headers, broken XML or a stalled client ends
that connection alone, with a log line and a ``loadgen_gateway_dropped_total``
reason, and never disturbs other sessions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import h11
import trio

from loadgen.gateway.config import AddressPool, GatewayConfig, PoolExhaustedError
from loadgen.gateway.dtls_endpoint import DropReason, DtlsEndpoint, EndpointStats
from loadgen.gateway.tunnel import SessionRecord, TunnelSession
from loadgen.metrics.gateway import GatewayMetrics
from loadgen.proto.auth_server import AuthServer
from loadgen.proto.dtls import KNOWN_DTLS_CIPHERS, DtlsSession, lookup_cipher
from loadgen.proto.errors import BadPacketError
from loadgen.proto.tunnel import (
    DEFAULT_DTLS12_PRIORITIES,
    DEFAULT_LEGACY_PRIORITIES,
    ConnectRequest,
    NoSessionCookieError,
    TunnelParams,
    choose_dtls_cipher,
)

__all__ = ["Gateway"]

log = logging.getLogger("loadgen.gateway")
RECEIVE_CHUNK = 65536
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
AUTH_PATHS = frozenset({"/", "/auth", "/VPN"})

#: ocserv's preferences (§6), extended to every suite our DTLS implements, so
#: any single-cipher offer of a client gets an answer.
GATEWAY_LEGACY_PRIORITIES = {
    **{k: v for k, v in DEFAULT_LEGACY_PRIORITIES.items() if k in KNOWN_DTLS_CIPHERS},
    "DHE-RSA-AES256-SHA": 20,
    "DHE-RSA-AES128-SHA": 10,
}
GATEWAY_DTLS12_PRIORITIES = {
    **DEFAULT_DTLS12_PRIORITIES,
    "AES256-SHA": 40,
    "AES128-SHA": 30,
    "DHE-RSA-AES256-SHA": 20,
    "DHE-RSA-AES128-SHA": 10,
}


#: AuthServer error labels that are refused input (``dropped`` reasons) ...
_AUTH_DROPS = {
    "malformed_xml": "xml_malformed",
    "not_found": "http_not_found",
    "bad_method": "http_malformed",
}
#: ... and those that are refused logins (``auth_failures`` reasons)
_AUTH_FAILURES = {
    "login_failed": "wrong_password",
    "auth_failed": "wrong_password",
    "no_password": "no_password",
    "too_many_pending": "too_many_pending",
}


#: the endpoint's datagram drops that are hostile or stray client input, as
#: ``dropped`` reasons.  BAD_RECORD is left out: it also counts the benign
#: duplicates of a retransmitted handshake flight.
_DTLS_DROPS = {
    DropReason.GARBAGE: "dtls_garbage",
    DropReason.NOT_CLIENT_HELLO: "dtls_garbage",
    DropReason.ZERO_RANDOM: "dtls_garbage",
    DropReason.OVERSIZE: "dtls_garbage",
    DropReason.BAD_FRAME: "dtls_garbage",
    DropReason.UNKNOWN_SESSION: "dtls_unknown_session",
    DropReason.TOO_SOON: "dtls_too_soon",
}


class _ExportedDrops(dict[DropReason, int]):
    """``EndpointStats.dropped`` that also feeds ``loadgen_gateway_dropped_total``.

    The endpoint counts with ``dropped[reason] += 1``.  A log line goes out on
    the 1st, 2nd, 4th, 8th... drop of a reason: a flood cannot flood the log.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__(dict.fromkeys(DropReason, 0))
        self._metrics = metrics

    def __setitem__(self, key: DropReason, value: int) -> None:
        delta = value - self.get(key, 0)
        super().__setitem__(key, value)
        label = _DTLS_DROPS.get(key)
        if label is None or delta <= 0:
            return
        self._metrics.dropped.labels(label).inc(delta)
        if value & (value - 1) == 0:
            log.info("dropped a DTLS datagram: %s (%d so far)", key, value)


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _HttpError(Exception):
    def __init__(self, drop_reason: str, message: str) -> None:
        super().__init__(message)
        self.drop_reason = drop_reason


class Gateway:
    """Serve with ``await nursery.start(gateway.serve)``; ``port`` is set once it listens."""

    def __init__(
        self,
        config: GatewayConfig,
        ssl_context: ssl.SSLContext,
        metrics: GatewayMetrics,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self._ssl = ssl_context
        self.metrics = metrics
        self._random = random_bytes
        self._auth = AuthServer(config.auth, random_bytes=random_bytes)
        self.pool = AddressPool(config.pool)
        #: cookie -> record
        self._records: dict[str, SessionRecord] = {}
        #: X-DTLS-Session-ID -> live tunnel
        self._by_dtls_id: dict[bytes, TunnelSession] = {}
        self._tunnels: set[TunnelSession] = set()
        self.port = 0
        self.udp_port = 0
        self.dtls_stats = EndpointStats(dropped=_ExportedDrops(metrics))
        self._legacy_prefs = _prefs(config.dtls_ciphers, GATEWAY_LEGACY_PRIORITIES)
        self._dtls12_prefs = _prefs(config.dtls12_ciphers, GATEWAY_DTLS12_PRIORITIES)

    @property
    def tunnels_active(self) -> int:
        return len(self._tunnels)

    # -- serving ----------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(
            self.config.port, host=self.config.host, backlog=4096
        )
        self.port = listeners[0].socket.getsockname()[1]
        udp = trio.socket.socket(listeners[0].socket.family, socket.SOCK_DGRAM)
        # one socket carries every session's DTLS: a ramp of hundreds of
        # handshakes per second overflows the default buffer (each drop costs a
        # client retransmission of 1 s or more)
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        try:
            if self.config.dtls:
                await udp.bind((self.config.host, self.port))
                self.udp_port = self.port
            async with trio.open_nursery() as nursery:
                if self.config.dtls:
                    endpoint = DtlsEndpoint(
                        udp,
                        lookup=self._by_dtls_id.get,
                        random_bytes=self._random,
                        dpd_s=float(self.config.dpd_s),
                        stats=self.dtls_stats,
                    )
                    nursery.start_soon(endpoint.run)
                nursery.start_soon(self._expire_records)
                await nursery.start(trio.serve_listeners, self._handle_tcp, listeners)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            # By now every connection task has ended: a graceful stop calls
            # terminate_tunnels() before cancelling serve().
            udp.close()

    async def terminate_tunnels(self) -> None:
        """Send TERMINATE on every tunnel and end it (graceful stop, §5.4).

        Call before cancelling ``serve``: cancelling alone just drops the TLS
        connections, which clients see as a reset.  Each tunnel bounds its own
        send (1 s).
        """
        async with trio.open_nursery() as nursery:
            for tunnel in list(self._tunnels):
                nursery.start_soon(tunnel.terminate)

    async def _expire_records(self) -> None:
        while True:
            await trio.sleep(5.0)
            now = trio.current_time()
            for cookie, record in list(self._records.items()):
                if record.tunnel is None and record.expires_at <= now:
                    self._forget(cookie)

    def _forget(self, cookie: str) -> None:
        record = self._records.pop(cookie, None)
        if record is not None and record.address is not None:
            self.pool.release(record.address)

    async def _handle_tcp(self, tcp: trio.SocketStream) -> None:
        self.metrics.connections_active.inc()
        stream = trio.SSLStream(tcp, self._ssl, server_side=True)
        try:
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # the client went away while we answered: its business, not a bug
            log.debug("a client connection broke: %s", _short(exc))
        except Exception:  # one connection never takes the gateway down
            log.exception("unexpected error on a client connection")
        finally:
            self.metrics.connections_active.dec()
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        if self.config.delay_tls_ms:
            await trio.sleep(self.config.delay_tls_ms / 1000)
        with trio.move_on_after(self.config.handshake_timeout_s) as scope:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                log.info("refused a connection: TLS handshake failed (%s)", _short(exc))
                self.metrics.handshakes.labels("tls", "failed").inc()
                self.metrics.dropped.labels("tls_handshake").inc()
                return
        if scope.cancelled_caught:
            log.info(
                "refused a connection: no TLS handshake within %gs", self.config.handshake_timeout_s
            )
            self.metrics.handshakes.labels("tls", "failed").inc()
            self.metrics.dropped.labels("stalled").inc()
            return
        self.metrics.handshakes.labels("tls", "ok").inc()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            try:
                request = await self._read_request(stream, conn)
            except _HttpError as exc:
                log.info("closed a connection: %s", exc)
                self.metrics.dropped.labels(exc.drop_reason).inc()
                await self._send_error(stream, conn, 400, "Bad Request")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                return
            if request is None:
                return
            keep_going = await self._route(stream, conn, request)
            if not keep_going:
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection
    ) -> _Request | None:
        request: h11.Request | None = None
        body = bytearray()
        with trio.move_on_after(self.config.request_timeout_s) as scope:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise _HttpError("http_malformed", f"malformed HTTP: {exc}") from None
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECEIVE_CHUNK)
                    conn.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY_BYTES:
                        raise _HttpError("http_malformed", "request body too large")
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    return _Request(
                        method=request.method.decode("ascii", "replace"),
                        target=request.target.decode("ascii", "replace"),
                        headers=list(request.headers.raw_items()),
                        body=bytes(body),
                    )
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return None
        if scope.cancelled_caught:
            # h11 stays IDLE until a whole head arrived: a partial one is
            # still in its buffer
            started = request is not None or conn.their_state is not h11.IDLE
            if started or conn.trailing_data[0]:
                log.info("closed a connection: client stalled mid-request")
                self.metrics.dropped.labels("stalled").inc()
            return None
        return None

    async def _send(  # noqa: PLR0917
        self,
        stream: trio.SSLStream[trio.SocketStream],
        conn: h11.Connection,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        close: bool = False,
    ) -> None:
        all_headers = [("Content-Length", str(len(body))), *headers]
        if close:
            all_headers.append(("Connection", "close"))
        out = conn.send(
            h11.Response(status_code=status, reason=reason.encode(), headers=all_headers)
        )
        if body:
            out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)

    async def _send_error(
        self,
        stream: trio.SSLStream[trio.SocketStream],
        conn: h11.Connection,
        status: int,
        reason: str,
    ) -> None:
        try:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send(stream, conn, status, reason, [], close=True)
        except (
            h11.LocalProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
        ):
            pass

    # -- routing -----------------------------------------------------------------

    async def _route(
        self, stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection, req: _Request
    ) -> bool:
        """Answer one request; False when the connection must end."""
        path = req.target.split("?", 1)[0]
        if req.method == "CONNECT":
            return await self._connect(stream, conn, req)
        if req.method == "POST" and path in AUTH_PATHS:
            return await self._auth_request(stream, conn, req)
        if req.method == "GET" and path.startswith("/profiles"):
            return await self._profile(stream, conn, req)
        log.info("refused a request: %s %s: not found", req.method, _printable(path))
        self.metrics.dropped.labels("http_not_found").inc()
        await self._send(stream, conn, 404, "Not found", [], close=True)
        return False

    async def _auth_request(
        self, stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection, req: _Request
    ) -> bool:
        if self.config.delay_auth_ms:
            await trio.sleep(self.config.delay_auth_ms / 1000)
        answer = self._auth.handle(
            method=req.method,
            path=req.target,
            cookies=_cookies(req.headers),
            body=req.body,
            now=trio.current_time(),
        )
        label = answer.error_label
        if label in _AUTH_DROPS:
            self.metrics.dropped.labels(_AUTH_DROPS[label]).inc()
            log.info("refused an auth request: %s", label)
        elif label in _AUTH_FAILURES:
            # a refused login is an outcome, not malformed input
            self.metrics.auth_failures.labels(_AUTH_FAILURES[label]).inc()
            log.info("login refused: %s", label)
        if answer.success is not None:
            ok = answer.success
            self._records[ok.cookie] = SessionRecord(
                username=ok.username,
                group=ok.group,
                cookie=ok.cookie,
                expires_at=trio.current_time() + self.config.cookie_timeout_s,
            )
        await self._send(
            stream,
            conn,
            answer.status,
            answer.reason,
            list(answer.headers),
            answer.body,
            close=answer.close,
        )
        return not answer.close

    def _record_for(self, req: _Request) -> SessionRecord | None:
        cookie = _cookies(req.headers).get("webvpn")
        if not cookie:
            return None
        record = self._records.get(cookie)
        if record is None:
            return None
        if record.tunnel is None and record.expires_at <= trio.current_time():
            self._forget(cookie)
            return None
        return record

    async def _profile(
        self, stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection, req: _Request
    ) -> bool:
        profile = self.config.auth.profile
        if self._record_for(req) is None:
            log.info("refused a profile download: unknown, expired or logged-out cookie")
            self.metrics.dropped.labels("cookie_rejected").inc()
            await self._send(stream, conn, 401, "Unauthorized", [], close=True)
            return False
        path = req.target.split("?", 1)[0]
        if profile is None or self.profile_body is None or path != profile.uri:
            log.info("refused a profile download: %s: not found", _printable(path))
            self.metrics.dropped.labels("http_not_found").inc()
            await self._send(stream, conn, 404, "Not found", [], close=True)
            return False
        await self._send(stream, conn, 200, "OK", [("Content-Type", "text/xml")], self.profile_body)
        return True

    #: the profile's bytes, set by the CLI together with ``config.auth.profile``
    profile_body: bytes | None = None

    async def _connect(
        self, stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection, req: _Request
    ) -> bool:
        if self.config.delay_connect_ms:
            await trio.sleep(self.config.delay_connect_ms / 1000)
        if req.target != "/CSCOSSLC/tunnel":
            log.info("refused a CONNECT to %s: not found", _printable(req.target))
            self.metrics.dropped.labels("http_not_found").inc()
            await self._send(stream, conn, 404, "Not found", [], close=True)
            return False
        try:
            creq = ConnectRequest.from_headers_untrusted(req.headers)
        except BadPacketError as exc:
            log.info("refused a CONNECT: %s", exc)
            no_cookie = isinstance(exc, NoSessionCookieError)
            self.metrics.dropped.labels("cookie_rejected" if no_cookie else "http_malformed").inc()
            await self._send(stream, conn, 503, "Service Unavailable", [], close=True)
            return False
        record = self._record_for(req)
        if record is not None and record.tunnel is not None:
            # a new CONNECT with a cookie in use replaces the old tunnel, as
            # ocserv does ("session re-use"): the client reconnected
            await record.tunnel.terminate()
        if record is None:
            log.info("refused a CONNECT: unknown, expired or logged-out cookie")
            self.metrics.dropped.labels("cookie_rejected").inc()
            self.metrics.sessions.labels("rejected").inc()
            await self._send(stream, conn, 401, "Cookie is not acceptable", [], close=True)
            return False
        if self.config.max_sessions is not None and len(self._tunnels) >= self.config.max_sessions:
            log.info("refused a CONNECT: %d sessions already", len(self._tunnels))
            self.metrics.dropped.labels("max_sessions").inc()
            self.metrics.sessions.labels("rejected").inc()
            await self._send(
                stream,
                conn,
                503,
                "Service Unavailable",
                [("X-Reason", "Too many sessions")],
                close=True,
            )
            return False
        try:
            if record.address is None:
                record.address = self.pool.allocate()
        except PoolExhaustedError:
            log.warning("refused a CONNECT: the address pool is exhausted")
            self.metrics.dropped.labels("max_sessions").inc()
            await self._send(
                stream,
                conn,
                503,
                "Service Unavailable",
                [("X-Reason", "No address available")],
                close=True,
            )
            return False
        params, dtls_session = self._tunnel_params(creq, record)
        tunnel = TunnelSession(
            record=record,
            stream=stream,
            gateway_address=self.pool.gateway,
            dtls_session=dtls_session,
            dpd_s=float(self.config.dpd_s),
            keepalive_s=0.0,
            metrics=self.metrics,
        )
        head = conn.send(
            h11.Response(
                status_code=200,
                reason=b"CONNECTED",
                headers=[(k.decode(), v.decode()) for k, v in params.to_headers()],
            )
        )
        leftover, _closed = conn.trailing_data
        record.tunnel = tunnel
        self._tunnels.add(tunnel)
        if dtls_session is not None:
            self._by_dtls_id[dtls_session.session_id] = tunnel
        self.metrics.sessions.labels("established").inc()
        try:
            await stream.send_all(head or b"")
            await tunnel.run(bytes(leftover))
        finally:
            self._tunnels.discard(tunnel)
            if dtls_session is not None:
                self._by_dtls_id.pop(dtls_session.session_id, None)
            self.metrics.sessions.labels("closed").inc()
            if record.tunnel is tunnel:  # not replaced by a newer CONNECT
                record.tunnel = None
                if tunnel.cookie_invalidated:
                    self._forget(record.cookie)
                else:
                    record.expires_at = trio.current_time() + self.config.cookie_timeout_s
        return False

    def _tunnel_params(
        self, creq: ConnectRequest, record: SessionRecord
    ) -> tuple[TunnelParams, DtlsSession | None]:
        cfg = self.config
        dtls_session: DtlsSession | None = None
        extra: dict[str, object] = {}
        choice = (
            choose_dtls_cipher(
                creq, legacy_prefs=self._legacy_prefs, dtls12_prefs=self._dtls12_prefs
            )
            if cfg.dtls
            else None
        )
        if choice is not None and creq.dtls_master_secret is not None:
            name, header = choice
            session_id = self._random(32)
            dtls_session = DtlsSession(
                session_id=session_id,
                master_secret=creq.dtls_master_secret,
                cipher=lookup_cipher(header, name),
            )
            extra = {
                "dtls_port": self.udp_port,
                "dtls_session_id": session_id,
                "dtls_cipher": name,
                "dtls_cipher_header": header,
                "dtls_mtu": cfg.dtls_mtu or cfg.mtu,
                "dtls_dpd_s": cfg.dpd_s,
                "dtls_keepalive_s": cfg.keepalive_s,
            }
        params = TunnelParams(
            version=1,
            server_name=cfg.server_name,
            hostname=creq.hostname,
            address=record.address,
            netmask=self.pool.netmask,
            dns=cfg.dns,
            mtu=cfg.mtu,
            base_mtu=creq.base_mtu,
            cstp_dpd_s=cfg.dpd_s,
            cstp_keepalive_s=cfg.keepalive_s,
            **extra,  # type: ignore[arg-type]
        )
        return params, dtls_session


def _prefs(names: tuple[str, ...] | None, default: Mapping[str, int]) -> dict[str, int]:
    """Server preference from an ordered list (best first), or the default table."""
    if names is None:
        return dict(default)
    return {name: len(names) - i for i, name in enumerate(names)}


def _cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            name, sep, val = part.strip().partition("=")
            if sep and name:
                out[name] = val
    return out


def _printable(text: str, limit: int = 80) -> str:
    """Client-chosen text, safe and short enough for a log line."""
    return ascii(text[:limit])[1:-1]


def _short(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or type(exc).__name__
