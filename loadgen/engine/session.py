"""One synthetic AnyConnect client: phases 1 to 5, then the tunnel.

The session drives the sans-IO machines of ``loadgen.proto`` over trio
streams.  Each phase is timed on its own and bounded by ``timeout_s``; every
failure leaves as a SessionFailedError with a phase and a reason, never as a
raw transport exception.  Secrets (password, cookie) stay in this object and
never reach a message.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import trio

from loadgen.engine.datapath import DataPath
from loadgen.engine.dtls import DtlsOptions
from loadgen.engine.tls import TlsOptions
from loadgen.engine.tokens import TokenCodes
from loadgen.engine.transport import HttpChannel, open_tls, transport_failure
from loadgen.engine.url import GatewayUrl, parse_gateway_url
from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.options import DEFAULT_USER_AGENT, DEFAULTS, DownloadMode
from loadgen.proto import auth
from loadgen.proto.cstp import DisconnectReason
from loadgen.proto.errors import (
    AuthRejectedError,
    AuthUnsupportedError,
    BadPacketError,
    CertificateRequiredError,
    GroupUnknownError,
    HostScanRequiredError,
    LocalProtocolError,
    RemoteProtocolError,
    SecondFactorRequiredError,
    SsoRequiredError,
)
from loadgen.proto.http import CookieJar, HttpResponse, build_common_headers
from loadgen.proto.tunnel import ConnectRequest, TunnelParams, parse_connect_response_untrusted

__all__ = [
    "DEFAULT_USER_AGENT",
    "DownloadMode",
    "SessionConfig",
    "VpnSession",
    "open_session",
    "translate",
]


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    url: GatewayUrl
    username: str
    password: str = field(repr=False)
    group: str | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    user_agent: str = DEFAULTS.user_agent
    #: ``X-CSTP-Hostname``; unique per simulated client
    hostname: str = "loadgen"
    timeout_s: float = DEFAULTS.timeout_s
    download: DownloadMode = DownloadMode.NEW_CONNECTION
    base_mtu: int = 1500
    source_ip: str | None = None
    #: DTLS offers and schedule; None: no DTLS (no X-DTLS-* headers at all)
    dtls: DtlsOptions | None = field(default_factory=DtlsOptions)
    #: the TLS context holds a client certificate (answer <client-cert-request/> with it)
    has_certificate: bool = False
    #: ``--form-entry`` values
    form_entries: tuple[auth.FormEntry, ...] = field(default=(), repr=False)
    #: this identity's one-time codes (``--token-mode``); None: no second factor
    token: TokenCodes | None = field(default=None, repr=False, compare=False)


@dataclass
class ProfileInfo:
    uri: str
    size_bytes: int
    sha1: str
    tls_resumed: bool | None


@asynccontextmanager
async def open_session(
    cfg: SessionConfig,
    ssl_context: ssl.SSLContext,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> AsyncIterator[VpnSession]:
    """A session whose tunnel tasks live in a nursery owned by this context.

    Leaving the context without ``disconnect`` closes the TLS connection
    without a DISCONNECT (a temporary disconnect on ocserv, §5.4).
    """
    async with trio.open_nursery() as nursery:
        session = VpnSession(cfg, ssl_context, nursery, random_bytes=random_bytes)
        try:
            yield session
        finally:
            with trio.CancelScope(shield=True):
                await session.aclose()


class VpnSession:
    """A client session; create it with ``open_session``."""

    def __init__(
        self,
        cfg: SessionConfig,
        ssl_context: ssl.SSLContext,
        nursery: trio.Nursery,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.cfg = cfg
        self._ctx = ssl_context
        self._nursery = nursery
        self._random = random_bytes
        self.jar = CookieJar()
        self.phases: dict[Phase, float] = {}
        self.profile: ProfileInfo | None = None
        self.tunnel_params: TunnelParams | None = None
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.tunnel: DataPath | None = None
        self._master_secret: bytes | None = None
        self._token: str | None = None
        self._complete: auth.AuthComplete | None = None
        self._main: HttpChannel | None = None
        #: the phase in progress, or the last one reached: where a failure happened
        self.phase = Phase.TLS
        #: the gateway now: the one configured, or the one a login redirect led to
        #: (the host that issued the cookie gets CONNECT and DTLS)
        self.url = cfg.url
        #: the banners the gateway showed: before the login and after it
        self.pre_login_banner: str | None = None
        self.banner: str | None = None
        #: manifest entries the gateway sent that could not be used (skipped)
        self.skipped_entries = 0
        #: seconds this login waited for a fresh TOTP step
        self.token_wait_s = 0.0

    async def aclose(self) -> None:
        """Stop the tunnel tasks and close the connection (no DISCONNECT)."""
        if self.tunnel is not None:
            self.tunnel.stop()
            self.tunnel = None
        await self._close_main()

    # -- phases 1 to 5 ------------------------------------------------------

    async def connect(self) -> TunnelParams:
        """Run phases 1 to 5 and start the tunnel; DTLS (phase 6) starts in the
        background: ``wait_dtls`` waits for its outcome."""
        self.phase = Phase.TLS
        await self._phase_tls()
        await self._phases_auth()
        self.phase = Phase.DOWNLOAD
        await self._phase_download()
        params = await self._phase_cstp_connect(self._main)
        self.phase = Phase.DTLS
        return params

    async def reconnect(self) -> TunnelParams:
        """New TLS connection and CONNECT with the cookie we hold (no auth)."""
        if self._token is None:
            raise LocalProtocolError("reconnect needs a session cookie from a previous connect")
        if self.tunnel is not None:
            self.tunnel.stop()
            self.tunnel = None
        await self._close_main()
        self.phases.pop(Phase.CSTP_CONNECT, None)
        params = await self._phase_cstp_connect(None)
        self.phase = Phase.DTLS
        return params

    async def _phase_tls(self) -> None:
        start = trio.current_time()
        with trio.move_on_after(self.cfg.timeout_s) as scope:
            stream = await open_tls(
                self.url, self._ctx, self.cfg.tls, phase=Phase.TLS, source_ip=self.cfg.source_ip
            )
        if scope.cancelled_caught:
            raise self._timeout(Phase.TLS)
        self._main = HttpChannel(stream, self.jar)
        self.tls_version = stream.version()
        cipher = stream.cipher()
        self.tls_cipher = None if cipher is None else cipher[0]
        self.phases[Phase.TLS] = trio.current_time() - start

    def _timeout(self, phase: Phase) -> SessionFailedError:
        return SessionFailedError(
            phase, Reason.TIMEOUT, f"{phase} did not finish within {self.cfg.timeout_s:g} s"
        )

    def _headers(self, *, xml: bool) -> list[tuple[bytes, bytes]]:
        headers = build_common_headers(host=self.url.host_header, user_agent=self.cfg.user_agent)
        cookie = self.jar.header_value(["webvpncontext"])
        if cookie is not None:
            headers.append((b"Cookie", cookie.encode()))
        if xml:
            headers.append((b"Content-Type", b"application/xml; charset=utf-8"))
        return headers

    async def _phases_auth(self) -> None:
        """Phases 2 and 3: group selection and user authentication."""
        assert self._main is not None
        token = self.cfg.token
        if token is not None:
            # a gateway refuses a replayed code: a TOTP step serves one login
            self.token_wait_s = await token.ready()
        flow = auth.AuthFlow(
            auth.ClientInfo(),
            base_url=self.url.url,
            username=self.cfg.username,
            password=self.cfg.password,
            group=self.cfg.group,
            form_entries=self.cfg.form_entries,
            token=None if token is None else token.code,
            has_certificate=self.cfg.has_certificate,
        )
        request: auth.AuthRequest | auth.AuthComplete = flow.start()
        phase = self.phase = Phase(flow.phase)
        started = trio.current_time()
        while isinstance(request, auth.AuthRequest):
            now = trio.current_time()
            if Phase(flow.phase) is not phase:
                self.phases[phase] = now - started
                phase, started = Phase(flow.phase), now
                self.phase = phase
            with trio.move_on_at(started + self.cfg.timeout_s) as scope:
                if request.new_connection:
                    await self._move(request.url, phase)
                resp = await self._main.request(
                    phase, "POST", request.path, self._headers(xml=True), request.body
                )
            if scope.cancelled_caught:
                raise self._timeout(phase)
            request = self._auth_step(flow, phase, resp)
            self.pre_login_banner = flow.pre_login_banner
        self.phases[phase] = trio.current_time() - started
        if flow.url != self.url.url:
            # a redirect on the same host to another path (the group-url)
            self.url = parse_gateway_url(flow.url)
        self._complete = request
        self.banner = request.banner
        self.skipped_entries = request.skipped_entries
        cookie = request.session_token or self.jar.get("webvpn")
        if not cookie:
            raise SessionFailedError(
                Phase.AUTH, Reason.PROTOCOL, "authentication completed without a session cookie"
            )
        self._token = cookie

    async def _move(self, url: str, phase: Phase) -> None:
        """A new TLS connection for the login: to present the certificate, or to the
        gateway a redirect named (its cookies are not the old one's)."""
        try:
            target = parse_gateway_url(url)
        except ValueError:
            # never quoted: the URL came from the gateway and may hold anything
            raise SessionFailedError(
                phase, Reason.PROTOCOL, "redirect to an unusable gateway URL"
            ) from None
        if (target.host, target.port) != (self.url.host, self.url.port):
            self.jar = CookieJar()
        self.url = target
        await self._close_main()
        stream = await open_tls(
            self.url, self._ctx, self.cfg.tls, phase=phase, source_ip=self.cfg.source_ip
        )
        self._main = HttpChannel(stream, self.jar)

    @staticmethod
    def _auth_step(
        flow: auth.AuthFlow, phase: Phase, resp: HttpResponse
    ) -> auth.AuthRequest | auth.AuthComplete:
        try:
            return flow.receive(
                resp.status, resp.body, reason=resp.reason, location=resp.header("Location")
            )
        except CertificateRequiredError as exc:
            raise SessionFailedError(phase, Reason.CERTIFICATE_REQUIRED, str(exc)) from exc
        except SecondFactorRequiredError as exc:
            raise SessionFailedError(Phase.AUTH, Reason.SECOND_FACTOR_REQUIRED, str(exc)) from exc
        except SsoRequiredError as exc:
            raise SessionFailedError(phase, Reason.SSO_REQUIRED, str(exc)) from exc
        except HostScanRequiredError as exc:
            raise SessionFailedError(phase, Reason.HOSTSCAN_REQUIRED, str(exc)) from exc
        except AuthRejectedError as exc:
            raise SessionFailedError(Phase.AUTH, Reason.AUTH_REJECTED, str(exc)) from exc
        except GroupUnknownError as exc:
            raise SessionFailedError(Phase.GROUP_SELECT, Reason.GROUP_UNKNOWN, str(exc)) from exc
        except AuthUnsupportedError as exc:
            raise SessionFailedError(phase, Reason.AUTH_UNSUPPORTED, str(exc)) from exc
        except auth.HttpStatusError as exc:
            raise SessionFailedError(phase, Reason.HTTP_STATUS, str(exc)) from exc
        except (BadPacketError, RemoteProtocolError) as exc:
            raise SessionFailedError(phase, Reason.PROTOCOL, str(exc)) from exc
        except LocalProtocolError as exc:
            raise SessionFailedError(phase, Reason.INTERNAL, str(exc)) from exc

    # -- phase 4 --------------------------------------------------------------

    def _profile_to_fetch(self) -> tuple[str, str] | None:
        """(uri, expected SHA-1 hex) from the XML manifest or the webvpnc cookie (§2.6)."""
        assert self._complete is not None
        for entry in self._complete.profiles:
            return entry.uri, entry.sha1_hex
        webvpnc = self.jar.get("webvpnc")
        if webvpnc:
            fields = dict(part.split(":", 1) for part in webvpnc.split("&") if ":" in part)
            if "fu" in fields and "fh" in fields:
                from urllib.parse import unquote

                return fields.get("bu", "/").rstrip("/") + unquote(fields["fu"]), fields["fh"]
        return None

    async def _phase_download(self) -> None:
        if self.cfg.download is DownloadMode.OFF:
            return
        wanted = self._profile_to_fetch()
        if wanted is None:
            return
        uri, expected = wanted
        if not uri.startswith("/"):
            uri = "/" + uri
        start = trio.current_time()
        with trio.move_on_after(self.cfg.timeout_s) as scope:
            resp, resumed = await self._download(uri)
        if scope.cancelled_caught:
            raise self._timeout(Phase.DOWNLOAD)
        if resp.status != 200:
            raise SessionFailedError(
                Phase.DOWNLOAD,
                Reason.HTTP_STATUS,
                f"profile GET answered {resp.status} {resp.reason}",
            )
        actual = hashlib.sha1(resp.body).hexdigest().upper()
        if actual != expected.upper():
            raise SessionFailedError(
                Phase.DOWNLOAD,
                Reason.PROFILE_HASH,
                f"profile SHA-1 is {actual}, the gateway announced {expected.upper()}",
            )
        self.profile = ProfileInfo(
            uri=uri, size_bytes=len(resp.body), sha1=actual, tls_resumed=resumed
        )
        self.phases[Phase.DOWNLOAD] = trio.current_time() - start

    def _cookie_headers(self) -> list[tuple[bytes, bytes]]:
        assert self._token is not None
        headers = build_common_headers(host=self.url.host_header, user_agent=self.cfg.user_agent)
        headers.append((b"Cookie", f"webvpn={self._token}".encode()))
        return headers

    async def _download(self, uri: str) -> tuple[HttpResponse, bool | None]:
        assert self._main is not None
        if self.cfg.download is DownloadMode.SAME_CONNECTION and self._main.reusable:
            return await self._main.request(
                Phase.DOWNLOAD, "GET", uri, self._cookie_headers()
            ), None
        session = self._main.stream.session
        stream = await open_tls(
            self.url,
            self._ctx,
            self.cfg.tls,
            phase=Phase.DOWNLOAD,
            session=session,
            source_ip=self.cfg.source_ip,
        )
        channel = HttpChannel(stream, self.jar)
        try:
            resumed = bool(stream.session_reused)
            resp = await channel.request(Phase.DOWNLOAD, "GET", uri, self._cookie_headers())
            # Like the downloader process exiting: let the gateway end its side
            # before CONNECT.  ocserv opens a session for this cookie-bearing
            # connection; CONNECT racing its teardown loses the first packets.
            await channel.wait_peer_close(self.cfg.timeout_s)
        finally:
            await channel.aclose()
        return resp, resumed

    # -- phase 5 --------------------------------------------------------------

    async def _phase_cstp_connect(self, reuse: HttpChannel | None) -> TunnelParams:
        self.phase = Phase.CSTP_CONNECT
        start = trio.current_time()
        with trio.move_on_after(self.cfg.timeout_s) as scope:
            channel, resp = await self._send_connect(reuse)
        if scope.cancelled_caught:
            raise self._timeout(Phase.CSTP_CONNECT)
        if resp.status == 401:
            raise SessionFailedError(
                Phase.CSTP_CONNECT,
                Reason.COOKIE_REJECTED,
                f"gateway refused the session cookie ({resp.status} {resp.reason})",
            )
        if resp.status != 200 or not channel.http.switched:
            reason = resp.header("X-Reason")
            detail = f"; X-Reason: {reason}" if reason else ""
            raise SessionFailedError(
                Phase.CSTP_CONNECT,
                Reason.HTTP_STATUS,
                f"CONNECT answered {resp.status} {resp.reason}{detail}",
            )
        try:
            params = parse_connect_response_untrusted(resp.headers)
        except BadPacketError as exc:
            raise SessionFailedError(Phase.CSTP_CONNECT, Reason.PROTOCOL, str(exc)) from exc
        self.tunnel_params = params
        self.phases[Phase.CSTP_CONNECT] = trio.current_time() - start
        self.tunnel = DataPath(stream=channel.stream, params=params, random_bytes=self._random)
        self.tunnel.start(
            self._nursery,
            channel.http.trailing_data,
            master_secret=self._master_secret,
            dtls=self.cfg.dtls,
            gateway_host=self.url.host,
            source_ip=self.cfg.source_ip,
        )
        return params

    async def wait_dtls(self) -> None:
        """Phase 6: until DTLS is up or has fallen back (bounded by its schedule)."""
        if self.tunnel is None:
            return
        await self.tunnel.wait_dtls()
        dtls = self.tunnel.dtls
        if dtls is not None and dtls.up and dtls.handshake_s is not None:
            self.phases[Phase.DTLS] = dtls.handshake_s
        self.phase = Phase.TUNNEL

    async def _send_connect(self, reuse: HttpChannel | None) -> tuple[HttpChannel, HttpResponse]:
        """CONNECT on the auth connection when it is still usable, else on a new one."""
        channel = reuse
        if channel is None or not channel.reusable:
            if channel is not None:
                await channel.aclose()
            stream = await open_tls(
                self.url,
                self._ctx,
                self.cfg.tls,
                phase=Phase.CSTP_CONNECT,
                source_ip=self.cfg.source_ip,
            )
            channel = HttpChannel(stream, self.jar)
            self._main = channel
        assert self._token is not None
        dtls = self.cfg.dtls
        # A fresh 48-byte master secret per CONNECT: the legacy DTLS key (§7.2)
        self._master_secret = self._random(48) if dtls is not None else None
        req = ConnectRequest(
            host=self.url.host_header,
            user_agent=self.cfg.user_agent,
            cookie=self._token,
            hostname=self.cfg.hostname,
            base_mtu=self.cfg.base_mtu,
            dtls_master_secret=self._master_secret,
            dtls_ciphers=None if dtls is None else dtls.ciphers,
            dtls12_ciphers=None if dtls is None else dtls.ciphers12,
        )
        resp = await channel.request(Phase.CSTP_CONNECT, "CONNECT", req.target, req.to_headers())
        return channel, resp

    @property
    def connect_time(self) -> float:
        """The phases that succeeded, summed: 1 to 6, or 1 to 5 after a fallback."""
        return sum(v for k, v in self.phases.items() if k is not Phase.CONNECT)

    # -- tunnel ---------------------------------------------------------------

    def echo_target(self, override: IPv4Address | None) -> IPv4Address:
        if override is not None:
            return override
        assert self.tunnel_params is not None
        target = self.tunnel_params.gateway_tunnel_address
        if target is None:
            raise SessionFailedError(
                Phase.TUNNEL, Reason.PROTOCOL, "no IPv4 tunnel address to echo to"
            )
        return IPv4Address(str(target))

    async def disconnect(self, reason: DisconnectReason | None = DisconnectReason.USER) -> None:
        """Send DISCONNECT and close.  ``USER`` (0xb0) kills the cookie on
        ocserv; ``None`` sends an empty DISCONNECT that keeps it (§5.4)."""
        if self.tunnel is not None:
            await self.tunnel.disconnect(reason)
            self.tunnel = None
        await self._close_main()

    async def _close_main(self) -> None:
        if self._main is not None:
            main, self._main = self._main, None
            await main.aclose()


def translate(phase: Phase, exc: BaseException) -> SessionFailedError:
    """Any unexpected exception of a session, as a SessionFailedError."""
    if isinstance(exc, SessionFailedError):
        return exc
    if isinstance(exc, (OSError, trio.BrokenResourceError, ssl.SSLError, trio.TooSlowError)):
        return transport_failure(phase, exc)
    return SessionFailedError(phase, Reason.INTERNAL, f"unexpected {type(exc).__name__}")
