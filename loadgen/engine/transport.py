"""TCP + TLS connections to the gateway, with errors translated once, here.

Every transport exception that leaves this module is a SessionFailedError
carrying a phase and a reason from ``loadgen.failures`` (style principle 9).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Sequence

import trio

from loadgen.engine.tls import TlsOptions, check_pin, classify_transport_error
from loadgen.engine.url import GatewayUrl
from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.proto.errors import BadPacketError, RemoteProtocolError
from loadgen.proto.http import CookieJar, HttpConnection, HttpResponse

__all__ = ["HttpChannel", "open_tls", "transport_failure"]

RECEIVE_CHUNK = 65536


def transport_failure(phase: Phase, exc: BaseException) -> SessionFailedError:
    reason, message = classify_transport_error(exc)
    if phase in (Phase.DOWNLOAD, Phase.CSTP_CONNECT) and _access_denied(exc):
        # ocserv 1.1.6 refuses a dead cookie with a fatal access_denied alert
        # instead of "401 Cookie is not acceptable" (seen for a logged-out session).
        return SessionFailedError(
            phase, Reason.COOKIE_REJECTED, "gateway refused the session cookie (TLS access_denied)"
        )
    return SessionFailedError(phase, reason, message)


def _access_denied(exc: BaseException | None) -> bool:
    while exc is not None:
        if (
            isinstance(exc, ssl.SSLError)
            and getattr(exc, "reason", None) == "TLSV1_ALERT_ACCESS_DENIED"
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _open_tcp(url: GatewayUrl, source_ip: str | None) -> trio.SocketStream:
    infos = await trio.socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _canon, sockaddr in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            if source_ip is not None:
                await sock.bind((source_ip, 0))
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        stream = trio.SocketStream(sock)
        return stream
    assert last is not None
    raise last


async def open_tls(
    url: GatewayUrl,
    ctx: ssl.SSLContext,
    opts: TlsOptions,
    *,
    phase: Phase,
    session: ssl.SSLSession | None = None,
    source_ip: str | None = None,
) -> trio.SSLStream[trio.SocketStream]:
    """TCP connect and TLS handshake; pin checked; errors as SessionFailedError."""
    try:
        tcp = await _open_tcp(url, source_ip)
    except (OSError, trio.TooSlowError) as exc:
        raise transport_failure(phase, exc) from exc
    server_hostname = opts.servername or url.host
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_hostname)
    if session is not None:
        # Resume the first connection's session so the downloader's handshake
        # is cheap (seed, phase 4).
        stream.session = session
    try:
        await stream.do_handshake()
        if opts.pin is not None:
            check_pin(opts.pin, stream.getpeercert(binary_form=True))
    except SessionFailedError:
        await _abort(stream)
        raise
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        await _abort(stream)
        raise handshake_failure(phase, exc) from exc
    except BaseException:
        await _abort(stream)
        raise
    return stream


def handshake_failure(phase: Phase, exc: BaseException) -> SessionFailedError:
    """A failed TLS handshake: a gateway that closes without a word refuses our offer."""
    failure = transport_failure(phase, exc)
    if failure.reason is Reason.CLOSED:
        # GnuTLS (ocserv) drops the connection when no version or suite is shared
        return SessionFailedError(
            phase,
            Reason.TLS_HANDSHAKE,
            "the gateway closed the connection during the TLS handshake: it shares no TLS "
            "version or cipher suite with the offer (see --tls-ciphers, --tls-min-version)",
        )
    return failure


async def _abort(stream: trio.SSLStream[trio.SocketStream]) -> None:
    await trio.aclose_forcefully(stream.transport_stream)


class HttpChannel:
    """HTTP/1.1 over one TLS stream, sharing a cookie jar with the session."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], jar: CookieJar) -> None:
        self.stream = stream
        self.http = HttpConnection()
        self.jar = jar

    @property
    def reusable(self) -> bool:
        return self.http.reusable

    async def request(
        self,
        phase: Phase,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> HttpResponse:
        out = self.http.send_request(method, target, list(headers), body)
        try:
            await self.stream.send_all(out)
            while True:
                try:
                    resp = self.http.next_response_untrusted()
                except BadPacketError as exc:
                    raise SessionFailedError(phase, Reason.PROTOCOL, str(exc)) from exc
                except RemoteProtocolError as exc:
                    raise SessionFailedError(phase, Reason.CLOSED, str(exc)) from exc
                if resp is not None:
                    self.jar.update_from_headers(resp.headers)
                    return resp
                data = await self.stream.receive_some(RECEIVE_CHUNK)
                self.http.receive_data(bytes(data))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            raise transport_failure(phase, exc) from exc

    async def wait_peer_close(self, timeout_s: float) -> bool:
        """Wait (bounded) until the peer closes its side; True if it did."""
        with trio.move_on_after(timeout_s):
            try:
                # our close_notify, then theirs (or their TCP close)
                transport, _ = await self.stream.unwrap()
                while await transport.receive_some(RECEIVE_CHUNK):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                pass
            return True
        return False

    async def aclose(self) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self.stream.transport_stream)
