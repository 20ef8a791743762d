"""Phases 2 and 3 on the client side: group selection and user authentication.

``AuthFlow`` is sans-IO: it says which XML to POST where, the engine does the
HTTP exchange (with the ``webvpncontext`` cookie, §2.5) and feeds back the
status and body.  The XML codec, both roles, lives in ``auth_xml`` and is
re-exported here.

Conversation (protocol.md §0, §2.3 to §2.7, §2.9)::

    >> start()                         << POST <url path> init          (group_select)
    >> 200 form with group_list        << POST action init+group-select (group_select,
                                                      only when the group is not the default)
    >> 200 form asking username        << POST action auth-reply        (auth)
    >> 200 form asking password        << POST action auth-reply        (auth)
    >> 200 complete                    << AuthComplete

Beyond the password: a ``<client-cert-request/>`` is answered on a new
connection (which presents the certificate), or with ``<client-cert-fail/>``;
a second factor (ocserv's OTP prompt, ASA ``secondary_password``, an
``auth id="challenge"`` form) takes a code from ``token``; ``form_entries``
fill any field by name; a 3xx to a login POST restarts the login at the new
URL.  What cannot be answered fails with a typed error saying what is needed.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable
from typing import Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

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
    CertificateRequiredError,
    GroupUnknownError,
    HostScanRequiredError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SecondFactorRequiredError,
    SsoRequiredError,
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
    "FormEntry",
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
    "parse_form_entry",
]

#: The phase a request belongs to; the values match ``loadgen.failures.Phase``.
AuthPhase = Literal["group_select", "auth"]

#: ocserv needs up to five (init, group init, username, password, one retry);
#: anything longer is a gateway going round in circles.
DEFAULT_MAX_ROUND_TRIPS = 12
#: openconnect follows a handful; more is a loop between gateways
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MESSAGE_LIMIT = 200
#: a run of this many characters of a secret in a gateway text counts as the secret
_PIECE = 8
#: fields a second factor goes into whatever their type (ASA double auth, openconnect)
_SECOND_FACTOR_FIELDS = frozenset({"secondary_password"})
#: how ocserv and ASA say a wrong answer (§2.7): the form comes back with this
_FAILED_PREFIX = "login failed"
#: words in a gateway's refusal that mean posture checking (ASA: "Cisco Secure Desktop
#: not installed on the client")
_HOSTSCAN_WORDS = re.compile(r"\b(?:secure desktop|hostscan|host scan|csd)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FormEntry:
    """``--form-entry FORM:FIELD=VALUE`` (openconnect): a value for a field by name.

    ``form`` is the ``auth id`` of the form; None fills the field in any form.
    """

    form: str | None
    field: str
    value: str = dataclasses.field(repr=False)

    def matches(self, form: str, field: str) -> bool:
        return field == self.field and self.form in (None, form)


def parse_form_entry(text: str) -> FormEntry:
    """``FORM:FIELD=VALUE`` or ``FIELD=VALUE``; ValueError (never quoting the value)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError("expected FORM:FIELD=VALUE (e.g. main:secondary_password=123456)")
    form, colon, name = key.rpartition(":")
    if not name or (colon and not form):
        raise ValueError(f"expected FORM:FIELD=VALUE, got {key[:40]!r}=...")
    return FormEntry(form=form if colon else None, field=name, value=value)


class HttpStatusError(RemoteProtocolError):
    """The gateway answered an auth POST with a status other than 200 or 401."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"unexpected HTTP status {status} {reason}".rstrip())
        self.status = status


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthRequest:
    """POST ``body`` (XML) to ``path`` on the gateway at ``url``."""

    path: str
    #: may hold the password: kept out of repr
    body: bytes = dataclasses.field(repr=False)
    #: the gateway's base URL (``https://host[:port]/path``); it changes after a redirect
    url: str = ""
    #: open a new TLS connection first (another host, or to present the certificate)
    new_connection: bool = False


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
        form_entries: tuple[FormEntry, ...] = (),
        token: Callable[[], str] | None = None,
        has_certificate: bool = False,
    ) -> None:
        self._info = info
        self._base_url = base_url
        self._base = urlsplit(base_url)
        self._username = username
        self._password = password
        self._group = group
        self._max_round_trips = max_round_trips
        self._entries = form_entries
        #: gives a fresh one-time code each call (the engine owns counters and clocks)
        self._token = token
        self._has_certificate = has_certificate
        #: every secret that went out or may: scrubbed from any gateway text we quote
        self._secrets = [password, *(e.value for e in form_entries)]
        self._redirects = 0
        self._cert_retried = False
        self._cert_failed = False
        #: field names a second factor already went into (never sent twice)
        self._factor_fields: set[str] = set()
        #: the pre-login banner of the last form that had one (ocserv ``pre-login-banner``)
        self.pre_login_banner: str | None = None
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

    @property
    def url(self) -> str:
        """The gateway's URL now: the one given, or where a redirect led."""
        return self._base_url

    def start(self) -> AuthRequest:
        """The first request: ``init`` to the URL's path, the ASA group-url (§2.3)."""
        if self._state is not _State.IDLE:
            raise LocalProtocolError(f"AuthFlow.start() called in state {self._state.value}")
        return self._init()

    def receive(
        self, status: int, body: bytes, *, reason: str = "", location: str | None = None
    ) -> AuthRequest | AuthComplete:
        """Feed the HTTP answer to the last request; get the next request or the result.

        ``reason`` is the HTTP status text, used as the message of a 401 (§2.7);
        ``location`` the Location header of a redirect.  Raises AuthRejectedError,
        AuthUnsupportedError (or one of its kinds: CertificateRequiredError,
        SecondFactorRequiredError, SsoRequiredError, HostScanRequiredError),
        GroupUnknownError, HttpStatusError, BadPacketError or RemoteProtocolError.
        """
        if self._state is not _State.WAITING:
            raise LocalProtocolError(f"AuthFlow.receive() called in state {self._state.value}")
        try:
            result = self._receive(status, body, reason, location)
        except ProtocolError:
            self._state = _State.FAILED
            raise
        except ValueError:
            # urlsplit on a hostile Location or action (bad brackets, NFKC tricks)
            self._state = _State.FAILED
            raise RemoteProtocolError(
                "the gateway sent an unusable URL (Location or form action)"
            ) from None
        if isinstance(result, AuthComplete):
            self._state = _State.DONE
        return result

    # -- internals ---------------------------------------------------------------

    def _request(
        self, path: str, body: bytes, phase: AuthPhase, *, new_connection: bool = False
    ) -> AuthRequest:
        if self._round_trips >= self._max_round_trips:
            raise RemoteProtocolError(
                f"authentication not finished after {self._round_trips} round trips"
            )
        self._round_trips += 1
        self._phase = phase
        self._state = _State.WAITING
        return AuthRequest(path=path, body=body, url=self._base_url, new_connection=new_connection)

    def _init(self, *, new_connection: bool = False, cert_fail: bool = False) -> AuthRequest:
        path = self._base.path or "/"
        if self._base.query:
            path = f"{path}?{self._base.query}"
        body = build_init(self._info, group_access=self._base_url, client_cert_fail=cert_fail)
        return self._request(path, body, "group_select", new_connection=new_connection)

    def _scrub(self, text: str) -> str:
        """A gateway text fit for an exception: no secret of ours, bounded length.

        Whitespace is collapsed first, so a secret re-wrapped by the gateway is
        still found; its collapsed and repr-escaped spellings go too, and a text
        still holding a long piece of a secret (a name cut by the parser) is
        dropped whole.
        """
        text = " ".join(text.split())
        for secret in self._secrets:
            if not secret:
                continue
            for form in {secret, " ".join(secret.split()), repr(secret)[1:-1]}:
                if form:
                    text = text.replace(form, "***")
            if len(secret) >= _PIECE and any(
                secret[i : i + _PIECE] in text for i in range(len(secret) - _PIECE + 1)
            ):
                return "(gateway text withheld: it repeats a secret)"
        return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."

    def _name(self, name: str) -> str:
        """A gateway-chosen name (field, select, host), scrubbed and quoted for a message."""
        return repr(self._scrub(name)[:40])

    def _receive(
        self, status: int, body: bytes, reason: str, location: str | None
    ) -> AuthRequest | AuthComplete:
        if status in _REDIRECTS and location:
            return self._redirect(location)
        if status == 401:
            # ocserv: "401 Authentication failed" on the third wrong password (§2.7),
            # "401 No certificate" when certificate auth finds none
            message = f"HTTP 401 {self._scrub(reason)}".rstrip()
            if "certificate" in reason.lower():
                raise CertificateRequiredError(message)
            raise AuthRejectedError(message, status=401)
        if status != 200:
            raise HttpStatusError(status, self._scrub(reason))
        try:
            answer = parse_auth_response_untrusted(body)
        except BadPacketError as exc:
            # parse errors quote gateway strings, which may replay our secrets
            raise BadPacketError(self._scrub(str(exc))) from None
        if isinstance(answer, AuthComplete):
            return self._completed(answer)
        form = answer
        if form.opaque is not None:
            self._opaque = form.opaque
        if form.banner is not None:
            self.pre_login_banner = form.banner
        if form.multiple_cert_requested:
            raise CertificateRequiredError(
                "the gateway asks for two certificates (multiple-client-cert-request), "
                "which loadgen does not do"
            )
        if form.client_cert_requested:
            return self._certificate_asked()
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

    def _completed(self, done: AuthComplete) -> AuthComplete:
        if done.succeeded:
            return done
        # a "complete" that only carries <error>: the gateway's refusal (ASA)
        text = self._scrub(done.error or "the gateway ended the login without success")
        if _HOSTSCAN_WORDS.search(text):
            raise HostScanRequiredError(text)
        raise AuthRejectedError(text)

    def _certificate_asked(self) -> AuthRequest:
        """``<client-cert-request/>``: as openconnect, reconnect once to present the
        certificate, else say ``<client-cert-fail/>`` and go on with what follows."""
        if self._has_certificate and not self._cert_retried:
            self._cert_retried = True
            return self._init(new_connection=True)
        if self._cert_failed:
            raise CertificateRequiredError(
                "the gateway asks for a client certificate again after <client-cert-fail/>"
                if not self._has_certificate
                else "the gateway did not accept the client certificate"
            )
        self._cert_failed = True
        return self._init(cert_fail=True)

    def _redirect(self, location: str) -> AuthRequest:
        """A 3xx to a login POST: start over with ``init`` where it points (openconnect)."""
        target = urljoin(self._base_url, location)
        parts = urlsplit(target)
        try:
            parts.port  # noqa: B018 (raises for a port that is no number)
        except ValueError:
            raise RemoteProtocolError("redirect refused: the Location has no usable port") from None
        if parts.scheme != "https" or not parts.hostname:
            raise RemoteProtocolError(
                f"redirect to {self._scrub(target)[:80]!r} refused: only https:// is followed"
            )
        self._redirects += 1
        if self._redirects > MAX_REDIRECTS:
            raise RemoteProtocolError(f"more than {MAX_REDIRECTS} redirects during the login")
        moved = parts.netloc.lower() != self._base.netloc.lower()
        self._base_url = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
        self._base = urlsplit(self._base_url)
        # what the old gateway asked is forgotten; the new one starts from the init
        self._group_init_sent = self._username_sent = False
        self._password_fields.clear()
        self._factor_fields.clear()
        self._opaque = None
        return self._init(new_connection=moved)

    def _check_supported(self, form: AuthForm) -> None:
        if form.sso_requested:
            raise SsoRequiredError("the gateway asks for single sign-on (SAML), not supported")
        if form.host_scan_requested:
            raise HostScanRequiredError(
                "the gateway asks for HostScan / Cisco Secure Desktop posture, not supported"
            )
        if form.method != "POST":
            # never quoted: a gateway may echo anything there, our secrets included
            raise AuthUnsupportedError("the form's method is not POST, which is not supported")

    def _action_path(self, action: str) -> str:
        """Resolve a form action against the gateway URL; stay on the same host."""
        target = urlsplit(urljoin(self._base_url, action))
        if (target.scheme, target.netloc.lower()) != (self._base.scheme, self._base.netloc.lower()):
            raise AuthUnsupportedError(
                f"form action points to another server ({self._name(target.netloc)})"
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
        raise GroupUnknownError(self._group, [self._scrub(name) for name in offered])

    def _option(self, select: FormSelect, wanted: str) -> str:
        """The option of ``select`` a form entry names, by value or label."""
        for option in select.options:
            if wanted in (option.value, option.label):
                return option.value
        raise AuthUnsupportedError(
            f"--form-entry for select {self._name(select.name)} names none of its options"
        )

    def _entry(self, form: AuthForm, name: str) -> str | None:
        for entry in self._entries:
            if entry.matches(form.auth_id, name):
                return entry.value
        return None

    def _second_factor(self, form: AuthForm, item: FormInput) -> str:
        """A one-time code for ``item``, or the typed failure saying what is needed."""
        if item.name in self._factor_fields:
            raise AuthRejectedError(
                self._scrub(form.message or "the gateway asked for the second factor again")
            )
        if self._token is None:
            prompt = self._scrub(form.message or item.label)[:80]
            raise SecondFactorRequiredError(
                f"the gateway asks for a second factor in field {self._name(item.name)} "
                f"({prompt!r}); "
                "give --token-mode and --token-secret, or --form-entry"
            )
        code = self._token()
        self._secrets.append(code)
        self._factor_fields.add(item.name)
        return code

    def _answers(self, form: AuthForm) -> dict[str, str]:
        """Fill the form (§2.5); refuse what a synthetic client cannot answer."""
        answers: dict[str, str] = {}
        asks_password = False
        failed = form.error is not None or (form.message or "").strip().lower().startswith(
            _FAILED_PREFIX
        )
        for item in form.inputs:
            given = self._entry(form, item.name)
            if given is not None:
                answers[item.name] = given
            elif item.type == "password":
                if item.name in _SECOND_FACTOR_FIELDS or form.auth_id == "challenge":
                    answers[item.name] = self._second_factor(form, item)
                elif item.name in self._password_fields or asks_password or self._password_fields:
                    if failed:
                        # the password form came back: ocserv's "Login failed" (§2.7).
                        # Never send the password twice.
                        raise AuthRejectedError(
                            self._scrub(form.message or "the gateway asked for the password again")
                        )
                    # asked again after it was taken (ocserv's OTP prompt), or a
                    # second secret beside it: a second factor
                    answers[item.name] = self._second_factor(form, item)
                else:
                    asks_password = True
                    answers[item.name] = self._password
            elif item.type == "text":
                if item.name.lower() not in ("username", "secondary_username"):
                    raise AuthUnsupportedError(
                        f"no value for form field {self._name(item.name)}"
                        f" ({self._scrub(item.label)[:60]!r})"
                    )
                answers[item.name] = self._username
        for select in form.selects:
            given = self._entry(form, select.name)
            if given is not None:
                answers[select.name] = self._option(select, given)
            elif select.name != "group_list" and select.default is None:
                raise AuthUnsupportedError(f"form select {self._name(select.name)} has no options")
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
            self._password_fields.update(n for n, v in answers.items() if v is self._password)
        if asks_username:
            self._username_sent = True
        return answers
