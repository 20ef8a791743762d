"""AuthFlow beyond the password: certificates, second factors, form entries, redirects,
ocserv's unescaped banners, error-only completes and bad manifest entries
(protocol.md §2.3 to §2.9, §14).

Conversations run against small in-memory gateways that speak the documented
shapes (ocserv 1.1.6 with ``plain[otp=...]``, ASA double auth, RADIUS
challenge, ASA client-certificate requests, ASA VPN load balancing).  The OTP
codes are real RFC 4226 HOTP values from ``cryptography``.  Then the secrets
(password, form entry values, codes) against gateways that echo them back, and
the tolerant parser against hostile XML.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable
from xml.sax.saxutils import escape, quoteattr

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.hotp import HOTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.proto.auth import (
    MAX_REDIRECTS,
    AuthComplete,
    AuthFlow,
    AuthForm,
    AuthRequest,
    ClientAuthReply,
    ClientInfo,
    ClientInit,
    FormEntry,
    build_auth_complete,
    parse_auth_response_untrusted,
    parse_client_message_untrusted,
    parse_form_entry,
)
from loadgen.proto.auth_xml import MAX_DEPTH
from loadgen.proto.errors import (
    AuthRejectedError,
    AuthUnsupportedError,
    BadPacketError,
    CertificateRequiredError,
    HostScanRequiredError,
    ProtocolError,
    RemoteProtocolError,
    SecondFactorRequiredError,
)

DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
BASE_URL = "https://127.0.0.1:4443/"

# -- XML shapes ------------------------------------------------------------------------


def inp(kind: str, name: str, label: str = "") -> str:
    return f"<input type={quoteattr(kind)} name={quoteattr(name)} label={quoteattr(label)} />"


def auth_form(
    *inputs: str,
    auth_id: str = "main",
    message: str | None = None,
    error: str | None = None,
    banner: str | None = None,
    action: str | None = "/auth",
    top: str = "",
    selects: str = "",
) -> bytes:
    """An auth-request; texts are escaped (as an ASA does), ``top`` goes before <auth>."""
    parts = [
        DECL,
        '<config-auth client="vpn" type="auth-request">\n',
        top,
        f'<auth id="{auth_id}">',
    ]
    if message is not None:
        parts.append(f"<message>{escape(message)}</message>")
    if banner is not None:
        parts.append(f"<banner>{escape(banner)}</banner>")
    if error is not None:
        parts.append(f'<error id="13" param1="" param2="">{escape(error)}</error>')
    parts.append("<form>" if action is None else f'<form method="post" action="{action}">')
    parts += [*inputs, selects, "</form></auth>\n</config-auth>"]
    return "".join(parts).encode()


USERNAME = inp("text", "username", "Username:")
PASSWORD = inp("password", "password", "Password:")

#: ocserv 1.1.6 ``plain[passwd=...,otp=...]`` (§14): the same password form, three messages
OCSERV_USERNAME = auth_form(USERNAME, message="Please enter your username.")
OCSERV_PASSWORD = auth_form(PASSWORD, message="Please enter your password.")
OCSERV_OTP = auth_form(PASSWORD, message="Please enter your OTP password.")
OCSERV_OTP_FAILED = auth_form(PASSWORD, message="Login failed.\nPlease enter your OTP password.")

ASA_OPAQUE = (
    '<opaque is-for="sg"><tunnel-group>VPN</tunnel-group>'
    "<aggauth-handle>987654</aggauth-handle><group-alias>Employees</group-alias></opaque>"
)
ASA_PASSWORD_FORM = auth_form(
    USERNAME, PASSWORD, message="Please enter your username and password.", action=None,
    top=ASA_OPAQUE,
)  # fmt: skip
#: ASA "double authentication": both credential pairs in one form
ASA_DOUBLE_FORM = auth_form(
    USERNAME,
    PASSWORD,
    inp("text", "secondary_username", "Second Username:"),
    inp("password", "secondary_password", "Second Password:"),
    message="Please enter your username and password.",
    action=None,
    top=ASA_OPAQUE,
)
ASA_TOKEN = "8A1B2C3D@12288@0A1B@F00DF00DF00DF00DF00DF00DF00DF00DF00DF00D"
ASA_COMPLETE = (
    f'{DECL}<config-auth client="vpn" type="complete" aggregate-auth-version="2">'
    f"<session-id>32768</session-id><session-token>{ASA_TOKEN}</session-token>"
    '<auth id="success"><banner>Authorized use only</banner></auth></config-auth>\n'
).encode()
#: RADIUS Access-Challenge relayed by an ASA
CHALLENGE_FORM = auth_form(
    inp("password", "password", "Response:"),
    auth_id="challenge",
    message="Enter your token code",
    action=None,
    top=ASA_OPAQUE,
)
CERT_REQUEST = (
    f'{DECL}<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">'
    "<client-cert-request/></config-auth>\n"
).encode()

#: RFC 4226 appendix D: the key "12345678901234567890" gives 755224, 287082, ...
RFC4226_KEY = b"12345678901234567890"
RFC4226_CODES = [
    "755224", "287082", "359152", "969429", "338314",
    "254676", "287922", "162583", "399871", "520489",
]  # fmt: skip


class HotpToken:
    """What the engine passes as ``token``: a fresh HOTP code per call."""

    def __init__(self, counter: int = 0) -> None:
        self._hotp = HOTP(RFC4226_KEY, 6, SHA1())
        self.counter = counter

    def __call__(self) -> str:
        code = self._hotp.generate(self.counter).decode()
        self.counter += 1
        return code


# -- in-memory gateways ------------------------------------------------------------------

#: status, body, reason, Location
Answer = tuple[int, bytes, str, str | None]


@dataclasses.dataclass(frozen=True)
class Seen:
    request: AuthRequest
    message: object
    #: which TLS connection carried it (new_connection opens the next one)
    connection: int


class Gateway:
    def __init__(self) -> None:
        self.log: list[Seen] = []

    def __call__(self, request: AuthRequest, connection: int) -> Answer:
        message = parse_client_message_untrusted(request.body)
        self.log.append(Seen(request, message, connection))
        return self.answer(request, message, connection)

    def answer(self, request: AuthRequest, message: object, connection: int) -> Answer:
        raise NotImplementedError

    def replies(self) -> list[ClientAuthReply]:
        return [s.message for s in self.log if isinstance(s.message, ClientAuthReply)]

    def inits(self) -> list[Seen]:
        return [s for s in self.log if isinstance(s.message, ClientInit)]


def ok(body: bytes) -> Answer:
    return 200, body, "OK", None


def drive(flow: AuthFlow, gateway: Gateway) -> AuthComplete:
    """Run the conversation; new_connection opens the next connection."""
    connection = 0
    step: AuthRequest | AuthComplete = flow.start()
    for _ in range(30):
        if isinstance(step, AuthComplete):
            return step
        if step.new_connection:
            connection += 1
        status, body, reason, location = gateway(step, connection)
        step = flow.receive(status, body, reason=reason, location=location)
    raise AssertionError("conversation did not end")


class OcservOtp(Gateway):
    """ocserv 1.1.6 with ``auth = "plain[passwd=...,otp=...]"`` (§14)."""

    def __init__(self) -> None:
        super().__init__()
        self.step = "username"
        self.hotp = HOTP(RFC4226_KEY, 6, SHA1())
        self.next_counter = 0

    def _code_ok(self, code: str) -> bool:
        for counter in range(self.next_counter, self.next_counter + 5):
            try:
                self.hotp.verify(code.encode(), counter)
            except InvalidToken:
                continue
            self.next_counter = counter + 1  # a replayed code is refused
            return True
        return False

    def answer(self, request: AuthRequest, message: object, connection: int) -> Answer:
        if isinstance(message, ClientInit):
            return ok(OCSERV_USERNAME)
        assert isinstance(message, ClientAuthReply)
        if self.step == "username":
            self.step = "password"
            return ok(OCSERV_PASSWORD)
        if self.step == "password":
            if message.fields.get("password") != "s3cret":
                return ok(auth_form(PASSWORD, message="Login failed.\nPlease enter your password."))
            self.step = "otp"
            return ok(OCSERV_OTP)
        if self._code_ok(message.fields.get("password", "")):
            return ok(build_auth_complete())
        return ok(OCSERV_OTP_FAILED)


def flow_for(
    *,
    password: str = "s3cret",
    token: Callable[[], str] | None = None,
    entries: tuple[FormEntry, ...] = (),
    has_certificate: bool = False,
    base_url: str = BASE_URL,
    group: str | None = None,
) -> AuthFlow:
    return AuthFlow(
        ClientInfo(),
        base_url=base_url,
        username="alice",
        password=password,
        group=group,
        form_entries=entries,
        token=token,
        has_certificate=has_certificate,
    )


# -- ocserv plain + OTP ----------------------------------------------------------------------


def test_ocserv_otp_prompt_is_answered_with_the_token() -> None:
    gateway, token = OcservOtp(), HotpToken()
    done = drive(flow_for(token=token), gateway)
    assert done == AuthComplete()
    replies = gateway.replies()
    assert [r.fields for r in replies] == [
        {"username": "alice"},
        {"password": "s3cret"},
        {"password": RFC4226_CODES[0]},  # the OTP goes into the same field name
    ]
    assert token.counter == 1


def test_ocserv_wrong_otp_is_a_rejection_and_the_code_goes_out_once() -> None:
    # counter 9 lies outside the gateway's look-ahead window (0 to 4)
    gateway, token = OcservOtp(), HotpToken(counter=9)
    with pytest.raises(AuthRejectedError, match="Login failed") as info:
        drive(flow_for(token=token), gateway)
    assert RFC4226_CODES[9] not in str(info.value)
    assert [r.fields.get("password") for r in gateway.replies()][1:] == ["s3cret", RFC4226_CODES[9]]
    assert token.counter == 10  # asked once, never again


def test_ocserv_otp_without_token_names_the_field_and_is_no_rejection() -> None:
    gateway = OcservOtp()
    with pytest.raises(SecondFactorRequiredError, match="'password'") as info:
        drive(flow_for(), gateway)
    assert not isinstance(info.value, AuthRejectedError)
    assert isinstance(info.value, AuthUnsupportedError)
    assert "OTP" in str(info.value) and "s3cret" not in str(info.value)
    assert len(gateway.replies()) == 2  # the password went out, nothing after it


def test_ocserv_wrong_password_before_otp_never_asks_the_token() -> None:
    gateway, token = OcservOtp(), HotpToken()
    with pytest.raises(AuthRejectedError, match="Login failed"):
        drive(flow_for(password="wrong", token=token), gateway)
    assert token.counter == 0


# -- ASA double auth and RADIUS challenge -------------------------------------------------------


class AsaDouble(Gateway):
    def __init__(self, expected: dict[str, str]) -> None:
        super().__init__()
        self.expected = expected

    def answer(self, request: AuthRequest, message: object, connection: int) -> Answer:
        if isinstance(message, ClientInit):
            return ok(ASA_DOUBLE_FORM)
        assert isinstance(message, ClientAuthReply)
        assert message.opaque == ASA_OPAQUE.encode()
        if message.fields == self.expected:
            return ok(ASA_COMPLETE)
        return ok(auth_form(USERNAME, PASSWORD, error="Login failed", action=None))


def test_asa_double_auth_fills_both_pairs_in_one_reply() -> None:
    gateway = AsaDouble(
        {
            "username": "alice",
            "password": "s3cret",
            "secondary_username": "alice",
            "secondary_password": RFC4226_CODES[0],
        }
    )
    done = drive(flow_for(token=HotpToken()), gateway)
    assert done.session_token == ASA_TOKEN
    assert len(gateway.replies()) == 1


def test_asa_double_auth_secondary_username_from_a_form_entry() -> None:
    gateway = AsaDouble(
        {
            "username": "alice",
            "password": "s3cret",
            "secondary_username": "bob",
            "secondary_password": "4711",
        }
    )
    entries = (
        parse_form_entry("main:secondary_username=bob"),
        parse_form_entry("secondary_password=4711"),
    )
    assert drive(flow_for(entries=entries), gateway).session_token == ASA_TOKEN


def test_asa_double_auth_without_token() -> None:
    gateway = AsaDouble({})
    with pytest.raises(SecondFactorRequiredError, match="secondary_password"):
        drive(flow_for(), gateway)
    assert gateway.replies() == []  # nothing half-filled went out


class RadiusChallenge(Gateway):
    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code

    def answer(self, request: AuthRequest, message: object, connection: int) -> Answer:
        if isinstance(message, ClientInit):
            return ok(ASA_PASSWORD_FORM)
        assert isinstance(message, ClientAuthReply)
        if "username" in message.fields:
            assert message.fields == {"username": "alice", "password": "s3cret"}
            return ok(CHALLENGE_FORM)
        if message.fields == {"password": self.code}:
            return ok(ASA_COMPLETE)
        return ok(CHALLENGE_FORM)  # RADIUS sends a new challenge


def test_radius_challenge_takes_the_token() -> None:
    gateway = RadiusChallenge(RFC4226_CODES[0])
    assert drive(flow_for(token=HotpToken()), gateway).session_token == ASA_TOKEN
    assert [r.fields for r in gateway.replies()][1] == {"password": RFC4226_CODES[0]}


def test_radius_challenge_asked_again_is_a_rejection() -> None:
    gateway, token = RadiusChallenge("000000"), HotpToken()
    with pytest.raises(AuthRejectedError, match="token code"):
        drive(flow_for(token=token), gateway)
    assert token.counter == 1


def test_radius_challenge_without_token() -> None:
    with pytest.raises(SecondFactorRequiredError, match="Enter your token code"):
        drive(flow_for(), RadiusChallenge("1"))


# -- form entries ------------------------------------------------------------------------------


def test_form_entry_by_form_id_answers_only_that_form() -> None:
    # the entry is for the challenge: the main form still gets the password
    gateway = RadiusChallenge("424242")
    entries = (FormEntry(form="challenge", field="password", value="424242"),)
    assert drive(flow_for(entries=entries), gateway).session_token == ASA_TOKEN
    assert [r.fields["password"] for r in gateway.replies()] == ["s3cret", "424242"]


DOMAIN_FORM = auth_form(USERNAME, PASSWORD, inp("text", "domain", "Domain:"), message="Log in")


@pytest.mark.parametrize("text", ["domain=CORP", "main:domain=CORP"])
def test_form_entry_fills_an_unknown_field(text: str) -> None:
    flow = flow_for(entries=(parse_form_entry(text),))
    flow.start()
    step = flow.receive(200, DOMAIN_FORM)
    assert isinstance(step, AuthRequest)
    reply = parse_client_message_untrusted(step.body)
    assert isinstance(reply, ClientAuthReply)
    assert reply.fields == {"username": "alice", "password": "s3cret", "domain": "CORP"}


def test_form_entry_for_another_form_is_not_used() -> None:
    flow = flow_for(entries=(parse_form_entry("other:domain=CORP"),))
    flow.start()
    with pytest.raises(AuthUnsupportedError, match="domain") as info:
        flow.receive(200, DOMAIN_FORM)
    assert "CORP" not in str(info.value)


def test_form_entry_overrides_username() -> None:
    flow = flow_for(entries=(FormEntry(form=None, field="username", value="svc-bob"),))
    flow.start()
    step = flow.receive(200, OCSERV_USERNAME)
    assert isinstance(step, AuthRequest) and b"<username>svc-bob</username>" in step.body


def test_form_entry_chooses_a_select_option() -> None:
    select = '<select name="domain" label="Domain:"><option>EU</option><option>US</option></select>'
    flow = flow_for(entries=(parse_form_entry("main:domain=US"),))
    flow.start()
    step = flow.receive(200, auth_form(USERNAME, PASSWORD, selects=select))
    assert isinstance(step, AuthRequest) and b"<domain>US</domain>" in step.body


def test_parse_form_entry_shapes() -> None:
    assert parse_form_entry("main:secondary_password=12=34") == FormEntry(
        form="main", field="secondary_password", value="12=34"
    )
    assert parse_form_entry("a:b:field=") == FormEntry(form="a:b", field="field", value="")
    assert parse_form_entry("field=v") == FormEntry(form=None, field="field", value="v")
    for bad in ["novalue", "main:=v", ":field=v", "=v"]:
        with pytest.raises(ValueError, match="FORM:FIELD=VALUE"):
            parse_form_entry(bad)
    assert "hunter2" not in repr(parse_form_entry("password=hunter2"))


# -- client certificates -----------------------------------------------------------------------


class AsaCert(Gateway):
    """An ASA tunnel group with certificate auth: it asks in XML, the client
    presents the certificate on a new connection (§2.9, §14)."""

    def __init__(self, *, client_has_cert: bool, accepts_cert: bool = True) -> None:
        super().__init__()
        self.client_has_cert = client_has_cert
        self.accepts_cert = accepts_cert

    def answer(self, request: AuthRequest, message: object, connection: int) -> Answer:
        if isinstance(message, ClientInit):
            if b"<client-cert-fail/>" in request.body:
                return ok(ASA_PASSWORD_FORM)
            presented = self.client_has_cert and connection > 0
            if presented and self.accepts_cert:
                return ok(ASA_PASSWORD_FORM)
            return ok(CERT_REQUEST)
        assert isinstance(message, ClientAuthReply)
        return ok(ASA_COMPLETE)


def cert_fail(seen: Seen) -> bool:
    return b"<client-cert-fail/>" in seen.request.body


def test_certificate_request_reconnects_once_to_present_it() -> None:
    gateway = AsaCert(client_has_cert=True)
    assert drive(flow_for(has_certificate=True), gateway).session_token == ASA_TOKEN
    inits = gateway.inits()
    assert [(s.request.new_connection, s.connection, cert_fail(s)) for s in inits] == [
        (False, 0, False),
        (True, 1, False),
    ]
    assert inits[1].request.path == "/" and inits[1].request.url == BASE_URL
    assert gateway.log[-1].connection == 1  # the reply rides the certificate's connection


def test_certificate_asked_twice_then_cert_fail() -> None:
    gateway = AsaCert(client_has_cert=True, accepts_cert=False)
    assert drive(flow_for(has_certificate=True), gateway).session_token == ASA_TOKEN
    inits = gateway.inits()
    assert [(s.request.new_connection, cert_fail(s)) for s in inits] == [
        (False, False),
        (True, False),
        (False, True),
    ]
    body = inits[2].request.body
    assert body.index(b"<group-access>") < body.index(b"<client-cert-fail/>")


def test_certificate_asked_after_cert_fail_is_certificate_required() -> None:
    for has_certificate in (False, True):
        flow = flow_for(has_certificate=has_certificate)
        flow.start()
        step = flow.receive(200, CERT_REQUEST)
        if has_certificate:
            step = flow.receive(200, CERT_REQUEST)
        assert isinstance(step, AuthRequest) and b"<client-cert-fail/>" in step.body
        with pytest.raises(CertificateRequiredError):
            flow.receive(200, CERT_REQUEST)


def test_without_certificate_cert_fail_at_once_then_the_form() -> None:
    gateway = AsaCert(client_has_cert=False)
    assert drive(flow_for(), gateway).session_token == ASA_TOKEN
    inits = gateway.inits()
    assert [(s.request.new_connection, cert_fail(s)) for s in inits] == [
        (False, False),
        (False, True),
    ]
    assert [s.connection for s in gateway.log] == [0, 0, 0]
    assert gateway.replies()[0].fields == {"username": "alice", "password": "s3cret"}


def test_multiple_cert_request_and_401_no_certificate() -> None:
    flow = flow_for(has_certificate=True)
    flow.start()
    body = b'<config-auth type="auth-request"><multiple-client-cert-request/></config-auth>'
    with pytest.raises(CertificateRequiredError, match="two certificates"):
        flow.receive(200, body)
    flow = flow_for()
    flow.start()
    with pytest.raises(CertificateRequiredError, match="No certificate"):
        flow.receive(401, b"", reason="No certificate")


# -- redirects and the init path ---------------------------------------------------------------


class LoadBalancer(Gateway):
    """ASA VPN load balancing (§14): 302 to a member; the member is an ASA."""

    def __init__(self, location: str, member_url: str) -> None:
        super().__init__()
        self.location = location
        self.member_url = member_url

    def answer(self, request: AuthRequest, message: object, connection: int) -> Answer:
        if request.url != self.member_url:
            return 302, b"", "Found", self.location
        if isinstance(message, ClientInit):
            assert message.group_access == self.member_url
            return ok(ASA_PASSWORD_FORM)
        return ok(ASA_COMPLETE)


def test_redirect_to_another_host_opens_a_new_connection() -> None:
    gateway = LoadBalancer("https://member2.example:8443/", "https://member2.example:8443/")
    flow = flow_for()
    assert drive(flow, gateway).session_token == ASA_TOKEN
    assert [(s.request.url, s.request.path, s.request.new_connection) for s in gateway.log] == [
        (BASE_URL, "/", False),
        ("https://member2.example:8443/", "/", True),
        ("https://member2.example:8443/", "/", False),
    ]
    assert flow.url == "https://member2.example:8443/"
    assert [s.connection for s in gateway.log] == [0, 1, 1]


def test_relative_redirect_stays_on_the_connection() -> None:
    gateway = LoadBalancer("/Engineering", "https://127.0.0.1:4443/Engineering")
    assert drive(flow_for(), gateway).session_token == ASA_TOKEN
    second = gateway.log[1]
    assert (second.request.path, second.request.new_connection) == ("/Engineering", False)
    assert isinstance(second.message, ClientInit)
    assert second.message.group_access == "https://127.0.0.1:4443/Engineering"


def test_redirect_after_the_password_restarts_with_init() -> None:
    flow = flow_for()
    flow.start()
    flow.receive(200, ASA_PASSWORD_FORM)
    step = flow.receive(302, b"", reason="Found", location="https://other.example/")
    assert isinstance(step, AuthRequest) and step.new_connection
    assert isinstance(parse_client_message_untrusted(step.body), ClientInit)
    assert flow.phase == "group_select"


@pytest.mark.parametrize(
    "location",
    ["http://member.example/", "http://127.0.0.1:4443/", "ftp://member.example/", "javascript:x"],
)
def test_redirect_other_than_https_is_refused(location: str) -> None:
    flow = flow_for()
    flow.start()
    with pytest.raises(RemoteProtocolError, match="only https"):
        flow.receive(302, b"", location=location)


def test_redirect_loop_is_capped() -> None:
    flow = flow_for()
    step: AuthRequest | AuthComplete = flow.start()
    hops = 0
    with pytest.raises(RemoteProtocolError, match="more than 3 redirects"):
        while isinstance(step, AuthRequest):
            location = "https://b.example/" if "a.example" in step.url else "https://a.example/"
            step = flow.receive(302, b"", location=location)
            hops += 1
    assert hops == MAX_REDIRECTS  # the one after them is refused


def test_3xx_without_location_is_an_http_status_error() -> None:
    flow = flow_for()
    flow.start()
    with pytest.raises(RemoteProtocolError, match="302"):
        flow.receive(302, b"", reason="Found")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://gw/engineering", "/engineering"),
        ("https://gw:8443/a/b?x=1", "/a/b?x=1"),
        ("https://gw", "/"),
    ],
)
def test_init_goes_to_the_url_path_and_group_access_is_the_url(url: str, path: str) -> None:
    request = flow_for(base_url=url).start()
    assert (request.path, request.url, request.new_connection) == (path, url, False)
    init = parse_client_message_untrusted(request.body)
    assert isinstance(init, ClientInit) and init.group_access == url


# -- complete without success, banners, manifests ---------------------------------------------------


def error_complete(text: str) -> bytes:
    return (
        f'{DECL}<config-auth client="vpn" type="complete" aggregate-auth-version="2">'
        f'<error id="2" param1="" param2="">{escape(text)}</error></config-auth>\n'
    ).encode()


def test_error_only_complete_secure_desktop_is_hostscan_required() -> None:
    body = error_complete("Cisco Secure Desktop not installed on the client")
    done = parse_auth_response_untrusted(body)
    assert isinstance(done, AuthComplete) and not done.succeeded
    assert done.error == "Cisco Secure Desktop not installed on the client"
    flow = flow_for()
    flow.start()
    with pytest.raises(HostScanRequiredError, match="Cisco Secure Desktop not installed"):
        flow.receive(200, body)


def test_error_only_complete_is_otherwise_a_rejection() -> None:
    flow = flow_for()
    flow.start()
    with pytest.raises(AuthRejectedError, match="Login denied, unauthorized connection"):
        flow.receive(200, error_complete("Login denied, unauthorized connection mechanism"))


def test_hostscan_words_match_whole_words_only() -> None:
    flow = flow_for()
    flow.start()
    with pytest.raises(AuthRejectedError):
        flow.receive(200, error_complete("Login denied for user mcsdonald"))


CTRL_C = "Use <ctrl-c> to quit"
TERMS = "Terms & Conditions apply"


def raw_form(banner: str, message: str) -> bytes:
    """ocserv writes banners and messages into the XML without escaping (§14)."""
    return (
        f'{DECL}<config-auth client="vpn" type="auth-request">\n'
        f'<version who="sg">0.1(1)</version>\n<auth id="main">\n'
        f"<banner>{banner}</banner>\n<message>{message}</message>\n"
        f'<form method="post" action="/auth">\n{USERNAME}\n</form></auth>\n</config-auth>'
    ).encode()


@pytest.mark.parametrize(("banner", "message"), [(CTRL_C, TERMS), (TERMS, CTRL_C)])
def test_unescaped_banner_in_a_form_is_read_and_recorded(banner: str, message: str) -> None:
    body = raw_form(banner, message)
    form = parse_auth_response_untrusted(body)
    assert isinstance(form, AuthForm)
    assert (form.banner, form.message) == (banner, message)
    flow = flow_for()
    assert flow.pre_login_banner is None
    flow.start()
    step = flow.receive(200, body)
    assert isinstance(step, AuthRequest) and flow.pre_login_banner == banner


def test_pre_login_banner_is_kept_across_later_forms() -> None:
    flow = flow_for()
    flow.start()
    flow.receive(200, raw_form(TERMS, "Please enter your username."))
    flow.receive(200, OCSERV_PASSWORD)
    assert flow.pre_login_banner == TERMS


def test_unescaped_banner_in_a_complete() -> None:
    body = (
        f'{DECL}<config-auth client="vpn" type="complete">\n<version who="sg">0.1(1)</version>\n'
        f'<auth id="success">\n<title>SSL VPN Service</title><banner>{CTRL_C}\n{TERMS}</banner>'
        "</auth>\n</config-auth>\n"
    ).encode()
    done = parse_auth_response_untrusted(body)
    assert isinstance(done, AuthComplete) and done.succeeded
    assert done.banner == f"{CTRL_C}\n{TERMS}"
    flow = flow_for()
    flow.start()
    assert flow.receive(200, body) == done


def test_unescaped_banner_keeps_entities_and_opaque() -> None:
    body = auth_form(USERNAME, top=ASA_OPAQUE).replace(
        b"<form", f"<banner>Caf&#233; {TERMS} &lt;ok&gt; {CTRL_C}</banner><form".encode()
    )
    form = parse_auth_response_untrusted(body)
    assert isinstance(form, AuthForm)
    assert form.banner == f"Café {TERMS} <ok> {CTRL_C}"
    assert form.opaque == ASA_OPAQUE.encode()


def test_unescaped_markup_outside_banners_is_still_refused() -> None:
    body = auth_form(USERNAME).replace(b"<form", b"<title>a <b> c</title><form")
    with pytest.raises(BadPacketError, match="malformed"):
        parse_auth_response_untrusted(body)


def test_manifest_with_one_bad_and_one_good_entry() -> None:
    good_hash = "A8B0B07FBA93D06E8501E40AB807AEE2464E73B7"
    body = (
        f'{DECL}<config-auth client="vpn" type="complete"><auth id="success"/>'
        '<config client="vpn" type="private"><vpn-profile-manifest><vpn rev="1.0">'
        '<file type="profile" service-type="user"><uri>/profiles/bad.xml</uri>'
        '<hash type="sha1">not-a-sha1</hash></file>'
        '<file type="profile" service-type="user"><uri>/profiles/good.xml</uri>'
        f'<hash type="sha1">{good_hash.lower()}</hash></file>'
        "</vpn></vpn-profile-manifest>"
        '<vpn-core-manifest><vpn rev="1.0"><file version="1"><uri>a b</uri></file>'
        '<file version="2"><uri>binaries/core.sh</uri></file></vpn></vpn-core-manifest>'
        "</config></config-auth>"
    ).encode()
    done = parse_auth_response_untrusted(body)
    assert isinstance(done, AuthComplete) and done.succeeded
    assert [(p.uri, p.sha1_hex) for p in done.profiles] == [("/profiles/good.xml", good_hash)]
    assert [(c.uri, c.version) for c in done.core_manifest] == [("binaries/core.sh", "2")]
    assert done.skipped_entries == 2


# -- secrets ---------------------------------------------------------------------------------------

#: no whitespace (collapsed in messages), no quote or backslash (repr escapes them), no "*"
#: (the scrub mark); the marker makes a secret unlike any fixed message text
SECRET_CHARS = string.ascii_letters + string.digits + '!#$%&()+,-./:;<=>?@[]^_{|}~"é'
SECRETS = st.text(SECRET_CHARS, min_size=3, max_size=12).map(lambda s: f"Ø{s}Ø")
CODES = st.from_regex(r"[0-9]{6,8}", fullmatch=True)
FILLER = st.text(string.ascii_letters + " .,:", max_size=8)

#: the form that makes every secret go out: the password, the entry and the code
ALL_SECRETS_FORM = auth_form(
    USERNAME,
    PASSWORD,
    inp("password", "pin", "PIN:"),
    inp("password", "secondary_password", "Token:"),
    message="Log in",
)


def hostile_answer(place: str, echo: str) -> Answer:
    """A gateway answer that quotes ``echo`` at ``place``; each ends the login."""
    text, attr = escape(echo), quoteattr(echo)
    head = f'{DECL}<config-auth client="vpn" type="auth-request"><auth id="main">'
    answers: dict[str, Answer] = {
        "failed_message": ok(auth_form(PASSWORD, message=f"Login failed. {echo}")),
        "raw_failed_message": ok(
            auth_form(PASSWORD).replace(b"<form", f"<message>Login failed {echo}</message><form".encode())
        ),
        "error": ok(auth_form(USERNAME, PASSWORD, error=f"Bad {echo}")),
        "error_param": ok(
            f'{head}<error id="13" param1={attr}>Login failed for %s</error></auth></config-auth>'.encode()
        ),
        "label": ok(auth_form(inp("text", "domain", f"Domain {echo}:"))),
        "factor_again": ok(auth_form(inp("password", "secondary_password", echo), message=echo)),
        "field_name": ok(f"{head}<form>{inp('text', f'x {echo}')}</form></auth></config-auth>".encode()),
        "select_name": ok(f"{head}<form><select name={quoteattr('x ' + echo)}/></form></auth></config-auth>".encode()),
        "action": ok(f"{head}<form action={quoteattr('/a ' + echo)}/></auth></config-auth>".encode()),
        "root": ok(f"<html><title>{text}</title></html>".encode()),
        "complete_error": ok(error_complete(f"Denied {echo}")),
        "reason_401": (401, b"", f"Authentication failed {echo}", None),
        "reason_503": (503, b"", f"Busy {echo}", None),
        "location": (302, b"", "Found", f"http://gw.example/{echo}"),
    }  # fmt: skip
    return answers[place]


PLACES = [
    "failed_message", "raw_failed_message", "error", "error_param", "label", "factor_again",
    "field_name", "select_name", "action", "root", "complete_error", "reason_401",
    "reason_503", "location",
]  # fmt: skip


def assert_no_secret(exc: BaseException, secrets: list[str]) -> None:
    for secret in secrets:
        for shown in (str(exc), repr(exc), *map(str, exc.args)):
            assert secret not in shown


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    place=st.sampled_from(PLACES),
    password=SECRETS,
    entry=SECRETS,
    code=CODES,
    which=st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=3),
    before=FILLER,
    after=FILLER,
)
def test_echoed_secrets_never_reach_an_exception(
    place: str, password: str, entry: str, code: str, which: list[int], before: str, after: str
) -> None:
    secrets = [password, entry, code]
    flow = flow_for(
        password=password,
        token=lambda: code,
        entries=(FormEntry(form=None, field="pin", value=entry),),
    )
    flow.start()
    step = flow.receive(200, ALL_SECRETS_FORM)
    assert isinstance(step, AuthRequest)
    reply = parse_client_message_untrusted(step.body)
    assert isinstance(reply, ClientAuthReply)
    assert reply.fields == {
        "username": "alice", "password": password, "pin": entry, "secondary_password": code,
    }  # fmt: skip
    echo = before + " ".join(secrets[i] for i in which) + after
    status, body, reason, location = hostile_answer(place, echo)
    with pytest.raises(ProtocolError) as info:
        flow.receive(status, body, reason=reason, location=location)
    assert_no_secret(info.value, secrets)


@settings(max_examples=100, deadline=None)
@given(password=SECRETS, entry=SECRETS, before=FILLER, after=FILLER, challenge=st.booleans())
def test_second_factor_prompt_never_quotes_a_secret(
    password: str, entry: str, before: str, after: str, challenge: bool
) -> None:
    echo = f"{before}{password} {entry}{after}"
    flow = flow_for(password=password, entries=(FormEntry(form="main", field="pin", value=entry),))
    flow.start()
    flow.receive(200, auth_form(USERNAME, PASSWORD, inp("password", "pin")))
    if challenge:
        body = auth_form(inp("password", "response", echo), auth_id="challenge")
    else:
        body = auth_form(inp("password", "password", echo), message=f"OTP {echo}")
    with pytest.raises(SecondFactorRequiredError) as info:
        flow.receive(200, body)
    assert_no_secret(info.value, [password, entry])


def test_wrong_otp_echoed_by_the_gateway_is_scrubbed() -> None:
    flow = flow_for(token=HotpToken())
    flow.start()
    flow.receive(200, OCSERV_PASSWORD)
    flow.receive(200, OCSERV_OTP)
    with pytest.raises(AuthRejectedError) as info:
        flow.receive(200, auth_form(PASSWORD, message=f"Login failed. {RFC4226_CODES[0]} is wrong"))
    assert RFC4226_CODES[0] not in str(info.value) and "***" in str(info.value)


NAME_SECRET = "hunter2secret"


@pytest.mark.parametrize(
    ("body", "group"),
    [
        (auth_form(inp("text", NAME_SECRET)), None),
        (auth_form(inp("password", NAME_SECRET), auth_id="challenge"), None),
        (auth_form(selects=f'<select name="{NAME_SECRET}"/>'), None),
        (auth_form(USERNAME, action=f"https://{NAME_SECRET}.example/auth"), None),
        (auth_form(USERNAME, selects=f'<select name="group_list"><option>{NAME_SECRET}</option></select>'),
         "sales"),
    ],
    ids=["field-name", "factor-field-name", "select-name", "action-host", "group-label"],
)  # fmt: skip
def test_secret_echoed_in_gateway_names_is_scrubbed(body: bytes, group: str | None) -> None:
    flow = flow_for(password=NAME_SECRET, group=group)
    flow.start()
    with pytest.raises(ProtocolError) as info:
        flow.receive(200, body)
    assert NAME_SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("password", "body"),
    [
        # the gateway re-wraps the text; collapsing whitespace after the scrub rebuilds it
        ("correct horse battery", auth_form(USERNAME, error="Bad correct\n   horse battery")),
        # the parser quotes names with repr(), which escapes a quote: the scrub misses it
        ("it's\"so", b'<config-auth><auth><form><input type="text" name="x it&apos;s&quot;so"/>'
         b"</form></auth></config-auth>"),
        # the parser cuts a quoted name at 60 characters before the flow can scrub it
        ("p" * 70, f'<config-auth><auth><form><input type="text" name="x {"p" * 70}"/>'
         "</form></auth></config-auth>".encode()),
    ],
    ids=["whitespace", "repr-escaped", "truncated"],
)  # fmt: skip
def test_secret_in_altered_echo_is_scrubbed(password: str, body: bytes) -> None:
    flow = flow_for(password=password)
    flow.start()
    with pytest.raises(ProtocolError) as info:
        flow.receive(200, body)
    message = str(info.value)
    shown = [password, password.replace("'", "\\'"), password[:24]]
    assert not any(s in message for s in shown), message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_parse_form_entry_on_any_text(text: str) -> None:
    try:
        entry = parse_form_entry(text)
    except ValueError as exc:
        assert str(exc).startswith("expected FORM:FIELD=VALUE")
        return
    assert isinstance(entry, FormEntry) and entry.field
    prefix = "" if entry.form is None else f"{entry.form}:"
    assert f"{prefix}{entry.field}={entry.value}" == text
    assert "=" not in entry.field and ":" not in entry.field


@settings(max_examples=200, deadline=None)
@given(
    key=st.text(st.characters(exclude_characters="=\u2603"), max_size=50),
    value=st.text(max_size=20),
)
def test_parse_form_entry_errors_never_quote_the_value(key: str, value: str) -> None:
    secret = f"\u2603{value}\u2603"
    try:
        parse_form_entry(f"{key}={secret}")
    except ValueError as exc:
        assert "\u2603" not in str(exc)
    with pytest.raises(ValueError) as info:
        parse_form_entry(secret.replace("=", ""))
    assert "\u2603" not in str(info.value)


# -- hostile XML ----------------------------------------------------------------------------------

LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + "".join(
        f'<!ENTITY lol{i} "' + (f"&lol{i - 1};" if i > 1 else "&lol;") * 10 + '">\n'
        for i in range(1, 10)
    )
    + "]>\n"
)
XXE = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("prolog", [LAUGHS, XXE], ids=["billion-laughs", "external-entity"])
@pytest.mark.parametrize("junk", [f"<banner>{TERMS}</banner>", f"<banner>{CTRL_C}</banner>",
                                  f"<message>{TERMS} {CTRL_C}</message>", "<title>a & b</title>"])  # fmt: skip
@pytest.mark.parametrize("parse", [parse_auth_response_untrusted, parse_client_message_untrusted])
def test_dtd_stays_refused_beside_unescaped_banners(
    prolog: str, junk: str, parse: Callable[[bytes], object]
) -> None:
    ref = "&lol9;" if "lolz" in prolog else "&e;"
    body = (
        f'{prolog}<config-auth client="vpn" type="complete"><auth id="success">{junk}'
        f"<message>{ref}</message></auth><session-token>{ref}</session-token></config-auth>"
    ).encode()
    with pytest.raises(BadPacketError, match="DTD"):
        parse(body)


def test_undefined_entity_beside_a_bare_ampersand_is_refused() -> None:
    body = raw_form(f"{TERMS} &xxe;", "m")
    with pytest.raises(BadPacketError, match="malformed"):
        parse_auth_response_untrusted(body)


def test_nesting_cap_holds_after_a_repair() -> None:
    deep = "<a>" * (MAX_DEPTH + 5) + "</a>" * (MAX_DEPTH + 5)
    body = raw_form(TERMS, "m").replace(b"</form>", f"</form><x>{deep}</x>".encode())
    with pytest.raises(BadPacketError, match="nested deeper"):
        parse_auth_response_untrusted(body)
    # inside a banner the same markup is text once repaired, and stays bounded
    form = parse_auth_response_untrusted(raw_form(f"{TERMS} {deep}", "m"))
    assert isinstance(form, AuthForm) and form.banner == f"{TERMS} {deep}"


SAMPLES = [
    OCSERV_USERNAME, OCSERV_OTP_FAILED, ASA_DOUBLE_FORM, CHALLENGE_FORM, CERT_REQUEST,
    ASA_COMPLETE, raw_form(CTRL_C, TERMS), raw_form(TERMS, CTRL_C),
    error_complete("Cisco Secure Desktop not installed on the client"),
    build_auth_complete(banner=TERMS),
]  # fmt: skip
PIECES = st.sampled_from(
    [b"&", b"<", b">", b"&amp;", b"&lol;", b"&#0;", b"&#x41;", b"<banner>", b"</banner>",
     b"<message>", b"</message>", b"<pre-login-banner>", b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
     b"<!ENTITY a SYSTEM 'file:///'>", b"<![CDATA[", b"]]>", b"<!--", b"-->", b"<?pi?>",
     b"<opaque>", b"</opaque>", b"<a>" * 40, b"\x00", b"\xff", b'"', b"'"]
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    body = draw(st.sampled_from(SAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(body)))
        end = draw(st.integers(start, min(len(body), start + 30)))
        new = draw(st.one_of(PIECES, st.binary(max_size=16)))
        body = body[:start] + new + body[end:]
    return body


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=600), mutated()))
def test_fuzz_tolerant_parser_raises_only_bad_packet(body: bytes) -> None:
    try:
        result = parse_auth_response_untrusted(body)
    except BadPacketError:
        return
    assert isinstance(result, AuthForm | AuthComplete)
    texts = [result.message, result.banner, result.error]
    # no entity was expanded: nothing longer than the bytes that came in
    assert all(len(t) <= len(body) for t in texts if t is not None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(mutated(), st.sampled_from(SAMPLES)), min_size=1, max_size=6))
def test_fuzz_conversation_raises_only_protocol_errors(bodies: list[bytes]) -> None:
    flow = flow_for(
        token=HotpToken(), entries=(parse_form_entry("pin=4711"),), has_certificate=True
    )
    step: AuthRequest | AuthComplete = flow.start()
    try:
        for body in bodies:
            if isinstance(step, AuthComplete):
                break
            step = flow.receive(200, body)
    except ProtocolError as exc:
        assert_no_secret(exc, ["s3cret", "4711", *RFC4226_CODES[:3]])
