"""The personality seam: what one kind of gateway does differently, behind one interface.

The reference gateway's server roles (``AuthServer``, ``ConnectAdmission``)
and its trio shell hold what every AnyConnect gateway shares: contexts and
their bounds, password checks, cookie records, address leases, the HTTP
plumbing.  A ``Personality`` holds what is one vendor's: the paths it
answers, the status lines of its refusals, the auth conversation and its
documents, its DTLS cipher preference and its CONNECT answer.  The gateway
picks one by name (``personality_for``) and knows nothing of its details.

Where the parts of the Cisco flow (the seed, issue 15) go:

==========================================  ==========================================
behaviour                                   hook
==========================================  ==========================================
paths: auth, CONNECT, downloads             ``route``, ``auth_paths``, ``connect_target``
status lines, ``X-Reason``                  ``answer`` (one table of ``Answer`` kinds)
load-balancing redirect (302 to a member)   a new ``Answer`` kind; the gateway adds the
                                            member's ``Location``
version exchange, group selection           ``AuthDialect.start`` (sees the ``init``)
``group_list``, ``<opaque>`` echoed back    ``AuthDialect.start``/``reply`` build and read
                                            them with the ``auth_xml`` builders
where an auth context is found              ``AuthDialect.context_key`` (cookie; ASA: the
                                            opaque's ``aggauth-handle``)
username/password stages, double auth,      ``AuthDialect.reply``: its own stages, the
challenges, ``<client-cert-request/>``      shared checks in ``AuthServices``; the TLS
                                            peer certificate's CN is ``peer_cn``
failures: 401, or 200 with ``<error>``      ``AuthDialect.reply`` and ``closing``
success document, session cookies           ``AuthDialect.reply`` (``AuthSuccess``)
logout                                      ``AuthDialect.logout``
DTLS suite choice and preference tables     ``choose_dtls_cipher``, ``*_priorities``
CONNECT response headers                    ``tunnel_params``, ``answer(CONNECTED)``
==========================================  ==========================================

Everything here is sans-IO: time and randomness reach a dialect through its
arguments and ``AuthServices``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import ClassVar, Final, Protocol

from loadgen.proto.auth_policy import AuthPolicy
from loadgen.proto.auth_xml import ClientAuthReply, ClientInit, ClientLogout
from loadgen.proto.tunnel import CipherHeader, ConnectRequest, TunnelParams

__all__ = [
    "ERROR_LABELS",
    "Answer",
    "AuthContext",
    "AuthDialect",
    "AuthResponse",
    "AuthServices",
    "AuthSuccess",
    "DtlsGrant",
    "HttpAnswer",
    "Personality",
    "Route",
    "TunnelSettings",
]

#: The closed set of ``AuthResponse.error_label`` values (metric labels).
ERROR_LABELS: Final = (
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
    "no_certificate",  # 401 No certificate: a certificate mode without a client certificate
    "cert_user_mismatch",  # 401: the username is not the certificate's CN (or it has none)
    "otp_failed",  # 401: the one-time password was wrong, replayed or out of the window
)


class Route(enum.Enum):
    """Which server role answers a request."""

    AUTH = "auth"
    CONNECT = "connect"
    DOWNLOAD = "download"


class Answer(enum.Enum):
    """The answers without a document of their own; ``Personality.answer`` gives their lines."""

    NOT_FOUND = "not_found"  # no such path, or a CONNECT elsewhere
    BAD_REQUEST = "bad_request"  # malformed HTTP
    MALFORMED_XML = "malformed_xml"  # an auth body that is no client document
    METHOD_NOT_ALLOWED = "method_not_allowed"  # an auth path asked with another method
    TOO_MANY_PENDING = "too_many_pending"  # too many logins in progress
    NO_PASSWORD = "no_password"  # the password stage got none
    AUTH_FAILED = "auth_failed"  # the last password try failed
    NO_CERTIFICATE = "no_certificate"  # a certificate mode, and the TLS peer sent none
    CONNECT_MALFORMED = "connect_malformed"  # CONNECT headers that do not parse
    NO_SESSION_COOKIE = "no_session_cookie"  # CONNECT without the session cookie
    COOKIE_REJECTED = "cookie_rejected"  # CONNECT with an unknown or expired cookie
    TOO_MANY_SESSIONS = "too_many_sessions"  # the session limit is reached
    NO_ADDRESS = "no_address"  # the address pool is exhausted
    CONNECTED = "connected"  # the CONNECT answer (its headers are the TunnelParams)
    DOWNLOAD_UNAUTHORIZED = "download_unauthorized"  # a download without a valid cookie
    DOWNLOADED = "downloaded"  # a download's answer (its body is the file)


@dataclass(frozen=True, kw_only=True)
class HttpAnswer:
    """A status line and the headers that go with it (Content-Length is the writer's)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


# -- auth -----------------------------------------------------------------------------


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


@dataclass(slots=True)
class AuthContext:
    """One login in progress, kept by ``AuthServer``.  Never holds a password."""

    id: str = field(repr=False)
    deadline_s: float
    group: str | None
    #: the dialect's own stage name
    stage: str = ""
    username: str | None = None
    #: False when the username was too long to keep whole: it can never log in
    username_ok: bool = True
    tries: int = 0


class AuthServices(Protocol):
    """What ``AuthServer`` lends a dialect: the context store, randomness, the checks."""

    @property
    def default_group(self) -> str | None:
        """The group a new context starts in."""

    def open_context(self, now: float) -> AuthContext | None:
        """A new context in the default group, or None when ``max_pending`` are open."""

    def close_context(self, ctx: AuthContext) -> None:
        """Forget a context (its login ended)."""

    def select_group(self, ctx: AuthContext, wanted: str | None) -> None:
        """Move ``ctx`` to the group named or aliased ``wanted``; unknown names change nothing."""

    def check_password(self, ctx: AuthContext, password: str) -> bool:
        """Constant-time check of ``ctx.username``'s password and group, then failure injection."""

    def check_certificate(self, ctx: AuthContext, peer_cn: str) -> bool:
        """A verified certificate's CN as ``ctx.username``: usable, in the group, not injected."""

    def check_otp(self, ctx: AuthContext, code: str, now: float) -> bool:
        """``ctx.username``'s one-time password (used up when it matches)."""

    def new_token(self) -> str:
        """A fresh session token (base64 of 32 random bytes)."""


class AuthDialect(abc.ABC):
    """One personality's conversation of phases 2 and 3, for one policy.

    Built once per ``AuthServer`` (a policy that cannot be sent fails then,
    with ValueError).  ``AuthServer`` has already checked the path, the
    method and the XML, and found the context; the dialect decides the answer.
    """

    @abc.abstractmethod
    def context_key(self, cookies: Mapping[str, str]) -> str | None:
        """Which context a request continues (ocserv: the ``webvpncontext`` cookie)."""

    @abc.abstractmethod
    def closing(self, answer: Answer, label: str) -> AuthResponse:
        """A documentless ``answer`` after which the connection is closed."""

    @abc.abstractmethod
    def start(
        self,
        ctx: AuthContext | None,
        init: ClientInit | None,
        now: float,
        *,
        peer_cn: str | None = None,
    ) -> AuthResponse:
        """An ``init`` (or a GET, ``init`` None): the first form.

        ``peer_cn`` is the CN of the connection's verified client certificate:
        None without one, ``""`` for one without a CN.
        """

    @abc.abstractmethod
    def reply(
        self,
        ctx: AuthContext | None,
        reply: ClientAuthReply,
        *,
        expired: bool,
        now: float,
        peer_cn: str | None = None,
    ) -> AuthResponse:
        """An ``auth-reply``; ``ctx`` None when unknown (``expired``: it timed out)."""

    @abc.abstractmethod
    def logout(self, ctx: AuthContext | None, message: ClientLogout) -> AuthResponse:
        """An XML logout."""


# -- CONNECT --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TunnelSettings:
    """The gateway's tunnel settings that a CONNECT answer is made of."""

    server_name: str
    #: X-CSTP-MTU
    mtu: int
    #: X-DTLS-MTU; None: the same as ``mtu``
    dtls_mtu: int | None
    dpd_s: int
    keepalive_s: int
    dns: tuple[IPv4Address, ...] = ()
    #: offer DTLS at all
    dtls: bool = True
    #: suites accepted per header, best first; None: the personality's table
    dtls_ciphers: tuple[str, ...] | None = None
    dtls12_ciphers: tuple[str, ...] | None = None
    #: refuse CONNECT beyond this many tunnels
    max_sessions: int | None = None


@dataclass(frozen=True, kw_only=True)
class DtlsGrant:
    """The legacy DTLS session a CONNECT answer offers (§4.3, §7.2)."""

    port: int
    session_id: bytes = field(repr=False)
    cipher: str
    header: CipherHeader


class Personality(abc.ABC):
    """What one kind of gateway does its own way (stateless; one instance serves all)."""

    #: the registry's name, ``loadgen gateway --personality NAME``
    name: ClassVar[str]
    #: where auth documents are POSTed; the query string is ignored
    auth_paths: ClassVar[frozenset[str]]
    #: the CONNECT target; others are answered NOT_FOUND
    connect_target: ClassVar[str]
    #: DTLS server preferences (name -> priority) when the gateway names none
    legacy_priorities: ClassVar[Mapping[str, int]]
    dtls12_priorities: ClassVar[Mapping[str, int]]

    @abc.abstractmethod
    def route(self, method: str, path: str) -> Route | None:
        """The role that answers ``method path`` (no query string); None: NOT_FOUND."""

    @abc.abstractmethod
    def answer(self, kind: Answer) -> HttpAnswer:
        """The status line and headers of a documentless answer."""

    @abc.abstractmethod
    def auth_dialect(self, policy: AuthPolicy, services: AuthServices) -> AuthDialect:
        """The auth conversation for ``policy``, its documents built now."""

    @abc.abstractmethod
    def choose_dtls_cipher(
        self,
        request: ConnectRequest,
        *,
        legacy_prefs: Mapping[str, int],
        dtls12_prefs: Mapping[str, int],
    ) -> tuple[str, CipherHeader] | None:
        """The legacy DTLS suite to answer with and its header, or None for no DTLS."""

    @abc.abstractmethod
    def tunnel_params(
        self,
        request: ConnectRequest,
        *,
        address: IPv4Address,
        netmask: IPv4Address,
        settings: TunnelSettings,
        dtls: DtlsGrant | None,
    ) -> TunnelParams:
        """The headers of the CONNECT answer."""
