"""Phases 2 and 3 on the client side: group selection and user authentication.

``AuthFlow`` is sans-IO: it says which XML to POST where, the engine does the
HTTP exchange (with the ``webvpncontext`` cookie, §2.5) and feeds back the
status and body.  The XML codec, both roles, lives in ``auth_xml`` and is
re-exported here.

Conversation (protocol.md §0, §2.3 to §2.7)::

    >> start()                         << POST /      init             (group_select)
    >> 200 form with group_list        << POST action init+group-select (group_select,
                                                      only when the group is not the default)
    >> 200 form asking username        << POST action auth-reply        (auth)
    >> 200 form asking password        << POST action auth-reply        (auth)
    >> 200 complete                    << AuthComplete
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Literal
from urllib.parse import urljoin, urlsplit

from loadgen.proto.auth_xml import (
    MAX_BODY_BYTES,
    AuthComplete,
    AuthForm,
    ClientAuthReply,
    ClientInfo,
    ClientInit,
    ClientLogout,
    CoreManifestEntry,
    FormInput,
    FormSelect,
    ProfileManifestEntry,
    SelectOption,
    build_auth_complete,
    build_auth_reply,
    build_auth_request,
    build_init,
    build_logout,
    parse_auth_response_untrusted,
    parse_client_message_untrusted,
)
from loadgen.proto.errors import (
    AuthRejectedError,
    AuthUnsupportedError,
    BadPacketError,
    GroupUnknownError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "DEFAULT_MAX_ROUND_TRIPS",
    "MAX_BODY_BYTES",
    "AuthComplete",
    "AuthFlow",
    "AuthForm",
    "AuthPhase",
    "AuthRequest",
    "ClientAuthReply",
    "ClientInfo",
    "ClientInit",
    "ClientLogout",
    "CoreManifestEntry",
    "FormInput",
    "FormSelect",
    "HttpStatusError",
    "ProfileManifestEntry",
    "SelectOption",
    "build_auth_complete",
    "build_auth_reply",
    "build_auth_request",
    "build_init",
    "build_logout",
    "parse_auth_response_untrusted",
    "parse_client_message_untrusted",
]

#: The phase a request belongs to; the values match ``loadgen.failures.Phase``.
AuthPhase = Literal["group_select", "auth"]

#: ocserv needs up to five (init, group init, username, password, one retry);
#: anything longer is a gateway going round in circles.
DEFAULT_MAX_ROUND_TRIPS = 8
_MESSAGE_LIMIT = 200


class HttpStatusError(RemoteProtocolError):
    """The gateway answered an auth POST with a status other than 200 or 401."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"unexpected HTTP status {status} {reason}".rstrip())
        self.status = status


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthRequest:
    """POST ``body`` (XML) to ``path`` on the gateway's TLS connection."""

    path: str
    #: may hold the password: kept out of repr
    body: bytes = dataclasses.field(repr=False)


class _State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


class AuthFlow:
    """Client-side state machine of phases 2 and 3 (one instance per login).

    After an error or a completion the flow refuses further use (h11 style).
    """

    def __init__(
        self,
        info: ClientInfo,
        *,
        base_url: str,
        username: str,
        password: str,
        group: str | None,
        max_round_trips: int = DEFAULT_MAX_ROUND_TRIPS,
    ) -> None:
        self._info = info
        self._base_url = base_url
        self._base = urlsplit(base_url)
        self._username = username
        self._password = password
        self._group = group
        self._max_round_trips = max_round_trips
        self._state = _State.IDLE
        self._phase: AuthPhase = "group_select"
        self._round_trips = 0
        #: the group value we submit, once resolved against a group_list
        self._group_value: str | None = None
        self._group_init_sent = False
        self._username_sent = False
        #: form field names under which the password already went out
        self._password_fields: set[str] = set()
        #: openconnect keeps the last <opaque> until a new one replaces it
        self._opaque: bytes | None = None

    def __repr__(self) -> str:
        return f"<AuthFlow state={self._state.value} phase={self._phase} trips={self._round_trips}>"

    @property
    def phase(self) -> AuthPhase:
        """Phase of the request returned last: ``group_select`` or ``auth``."""
        return self._phase

    def start(self) -> AuthRequest:
        """The first request: ``init`` to ``/`` (§2.3)."""
        if self._state is not _State.IDLE:
            raise LocalProtocolError(f"AuthFlow.start() called in state {self._state.value}")
        return self._request(
            "/", build_init(self._info, group_access=self._base_url), "group_select"
        )

    def receive(self, status: int, body: bytes, *, reason: str = "") -> AuthRequest | AuthComplete:
        """Feed the HTTP answer to the last request; get the next request or the result.

        ``reason`` is the HTTP status text, used as the message of a 401 (§2.7).
        Raises AuthRejectedError, AuthUnsupportedError, GroupUnknownError,
        HttpStatusError, BadPacketError or RemoteProtocolError.
        """
        if self._state is not _State.WAITING:
            raise LocalProtocolError(f"AuthFlow.receive() called in state {self._state.value}")
        try:
            result = self._receive(status, body, reason)
        except ProtocolError:
            self._state = _State.FAILED
            raise
        if isinstance(result, AuthComplete):
            self._state = _State.DONE
        return result

    # -- internals ---------------------------------------------------------------

    def _request(self, path: str, body: bytes, phase: AuthPhase) -> AuthRequest:
        if self._round_trips >= self._max_round_trips:
            raise RemoteProtocolError(
                f"authentication not finished after {self._round_trips} round trips"
            )
        self._round_trips += 1
        self._phase = phase
        self._state = _State.WAITING
        return AuthRequest(path=path, body=body)

    def _scrub(self, text: str) -> str:
        """A gateway text fit for an exception: no password, bounded length."""
        if self._password:
            text = text.replace(self._password, "***")
        text = " ".join(text.split())
        return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."

    def _receive(self, status: int, body: bytes, reason: str) -> AuthRequest | AuthComplete:
        if status == 401:
            # ocserv: "401 Authentication failed" on the third wrong password (§2.7)
            raise AuthRejectedError(f"HTTP 401 {self._scrub(reason)}".rstrip(), status=401)
        if status != 200:
            raise HttpStatusError(status, self._scrub(reason))
        try:
            answer = parse_auth_response_untrusted(body)
        except BadPacketError as exc:
            # parse errors quote gateway strings, which may replay our password
            if self._password and self._password in str(exc):
                raise BadPacketError(self._scrub(str(exc))) from None
            raise
        if isinstance(answer, AuthComplete):
            return answer
        form = answer
        if form.opaque is not None:
            self._opaque = form.opaque
        if form.error is not None:
            # ASA reports failures in <error> inside a fresh form (§2.7)
            raise AuthRejectedError(self._scrub(form.error))
        self._check_supported(form)
        path = self._action_path(form.action)
        group_list = form.group_list
        if group_list is not None:
            self._pick_group(group_list)
            default = group_list.default
            if (
                self._phase == "group_select"
                and not self._group_init_sent
                and self._group_value is not None
                and (default is None or default.value != self._group_value)
            ):
                # the wanted group is not the default: a second init selects it
                # (seed phase 2, §2.5), as openconnect and AnyConnect do
                self._group_init_sent = True
                body = build_init(
                    self._info, group_access=self._base_url, group_select=self._group_value
                )
                return self._request(path, body, "group_select")
        elif self._group is not None:
            # No list (ocserv without groups, or an ASA group-URL): send the
            # group anyway; gateways that do not know it ignore it.
            self._group_value = self._group
        answers = self._answers(form)
        if self._opaque is not None and form.opaque is None:
            form = dataclasses.replace(form, opaque=self._opaque)
        reply = build_auth_reply(self._info, form, answers, group_select=self._group_value)
        return self._request(path, reply, "auth")

    def _check_supported(self, form: AuthForm) -> None:
        if form.sso_requested:
            raise AuthUnsupportedError("the gateway asks for single sign-on (SAML)")
        if form.host_scan_requested:
            raise AuthUnsupportedError("the gateway asks for HostScan / Cisco Secure Desktop")
        if form.client_cert_requested:
            raise AuthUnsupportedError("the gateway asks for a client certificate")
        if form.method != "POST":
            raise AuthUnsupportedError(f"form method {form.method[:20]!r} is not supported")

    def _action_path(self, action: str) -> str:
        """Resolve a form action against the gateway URL; stay on the same host."""
        target = urlsplit(urljoin(self._base_url, action))
        if (target.scheme, target.netloc.lower()) != (self._base.scheme, self._base.netloc.lower()):
            raise AuthUnsupportedError(
                f"form action points to another server ({target.netloc[:60]!r})"
            )
        path = target.path or "/"
        return f"{path}?{target.query}" if target.query else path

    def _pick_group(self, group_list: FormSelect) -> None:
        if self._group_value is not None and any(
            o.value == self._group_value for o in group_list.options
        ):
            return
        if self._group is None:
            default = group_list.default
            self._group_value = default.value if default is not None else None
            return
        # ocserv matches names and friendly labels (issue #267, §2.5)
        wanted = self._group.strip().casefold()
        for option in group_list.options:
            if wanted in (option.value.strip().casefold(), option.label.strip().casefold()):
                self._group_value = option.value
                return
        offered: list[str] = []
        for option in group_list.options:
            for name in (option.value, option.label):
                if name and name not in offered:
                    offered.append(name)
        raise GroupUnknownError(self._group, offered)

    def _answers(self, form: AuthForm) -> dict[str, str]:
        """Fill the form (§2.5); refuse what a synthetic client cannot answer."""
        answers: dict[str, str] = {}
        asks_password = False
        for item in form.inputs:
            if item.type == "password":
                if item.name in self._password_fields:
                    # the password form came back: ocserv's "Login failed" (§2.7).
                    # Never send the password twice.
                    raise AuthRejectedError(
                        self._scrub(form.message or "the gateway asked for the password again")
                    )
                if asks_password or self._password_fields:
                    raise AuthUnsupportedError(
                        f"the gateway asks for another secret: field {item.name[:40]!r}"
                        f" ({self._scrub(item.label)[:60]!r})"
                    )
                asks_password = True
                answers[item.name] = self._password
            elif item.type == "text":
                if item.name.lower() != "username":
                    raise AuthUnsupportedError(
                        f"no value for form field {item.name[:40]!r}"
                        f" ({self._scrub(item.label)[:60]!r})"
                    )
                answers[item.name] = self._username
        for select in form.selects:
            if select.name != "group_list" and select.default is None:
                raise AuthUnsupportedError(f"form select {select.name[:40]!r} has no options")
        asks_username = "username" in (a.lower() for a in answers)
        if (
            asks_username
            and not asks_password
            and self._username_sent
            and not self._password_fields
        ):
            # ocserv restarts at the username when the webvpncontext cookie is lost
            raise RemoteProtocolError(
                "the gateway asked for the username again (is the webvpncontext cookie "
                "sent back? §2.5)"
            )
        if asks_password:
            self._password_fields.update(i.name for i in form.inputs if i.type == "password")
        if asks_username:
            self._username_sent = True
        return answers
