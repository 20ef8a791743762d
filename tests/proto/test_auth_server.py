"""AuthServer (protocol.md §2.3 to §2.7, §3): ocserv 1.1.6's side of aggregate auth.

Every scenario runs the client role (``AuthFlow``) against the server role in
memory, through the real ``CookieJar`` the engine uses, so both sides must
agree; raw XML posts cover what AuthFlow never sends.  Expected bytes are the
captures quoted in protocol.md.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.proto.auth import (
    MAX_BODY_BYTES,
    AuthComplete,
    AuthFlow,
    AuthForm,
    AuthRequest,
    ClientInfo,
    ProfileManifestEntry,
    build_auth_complete,
    build_init,
    build_logout,
    parse_auth_response_untrusted,
)
from loadgen.proto.auth_server import (
    ERROR_LABELS,
    AuthMode,
    AuthPolicy,
    AuthResponse,
    AuthServer,
    AuthSuccess,
    GroupSpec,
    UserSpec,
)
from loadgen.proto.errors import (
    AuthRejectedError,
    LocalProtocolError,
    RemoteProtocolError,
)
from loadgen.proto.http import CookieJar, parse_cookies
from loadgen.proto.otp import TokenSecret, TotpCodes, parse_otp_users_file
from loadgen.proto.personality import personality_for

DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'

#: §2.4, ocserv 1.1.6 without groups [cap]
OCSERV_USERNAME_FORM = (
    DECL + b'<config-auth client="vpn" type="auth-request">\n'
    b'<version who="sg">0.1(1)</version>\n'
    b'<auth id="main">\n'
    b"<message>Please enter your username.</message>\n"
    b'<form method="post" action="/auth">\n'
    b'<input type="text" name="username" label="Username:" />\n'
    b"</form></auth>\n"
    b"</config-auth>"
)
#: §2.4, ``select-group = group1`` and ``select-group = group2[Group Two]`` [cap]
OCSERV_GROUP_SELECT = (
    b'<select name="group_list" label="Group:">\n'
    b'<option value="group1">group1</option>\n'
    b'<option value="group2">Group Two</option>\n'
    b"</select>\n"
)
#: §2.6, the success body of ocserv 1.1.6 (Content-Length: 189) [cap]
OCSERV_COMPLETE = (
    DECL + b'<config-auth client="vpn" type="complete">\n'
    b'<version who="sg">0.1(1)</version>\n'
    b'<auth id="success">\n'
    b"<title>SSL VPN Service</title></auth></config-auth>\n"
)
#: §2.6, the manifest ocserv adds with ``user-profile`` [cap]
OCSERV_PROFILE_BLOCK = (
    b'<config client="vpn" type="private"><vpn-profile-manifest><vpn rev="1.0">'
    b'<file type="profile" service-type="user"><uri>/profiles/profile.xml</uri>'
    b'<hash type="sha1">A8B0B07FBA93D06E8501E40AB807AEE2464E73B7</hash></file></vpn>'
    b"</vpn-profile-manifest>\n</config>"
)
#: §2.6, the server certificate SHA-1 of the capture
CERT_SHA1 = "02E40E0EA75FFC892CFBF9CC05E068F3D88ED017"
EXPIRED = "expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure; HttpOnly"
GROUPS = (GroupSpec("group1"), GroupSpec("group2", "Group Two"))
ALICE = {"alice": UserSpec("s3cret")}
RETRY_MESSAGE = "Login failed.\nPlease enter your password."
OCSERV = personality_for("ocserv")


# -- the in-memory wire ----------------------------------------------------------------


def seeded(seed: int = 1) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


class Wire:
    """One client's HTTP side: the engine's CookieJar, a clock, and the log."""

    def __init__(self, server: AuthServer, *, now: float = 0.0) -> None:
        self.server = server
        self.jar = CookieJar()
        self.now = now
        #: the TLS peer certificate's CN the gateway would pass
        self.peer_cn: str | None = None
        self.log: list[AuthResponse] = []

    def cookies(self) -> dict[str, str]:
        # what a gateway parses out of the Cookie header
        return parse_cookies([self.jar.header_value() or ""])

    def send(self, path: str, body: bytes = b"", method: str = "POST") -> AuthResponse:
        response = self.server.handle(
            method=method,
            path=path,
            cookies=self.cookies(),
            body=body,
            now=self.now,
            peer_cn=self.peer_cn,
        )
        assert isinstance(response, AuthResponse)
        self.jar.update_from_headers((k.encode(), v.encode("latin-1")) for k, v in response.headers)
        self.log.append(response)
        return response

    def labels(self) -> list[str | None]:
        return [r.error_label for r in self.log]


def converse(flow: AuthFlow, wire: Wire) -> tuple[AuthComplete, list[str]]:
    """Drive AuthFlow against the server; return the result and the phases."""
    phases: list[str] = []
    step: AuthRequest | AuthComplete = flow.start()
    for _ in range(20):
        if isinstance(step, AuthComplete):
            return step, phases
        phases.append(flow.phase)
        response = wire.send(step.path, step.body)
        step = flow.receive(response.status, response.body, reason=response.reason)
    raise AssertionError("conversation did not end")


def make_flow(
    group: str | None = None, password: str = "s3cret", username: str = "alice"
) -> AuthFlow:
    return AuthFlow(
        ClientInfo(),
        base_url="https://127.0.0.1:4443/",
        username=username,
        password=password,
        group=group,
    )


def make_server(**policy: object) -> AuthServer:
    return AuthServer(AuthPolicy(**policy), personality=OCSERV, random_bytes=seeded())  # type: ignore[arg-type]


def reply(fields: dict[str, str], group: str | None = None) -> bytes:
    """A raw auth-reply, as openconnect writes it (§2.5)."""
    auth = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    select = f"<group-select>{group}</group-select>" if group is not None else ""
    return (
        DECL + b'<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2">'
        b'<version who="vpn">v9.01-3</version><device-id>linux-64</device-id>'
        + f"<auth>{auth}</auth>{select}</config-auth>\n".encode()
    )


def init(group: str | None = None) -> bytes:
    return build_init(ClientInfo(), group_access="https://127.0.0.1:4443/", group_select=group)


def form_of(response: AuthResponse) -> AuthForm:
    form = parse_auth_response_untrusted(response.body)
    assert isinstance(form, AuthForm)
    return form


def header_values(response: AuthResponse, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name.lower()]


def context_cookie(response: AuthResponse) -> str:
    (cookie,) = [c for c in header_values(response, "Set-Cookie") if c.startswith("webvpncontext=")]
    value = cookie.removeprefix("webvpncontext=").removesuffix("; Secure; HttpOnly")
    assert len(base64.b64decode(value, validate=True)) == 32
    return value


# -- forms and headers against the captures ----------------------------------------------------


def test_first_form_is_the_ocserv_capture_with_a_context_cookie() -> None:
    wire = Wire(make_server())
    response = wire.send("/", init())
    assert (response.status, response.reason, response.close) == (200, "OK", False)
    assert response.body == OCSERV_USERNAME_FORM
    cookie = context_cookie(response)
    assert response.headers == (
        ("Connection", "Keep-Alive"),
        ("Content-Type", "text/xml"),
        ("Content-Length", str(len(OCSERV_USERNAME_FORM))),
        ("X-Transcend-Version", "1"),
        ("Set-Cookie", f"webvpncontext={cookie}; Secure; HttpOnly"),
    )
    assert response.success is None and response.error_label is None
    assert wire.server.pending == 1


def test_group_form_is_the_ocserv_capture() -> None:
    response = Wire(make_server(groups=GROUPS)).send("/", init())
    assert response.body == OCSERV_USERNAME_FORM.replace(
        b"</form>", OCSERV_GROUP_SELECT + b"</form>"
    )


def test_accept_any_conversation_and_success_headers() -> None:
    wire = Wire(make_server(server_cert_sha1=CERT_SHA1))
    done, phases = converse(make_flow(username="anyone", password="anything"), wire)
    assert done == AuthComplete()
    assert phases == ["group_select", "auth", "auth"]
    success = wire.log[-1].success
    assert success == AuthSuccess(username="anyone", group=None, cookie=success.cookie)  # type: ignore[union-attr]
    assert success is not None
    token = success.cookie
    assert len(base64.b64decode(token, validate=True)) == 32
    # the client's jar now holds the session cookie, equal to webvpncontext (§2.6)
    assert wire.jar.get("webvpn") == token and wire.jar.get("webvpncontext") == token
    assert wire.jar.get("webvpnc") == f"bu:/&p:t&iu:1/&sh:{CERT_SHA1}"
    last = wire.log[-1]
    assert last.body == OCSERV_COMPLETE == build_auth_complete()
    assert last.headers == (
        ("Connection", "Keep-Alive"),
        ("Content-Type", "text/xml"),
        ("Content-Length", "189"),
        ("X-Transcend-Version", "1"),
        ("Set-Cookie", f"webvpncontext={token}; Secure; HttpOnly"),
        ("Set-Cookie", f"webvpn={token}; Secure; HttpOnly"),
        ("Set-Cookie", f"webvpnc=; {EXPIRED}"),
        ("Set-Cookie", f"webvpnc=bu:/&p:t&iu:1/&sh:{CERT_SHA1}; path=/; Secure; HttpOnly"),
    )
    assert wire.labels() == [None, None, None]
    assert wire.server.pending == 0  # the context is gone once the cookie is issued


def test_the_context_cookie_stays_the_same_across_forms() -> None:
    wire = Wire(make_server(users=ALICE))
    first = context_cookie(wire.send("/", init()))
    second = context_cookie(wire.send("/auth", reply({"username": "alice"})))
    third = context_cookie(wire.send("/auth", reply({"password": "nope"})))
    assert first == second == third


# -- groups -----------------------------------------------------------------------------------


def test_group_by_alias_takes_a_second_init() -> None:
    wire = Wire(make_server(users=ALICE, groups=GROUPS))
    _, phases = converse(make_flow(group="group two"), wire)
    assert phases == ["group_select", "group_select", "auth", "auth"]
    options = form_of(wire.log[1]).group_list
    assert options is not None and [o.value for o in options.options] == ["group2", "group1"]
    assert wire.log[-1].success is not None and wire.log[-1].success.group == "group2"
    assert wire.server.pending == 0


def test_group_by_name_case_insensitive() -> None:
    wire = Wire(make_server(users=ALICE, groups=GROUPS))
    _, phases = converse(make_flow(group="GROUP2"), wire)
    assert phases == ["group_select", "group_select", "auth", "auth"]
    assert wire.log[-1].success is not None and wire.log[-1].success.group == "group2"


def test_default_group_needs_no_second_init() -> None:
    wire = Wire(make_server(users=ALICE, groups=GROUPS))
    _, phases = converse(make_flow(group="group1"), wire)
    assert phases == ["group_select", "auth", "auth"]
    assert wire.log[-1].success is not None and wire.log[-1].success.group == "group1"


def test_configured_default_group_is_listed_first_and_used() -> None:
    wire = Wire(make_server(groups=GROUPS, default_group="group2"))
    _, phases = converse(make_flow(), wire)
    assert phases == ["group_select", "auth", "auth"]
    options = form_of(wire.log[0]).group_list
    assert options is not None and options.options[0].value == "group2"
    assert wire.log[-1].success is not None and wire.log[-1].success.group == "group2"


def test_group_alias_in_a_raw_init_or_reply_matches_case_insensitively() -> None:
    wire = Wire(make_server(groups=GROUPS))
    options = form_of(wire.send("/", init(" GROUP two"))).group_list
    assert options is not None and options.options[0].value == "group2"
    other = Wire(make_server(groups=GROUPS))
    other.send("/", init())
    other.send("/auth", reply({"username": "u"}, group="group TWO"))
    done = other.send("/auth", reply({"password": "p"}))
    assert done.success is not None and done.success.group == "group2"


def test_unknown_group_select_is_ignored() -> None:
    wire = Wire(make_server(users=ALICE, groups=GROUPS))
    options = form_of(wire.send("/", init("nope"))).group_list
    assert options is not None and options.options[0].value == "group1"
    wire.send("/auth", reply({"username": "alice"}, group="nope"))
    done = wire.send("/auth", reply({"password": "s3cret"}))
    assert done.success is not None and done.success.group == "group1"


def test_group_list_field_selects_like_group_select() -> None:
    wire = Wire(make_server(groups=GROUPS))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "u", "group_list": "group2"}))
    done = wire.send("/auth", reply({"password": "p"}))
    assert done.success is not None and done.success.group == "group2"


def test_group_sent_with_the_password_is_ignored() -> None:
    wire = Wire(make_server(groups=GROUPS))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "u"}, group="group1"))
    done = wire.send("/auth", reply({"password": "p"}, group="group2"))
    assert done.success is not None and done.success.group == "group1"


def test_user_not_in_the_group_is_refused_like_a_wrong_password() -> None:
    policy = {"users": {"bob": UserSpec("pw", groups=("group1",))}, "groups": GROUPS}
    wire = Wire(make_server(**policy))
    with pytest.raises(AuthRejectedError, match="Login failed"):
        converse(make_flow(group="group2", username="bob", password="pw"), wire)
    assert wire.labels()[-1] == "login_failed"
    assert form_of(wire.log[-1]).message == RETRY_MESSAGE
    ok = Wire(make_server(**policy))
    converse(make_flow(group="group1", username="bob", password="pw"), ok)
    assert ok.log[-1].success is not None and ok.log[-1].success.username == "bob"


# -- ocserv's two steps and wrong passwords -------------------------------------------------------


def test_password_sent_with_the_username_is_ignored() -> None:
    wire = Wire(make_server(users=ALICE))
    wire.send("/", init())
    step = wire.send("/auth", reply({"username": "alice", "password": "s3cret"}))
    assert step.success is None
    form = form_of(step)
    assert [i.type for i in form.inputs] == ["password"]
    assert form.message == "Please enter your password."
    done = wire.send("/auth", reply({"password": "s3cret"}))
    assert done.success is not None and done.success.username == "alice"


def test_unknown_user_still_gets_the_password_form() -> None:
    wire = Wire(make_server(users=ALICE))
    wire.send("/", init())
    known = wire.send("/auth", reply({"username": "alice"})).body
    other = Wire(make_server(users=ALICE))
    other.send("/", init())
    assert other.send("/auth", reply({"username": "mallory"})).body == known
    failed = other.send("/auth", reply({"password": "s3cret"}))
    assert (failed.status, failed.error_label) == (200, "login_failed")


def test_wrong_password_flow_gives_up_and_a_raw_client_reaches_401() -> None:
    wire = Wire(make_server(users=ALICE))
    with pytest.raises(AuthRejectedError, match="Login failed") as info:
        converse(make_flow(password="wrong-pw"), wire)
    assert "wrong-pw" not in str(info.value)
    assert wire.labels() == [None, None, "login_failed"]
    assert form_of(wire.log[-1]).message == RETRY_MESSAGE
    # the same client, retrying by hand with the context cookie: try 2, then 3
    second = wire.send("/auth", reply({"password": "wrong-pw"}))
    assert (second.status, second.error_label, second.close) == (200, "login_failed", False)
    third = wire.send("/auth", reply({"password": "wrong-pw"}))
    assert (third.status, third.reason) == (401, "Authentication failed")
    assert (third.body, third.close, third.error_label) == (b"", True, "auth_failed")
    assert ("Content-Length", "0") in third.headers and ("Connection", "close") in third.headers
    assert third.success is None and wire.server.pending == 0
    # the context died with the 401: the next reply starts over
    again = wire.send("/auth", reply({"password": "s3cret"}))
    assert (again.error_label, again.body) == ("context_unknown", OCSERV_USERNAME_FORM)


def test_flow_reads_the_401_as_a_rejection() -> None:
    wire = Wire(make_server(users=ALICE, max_password_tries=1))
    with pytest.raises(AuthRejectedError) as info:
        converse(make_flow(password="wrong"), wire)
    assert info.value.status == 401
    assert wire.labels() == [None, None, "auth_failed"]


def test_right_password_after_a_wrong_one_succeeds() -> None:
    wire = Wire(make_server(users=ALICE))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    assert wire.send("/auth", reply({"password": "bad"})).error_label == "login_failed"
    done = wire.send("/auth", reply({"password": "s3cret"}))
    assert done.success is not None


def test_a_second_init_does_not_reset_the_try_count() -> None:
    wire = Wire(make_server(users=ALICE, max_password_tries=2))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    assert wire.send("/auth", reply({"password": "bad"})).error_label == "login_failed"
    wire.send("/auth", init())
    wire.send("/auth", reply({"username": "alice"}))
    assert wire.send("/auth", reply({"password": "bad"})).status == 401


def test_missing_fields() -> None:
    wire = Wire(make_server())
    cookie = context_cookie(wire.send("/", init()))
    again = wire.send("/auth", reply({"name": "x"}))
    assert (again.error_label, again.body, context_cookie(again)) == (
        "no_username",
        OCSERV_USERNAME_FORM,
        cookie,
    )
    wire.send("/auth", reply({"username": "u"}))
    nopw = wire.send("/auth", reply({"username": "u"}))
    assert (nopw.status, nopw.reason, nopw.close, nopw.error_label) == (
        401,
        "No password",
        True,
        "no_password",
    )
    assert wire.server.pending == 0


def test_suffixed_password_field_is_the_password() -> None:
    wire = Wire(make_server(users=ALICE))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    assert wire.send("/auth", reply({"secondary_password": "s3cret"})).success is not None


def test_an_overlong_username_never_logs_in() -> None:
    wire = Wire(make_server())
    wire.send("/", init())
    assert wire.send("/auth", reply({"username": "u" * 300})).error_label is None
    assert wire.send("/auth", reply({"password": "p"})).error_label == "login_failed"


def test_non_ascii_password_compares() -> None:
    wire = Wire(make_server(users={"zoë": UserSpec("pässwörd €")}))
    converse(make_flow(username="zoë", password="pässwörd €"), wire)
    assert wire.log[-1].success is not None and wire.log[-1].success.username == "zoë"


# -- reject_ratio ---------------------------------------------------------------------------------


def test_reject_ratio_one_refuses_every_valid_login() -> None:
    wire = Wire(make_server(reject_ratio=1.0))
    with pytest.raises(AuthRejectedError):
        converse(make_flow(), wire)
    assert wire.labels()[-1] == "login_failed"


def test_reject_ratio_zero_accepts_and_draws_nothing_extra() -> None:
    sizes: list[int] = []
    source = seeded()

    def counting(size: int) -> bytes:
        sizes.append(size)
        return source(size)

    wire = Wire(AuthServer(AuthPolicy(reject_ratio=0.0), personality=OCSERV, random_bytes=counting))
    converse(make_flow(), wire)
    assert wire.log[-1].success is not None
    assert sizes == [32, 32]  # the context id and the session cookie, nothing else


@pytest.mark.parametrize(("draw", "accepted"), [(b"\x00" * 8, False), (b"\xff" * 8, True)])
def test_reject_ratio_is_decided_by_the_injected_source(draw: bytes, accepted: bool) -> None:
    def scripted(size: int) -> bytes:
        return draw if size == 8 else bytes(range(size))

    wire = Wire(AuthServer(AuthPolicy(reject_ratio=0.5), personality=OCSERV, random_bytes=scripted))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "u"}))
    assert (wire.send("/auth", reply({"password": "p"})).success is not None) is accepted


def test_reject_ratio_rejects_about_that_fraction() -> None:
    server = make_server(reject_ratio=0.25)
    outcomes = []
    for _ in range(400):
        wire = Wire(server)
        wire.send("/", init())
        wire.send("/auth", reply({"username": "u"}))
        outcomes.append(wire.send("/auth", reply({"password": "p"})).success is None)
    assert 60 <= sum(outcomes) <= 140  # 100 expected; seeded, so exact every run


# -- profile manifest and webvpnc -----------------------------------------------------------------


def test_profile_manifest_and_webvpnc() -> None:
    profile_body = b"<AnyConnectProfile/>\n"
    sha1 = hashlib.sha1(profile_body).hexdigest()
    entry = ProfileManifestEntry(uri="/profiles/profile.xml", sha1_hex=sha1.upper())
    wire = Wire(make_server(profile=entry, server_cert_sha1=CERT_SHA1.lower()))
    done, _ = converse(make_flow(), wire)
    assert done.profiles == (entry,)
    assert done.profiles[0].sha1_hex == sha1.upper()
    assert wire.log[-1].body == OCSERV_COMPLETE.replace(
        b"</auth></config-auth>\n", b"</auth>\n" + OCSERV_PROFILE_BLOCK + b"</config-auth>"
    ).replace(b"A8B0B07FBA93D06E8501E40AB807AEE2464E73B7", sha1.upper().encode())
    webvpnc = wire.jar.get("webvpnc")
    assert webvpnc == (
        f"bu:/&p:t&iu:1/&sh:{CERT_SHA1}"
        "&lu:/+CSCOT+/translation-table?textdomain%3DAnyConnect%26type%3Dmanifest"
        f"&fu:profiles%2Fprofile.xml&fh:{sha1.upper()}"
    )
    # the engine's reading of webvpnc (session.py) lands on the same file and hash
    fields = dict(part.split(":", 1) for part in webvpnc.split("&"))
    uri = fields["bu"].rstrip("/") + unquote(fields["fu"])
    assert ("/" + uri.lstrip("/"), fields["fh"]) == (entry.uri, sha1.upper())
    assert hashlib.sha1(profile_body).hexdigest().upper() == fields["fh"]


# -- context lifetime and bounds ------------------------------------------------------------------


def test_expired_context_restarts_and_the_flow_notices() -> None:
    wire = Wire(make_server(context_ttl_s=240))
    flow = make_flow()
    first = wire.send("/", flow.start().body)
    step = flow.receive(first.status, first.body)
    assert isinstance(step, AuthRequest)
    wire.now = 240.0  # the deadline itself counts as expired
    restarted = wire.send(step.path, step.body)
    assert (restarted.status, restarted.error_label) == (200, "context_expired")
    assert restarted.body == OCSERV_USERNAME_FORM
    assert context_cookie(restarted) != context_cookie(first)
    with pytest.raises(RemoteProtocolError, match="username again"):
        flow.receive(restarted.status, restarted.body)
    assert wire.server.pending == 1  # the new context only


def test_context_alive_before_its_deadline() -> None:
    wire = Wire(make_server(context_ttl_s=240))
    wire.send("/", init())
    wire.now = 239.9
    assert wire.send("/auth", reply({"username": "u"})).error_label is None


def test_an_expired_context_is_dropped_even_when_the_clock_jumped() -> None:
    server = make_server(context_ttl_s=240)
    Wire(server, now=10.0).send("/", init())  # deadline 250, first in line
    late = Wire(server, now=0.0)  # deadline 240, behind it
    late.send("/", init())
    late.now = 245.0
    assert late.send("/auth", reply({"username": "u"})).error_label == "context_expired"
    assert server.pending == 2  # the first one and the restart, not the expired one


def test_unknown_or_missing_context_restarts() -> None:
    wire = Wire(make_server())
    response = wire.send("/auth", reply({"username": "u"}))
    assert (response.error_label, response.body) == ("context_unknown", OCSERV_USERNAME_FORM)
    forged = wire.server.handle(
        method="POST",
        path="/auth",
        cookies={"webvpncontext": "A" * 44},
        body=reply({"password": "p"}),
        now=0.0,
    )
    assert forged.error_label == "context_unknown" and forged.success is None


def test_pending_contexts_are_bounded() -> None:
    server = make_server(max_pending=2, context_ttl_s=10)
    first, second, third = Wire(server), Wire(server), Wire(server)
    first.send("/", init())
    second.send("/", init())
    refused = third.send("/", init())
    assert (refused.status, refused.close, refused.error_label) == (
        503,
        True,
        "too_many_pending",
    )
    assert refused.body == b"" and "webvpncontext" not in third.jar
    # a restart needs a slot too
    assert third.send("/auth", reply({"username": "u"})).status == 503
    # a finished login frees its slot
    first.send("/auth", reply({"username": "u"}))
    assert first.send("/auth", reply({"password": "p"})).success is not None
    assert third.send("/", init()).status == 200
    assert server.pending == 2
    # expiry frees the rest
    assert server.expire(9.9) == 0
    assert server.expire(10.0) == 2 and server.pending == 0


def test_handle_expires_old_contexts_itself() -> None:
    server = make_server(context_ttl_s=5)
    for i in range(50):
        Wire(server, now=float(i)).send("/", init())
        assert server.pending <= 5


def test_logout_returns_the_login_form_and_drops_the_context() -> None:
    wire = Wire(make_server())
    wire.send("/", init())
    response = wire.send("/", build_logout("T"))
    assert (response.status, response.error_label, response.body) == (
        200,
        "logout",
        OCSERV_USERNAME_FORM,
    )
    assert ("Set-Cookie", f"webvpncontext=; {EXPIRED}") in response.headers
    assert "webvpncontext" not in wire.jar and wire.server.pending == 0


# -- bad requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b"<config-auth",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><config-auth type="init"/>',
        b'<config-auth client="vpn" type="complete"/>',
        b'<config-auth client="vpn" type="auth-request"/>',
        b'<other type="init"/>',
        b"username=alice&password=s3cret",
        b'<config-auth type="init">' + b"x" * MAX_BODY_BYTES + b"</config-auth>",
    ],
)
def test_malformed_bodies_are_400_and_close(body: bytes) -> None:
    server = make_server()
    response = server.handle(method="POST", path="/", cookies={}, body=body, now=0.0)
    assert (response.status, response.reason) == (400, "Bad Request")
    assert (response.close, response.error_label, response.body) == (True, "malformed_xml", b"")
    assert ("Connection", "close") in response.headers and server.pending == 0


@pytest.mark.parametrize("path", ["/profiles/x", "/auth/", "/vpn", "", "/CSCOSSLC/tunnel"])
def test_other_paths_are_404_and_close(path: str) -> None:
    response = make_server().handle(method="POST", path=path, cookies={}, body=init(), now=0)
    assert (response.status, response.reason, response.close) == (404, "Not found", True)
    assert response.error_label == "not_found"


@pytest.mark.parametrize("path", ["/", "/auth", "/VPN", "/auth?x=1"])
def test_auth_paths(path: str) -> None:
    response = make_server().handle(method="POST", path=path, cookies={}, body=init(), now=0)
    assert (response.status, response.body) == (200, OCSERV_USERNAME_FORM)


def test_methods() -> None:
    server = make_server()
    got = server.handle(method="GET", path="/", cookies={}, body=b"", now=0)
    # ocserv answers GET / with the same form (§2.8)
    assert (got.status, got.body, got.error_label) == (200, OCSERV_USERNAME_FORM, None)
    for method in ("PUT", "HEAD", "CONNECT", "post"):
        bad = server.handle(method=method, path="/", cookies={}, body=init(), now=0)
        assert (bad.status, bad.close, bad.error_label) == (405, True, "bad_method")
    assert server.pending == 1


# -- secrets, configuration, misuse ---------------------------------------------------------------


def test_secrets_stay_out_of_reprs() -> None:
    policy = AuthPolicy(users={"alice": UserSpec("s3cret")})
    server = AuthServer(policy, personality=OCSERV, random_bytes=seeded())
    wire = Wire(server)
    converse(make_flow(), wire)
    token = wire.jar.get("webvpn")
    assert token is not None
    texts = [repr(policy), repr(server), *map(repr, wire.log), repr(wire.log[-1].success)]
    assert not any("s3cret" in t or token in t for t in texts)
    # a pending context holds no password
    wire2 = Wire(server)
    wire2.send("/", init())
    wire2.send("/auth", reply({"username": "alice"}))
    wire2.send("/auth", reply({"password": "wrong-pw"}))
    assert "wrong-pw" not in repr(list(server._contexts.values()))


def test_policy_is_copied_and_validated() -> None:
    users = {"alice": UserSpec("a")}
    policy = AuthPolicy(users=users)
    users["eve"] = UserSpec("e")
    assert policy.users is not None and "eve" not in policy.users
    bad: list[dict[str, object]] = [
        {"groups": (GroupSpec("a"), GroupSpec("A"))},
        {"groups": (GroupSpec(""),)},
        {"groups": GROUPS, "default_group": "group3"},
        {"default_group": "group1"},
        {"groups": GROUPS, "users": {"u": UserSpec("p", groups=("nope",))}},
        {"max_password_tries": 0},
        {"reject_ratio": 1.5},
        {"reject_ratio": float("nan")},
        {"context_ttl_s": 0},
        {"context_ttl_s": float("inf")},
        {"max_pending": 0},
        {"server_cert_sha1": "xyz"},
        {"profile": ProfileManifestEntry(uri="/profiles/p.xml", sha1_hex="00")},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            AuthPolicy(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="XML"):
        AuthServer(
            AuthPolicy(groups=(GroupSpec("a\x01"),)), personality=OCSERV, random_bytes=seeded()
        )


def test_a_broken_random_source_is_our_bug() -> None:
    server = AuthServer(AuthPolicy(), personality=OCSERV, random_bytes=lambda n: b"short")
    with pytest.raises(LocalProtocolError):
        server.handle(method="POST", path="/", cookies={}, body=init(), now=0)
    constant = AuthServer(AuthPolicy(), personality=OCSERV, random_bytes=lambda n: b"\x00" * n)
    constant.handle(method="POST", path="/", cookies={}, body=init(), now=0)
    with pytest.raises(LocalProtocolError, match="repeating"):
        constant.handle(method="POST", path="/", cookies={}, body=init(), now=0)


# -- fuzz -------------------------------------------------------------------------------------------

FIELD_NAMES = st.sampled_from(["username", "password", "group_list", "x_password", "answer", "a"])
FIELD_TEXT = st.text(st.sampled_from("ab<&>\"' \u00e9\U0001f600group12"), max_size=12)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def client_documents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["init", "auth-reply", "logout", "complete", ""]))
    fields = draw(st.lists(st.tuples(FIELD_NAMES, FIELD_TEXT), max_size=4))
    auth = "".join(f"<{k}>{_escape(v)}</{k}>" for k, v in fields)
    group = draw(st.none() | st.sampled_from(["group1", "GROUP TWO", "nope", ""]))
    select = "" if group is None else f"<group-select>{group}</group-select>"
    body = f'<config-auth client="vpn" type="{kind}"><auth>{auth}</auth>{select}</config-auth>'
    return body.encode()


BODIES = st.one_of(st.binary(max_size=300), client_documents())
PATHS = st.one_of(st.sampled_from(["/", "/auth", "/VPN", "/auth?x", "/nope"]), st.text(max_size=20))
METHODS = st.one_of(st.sampled_from(["POST", "GET", "PUT"]), st.text(max_size=8))
COOKIES = st.dictionaries(
    st.sampled_from(["webvpncontext", "webvpn", "x"]), st.text(max_size=50), max_size=3
)


def fuzz_server() -> AuthServer:
    policy = AuthPolicy(
        users={"alice": UserSpec("s3cret", groups=("group1",)), "bob": UserSpec("pw")},
        groups=GROUPS,
        max_pending=4,
        context_ttl_s=5,
        reject_ratio=0.3,
    )
    return AuthServer(policy, personality=OCSERV, random_bytes=seeded())


def check(response: object, server: AuthServer) -> None:
    assert isinstance(response, AuthResponse)
    assert response.error_label is None or response.error_label in ERROR_LABELS
    assert response.status in (200, 400, 401, 404, 405, 503)
    assert response.close == (response.status != 200)
    assert ("Content-Length", str(len(response.body))) in response.headers
    assert server.pending <= 4
    if response.success is not None:
        assert response.success.username in ("alice", "bob")


@settings(max_examples=300, deadline=None)
@given(METHODS, PATHS, COOKIES, BODIES, st.floats(-1e9, 1e9))
def test_fuzz_handle_only_returns_responses(
    method: str, path: str, cookies: dict[str, str], body: bytes, now: float
) -> None:
    server = fuzz_server()
    check(server.handle(method=method, path=path, cookies=cookies, body=body, now=now), server)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["POST", "GET", "PUT"]),
            st.sampled_from(["/", "/auth", "/x"]),
            st.integers(0, 5),
            BODIES,
            st.floats(0, 3),
        ),
        max_size=25,
    )
)
def test_fuzz_conversations_keep_the_bounds(
    steps: list[tuple[str, str, int, bytes, float]],
) -> None:
    """Sequences of requests reusing real context cookies, with time passing."""
    server = fuzz_server()
    issued: list[str] = []
    now = 0.0
    for method, path, which, body, dt in steps:
        now += dt
        cookies = {"webvpncontext": issued[which % len(issued)]} if issued and which else {}
        response = server.handle(method=method, path=path, cookies=cookies, body=body, now=now)
        check(response, server)
        for name, value in response.headers:
            if name == "Set-Cookie" and value.startswith("webvpncontext=") and "1970" not in value:
                issued.append(value.split(";")[0].removeprefix("webvpncontext="))


# -- auth modes: certificate, certificate+password, password+otp -------------------------------

OTP_KEY = b"12345678901234567890"
#: RFC 4226 appendix D, counters 0 and 1 of OTP_KEY
HOTP_0, HOTP_1 = "755224", "287082"
OTP_MESSAGE = "Please enter your OTP password."


def otp_server(**policy: object) -> AuthServer:
    users = parse_otp_users_file(f"HOTP alice - {OTP_KEY.hex()}\n")
    return make_server(mode=AuthMode.PASSWORD_OTP, otp_users=users, **policy)


def test_certificate_mode_answers_the_init_with_the_complete() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE, groups=GROUPS))
    wire.peer_cn = "carol"
    done, phases = converse(make_flow(username="ignored", password="ignored"), wire)
    assert done == AuthComplete() and phases == ["group_select"]
    assert wire.log[0].body == OCSERV_COMPLETE
    success = wire.log[0].success
    assert success is not None and (success.username, success.group) == ("carol", "group1")
    assert wire.jar.get("webvpn") == success.cookie
    assert wire.server.pending == 0


def test_certificate_mode_group_select_in_the_init() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE, groups=GROUPS))
    wire.peer_cn = "carol"
    success = wire.send("/", init("Group Two")).success
    assert success is not None and success.group == "group2"


def test_certificate_mode_without_a_certificate_is_401_no_certificate() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE))
    response = wire.send("/", init())
    assert (response.status, response.reason, response.close) == (401, "No certificate", True)
    assert response.body == b"" and response.error_label == "no_certificate"
    assert wire.server.pending == 0
    # the client role reads it as a refusal (a certificate it lacks)
    with pytest.raises(RemoteProtocolError, match="No certificate"):
        converse(make_flow(), Wire(make_server(mode=AuthMode.CERTIFICATE)))


def test_certificate_mode_refuses_a_certificate_without_a_cn() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE))
    wire.peer_cn = ""
    response = wire.send("/", init())
    assert (response.status, response.reason) == (401, "Authentication failed")
    assert response.success is None and response.error_label == "auth_failed"


def test_certificate_mode_keeps_groups_of_configured_users() -> None:
    users = {"carol": UserSpec("unused", groups=("group2",))}
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE, groups=GROUPS, users=users))
    wire.peer_cn = "carol"
    assert wire.send("/", init()).status == 401  # group1 is not hers
    assert wire.send("/", init("group2")).success is not None


def test_certificate_mode_reject_ratio() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE, reject_ratio=1.0))
    wire.peer_cn = "carol"
    assert wire.send("/", init()).status == 401


def test_certificate_password_conversation() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE_PASSWORD, users=ALICE))
    wire.peer_cn = "alice"
    done, phases = converse(make_flow(), wire)
    assert done == AuthComplete() and phases == ["group_select", "auth", "auth"]
    assert form_of(wire.log[1]).message == "Please enter your password."
    success = wire.log[-1].success
    assert success is not None and success.username == "alice"


def test_certificate_password_without_a_certificate() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE_PASSWORD, users=ALICE))
    # the init still gets the username form: ocserv reads the username first
    assert wire.send("/", init()).body == OCSERV_USERNAME_FORM
    response = wire.send("/auth", reply({"username": "alice"}))
    assert (response.status, response.reason, response.close) == (401, "No certificate", True)
    assert response.error_label == "no_certificate" and wire.server.pending == 0


def test_certificate_password_username_must_be_the_cn() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE_PASSWORD, users=ALICE))
    wire.peer_cn = "mallory"
    with pytest.raises(AuthRejectedError):
        converse(make_flow(), wire)
    last = wire.log[-1]
    assert (last.status, last.reason, last.close) == (401, "Authentication failed", True)
    assert last.error_label == "cert_user_mismatch" and last.success is None


def test_certificate_password_wrong_password_retries_as_in_password_mode() -> None:
    wire = Wire(make_server(mode=AuthMode.CERTIFICATE_PASSWORD, users=ALICE))
    wire.peer_cn = "alice"
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    assert form_of(wire.send("/auth", reply({"password": "nope"}))).message == RETRY_MESSAGE
    assert wire.send("/auth", reply({"password": "s3cret"})).success is not None


def test_password_otp_conversation_raw() -> None:
    wire = Wire(otp_server(users=ALICE))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    otp_form = wire.send("/auth", reply({"password": "s3cret"}))
    assert otp_form.status == 200 and otp_form.success is None and otp_form.error_label is None
    # ocserv: the password form again, with pass_msg_otp
    assert otp_form.body == OCSERV_USERNAME_FORM.replace(
        b"Please enter your username.", OTP_MESSAGE.encode()
    ).replace(
        b'type="text" name="username" label="Username:"',
        b'type="password" name="password" label="Password:"',
    )
    assert context_cookie(otp_form) == context_cookie(wire.log[0])
    done = wire.send("/auth", reply({"password": HOTP_0}))
    assert done.body == OCSERV_COMPLETE
    assert done.success is not None and done.success.username == "alice"
    assert wire.server.pending == 0


def otp_login(wire: Wire, code: str, password: str = "s3cret") -> AuthResponse:
    wire.jar = CookieJar()
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    assert form_of(wire.send("/auth", reply({"password": password}))).message == OTP_MESSAGE
    return wire.send("/auth", reply({"password": code}))


def test_password_otp_wrong_code_is_final_like_ocserv() -> None:
    wire = Wire(otp_server(users=ALICE))
    response = otp_login(wire, "000000")
    assert (response.status, response.reason, response.close) == (
        401,
        "Authentication failed",
        True,
    )
    assert response.error_label == "otp_failed" and wire.server.pending == 0


def test_password_otp_refuses_a_replayed_code() -> None:
    wire = Wire(otp_server(users=ALICE))
    assert otp_login(wire, HOTP_0).success is not None
    assert otp_login(wire, HOTP_0).error_label == "otp_failed"
    assert otp_login(wire, HOTP_1).success is not None


def test_password_otp_wrong_password_comes_before_the_otp() -> None:
    wire = Wire(otp_server(users=ALICE))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    assert form_of(wire.send("/auth", reply({"password": "nope"}))).message == RETRY_MESSAGE
    assert form_of(wire.send("/auth", reply({"password": "s3cret"}))).message == OTP_MESSAGE


def test_password_otp_user_without_a_token_is_refused() -> None:
    wire = Wire(otp_server())  # any password; only alice has a token
    wire.send("/", init())
    wire.send("/auth", reply({"username": "bob"}))
    assert form_of(wire.send("/auth", reply({"password": "x"}))).message == OTP_MESSAGE
    assert wire.send("/auth", reply({"password": HOTP_0})).error_label == "otp_failed"


def test_password_otp_no_code() -> None:
    wire = Wire(otp_server(users=ALICE))
    wire.send("/", init())
    wire.send("/auth", reply({"username": "alice"}))
    wire.send("/auth", reply({"password": "s3cret"}))
    response = wire.send("/auth", reply({"username": "alice"}))
    assert (response.status, response.reason) == (401, "No password")


def test_policy_mode_and_otp_users_go_together() -> None:
    with pytest.raises(ValueError):
        AuthPolicy(mode=AuthMode.PASSWORD_OTP)
    with pytest.raises(ValueError):
        AuthPolicy(otp_users={})
    users = parse_otp_users_file(f"HOTP alice - {OTP_KEY.hex()}\n")
    assert OTP_KEY.hex() not in repr(AuthPolicy(mode=AuthMode.PASSWORD_OTP, otp_users=users))


@pytest.mark.parametrize("mode", list(AuthMode))
@given(documents=st.lists(st.binary(max_size=200), max_size=6), cn=st.none() | st.text(max_size=8))
@settings(max_examples=40, deadline=None)
def test_fuzz_every_mode_answers_with_known_labels(
    mode: AuthMode, documents: list[bytes], cn: str | None
) -> None:
    extra: dict[str, object] = {}
    if mode is AuthMode.PASSWORD_OTP:
        extra["otp_users"] = parse_otp_users_file(f"HOTP alice - {OTP_KEY.hex()}\n")
    wire = Wire(make_server(mode=mode, users=ALICE, **extra))
    wire.peer_cn = cn
    for body in [init(), reply({"username": "alice"}), *documents]:
        response = wire.send("/auth", body)
        assert response.error_label is None or response.error_label in ERROR_LABELS
        if response.success is not None:
            assert mode is not AuthMode.PASSWORD_OTP
            assert cn


def test_totp_steps_follow_unix_now_not_the_context_clock() -> None:
    users = parse_otp_users_file(f"HOTP/T30 alice - {OTP_KEY.hex()}\n")
    code = TotpCodes(TokenSecret(key=OTP_KEY)).take(1_111_111_111.0)
    for unix_now, ok in [(None, False), (1_111_111_111.0, True)]:
        server = make_server(mode=AuthMode.PASSWORD_OTP, otp_users=users, users=ALICE)
        wire = Wire(server, now=5.0)  # a monotonic clock, as the gateway's
        for body in (init(), reply({"username": "alice"}), reply({"password": "s3cret"})):
            wire.send("/auth", body)
        last = server.handle(
            method="POST",
            path="/auth",
            cookies=wire.cookies(),
            body=reply({"password": code}),
            now=wire.now,
            unix_now=unix_now,
        )
        assert (last.success is not None) is ok
