"""The reference gateway's server: TLS listener, HTTP over h11, CONNECT, DTLS.

One trio task per TLS connection.  Every client's input is hostile: a bad
handshake, malformed HTTP, huge headers, broken XML or a stalled client ends
that connection alone, with a log line and a ``loadgen_gateway_dropped_total``
reason, and never disturbs other sessions.

This module only moves bytes and applies timeouts.  The decisions are the
sans-IO roles of ``loadgen.proto``: the request reader (``http_server``),
aggregate auth (``auth_server``), CONNECT admission and the cookie records
(``admission``), all in the configured personality's way
(``loadgen.proto.personality``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import trio

from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.dtls_endpoint import DropReason, DtlsEndpoint, EndpointStats
from loadgen.gateway.tunnel import TunnelSession
from loadgen.metrics.gateway import GatewayMetrics
from loadgen.proto.admission import AddressPool, ConnectAdmission, Refused, SessionTable
from loadgen.proto.auth_server import AuthServer
from loadgen.proto.http_server import (
    BadRequestError,
    HttpRequest,
    HttpServerConnection,
    printable,
)
from loadgen.proto.personality import personality_for
from loadgen.proto.personality.base import Answer, Route
from loadgen.proto.tunnel import SESSION_COOKIE

__all__ = ["Gateway", "peer_common_name", "request_client_certificates"]

log = logging.getLogger("loadgen.gateway")
RECEIVE_CHUNK = 65536

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
    "no_certificate": "no_certificate",
    "cert_user_mismatch": "cert_user_mismatch",
    "otp_failed": "wrong_otp",
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


Stream = trio.SSLStream[trio.SocketStream]


def request_client_certificates(ctx: ssl.SSLContext, client_ca: Path) -> None:
    """Ask every TLS client for a certificate chaining to ``client_ca`` (certificate modes).

    ``CERT_OPTIONAL``, as ocserv asks: a handshake without one still succeeds
    and the auth answer says what is missing (401 No certificate); one that
    does not verify fails the handshake.  Only ``client_ca`` is trusted: the
    system's CAs are never loaded into a server context here.
    """
    ctx.load_verify_locations(cafile=client_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL


def peer_common_name(stream: Stream) -> str | None:
    """The verified client certificate's first subject CN (ocserv's ``cert-user-oid = 2.5.4.3``).

    None without a certificate; ``""`` for one without a CN.
    """
    cert = stream.getpeercert()
    if not cert:
        # None: no certificate.  {}: one that was not verified (CERT_NONE), so no user
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                return value
    return ""


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
        self.personality = personality_for(config.personality)
        self._auth = AuthServer(
            config.auth, personality=self.personality, random_bytes=random_bytes
        )
        self.pool = AddressPool(config.pool)
        self._admission = ConnectAdmission(
            personality=self.personality,
            settings=config.tunnel_settings(),
            pool=self.pool,
            random_bytes=random_bytes,
        )
        #: cookie -> record
        self._records: SessionTable[TunnelSession] = SessionTable(
            self.pool, cookie_timeout_s=config.cookie_timeout_s
        )
        #: X-DTLS-Session-ID -> live tunnel
        self._by_dtls_id: dict[bytes, TunnelSession] = {}
        self._tunnels: set[TunnelSession] = set()
        self.port = 0
        self.udp_port = 0
        self.dtls_stats = EndpointStats(dropped=_ExportedDrops(metrics))

    @property
    def tunnels_active(self) -> int:
        return len(self._tunnels)

    @property
    def cookies_live(self) -> int:
        """Session cookies the gateway still honours (logged-out ones are gone)."""
        return len(self._records)

    def tunnel_users(self) -> list[str]:
        """The user of each live tunnel."""
        return [t.record.username for t in self._tunnels]

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
            self._records.expire(trio.current_time())

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

    async def _serve_connection(self, stream: Stream) -> None:
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
        conn = HttpServerConnection()
        while True:
            try:
                request = await self._read_request(stream, conn)
            except BadRequestError as exc:
                log.info("closed a connection: %s", exc)
                self.metrics.dropped.labels(exc.drop_label).inc()
                line = self.personality.answer(Answer.BAD_REQUEST)
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await stream.send_all(conn.refuse(line.status, line.reason))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                return
            if request is None:
                return
            if not await self._route(stream, conn, request) or not conn.next_cycle():
                return

    async def _read_request(self, stream: Stream, conn: HttpServerConnection) -> HttpRequest | None:
        """The next request; None when the client closed, went idle or stalled."""
        with trio.move_on_after(self.config.request_timeout_s) as scope:
            while True:
                event = conn.next_request_untrusted()
                if event is None:
                    conn.receive_data(bytes(await stream.receive_some(RECEIVE_CHUNK)))
                    continue
                return event if isinstance(event, HttpRequest) else None
        if scope.cancelled_caught and conn.mid_request:
            log.info("closed a connection: client stalled mid-request")
            self.metrics.dropped.labels("stalled").inc()
        return None

    async def _answer(
        self, stream: Stream, conn: HttpServerConnection, kind: Answer, body: bytes = b""
    ) -> None:
        """A personality's documentless answer; all but a download's close the connection."""
        line = self.personality.answer(kind)
        close = kind is not Answer.DOWNLOADED
        await stream.send_all(
            conn.respond(line.status, line.reason, line.headers, body, close=close)
        )

    # -- routing -----------------------------------------------------------------

    async def _route(self, stream: Stream, conn: HttpServerConnection, req: HttpRequest) -> bool:
        """Answer one request; False when the connection must end."""
        route = self.personality.route(req.method, req.path)
        if route is Route.CONNECT:
            return await self._connect(stream, conn, req)
        if route is Route.AUTH:
            return await self._auth_request(stream, conn, req)
        if route is Route.DOWNLOAD:
            return await self._download(stream, conn, req)
        log.info("refused a request: %s %s: not found", req.method, printable(req.path))
        self.metrics.dropped.labels("http_not_found").inc()
        await self._answer(stream, conn, Answer.NOT_FOUND)
        return False

    async def _auth_request(
        self, stream: Stream, conn: HttpServerConnection, req: HttpRequest
    ) -> bool:
        if self.config.delay_auth_ms:
            await trio.sleep(self.config.delay_auth_ms / 1000)
        answer = self._auth.handle(
            method=req.method,
            path=req.target,
            cookies=req.cookies(),
            body=req.body,
            now=trio.current_time(),
            peer_cn=peer_common_name(stream),
            unix_now=time.time(),  # TOTP counts steps from the epoch; trio's clock does not
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
            self._records.add(answer.success, trio.current_time())
        await stream.send_all(
            conn.respond(
                answer.status, answer.reason, answer.headers, answer.body, close=answer.close
            )
        )
        return not answer.close

    async def _download(self, stream: Stream, conn: HttpServerConnection, req: HttpRequest) -> bool:
        profile = self.config.auth.profile
        cookie = req.cookies().get(SESSION_COOKIE)
        if self._records.lookup(cookie, trio.current_time()) is None:
            log.info("refused a profile download: unknown, expired or logged-out cookie")
            self.metrics.dropped.labels("cookie_rejected").inc()
            await self._answer(stream, conn, Answer.DOWNLOAD_UNAUTHORIZED)
            return False
        if profile is None or self.profile_body is None or req.path != profile.uri:
            log.info("refused a profile download: %s: not found", printable(req.path))
            self.metrics.dropped.labels("http_not_found").inc()
            await self._answer(stream, conn, Answer.NOT_FOUND)
            return False
        await self._answer(stream, conn, Answer.DOWNLOADED, self.profile_body)
        return True

    #: the profile's bytes, set by the CLI together with ``config.auth.profile``
    profile_body: bytes | None = None

    async def _connect(self, stream: Stream, conn: HttpServerConnection, req: HttpRequest) -> bool:
        if self.config.delay_connect_ms:
            await trio.sleep(self.config.delay_connect_ms / 1000)
        decision = self._admission.decide(
            req,
            sessions=self._records,
            tunnels_active=len(self._tunnels),
            dtls_port=self.udp_port,
            now=trio.current_time(),
        )
        if isinstance(decision, Refused):
            (log.warning if decision.warning else log.info)("%s", decision.log)
            self.metrics.dropped.labels(decision.drop_label).inc()
            if decision.rejected:
                self.metrics.sessions.labels("rejected").inc()
            await stream.send_all(
                conn.respond(decision.status, decision.reason, decision.headers, close=True)
            )
            return False
        record = decision.record
        if decision.replaces and record.tunnel is not None:
            await record.tunnel.terminate()
        dtls_session = decision.dtls_session
        tunnel = TunnelSession(
            record=record,
            stream=stream,
            gateway_address=self.pool.gateway,
            dtls_session=dtls_session,
            dpd_s=float(self.config.dpd_s),
            keepalive_s=0.0,
            metrics=self.metrics,
        )
        head, leftover = conn.switch_protocol(decision.status, decision.reason, decision.headers)
        # the decision (its headers, encoded and decoded) must not live as long as the tunnel
        del decision
        record.tunnel = tunnel
        self._tunnels.add(tunnel)
        if dtls_session is not None:
            self._by_dtls_id[dtls_session.session_id] = tunnel
        self.metrics.sessions.labels("established").inc()
        try:
            await stream.send_all(head)
            del head
            await tunnel.run(leftover)
        finally:
            self._tunnels.discard(tunnel)
            if dtls_session is not None:
                self._by_dtls_id.pop(dtls_session.session_id, None)
            self.metrics.sessions.labels("closed").inc()
            self._records.tunnel_ended(
                record, tunnel, logged_out=tunnel.cookie_invalidated, now=trio.current_time()
            )
        return False


def _short(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or type(exc).__name__
