"""The ocserv 1.1.6 personality: the reference gateway's default (protocol.md §2 to §6).

Its auth conversation (§2.3 to §2.7), as the client role ``AuthFlow``
(``loadgen.proto.auth``) meets it::

    << POST /     init [group-select]       >> 200 username form (+ group_list),
                                               Set-Cookie: webvpncontext=<ctx>
    << POST /auth init group-select         >> 200 username form, chosen group first
    << POST /auth auth-reply username       >> 200 password form (unknown users too)
    << POST /auth auth-reply password       >> 200 complete, Set-Cookie: webvpn=<token>
                                            >> or 200 "Login failed" form (tries 1..n-1)
                                            >> or 401 Authentication failed + close

The other ``AuthMode``s, as ocserv's ``auth =`` settings make them
(``worker-auth.c`` ``post_auth_handler``, ``sec-mod-auth.c``, ``auth/plain.c``)::

    certificate            init >> 200 complete (the certificate's CN is the user)
                                >> or 401 No certificate + close
    certificate+password   as password; the username reply without a certificate
                           >> 401 No certificate; a right password from a user who is
                           not the certificate's CN >> 401 Authentication failed
    password+otp           as password, then >> 200 the password form again,
                           "Please enter your OTP password."; a wrong code
                           >> 401 Authentication failed + close (liboath's refusal is
                           final in ocserv: no "Login failed" retry for the OTP)

Deviation from the 1.1.6 capture: ocserv keeps the pre-username state in its
per-connection worker and clears the cookie on the first form; this server
has no connection, so it sets the context cookie from the first form on.

CONNECT (§4, §6): ``200 CONNECTED`` with ocserv's headers; the legacy DTLS
suite by ocserv's rule over its preference tables, extended to every suite
our DTLS implements so that any single-cipher offer gets an answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import ClassVar, Final
from urllib.parse import quote

from loadgen.proto.auth_policy import AuthMode, AuthPolicy
from loadgen.proto.auth_xml import (
    ClientAuthReply,
    ClientInit,
    ClientLogout,
    FormInput,
    build_auth_complete,
    build_auth_request,
)
from loadgen.proto.dtls import KNOWN_DTLS_CIPHERS
from loadgen.proto.errors import LocalProtocolError
from loadgen.proto.personality.base import (
    Answer,
    AuthContext,
    AuthDialect,
    AuthResponse,
    AuthServices,
    AuthSuccess,
    DtlsGrant,
    HttpAnswer,
    Personality,
    Route,
    TunnelSettings,
)
from loadgen.proto.tunnel import (
    CONNECT_TARGET,
    DTLS12_CIPHER_HEADER,
    DTLS_CIPHER_HEADER,
    PSK_NEGOTIATE,
    SESSION_COOKIE,
    CipherHeader,
    ConnectRequest,
    TunnelParams,
)

__all__ = [
    "CONTEXT_COOKIE",
    "OCSERV",
    "OCSERV_DTLS12_PRIORITIES",
    "OCSERV_LEGACY_PRIORITIES",
    "OcservPersonality",
    "choose_dtls_cipher",
]

#: ocserv's ``X-DTLS-CipherSuite`` table, name -> server priority (§6).
OCSERV_LEGACY_PRIORITIES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "OC-DTLS1_2-AES256-GCM": 90,
        "OC-DTLS1_2-AES128-GCM": 80,
        "AES256-SHA": 60,
        "AES128-SHA": 50,
        "DES-CBC3-SHA": 1,
    }
)
#: ocserv master's ``X-DTLS12-CipherSuite`` table (1.1.6 lacks the ECDHE names, §11.11).
OCSERV_DTLS12_PRIORITIES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "AES256-GCM-SHA384": 90,
        "ECDHE-RSA-AES256-GCM-SHA384": 80,
        "ECDHE-RSA-AES128-GCM-SHA256": 70,
        "AES128-GCM-SHA256": 50,
    }
)
#: the gateway's preferences: ocserv's (§6), extended to every suite our DTLS
#: implements, so any single-cipher offer of a client gets an answer
_GATEWAY_LEGACY_PRIORITIES: Final[Mapping[str, int]] = MappingProxyType(
    {
        **{k: v for k, v in OCSERV_LEGACY_PRIORITIES.items() if k in KNOWN_DTLS_CIPHERS},
        "DHE-RSA-AES256-SHA": 20,
        "DHE-RSA-AES128-SHA": 10,
    }
)
_GATEWAY_DTLS12_PRIORITIES: Final[Mapping[str, int]] = MappingProxyType(
    {
        **OCSERV_DTLS12_PRIORITIES,
        "AES256-SHA": 40,
        "AES128-SHA": 30,
        "DHE-RSA-AES256-SHA": 20,
        "DHE-RSA-AES128-SHA": 10,
    }
)

#: the cookie that names a login in progress (§2.5)
CONTEXT_COOKIE: Final = "webvpncontext"
#: ocserv accepts auth POSTs on these paths (§2.3); the query string is ignored.
_AUTH_PATHS: Final = frozenset({"/", "/auth", "/VPN"})
#: where the profile is downloaded from (§3)
_DOWNLOAD_PREFIX: Final = "/profiles"
#: ocserv keeps 64 bytes of a username (MAX_USERNAME_SIZE); longer ones can never log in.
_MAX_USERNAME_CHARS = 256
_USERNAME_MESSAGE = "Please enter your username."
_PASSWORD_MESSAGE = "Please enter your password."
#: ocserv 1.1.6 worker-auth.c, after a wrong password (§2.7).
_RETRY_MESSAGE = "Login failed.\nPlease enter your password."
#: ocserv src/auth/common.c pass_msg_otp, asked in the password field (counter 0)
_OTP_MESSAGE = "Please enter your OTP password."
_USERNAME_INPUT = FormInput(type="text", name="username", label="Username:")
_PASSWORD_INPUT = FormInput(type="password", name="password", label="Password:")
#: How ocserv deletes a cookie (§2.4, §2.6).
_EXPIRED = "expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure; HttpOnly"
#: ocserv's AnyConnect translation-table URL in ``webvpnc`` when a profile is set (§2.6).
_LU = "lu:/+CSCOT+/translation-table?textdomain%3DAnyConnect%26type%3Dmanifest"
#: the dialect's stages (``AuthContext.stage``): ocserv needs two round trips (§2.5)
_USERNAME = "username"
_PASSWORD = "password"
_OTP = "otp"
_UNAVAILABLE = "Service Unavailable"

#: the status lines of ocserv's documentless answers (§2.7, §3, §4.2)
_ANSWERS: Final[Mapping[Answer, HttpAnswer]] = MappingProxyType(
    {
        Answer.NOT_FOUND: HttpAnswer(status=404, reason="Not found"),
        Answer.BAD_REQUEST: HttpAnswer(status=400, reason="Bad Request"),
        Answer.MALFORMED_XML: HttpAnswer(status=400, reason="Bad Request"),
        Answer.METHOD_NOT_ALLOWED: HttpAnswer(
            status=405, reason="Method Not Allowed", headers=(("Allow", "GET, POST"),)
        ),
        Answer.TOO_MANY_PENDING: HttpAnswer(status=503, reason=_UNAVAILABLE),
        Answer.NO_PASSWORD: HttpAnswer(status=401, reason="No password"),
        Answer.AUTH_FAILED: HttpAnswer(status=401, reason="Authentication failed"),
        # worker-auth.c MSG_NO_CERT_ERROR
        Answer.NO_CERTIFICATE: HttpAnswer(status=401, reason="No certificate"),
        Answer.CONNECT_MALFORMED: HttpAnswer(status=503, reason=_UNAVAILABLE),
        Answer.NO_SESSION_COOKIE: HttpAnswer(status=503, reason=_UNAVAILABLE),
        Answer.COOKIE_REJECTED: HttpAnswer(status=401, reason="Cookie is not acceptable"),
        Answer.TOO_MANY_SESSIONS: HttpAnswer(
            status=503, reason=_UNAVAILABLE, headers=(("X-Reason", "Too many sessions"),)
        ),
        Answer.NO_ADDRESS: HttpAnswer(
            status=503, reason=_UNAVAILABLE, headers=(("X-Reason", "No address available"),)
        ),
        Answer.CONNECTED: HttpAnswer(status=200, reason="CONNECTED"),
        Answer.DOWNLOAD_UNAUTHORIZED: HttpAnswer(status=401, reason="Unauthorized"),
        Answer.DOWNLOADED: HttpAnswer(
            status=200, reason="OK", headers=(("Content-Type", "text/xml"),)
        ),
    }
)


# -- DTLS suite choice (§6) -------------------------------------------------------------


def choose_dtls_cipher(
    req: ConnectRequest,
    *,
    legacy_prefs: Mapping[str, int] = OCSERV_LEGACY_PRIORITIES,
    dtls12_prefs: Mapping[str, int] = OCSERV_DTLS12_PRIORITIES,
) -> tuple[str, CipherHeader] | None:
    """The legacy DTLS suite an ocserv-like gateway answers with (§6).

    None when the request has no master secret (legacy DTLS is impossible)
    or offers nothing we know.  A match in ``X-DTLS12-CipherSuite`` wins and
    is answered in that header; otherwise the best match of
    ``X-DTLS-CipherSuite``.  Within a header the highest server priority
    wins, ties going to the client's earlier name (ocserv uses a strict
    ``<``).  ``PSK-NEGOTIATE`` is ignored: we only do legacy mode.  ocserv's
    "same cipher as the TLS session" shortcut is not modelled.
    """
    if req.dtls_master_secret is None:
        return None
    best12 = _best_offer(req.dtls12_ciphers, dtls12_prefs)
    if best12 is not None:
        return best12, DTLS12_CIPHER_HEADER
    best = _best_offer(req.dtls_ciphers, legacy_prefs)
    if best is not None:
        return best, DTLS_CIPHER_HEADER
    return None


def _best_offer(offer: tuple[str, ...] | None, prefs: Mapping[str, int]) -> str | None:
    best: str | None = None
    best_prio = 0
    for name in offer or ():
        prio = prefs.get(name)
        if name == PSK_NEGOTIATE or prio is None:
            continue
        if best is None or prio > best_prio:
            best, best_prio = name, prio
    return best


# -- auth (§2.3 to §2.7) ------------------------------------------------------------------


class _OcservAuth(AuthDialect):
    """ocserv 1.1.6's aggregate auth: a username form, then a password form."""

    def __init__(self, policy: AuthPolicy, services: AuthServices) -> None:
        self._policy = policy
        self._services = services
        pairs = [(g.name, g.alias or g.name) for g in policy.groups]
        selections: list[str | None] = [name for name, _ in pairs] or [None]
        try:
            # every body is built once here, so a bad name fails at startup, not mid-run
            self._username_forms: dict[str | None, bytes] = {
                selected: build_auth_request(
                    message=_USERNAME_MESSAGE,
                    inputs=[_USERNAME_INPUT],
                    groups=pairs or None,
                    selected_group=selected,
                )
                for selected in selections
            }
            self._password_form = build_auth_request(
                message=_PASSWORD_MESSAGE, inputs=[_PASSWORD_INPUT]
            )
            self._retry_form = build_auth_request(message=_RETRY_MESSAGE, inputs=[_PASSWORD_INPUT])
            self._otp_form = build_auth_request(message=_OTP_MESSAGE, inputs=[_PASSWORD_INPUT])
            self._complete = build_auth_complete(
                banner=policy.banner, profiles=(policy.profile,) if policy.profile else ()
            )
        except LocalProtocolError as exc:
            raise ValueError(f"the policy cannot be sent as XML: {exc}") from exc
        self._webvpnc = _webvpnc_value(policy)

    def context_key(self, cookies: Mapping[str, str]) -> str | None:
        return cookies.get(CONTEXT_COOKIE)

    def closing(self, answer: Answer, label: str) -> AuthResponse:
        line = _ANSWERS[answer]
        return _response(line.status, line.reason, b"", label=label, close=True, extra=line.headers)

    def start(
        self,
        ctx: AuthContext | None,
        init: ClientInit | None,
        now: float,
        *,
        peer_cn: str | None = None,
    ) -> AuthResponse:
        group_select = init.group_select if init else None
        if self._policy.mode is AuthMode.CERTIFICATE:
            return self._certificate_login(ctx, group_select, now, peer_cn)
        # a GET is answered with the same form (§2.8)
        return self._start(ctx, group_select, now, None)

    def reply(
        self,
        ctx: AuthContext | None,
        reply: ClientAuthReply,
        *,
        expired: bool,
        now: float,
        peer_cn: str | None = None,
    ) -> AuthResponse:
        if self._policy.mode is AuthMode.CERTIFICATE:
            # no forms: any document is answered as the init is
            return self._certificate_login(ctx, reply.group_select, now, peer_cn)
        if ctx is None:
            # no context: ocserv restarts authentication at the username (§2.5)
            return self._start(None, None, now, "context_expired" if expired else "context_unknown")
        if ctx.stage == _USERNAME:
            return self._take_username(ctx, reply, peer_cn)
        if ctx.stage == _OTP:
            return self._take_otp(ctx, reply, now)
        return self._take_password(ctx, reply, peer_cn)

    def logout(self, ctx: AuthContext | None, message: ClientLogout) -> AuthResponse:
        # ocserv 1.1.6 has no XML logout: it reads no username and sends the login
        # form, with the context cookie cleared as on its first form (§2.4)
        if ctx is not None:
            self._services.close_context(ctx)
        body = self._username_forms[self._services.default_group]
        cookie = f"{CONTEXT_COOKIE}=; {_EXPIRED}"
        return _response(200, "OK", body, cookies=(cookie,), label="logout")

    # -- steps ----------------------------------------------------------------------

    def _start(
        self, ctx: AuthContext | None, group_select: str | None, now: float, label: str | None
    ) -> AuthResponse:
        """The username form, for a new context or for a known one starting over."""
        if ctx is None:
            ctx = self._services.open_context(now)
            if ctx is None:
                return self.closing(Answer.TOO_MANY_PENDING, "too_many_pending")
        # a second init (openconnect's group change, §2.5) keeps the try count
        ctx.stage, ctx.username, ctx.username_ok = _USERNAME, None, True
        self._services.select_group(ctx, group_select)
        return self._form(ctx, self._username_forms[ctx.group], label)

    def _certificate_login(
        self, ctx: AuthContext | None, group_select: str | None, now: float, peer_cn: str | None
    ) -> AuthResponse:
        """ocserv ``auth = "certificate"``: the init is answered with the complete."""
        if ctx is not None:
            self._services.close_context(ctx)
        if peer_cn is None:
            return self.closing(Answer.NO_CERTIFICATE, "no_certificate")
        ctx = self._services.open_context(now)
        if ctx is None:
            return self.closing(Answer.TOO_MANY_PENDING, "too_many_pending")
        self._services.close_context(ctx)
        self._services.select_group(ctx, group_select)
        if not self._services.check_certificate(ctx, peer_cn):
            # sec-mod: "no username in the certificate", or the refusal injected
            return self.closing(Answer.AUTH_FAILED, "auth_failed")
        return self._success(peer_cn, ctx.group)

    def _take_username(
        self, ctx: AuthContext, reply: ClientAuthReply, peer_cn: str | None
    ) -> AuthResponse:
        # the group comes with the username, at top level or as a form field (§2.5)
        group = reply.group_select
        self._services.select_group(
            ctx, group if group is not None else reply.fields.get("group_list")
        )
        username = reply.fields.get("username")
        if not username:
            return self._form(ctx, self._username_forms[ctx.group], "no_username")
        if peer_cn is None and self._policy.mode is AuthMode.CERTIFICATE_PASSWORD:
            # ocserv reads the username first, then wants the certificate
            self._services.close_context(ctx)
            return self.closing(Answer.NO_CERTIFICATE, "no_certificate")
        ctx.username = username[:_MAX_USERNAME_CHARS]
        ctx.username_ok = len(username) <= _MAX_USERNAME_CHARS
        ctx.stage = _PASSWORD
        # a <password> sent along is ignored: ocserv needs two round trips (§2.5),
        # and an unknown user gets the password form too (§2.7)
        return self._form(ctx, self._password_form, None)

    def _take_password(
        self, ctx: AuthContext, reply: ClientAuthReply, peer_cn: str | None
    ) -> AuthResponse:
        password = _password_field(reply.fields)
        if password is None:
            self._services.close_context(ctx)
            return self.closing(Answer.NO_PASSWORD, "no_password")
        accepted = self._services.check_password(ctx, password)
        del password
        if accepted and ctx.username is not None:
            mode = self._policy.mode
            if mode is AuthMode.PASSWORD_OTP:
                # plain.c: the password was right, now the OTP (pass_msg_otp)
                ctx.stage = _OTP
                return self._form(ctx, self._otp_form, None)
            self._services.close_context(ctx)
            if mode is AuthMode.CERTIFICATE_PASSWORD:
                if peer_cn is None:
                    return self.closing(Answer.NO_CERTIFICATE, "no_certificate")
                if peer_cn != ctx.username:
                    # sec-mod: "presented a certificate which is for user ..."
                    return self.closing(Answer.AUTH_FAILED, "cert_user_mismatch")
            return self._success(ctx.username, ctx.group)
        ctx.tries += 1
        if ctx.tries >= self._policy.max_password_tries:
            # ocserv: 401 then a fatal alert; the worker exits (§2.7)
            self._services.close_context(ctx)
            return self.closing(Answer.AUTH_FAILED, "auth_failed")
        return self._form(ctx, self._retry_form, "login_failed")

    def _take_otp(self, ctx: AuthContext, reply: ClientAuthReply, now: float) -> AuthResponse:
        code = _password_field(reply.fields)
        self._services.close_context(ctx)
        if code is None:
            return self.closing(Answer.NO_PASSWORD, "no_password")
        accepted = self._services.check_otp(ctx, code, now)
        del code
        if not accepted or ctx.username is None:
            # liboath's refusal ends the login in ocserv (ERR_AUTH_FAIL): no retry
            return self.closing(Answer.AUTH_FAILED, "otp_failed")
        return self._success(ctx.username, ctx.group)

    def _success(self, username: str, group: str | None) -> AuthResponse:
        # ocserv 1.1.6: webvpn and webvpncontext carry the same fresh value (§2.6)
        token = self._services.new_token()
        cookies = (
            f"{CONTEXT_COOKIE}={token}; Secure; HttpOnly",
            f"{SESSION_COOKIE}={token}; Secure; HttpOnly",
            f"webvpnc=; {_EXPIRED}",
            f"webvpnc={self._webvpnc}; path=/; Secure; HttpOnly",
        )
        success = AuthSuccess(username=username, group=group, cookie=token)
        return _response(200, "OK", self._complete, cookies=cookies, success=success)

    def _form(self, ctx: AuthContext, body: bytes, label: str | None) -> AuthResponse:
        # ocserv re-sets the context cookie with every form (§2.7)
        cookie = f"{CONTEXT_COOKIE}={ctx.id}; Secure; HttpOnly"
        return _response(200, "OK", body, cookies=(cookie,), label=label)


def _password_field(fields: Mapping[str, str]) -> str | None:
    """ocserv takes the first ``<password>`` or ``<..._password>`` element (§2.5)."""
    if "password" in fields:
        return fields["password"]
    for name, value in fields.items():
        if name.endswith("_password"):
            return value
    return None


def _webvpnc_value(policy: AuthPolicy) -> str:
    """ocserv's ``webvpnc`` cookie (§2.6): base URL, cert hash, then the profile."""
    parts = ["bu:/", "p:t", "iu:1/"]
    if policy.server_cert_sha1 is not None:
        parts.append(f"sh:{policy.server_cert_sha1.upper()}")
    if policy.profile is not None:
        # ocserv writes fu:profiles%2F<file>; openconnect fetches bu + fu (§3)
        parts.append(_LU)
        parts.append(f"fu:{quote(policy.profile.uri.lstrip('/'), safe='')}")
        parts.append(f"fh:{policy.profile.sha1_hex.upper()}")
    return "&".join(parts)


def _response(
    status: int,
    reason: str,
    body: bytes,
    *,
    cookies: tuple[str, ...] = (),
    success: AuthSuccess | None = None,
    label: str | None = None,
    close: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> AuthResponse:
    """Headers in ocserv's order (§2.4, §2.6)."""
    headers: list[tuple[str, str]] = [("Connection", "close" if close else "Keep-Alive")]
    if body:
        headers.append(("Content-Type", "text/xml"))
    headers.append(("Content-Length", str(len(body))))
    headers.append(("X-Transcend-Version", "1"))
    headers.extend(extra)
    headers.extend(("Set-Cookie", cookie) for cookie in cookies)
    return AuthResponse(
        status=status,
        reason=reason,
        headers=tuple(headers),
        body=body,
        success=success,
        close=close,
        error_label=label,
    )


# -- the personality --------------------------------------------------------------------


class OcservPersonality(Personality):
    """ocserv 1.1.6 as openconnect 9.01 sees it."""

    name: ClassVar[str] = "ocserv"
    auth_paths: ClassVar[frozenset[str]] = _AUTH_PATHS
    connect_target: ClassVar[str] = CONNECT_TARGET
    legacy_priorities: ClassVar[Mapping[str, int]] = _GATEWAY_LEGACY_PRIORITIES
    dtls12_priorities: ClassVar[Mapping[str, int]] = _GATEWAY_DTLS12_PRIORITIES

    def __repr__(self) -> str:
        return "<personality ocserv>"

    def route(self, method: str, path: str) -> Route | None:
        # every CONNECT goes to admission, which answers a wrong target 404 (§4.1)
        if method == "CONNECT":
            return Route.CONNECT
        if method == "POST" and path in _AUTH_PATHS:
            return Route.AUTH
        if method == "GET" and path.startswith(_DOWNLOAD_PREFIX):
            return Route.DOWNLOAD
        return None

    def answer(self, kind: Answer) -> HttpAnswer:
        return _ANSWERS[kind]

    def auth_dialect(self, policy: AuthPolicy, services: AuthServices) -> AuthDialect:
        return _OcservAuth(policy, services)

    def choose_dtls_cipher(
        self,
        request: ConnectRequest,
        *,
        legacy_prefs: Mapping[str, int],
        dtls12_prefs: Mapping[str, int],
    ) -> tuple[str, CipherHeader] | None:
        return choose_dtls_cipher(request, legacy_prefs=legacy_prefs, dtls12_prefs=dtls12_prefs)

    def tunnel_params(
        self,
        request: ConnectRequest,
        *,
        address: IPv4Address,
        netmask: IPv4Address,
        settings: TunnelSettings,
        dtls: DtlsGrant | None,
    ) -> TunnelParams:
        params = TunnelParams(
            version=1,
            server_name=settings.server_name,
            hostname=request.hostname,
            address=address,
            netmask=netmask,
            dns=settings.dns,
            mtu=settings.mtu,
            base_mtu=request.base_mtu,
            cstp_dpd_s=settings.dpd_s,
            cstp_keepalive_s=settings.keepalive_s,
        )
        if dtls is None:
            return params
        # ocserv: the DTLS MTU follows the chosen suite; ours is configured (§4.4)
        return dataclasses.replace(
            params,
            dtls_port=dtls.port,
            dtls_session_id=dtls.session_id,
            dtls_cipher=dtls.cipher,
            dtls_cipher_header=dtls.header,
            dtls_mtu=settings.dtls_mtu or settings.mtu,
            dtls_dpd_s=settings.dpd_s,
            dtls_keepalive_s=settings.keepalive_s,
        )


#: the one instance
OCSERV: Final = OcservPersonality()
