"""Phases 2 and 3 on the gateway side: aggregate auth (protocol.md §2.3 to §2.7).

``AuthServer`` is sans-IO: the gateway hands it one parsed HTTP request
(method, path, cookies, body, ``now``) and writes back the ``AuthResponse``.
Randomness (context ids, session cookies, the ``reject_ratio`` draw) comes from
the injected ``random_bytes``.  What the conversation looks like (its stages,
documents, cookies and status lines) is the personality's ``AuthDialect``
(``loadgen.proto.personality``); this class holds what every personality
shares, as the dialect's ``AuthServices``.

State lives in pending contexts, bounded in number (``max_pending``) and in
age (``context_ttl_s``, like ocserv's ``auth-timeout``, §2.7).  Passwords are
compared with ``hmac.compare_digest`` and never stored, logged or put in a
repr.
"""

from __future__ import annotations

import base64
import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping

from loadgen.proto.auth_policy import AuthMode, AuthPolicy, GroupSpec, UserSpec
from loadgen.proto.auth_xml import (
    ClientAuthReply,
    ClientInit,
    ClientLogout,
    parse_client_message_untrusted,
)
from loadgen.proto.errors import BadPacketError, LocalProtocolError
from loadgen.proto.otp import OtpVerifier
from loadgen.proto.personality import Personality
from loadgen.proto.personality.base import (
    ERROR_LABELS,
    Answer,
    AuthContext,
    AuthResponse,
    AuthSuccess,
)

__all__ = [
    "ERROR_LABELS",
    "AuthMode",
    "AuthPolicy",
    "AuthResponse",
    "AuthServer",
    "AuthSuccess",
    "GroupSpec",
    "UserSpec",
]

#: Session cookie and context ids: base64 of 32 random bytes (§2.6).
_TOKEN_BYTES = 32
#: Draw size for the reject_ratio decision.
_RATIO_BYTES = 8
#: Fresh ids per context before blaming the random source.
_ID_ATTEMPTS = 4
#: A certificate CN longer than this names no user (ocserv keeps MAX_USERNAME_SIZE 64 bytes).
_MAX_CN_CHARS = 256


class AuthServer:
    """Server side of aggregate auth, in one personality's dialect (one instance per gateway)."""

    def __init__(
        self,
        policy: AuthPolicy,
        *,
        personality: Personality,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._policy = policy
        self._random_bytes = random_bytes
        self._contexts: OrderedDict[str, AuthContext] = OrderedDict()
        groups = policy.groups
        self._default_group = policy.default_group or (groups[0].name if groups else None)
        self._auth_paths = personality.auth_paths
        self._otp = OtpVerifier(policy.otp_users) if policy.otp_users is not None else None
        #: the current request's wall clock for TOTP (see ``handle``)
        self._unix_now: float | None = None
        self._dialect = personality.auth_dialect(policy, self)
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
        peer_cn: str | None = None,
        unix_now: float | None = None,
    ) -> AuthResponse:
        """Answer one HTTP request of phases 2 and 3.

        ``peer_cn``: the subject CN of the TLS peer's verified client
        certificate (ocserv's ``cert-user-oid = 2.5.4.3``); None without one,
        ``""`` for a certificate without a CN.  ``unix_now``: the wall clock
        for TOTP steps, when ``now`` is a monotonic clock (None: ``now`` is Unix time).
        """
        self._unix_now = unix_now
        if path.partition("?")[0] not in self._auth_paths:
            # ocserv: "404 Not found" + Connection: close (§3)
            return self._dialect.closing(Answer.NOT_FOUND, "not_found")
        message: ClientInit | ClientAuthReply | ClientLogout | None = None
        if method == "POST":
            try:
                message = parse_client_message_untrusted(body)
            except BadPacketError:
                return self._dialect.closing(Answer.MALFORMED_XML, "malformed_xml")
        elif method != "GET":
            return self._dialect.closing(Answer.METHOD_NOT_ALLOWED, "bad_method")
        ctx, expired = self._lookup(self._dialect.context_key(cookies), now)
        if isinstance(message, ClientLogout):
            return self._dialect.logout(ctx, message)
        if isinstance(message, ClientAuthReply):
            return self._dialect.reply(ctx, message, expired=expired, now=now, peer_cn=peer_cn)
        # an init, or GET (message None)
        return self._dialect.start(ctx, message, now, peer_cn=peer_cn)

    # -- AuthServices -----------------------------------------------------------------

    @property
    def default_group(self) -> str | None:
        return self._default_group

    def open_context(self, now: float) -> AuthContext | None:
        if len(self._contexts) >= self._policy.max_pending:
            return None
        ctx = AuthContext(
            id=self._new_id(),
            deadline_s=now + self._policy.context_ttl_s,
            group=self._default_group,
        )
        self._contexts[ctx.id] = ctx
        return ctx

    def close_context(self, ctx: AuthContext) -> None:
        self._contexts.pop(ctx.id, None)

    def select_group(self, ctx: AuthContext, wanted: str | None) -> None:
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

    def check_password(self, ctx: AuthContext, password: str) -> bool:
        """The password and group check, then the injected ``reject_ratio`` refusal."""
        return self._verify(ctx, password) and not self._injected_reject()

    def check_certificate(self, ctx: AuthContext, peer_cn: str) -> bool:
        """The CN is the user (no password): it must be usable and, with users, in the group."""
        if not peer_cn or len(peer_cn) > _MAX_CN_CHARS:
            return False
        users = self._policy.users
        spec = users.get(peer_cn) if users is not None else None
        if spec is not None and spec.groups is not None and ctx.group not in spec.groups:
            return False
        return not self._injected_reject()

    def check_otp(self, ctx: AuthContext, code: str, now: float) -> bool:
        if self._otp is None:
            raise LocalProtocolError("check_otp without otp_users in the policy")
        username = ctx.username if ctx.username_ok and ctx.username else ""
        # an unknown or empty user name is checked too: the verifier does the same work
        return self._otp.check(username, code, now if self._unix_now is None else self._unix_now)

    def new_token(self) -> str:
        return base64.b64encode(self._draw(_TOKEN_BYTES)).decode("ascii")

    # -- helpers ----------------------------------------------------------------------

    def _lookup(self, key: str | None, now: float) -> tuple[AuthContext | None, bool]:
        """The context named by ``key``, and whether it had just expired."""
        ctx = self._contexts.get(key) if key else None
        expired = ctx is not None and ctx.deadline_s <= now
        if expired and ctx is not None:
            del self._contexts[ctx.id]
            ctx = None
        self.expire(now)
        return ctx, expired

    def _verify(self, ctx: AuthContext, password: str) -> bool:
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
            candidate = self.new_token()
            if candidate not in self._contexts:
                return candidate
        raise LocalProtocolError("random_bytes keeps repeating itself")
