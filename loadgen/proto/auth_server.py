"""Phases 2 and 3 on the gateway side: ocserv 1.1.6's aggregate auth (protocol.md §2.3 to §2.7).

``AuthServer`` is sans-IO: the gateway hands it one parsed HTTP request
(method, path, cookies, body, ``now``) and writes back the ``AuthResponse``.
Randomness (context ids, session cookies, the ``reject_ratio`` draw) comes from
the injected ``random_bytes``.  The conversation partner is ``AuthFlow``
(``loadgen.proto.auth``)::

    << POST /     init [group-select]       >> 200 username form (+ group_list),
                                               Set-Cookie: webvpncontext=<ctx>
    << POST /auth init group-select         >> 200 username form, chosen group first
    << POST /auth auth-reply username       >> 200 password form (unknown users too)
    << POST /auth auth-reply password       >> 200 complete, Set-Cookie: webvpn=<token>
                                            >> or 200 "Login failed" form (tries 1..n-1)
                                            >> or 401 Authentication failed + close

State lives in pending contexts keyed by the ``webvpncontext`` cookie (§2.5),
bounded in number (``max_pending``) and in age (``context_ttl_s``, like
ocserv's ``auth-timeout``, §2.7).  Deviation from the 1.1.6 capture: ocserv
keeps the pre-username state in its per-connection worker and clears the
cookie on the first form; this server has no connection, so it sets the
context cookie from the first form on.  Passwords are compared with
``hmac.compare_digest`` and never stored, logged or put in a repr.
"""

from __future__ import annotations

import base64
import enum
import hmac
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import quote

from loadgen.proto.auth_xml import (
    ClientAuthReply,
    ClientInit,
    ClientLogout,
    FormInput,
    ProfileManifestEntry,
    build_auth_complete,
    build_auth_request,
    parse_client_message_untrusted,
)
from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "AUTH_PATHS",
    "ERROR_LABELS",
    "AuthPolicy",
    "AuthResponse",
    "AuthServer",
    "AuthSuccess",
    "GroupSpec",
    "UserSpec",
]

#: ocserv accepts auth POSTs on these paths (§2.3); the query string is ignored.
AUTH_PATHS = frozenset({"/", "/auth", "/VPN"})

#: The closed set of ``AuthResponse.error_label`` values (metric labels).
ERROR_LABELS = (
    "not_found",  # 404: not an auth path
    "bad_method",  # 405: neither POST nor GET
    "malformed_xml",  # 400: the body is not a client config-auth document
    "too_many_pending",  # 503: max_pending contexts in progress
    "context_unknown",  # auth-reply without a known context: restart at the username
    "context_expired",  # auth-reply whose context outlived context_ttl_s: restart
    "no_username",  # auth-reply without <username>: the username form again
    "no_password",  # 401 No password: the password stage got no password
    "login_failed",  # wrong password (or refused): the password form again
    "auth_failed",  # 401 Authentication failed: the last try failed
    "logout",  # XML logout: ocserv 1.1.6 has none, the login form comes back
)

#: Session cookie and context ids: base64 of 32 random bytes (§2.6).
_TOKEN_BYTES = 32
#: ocserv keeps 64 bytes of a username (MAX_USERNAME_SIZE); longer ones can never log in.
_MAX_USERNAME_CHARS = 256
_USERNAME_MESSAGE = "Please enter your username."
_PASSWORD_MESSAGE = "Please enter your password."
#: ocserv 1.1.6 worker-auth.c, after a wrong password (§2.7).
_RETRY_MESSAGE = "Login failed.\nPlease enter your password."
_USERNAME_INPUT = FormInput(type="text", name="username", label="Username:")
_PASSWORD_INPUT = FormInput(type="password", name="password", label="Password:")
#: How ocserv deletes a cookie (§2.4, §2.6).
_EXPIRED = "expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure; HttpOnly"
#: ocserv's AnyConnect translation-table URL in ``webvpnc`` when a profile is set (§2.6).
_LU = "lu:/+CSCOT+/translation-table?textdomain%3DAnyConnect%26type%3Dmanifest"
_SHA1_HEX = re.compile(r"[0-9A-Fa-f]{40}\Z")
#: Draw size for the reject_ratio decision.
_RATIO_BYTES = 8
#: Fresh ids per context before blaming the random source.
_ID_ATTEMPTS = 4


# -- configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    """ocserv's ``select-group = name[alias]`` (§2.4): value ``name``, label ``alias``."""

    name: str
    alias: str | None = None


@dataclass(frozen=True)
class UserSpec:
    """A ``plain`` auth user; ``groups`` None means any group."""

    password: str = field(repr=False)
    groups: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    """Who may log in, and how the gateway behaves while they try."""

    #: None accepts any non-empty username with any password (the load-test mode)
    users: Mapping[str, UserSpec] | None = None
    groups: tuple[GroupSpec, ...] = ()
    #: the group listed first (selected); the first group when None
    default_group: str | None = None
    profile: ProfileManifestEntry | None = None
    #: SHA-1 (hex) of the server certificate DER, for ``webvpnc`` ``sh:`` (§2.6)
    server_cert_sha1: str | None = None
    banner: str | None = None
    #: ocserv MAX_PASSWORD_TRIES (§2.7)
    max_password_tries: int = 3
    #: this fraction of otherwise valid logins is refused (failure injection)
    reject_ratio: float = 0.0
    #: like ocserv's auth-timeout: a context's life from its first form
    context_ttl_s: float = 240.0
    #: contexts in progress at once; more answer 503
    max_pending: int = 16384

    def __post_init__(self) -> None:
        if self.users is not None:
            # a private read-only copy: the caller's dict may change later
            object.__setattr__(self, "users", MappingProxyType(dict(self.users)))
        names = [g.name for g in self.groups]
        folded = [n.casefold() for n in names]
        if any(not n for n in names) or len(set(folded)) != len(folded):
            raise ValueError("group names must be non-empty and unique (case-insensitively)")
        if self.default_group is not None and self.default_group not in names:
            raise ValueError(f"default_group {self.default_group!r} is not a configured group")
        for user, spec in (self.users or {}).items():
            unknown = set(spec.groups or ()) - set(names)
            if unknown:
                raise ValueError(f"user {user!r} names unknown groups {sorted(unknown)}")
        if self.max_password_tries < 1:
            raise ValueError("max_password_tries must be at least 1")
        if not 0.0 <= self.reject_ratio <= 1.0:
            raise ValueError("reject_ratio must be within [0, 1]")
        if not (math.isfinite(self.context_ttl_s) and self.context_ttl_s > 0):
            raise ValueError("context_ttl_s must be a positive number of seconds")
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if self.server_cert_sha1 is not None and not _SHA1_HEX.match(self.server_cert_sha1):
            raise ValueError("server_cert_sha1 must be 40 hex digits")
        if self.profile is not None and not _SHA1_HEX.match(self.profile.sha1_hex):
            raise ValueError("profile.sha1_hex must be 40 hex digits")


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AuthSuccess:
    """A user logged in; ``cookie`` is the ``webvpn`` session cookie CONNECT must carry."""

    username: str
    #: the group name (never the alias); None when no groups are configured
    group: str | None
    cookie: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class AuthResponse:
    """The HTTP response to write; close the connection afterwards when ``close``."""

    status: int
    reason: str
    #: Set-Cookie values are secrets: kept out of repr
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)
    success: AuthSuccess | None = None
    close: bool = False
    #: one of ERROR_LABELS, or None for a normal step
    error_label: str | None = None


# -- state ---------------------------------------------------------------------------


class _Stage(enum.Enum):
    USERNAME = "username"
    PASSWORD = "password"


@dataclass(slots=True)
class _Context:
    """One login in progress.  Never holds a password."""

    id: str = field(repr=False)
    deadline_s: float
    group: str | None
    stage: _Stage = _Stage.USERNAME
    username: str | None = None
    #: False when the username was too long to keep whole: it can never log in
    username_ok: bool = True
    tries: int = 0


class AuthServer:
    """Server side of aggregate auth, ocserv 1.1.6 flavoured (one instance per gateway)."""

    def __init__(self, policy: AuthPolicy, *, random_bytes: Callable[[int], bytes]) -> None:
        self._policy = policy
        self._random_bytes = random_bytes
        self._contexts: OrderedDict[str, _Context] = OrderedDict()
        pairs = [(g.name, g.alias or g.name) for g in policy.groups]
        selections: list[str | None] = [name for name, _ in pairs] or [None]
        self._default_group: str | None = policy.default_group or (pairs[0][0] if pairs else None)
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
            self._complete = build_auth_complete(
                banner=policy.banner, profiles=(policy.profile,) if policy.profile else ()
            )
        except LocalProtocolError as exc:
            raise ValueError(f"the policy cannot be sent as XML: {exc}") from exc
        self._webvpnc = _webvpnc_value(policy)
        # compared against when the user is unknown, so both paths do the same work
        self._dummy_secret = b"\x00" * 32

    def __repr__(self) -> str:
        return f"<AuthServer pending={len(self._contexts)}>"

    @property
    def pending(self) -> int:
        """Logins in progress (a gauge for the gateway)."""
        return len(self._contexts)

    def expire(self, now: float) -> int:
        """Drop contexts older than ``context_ttl_s``; return how many went.

        ``handle`` does this itself; a gateway may also call it from a timer so
        that memory is released while no requests come in.
        """
        dropped = 0
        # contexts are kept in creation order, so their deadlines are sorted
        while self._contexts:
            oldest = next(iter(self._contexts.values()))
            if oldest.deadline_s > now:
                break
            self._contexts.popitem(last=False)
            dropped += 1
        return dropped

    def handle(
        self,
        *,
        method: str,
        path: str,
        cookies: Mapping[str, str],
        body: bytes,
        now: float,
    ) -> AuthResponse:
        """Answer one HTTP request of phases 2 and 3."""
        if path.partition("?")[0] not in AUTH_PATHS:
            # ocserv: "404 Not found" + Connection: close (§3)
            return _closing(404, "Not found", "not_found")
        message: ClientInit | ClientAuthReply | ClientLogout | None = None
        if method == "POST":
            try:
                message = parse_client_message_untrusted(body)
            except BadPacketError:
                return _closing(400, "Bad Request", "malformed_xml")
        elif method != "GET":
            return _closing(405, "Method Not Allowed", "bad_method", (("Allow", "GET, POST"),))
        ctx, expired = self._lookup(cookies.get("webvpncontext"), now)
        if isinstance(message, ClientLogout):
            return self._logout(ctx)
        if isinstance(message, ClientAuthReply):
            if ctx is None:
                # no context: ocserv restarts authentication at the username (§2.5)
                label = "context_expired" if expired else "context_unknown"
                return self._start(None, None, now, label)
            if ctx.stage is _Stage.USERNAME:
                return self._take_username(ctx, message)
            return self._take_password(ctx, message)
        # an init, or GET, which ocserv answers with the same form (§2.8)
        return self._start(ctx, message.group_select if message else None, now, None)

    # -- steps ----------------------------------------------------------------------

    def _start(
        self, ctx: _Context | None, group_select: str | None, now: float, label: str | None
    ) -> AuthResponse:
        """The username form, for a new context or for a known one starting over."""
        if ctx is None:
            if len(self._contexts) >= self._policy.max_pending:
                return _closing(503, "Service Unavailable", "too_many_pending")
            ctx = _Context(
                id=self._new_id(),
                deadline_s=now + self._policy.context_ttl_s,
                group=self._default_group,
            )
            self._contexts[ctx.id] = ctx
        # a second init (openconnect's group change, §2.5) keeps the try count
        ctx.stage, ctx.username, ctx.username_ok = _Stage.USERNAME, None, True
        self._select_group(ctx, group_select)
        return self._form(ctx, self._username_forms[ctx.group], label)

    def _take_username(self, ctx: _Context, reply: ClientAuthReply) -> AuthResponse:
        # the group comes with the username, at top level or as a form field (§2.5)
        group = reply.group_select
        self._select_group(ctx, group if group is not None else reply.fields.get("group_list"))
        username = reply.fields.get("username")
        if not username:
            return self._form(ctx, self._username_forms[ctx.group], "no_username")
        ctx.username = username[:_MAX_USERNAME_CHARS]
        ctx.username_ok = len(username) <= _MAX_USERNAME_CHARS
        ctx.stage = _Stage.PASSWORD
        # a <password> sent along is ignored: ocserv needs two round trips (§2.5),
        # and an unknown user gets the password form too (§2.7)
        return self._form(ctx, self._password_form, None)

    def _take_password(self, ctx: _Context, reply: ClientAuthReply) -> AuthResponse:
        password = _password_field(reply.fields)
        if password is None:
            self._contexts.pop(ctx.id, None)
            return _closing(401, "No password", "no_password")
        accepted = self._verify(ctx, password)
        del password
        if accepted and self._injected_reject():
            accepted = False
        if accepted and ctx.username is not None:
            self._contexts.pop(ctx.id, None)
            return self._success(ctx.username, ctx.group)
        ctx.tries += 1
        if ctx.tries >= self._policy.max_password_tries:
            # ocserv: 401 then a fatal alert; the worker exits (§2.7)
            self._contexts.pop(ctx.id, None)
            return _closing(401, "Authentication failed", "auth_failed")
        return self._form(ctx, self._retry_form, "login_failed")

    def _logout(self, ctx: _Context | None) -> AuthResponse:
        # ocserv 1.1.6 has no XML logout: it reads no username and sends the login
        # form, with the context cookie cleared as on its first form (§2.4)
        if ctx is not None:
            self._contexts.pop(ctx.id, None)
        body = self._username_forms[self._default_group]
        return _response(200, "OK", body, cookies=(f"webvpncontext=; {_EXPIRED}",), label="logout")

    def _success(self, username: str, group: str | None) -> AuthResponse:
        # ocserv 1.1.6: webvpn and webvpncontext carry the same fresh value (§2.6)
        token = base64.b64encode(self._draw(_TOKEN_BYTES)).decode("ascii")
        cookies = (
            f"webvpncontext={token}; Secure; HttpOnly",
            f"webvpn={token}; Secure; HttpOnly",
            f"webvpnc=; {_EXPIRED}",
            f"webvpnc={self._webvpnc}; path=/; Secure; HttpOnly",
        )
        success = AuthSuccess(username=username, group=group, cookie=token)
        return _response(200, "OK", self._complete, cookies=cookies, success=success)

    # -- helpers ----------------------------------------------------------------------

    def _lookup(self, cookie: str | None, now: float) -> tuple[_Context | None, bool]:
        """The context named by the cookie, and whether it had just expired."""
        ctx = self._contexts.get(cookie) if cookie else None
        expired = ctx is not None and ctx.deadline_s <= now
        if expired and ctx is not None:
            del self._contexts[ctx.id]
            ctx = None
        self.expire(now)
        return ctx, expired

    def _select_group(self, ctx: _Context, wanted: str | None) -> None:
        """Names first, then aliases, case-insensitively (ocserv issue #267, §2.5).

        An unknown group is ignored, as ocserv does: the current one stays.
        """
        if wanted is None or not self._policy.groups:
            return
        key = wanted.strip().casefold()
        for group in self._policy.groups:
            if group.name.casefold() == key:
                ctx.group = group.name
                return
        for group in self._policy.groups:
            if group.alias is not None and group.alias.casefold() == key:
                ctx.group = group.name
                return

    def _verify(self, ctx: _Context, password: str) -> bool:
        """Constant-time check of the password, then the group membership."""
        given = password.encode("utf-8", "surrogatepass")
        users = self._policy.users
        if users is None:
            return ctx.username_ok and bool(ctx.username)
        spec = users.get(ctx.username) if ctx.username_ok and ctx.username else None
        expected = spec.password.encode("utf-8", "surrogatepass") if spec else self._dummy_secret
        matches = hmac.compare_digest(given, expected)
        if spec is None or (spec.groups is not None and ctx.group not in spec.groups):
            # a user outside the chosen group is refused like a wrong password
            return False
        return matches

    def _injected_reject(self) -> bool:
        ratio = self._policy.reject_ratio
        if ratio <= 0.0:
            return False
        if ratio >= 1.0:
            return True
        draw = int.from_bytes(self._draw(_RATIO_BYTES), "big")
        return draw < ratio * (1 << (8 * _RATIO_BYTES))

    def _draw(self, size: int) -> bytes:
        data = self._random_bytes(size)
        if not isinstance(data, bytes) or len(data) != size:
            raise LocalProtocolError(f"random_bytes({size}) did not return {size} bytes")
        return data

    def _new_id(self) -> str:
        for _ in range(_ID_ATTEMPTS):
            candidate = base64.b64encode(self._draw(_TOKEN_BYTES)).decode("ascii")
            if candidate not in self._contexts:
                return candidate
        raise LocalProtocolError("random_bytes keeps repeating itself")

    def _form(self, ctx: _Context, body: bytes, label: str | None) -> AuthResponse:
        # ocserv re-sets the context cookie with every form (§2.7)
        cookie = f"webvpncontext={ctx.id}; Secure; HttpOnly"
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


def _closing(
    status: int, reason: str, label: str, extra: tuple[tuple[str, str], ...] = ()
) -> AuthResponse:
    """An empty answer after which the gateway closes the connection."""
    return _response(status, reason, b"", label=label, close=True, extra=extra)
