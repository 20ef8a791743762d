"""Aggregate-auth XML (protocol.md §2.3 to §2.7, §3): codec, both roles, and AuthFlow.

The samples are the captured / documented bytes of protocol.md.  AuthFlow is
tested as a conversation against in-memory gateways built from the
server-role codec (ocserv-like) or from the documented ASA shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.proto.auth import (
    MAX_BODY_BYTES,
    AuthComplete,
    AuthFlow,
    AuthForm,
    AuthRequest,
    ClientAuthReply,
    ClientInfo,
    ClientInit,
    ClientLogout,
    FormInput,
    HttpStatusError,
    ProfileManifestEntry,
    build_auth_complete,
    build_auth_reply,
    build_auth_request,
    build_init,
    build_logout,
    parse_auth_response_untrusted,
    parse_client_message_untrusted,
)
from loadgen.proto.auth_xml import MAX_DEPTH
from loadgen.proto.errors import (
    AuthRejectedError,
    AuthUnsupportedError,
    BadPacketError,
    GroupUnknownError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SecondFactorRequiredError,
)

DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# -- samples from protocol.md -----------------------------------------------------

#: §2.3, openconnect 9.01 [cap]
OPENCONNECT_INIT = (
    DECL + b'<config-auth client="vpn" type="init" aggregate-auth-version="2">'
    b'<version who="vpn">v9.01-3</version><device-id>linux-64</device-id>'
    b"<capabilities><auth-method>single-sign-on-v2</auth-method>"
    b"<auth-method>single-sign-on-external-browser</auth-method></capabilities>"
    b"<group-access>https://127.0.0.1:4443/</group-access></config-auth>"
)

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

#: §2.4, the select ocserv adds for ``select-group = group1`` / ``group2[Group Two]``
OCSERV_GROUP_SELECT = (
    b'<select name="group_list" label="Group:">\n'
    b'<option value="group1">group1</option>\n'
    b'<option value="group2">Group Two</option>\n'
    b"</select>\n"
)
OCSERV_USERNAME_FORM_GROUPS = OCSERV_USERNAME_FORM.replace(
    b"</form>", OCSERV_GROUP_SELECT + b"</form>"
)

#: the password form of ocserv 1.1.6 (worker-auth.c, LOGIN_MSG_PASSWORD)
OCSERV_PASSWORD_FORM = OCSERV_USERNAME_FORM.replace(
    b"Please enter your username.", b"Please enter your password."
).replace(
    b'<input type="text" name="username" label="Username:" />',
    b'<input type="password" name="password" label="Password:" />',
)

ASA_OPAQUE = (
    b'<opaque is-for="sg">\n'
    b"<tunnel-group>VPN</tunnel-group>\n"
    b"<aggauth-handle>123456789</aggauth-handle>\n"
    b"<auth-method>single-sign-on-v2</auth-method>\n"
    b"<group-alias>Employees</group-alias>\n"
    b"<config-hash>1517719014268</config-hash>\n"
    b"</opaque>"
)

#: §2.4, Cisco ASA style [rep]
ASA_FORM = (
    DECL
    + b'<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">\n'
    + ASA_OPAQUE
    + b'\n<auth id="main">\n'
    b"<title>Login</title>\n"
    b"<message>Please enter your username and password.</message>\n"
    b"<banner></banner>\n"
    b"<form>\n"
    b'<input type="text" name="username" label="Username:"></input>\n'
    b'<input type="password" name="password" label="Password:"></input>\n'
    b'<select name="group_list" label="GROUP:">\n'
    b'<option selected="true">Employees</option>\n'
    b"<option>Contractors</option>\n"
    b"</select>\n"
    b"</form>\n"
    b"</auth>\n"
    b"</config-auth>\n"
)

#: §2.6, ocserv 1.1.6 success body (Content-Length: 189) [cap]
OCSERV_COMPLETE = (
    DECL + b'<config-auth client="vpn" type="complete">\n'
    b'<version who="sg">0.1(1)</version>\n'
    b'<auth id="success">\n'
    b"<title>SSL VPN Service</title></auth></config-auth>\n"
)

#: §2.6, the block ocserv adds with ``user-profile`` [cap]
OCSERV_PROFILE_BLOCK = (
    b'<config client="vpn" type="private"><vpn-profile-manifest><vpn rev="1.0">'
    b'<file type="profile" service-type="user"><uri>/profiles/profile.xml</uri>'
    b'<hash type="sha1">A8B0B07FBA93D06E8501E40AB807AEE2464E73B7</hash></file>'
    b"</vpn></vpn-profile-manifest>\n</config>"
)

ASA_TOKEN = "8A1B2C3D@12288@0A1B@F00DF00DF00DF00DF00DF00DF00DF00DF00DF00D"

#: §2.6, typical ASA complete (shape) [rep]
ASA_COMPLETE = (
    DECL + b'<config-auth client="vpn" type="complete" aggregate-auth-version="2">\n'
    b"<session-id>32768</session-id>\n"
    b"<session-token>" + ASA_TOKEN.encode() + b"</session-token>\n"
    b'<auth id="success"><message id="0" param1="" param2=""/><banner>Authorized use only'
    b"</banner></auth>\n"
    b"<capabilities><crypto-supported>ssl-dhe</crypto-supported></capabilities>\n"
    b'<config client="vpn" type="private">\n'
    b"<vpn-base-config><base-package-uri>/CACHE/stc/1</base-package-uri>"
    b"<server-cert-hash>02E40E0EA75FFC892CFBF9CC05E068F3D88ED017</server-cert-hash>"
    b"</vpn-base-config>\n"
    b'<opaque is-for="vpn-client"><vpn-client-pkg-version><pkgversion>4.10.07061</pkgversion>'
    b'</vpn-client-pkg-version><vpn-core-manifest><vpn rev="1.0">'
    b'<file version="4.10.07061" id="VPNCore" is_core="true" type="exe" action="install"'
    b' os="linux-64"><uri>binaries/anyconnect-core-vpn-webdeploy-k9.sh</uri></file>'
    b"</vpn></vpn-core-manifest></opaque>\n"
    b'<vpn-profile-manifest><vpn rev="1.0"><file type="profile" service-type="user">'
    b"<uri>/CACHE/stc/profiles/profile.xml</uri>"
    b'<hash type="sha1">a8b0b07fba93d06e8501e40ab807aee2464e73b7</hash></file></vpn>'
    b"</vpn-profile-manifest>\n</config>\n</config-auth>\n"
)

OC_INFO = ClientInfo(version="v9.01-3", device_id="linux-64")


# -- parsing gateway answers ------------------------------------------------------------


def test_parse_ocserv_username_form() -> None:
    form = parse_auth_response_untrusted(OCSERV_USERNAME_FORM)
    assert isinstance(form, AuthForm)
    assert form.auth_id == "main"
    assert form.message == "Please enter your username."
    assert (form.action, form.method) == ("/auth", "POST")
    assert form.inputs == (FormInput(type="text", name="username", label="Username:"),)
    assert form.selects == () and form.group_list is None
    assert form.opaque is None and form.error is None
    assert not (form.sso_requested or form.host_scan_requested or form.client_cert_requested)


def test_parse_ocserv_groups_value_is_name_text_is_label() -> None:
    form = parse_auth_response_untrusted(OCSERV_USERNAME_FORM_GROUPS)
    assert isinstance(form, AuthForm)
    groups = form.group_list
    assert groups is not None and groups.label == "Group:"
    assert [(o.value, o.label, o.selected) for o in groups.options] == [
        ("group1", "group1", False),
        ("group2", "Group Two", False),
    ]
    # nothing marked selected: ocserv lists the current group first
    assert groups.default is not None and groups.default.value == "group1"


def test_parse_asa_form_defaults_and_opaque_verbatim() -> None:
    form = parse_auth_response_untrusted(ASA_FORM)
    assert isinstance(form, AuthForm)
    assert (form.title, form.banner) == ("Login", None)
    assert (form.action, form.method) == ("/", "POST")  # ASA omits both (§2.4)
    assert [(i.type, i.name) for i in form.inputs] == [
        ("text", "username"),
        ("password", "password"),
    ]
    groups = form.group_list
    assert groups is not None
    assert [(o.value, o.selected) for o in groups.options] == [
        ("Employees", True),
        ("Contractors", False),
    ]
    assert form.opaque == ASA_OPAQUE


def test_parse_ocserv_complete_has_no_token() -> None:
    done = parse_auth_response_untrusted(OCSERV_COMPLETE)
    assert done == AuthComplete()
    assert len(OCSERV_COMPLETE) == 189  # the captured Content-Length


def test_parse_ocserv_complete_with_profile() -> None:
    body = OCSERV_COMPLETE.replace(
        b"</auth></config-auth>\n", b"</auth>\n" + OCSERV_PROFILE_BLOCK + b"</config-auth>"
    )
    done = parse_auth_response_untrusted(body)
    assert isinstance(done, AuthComplete)
    assert done.profiles == (
        ProfileManifestEntry(
            uri="/profiles/profile.xml",
            sha1_hex="A8B0B07FBA93D06E8501E40AB807AEE2464E73B7",
            service_type="user",
        ),
    )


def test_parse_asa_complete() -> None:
    done = parse_auth_response_untrusted(ASA_COMPLETE)
    assert isinstance(done, AuthComplete)
    assert done.session_token == ASA_TOKEN
    assert done.session_id == "32768"
    assert done.server_cert_hash == "02E40E0EA75FFC892CFBF9CC05E068F3D88ED017"
    assert done.banner == "Authorized use only"
    assert [(p.uri, p.sha1_hex) for p in done.profiles] == [
        ("/CACHE/stc/profiles/profile.xml", "A8B0B07FBA93D06E8501E40AB807AEE2464E73B7")
    ]
    assert [(c.uri, c.version) for c in done.core_manifest] == [
        ("binaries/anyconnect-core-vpn-webdeploy-k9.sh", "4.10.07061")
    ]
    assert ASA_TOKEN not in repr(done) and "32768" not in repr(done)


def test_auth_id_success_counts_as_complete_whatever_the_type() -> None:
    body = b'<config-auth type="auth-request"><auth id="success"/></config-auth>'
    assert isinstance(parse_auth_response_untrusted(body), AuthComplete)


@pytest.mark.parametrize(
    ("fragment", "flag"),
    [
        (b'<auth id="main"><form><input type="sso" name="sso-token"/></form></auth>', "sso"),
        (b'<auth id="main"><sso-v2-login>https://idp/</sso-v2-login><form/></auth>', "sso"),
        (b'<auth id="main"/><host-scan><host-scan-ticket>T</host-scan-ticket></host-scan>', "hs"),
        (b'<auth id="main"><csd token="a" ticket="b"/></auth>', "hs"),
        (b"<client-cert-request/>", "cert"),
    ],
)
def test_flags_for_what_a_synthetic_client_cannot_do(fragment: bytes, flag: str) -> None:
    form = parse_auth_response_untrusted(
        b'<config-auth client="vpn" type="auth-request">' + fragment + b"</config-auth>"
    )
    assert isinstance(form, AuthForm)
    assert form.sso_requested == (flag == "sso")
    assert form.host_scan_requested == (flag == "hs")
    assert form.client_cert_requested == (flag == "cert")


def test_error_text_with_params_and_hidden_inputs() -> None:
    body = (
        b'<config-auth type="auth-request"><auth id="main">'
        b'<error id="13" param1="alice" param2="">Login failed for %s</error>'
        b'<form><input type="hidden" name="tgroup" value="x&amp;y"/>'
        b'<input type="submit" name="Login" value="Login"/></form></auth></config-auth>'
    )
    form = parse_auth_response_untrusted(body)
    assert isinstance(form, AuthForm)
    assert form.error == "Login failed for alice"
    assert form.inputs == (FormInput(type="hidden", name="tgroup", value="x&y"),)


@pytest.mark.parametrize(
    "body",
    [
        b"<config-auth><auth><form><input type='text' name='a b'/></form></auth></config-auth>",
        b"<config-auth><auth><form><select label='no name'/></form></auth></config-auth>",
        b"<config-auth><auth><form action='/a b'/></auth></config-auth>",
        b"<config-auth><auth><form action=''/></auth></config-auth>",
        b"<config-auth type='complete'><session-token>a;b</session-token></config-auth>",
        b"<config-auth type='auth-request'/>",
        b"<config-auth type='init'><auth id='main'/></config-auth>",
        b"<html><body>It works!</body></html>",
        b"",
        b"   ",
        b"<config-auth>",
        b"<config-auth>&undefined;</config-auth>",
        '<?xml version="1.0" encoding="UTF-16"?><config-auth/>'.encode("utf-16"),
    ],
)
def test_bad_auth_responses(body: bytes) -> None:
    with pytest.raises(BadPacketError):
        parse_auth_response_untrusted(body)


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "' % i + (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10 + b'">\n'
        for i in range(1, 10)
    )
    + b']>\n<config-auth type="complete"><auth id="success">&lol9;</auth></config-auth>'
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    b'<config-auth type="complete"><session-token>&e;</session-token></config-auth>'
)
DTD_ONLY = b'<!DOCTYPE config-auth SYSTEM "http://127.0.0.1/x.dtd"><config-auth/>'


@pytest.mark.parametrize("parse", [parse_auth_response_untrusted, parse_client_message_untrusted])
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (BILLION_LAUGHS, "DTD"),
        (EXTERNAL_ENTITY, "DTD"),
        (DTD_ONLY, "DTD"),
        (b"<config-auth>" + b" " * MAX_BODY_BYTES + b"</config-auth>", "cap"),
        (b"<config-auth><auth></config-auth>", "malformed"),
    ],
)
def test_hostile_xml_is_a_bad_packet(
    parse: Callable[[bytes], object], body: bytes, words: str
) -> None:
    with pytest.raises(BadPacketError, match=words):
        parse(body)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 3, MAX_DEPTH - 2, 30_000])
def test_nesting_is_bounded(depth: int) -> None:
    body = b'<config-auth type="auth-request"><auth id="main"><message>'
    body += b"<b>" * depth + b"x" + b"</b>" * depth + b"</message></auth></config-auth>"
    if depth + 3 <= MAX_DEPTH:
        form = parse_auth_response_untrusted(body)
        assert isinstance(form, AuthForm) and form.message == "x"
    else:
        with pytest.raises(BadPacketError, match="nested deeper"):
            parse_auth_response_untrusted(body)


def test_opaque_echo_survives_tricky_markup() -> None:
    opaque = (
        b'<opaque is-for="sg" note=\'a>b\' other="it\'s"><!-- </opaque> -->'
        b"<![CDATA[</opaque>]]><?pi </opaque>?><x/><y a='/>'>t</y></opaque >"
    )
    body = b'<config-auth type="auth-request">' + opaque + b'<auth id="main"/></config-auth>'
    form = parse_auth_response_untrusted(body)
    assert isinstance(form, AuthForm) and form.opaque == opaque
    empty = b'<config-auth type="auth-request"><opaque a="/>"/><auth id="x"/></config-auth>'
    form = parse_auth_response_untrusted(empty)
    assert isinstance(form, AuthForm) and form.opaque == b'<opaque a="/>"/>'


# -- client builders -------------------------------------------------------------------


def test_build_init_is_openconnects_without_capabilities() -> None:
    body = build_init(OC_INFO, group_access="https://127.0.0.1:4443/")
    start = OPENCONNECT_INIT.index(b"<capabilities>")
    end = OPENCONNECT_INIT.index(b"</capabilities>") + len(b"</capabilities>")
    assert body == OPENCONNECT_INIT[:start] + OPENCONNECT_INIT[end:] + b"\n"


def test_build_init_defaults_and_group_select() -> None:
    body = build_init(ClientInfo(), group_access="https://vpn/", group_select="Group Two")
    assert b'<version who="vpn">4.10.07061</version><device-id>linux-64</device-id>' in body
    assert body.endswith(
        b"<group-access>https://vpn/</group-access>"
        b"<group-select>Group Two</group-select></config-auth>\n"
    )
    assert b"capabilities" not in body and b"single-sign-on" not in body


def test_build_auth_reply_matches_section_2_5() -> None:
    form = parse_auth_response_untrusted(OCSERV_USERNAME_FORM_GROUPS)
    assert isinstance(form, AuthForm)
    body = build_auth_reply(OC_INFO, form, {"username": "alice"}, group_select="group1")
    assert body == (
        DECL + b'<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2">'
        b'<version who="vpn">v9.01-3</version><device-id>linux-64</device-id>'
        b"<auth><username>alice</username></auth><group-select>group1</group-select>"
        b"</config-auth>\n"
    )
    password_form = parse_auth_response_untrusted(OCSERV_PASSWORD_FORM)
    assert isinstance(password_form, AuthForm)
    body = build_auth_reply(OC_INFO, password_form, {"password": "test"}, group_select=None)
    assert body.endswith(b"<auth><password>test</password></auth></config-auth>\n")


def test_build_auth_reply_escapes_renames_and_echoes_opaque() -> None:
    form = AuthForm(
        auth_id="main",
        inputs=(
            FormInput(type="text", name="username"),
            FormInput(type="password", name="answer"),
            FormInput(type="password", name="verify_password"),
            FormInput(type="hidden", name="tgroup", value="a<b"),
        ),
        opaque=ASA_OPAQUE,
    )
    secret = "p&ss<w>rd\"'\r"
    body = build_auth_reply(
        ClientInfo(), form, {"username": "al&ce", "answer": secret}, group_select="Grp"
    )
    assert b"<auth><username>al&amp;ce</username>" in body
    assert b"<password>p&amp;ss&lt;w&gt;rd&quot;&apos;&#13;</password>" in body
    assert b"verify_password" not in body and b"answer" not in body
    assert b"<tgroup>a&lt;b</tgroup>" in body
    # opaque before <auth>, group-select after it, both top level (§2.5)
    assert b"</device-id>" + ASA_OPAQUE + b"<auth>" in body
    assert body.endswith(b"</auth><group-select>Grp</group-select></config-auth>\n")
    reply = parse_client_message_untrusted(body)
    assert isinstance(reply, ClientAuthReply)
    assert reply.fields == {"username": "al&ce", "password": secret, "tgroup": "a<b"}
    assert (reply.group_select, reply.opaque) == ("Grp", ASA_OPAQUE)
    assert secret not in repr(reply)


def test_build_auth_reply_refuses_missing_answers_and_bad_chars() -> None:
    form = AuthForm(auth_id="main", inputs=(FormInput(type="password", name="password"),))
    with pytest.raises(LocalProtocolError, match="no answer"):
        build_auth_reply(ClientInfo(), form, {}, group_select=None)
    with pytest.raises(LocalProtocolError) as info:
        build_auth_reply(ClientInfo(), form, {"password": "bad\x00secret"}, group_select=None)
    assert "secret" not in str(info.value)


# -- server role -----------------------------------------------------------------------


def test_parse_openconnect_init() -> None:
    assert parse_client_message_untrusted(OPENCONNECT_INIT) == ClientInit(
        version="v9.01-3",
        device_id="linux-64",
        group_access="https://127.0.0.1:4443/",
        group_select=None,
    )


def test_parse_logout_hides_token() -> None:
    message = parse_client_message_untrusted(build_logout("TOKEN@1"))
    assert message == ClientLogout(session_token="TOKEN@1")
    assert "TOKEN" not in repr(message)


def test_parse_client_message_rejects_server_types() -> None:
    with pytest.raises(BadPacketError, match="unexpected type"):
        parse_client_message_untrusted(OCSERV_COMPLETE)


def test_build_auth_request_is_ocserv_1_1_6() -> None:
    username = FormInput(type="text", name="username", label="Username:")
    body = build_auth_request(
        message="Please enter your username.", inputs=[username], groups=None,
        selected_group=None, error=None,
    )  # fmt: skip
    assert body == OCSERV_USERNAME_FORM
    body = build_auth_request(
        message="Please enter your username.",
        inputs=[username],
        groups=[("group1", "group1"), ("group2", "Group Two")],
        selected_group=None,
        error=None,
    )
    assert body == OCSERV_USERNAME_FORM_GROUPS
    # like ocserv, the selected group moves to the top of the list
    body = build_auth_request(
        message="m",
        inputs=[username],
        groups=[("group1", "group1"), ("group2", "Group Two")],
        selected_group="group2",
        error="Login failed",
    )
    form = parse_auth_response_untrusted(body)
    assert isinstance(form, AuthForm) and form.group_list is not None
    assert [o.value for o in form.group_list.options] == ["group2", "group1"]
    assert form.error == "Login failed"


def test_build_auth_complete_is_ocserv_1_1_6() -> None:
    assert build_auth_complete() == OCSERV_COMPLETE
    profile = ProfileManifestEntry(
        uri="/profiles/profile.xml", sha1_hex="a8b0b07fba93d06e8501e40ab807aee2464e73b7"
    )
    body = build_auth_complete(profiles=[profile])
    assert body == OCSERV_COMPLETE.replace(
        b"</auth></config-auth>\n", b"</auth>\n" + OCSERV_PROFILE_BLOCK + b"</config-auth>"
    )
    done = parse_auth_response_untrusted(
        build_auth_complete(banner="Hi & welcome", session_token="T@1")
    )
    assert isinstance(done, AuthComplete)
    assert (done.banner, done.session_token) == ("Hi & welcome", "T@1")


# -- in-memory gateways ------------------------------------------------------------------


Reply = tuple[int, bytes, str]
USERNAME = FormInput(type="text", name="username", label="Username:")
PASSWORD = FormInput(type="password", name="password", label="Password:")


class FakeOcserv:
    """ocserv 1.1.6's auth conversation (§2.4 to §2.7) from the server-role codec."""

    def __init__(self, *, groups: list[tuple[str, str]] | None = None) -> None:
        self.groups = groups
        self.users = {"alice": "s3cret"}
        self.group: str | None = None
        self.user: str | None = None
        self.failures = 0
        self.log: list[tuple[str, object]] = []

    def _select(self, wanted: str | None) -> None:
        for value, label in self.groups or ():
            if wanted in (value, label):  # names and friendly labels (§2.5)
                self.group = value

    def _username_form(self) -> bytes:
        return build_auth_request(
            message="Please enter your username.",
            inputs=[USERNAME],
            groups=self.groups,
            selected_group=self.group,
        )

    def _password_form(self, message: str) -> bytes:
        return build_auth_request(message=message, inputs=[PASSWORD])

    def __call__(self, path: str, body: bytes) -> Reply:
        message = parse_client_message_untrusted(body)
        self.log.append((path, message))
        if path not in ("/", "/auth", "/VPN"):
            return 404, b"", "Not found"
        if isinstance(message, ClientInit):
            self._select(message.group_select)
            return 200, self._username_form(), "OK"
        assert isinstance(message, ClientAuthReply)
        self._select(message.group_select)
        if self.user is None:  # the first reply is read for the username only
            self.user = message.fields["username"]
            return 200, self._password_form("Please enter your password."), "OK"
        if self.users.get(self.user) == message.fields.get("password"):
            return 200, build_auth_complete(), "OK"
        self.failures += 1
        if self.failures >= 3:
            return 401, b"", "Authentication failed"
        return 200, self._password_form("Login failed.\nPlease enter your password."), "OK"


def asa_form(selected: str = "Employees", error: bytes = b"") -> bytes:
    form = ASA_FORM.replace(b' selected="true"', b"")
    form = form.replace(
        b"<option>" + selected.encode(), b'<option selected="true">' + selected.encode()
    )
    return form.replace(b"<form>", error + b"<form>")


class FakeAsa:
    """An ASA as documented in §2.4, §2.6, §2.7: one-step form, opaque, token in XML."""

    def __init__(self) -> None:
        self.selected = "Employees"
        self.log: list[tuple[str, object]] = []

    def __call__(self, path: str, body: bytes) -> Reply:
        message = parse_client_message_untrusted(body)
        self.log.append((path, message))
        if isinstance(message, ClientInit):
            self.selected = message.group_select or self.selected
            return 200, asa_form(self.selected), "OK"
        assert isinstance(message, ClientAuthReply)
        assert message.opaque == ASA_OPAQUE  # echoed byte for byte
        if message.fields == {"username": "alice", "password": "s3cret"}:
            return 200, ASA_COMPLETE, "OK"
        error = b'<error id="13" param1="" param2="">Login failed</error>'
        return 200, asa_form(self.selected, error), "OK"


def converse(
    flow: AuthFlow, gateway: Callable[[str, bytes], Reply]
) -> tuple[AuthComplete, list[str]]:
    """Drive the flow against the gateway; return the result and the phases."""
    phases: list[str] = []
    step: AuthRequest | AuthComplete = flow.start()
    for _ in range(20):
        if isinstance(step, AuthComplete):
            return step, phases
        phases.append(flow.phase)
        status, body, reason = gateway(step.path, step.body)
        step = flow.receive(status, body, reason=reason)
    raise AssertionError("conversation did not end")


def make_flow(group: str | None = None, password: str = "s3cret") -> AuthFlow:
    return AuthFlow(
        ClientInfo(),
        base_url="https://127.0.0.1:4443/",
        username="alice",
        password=password,
        group=group,
    )


def kinds(log: list[tuple[str, object]]) -> list[tuple[str, str]]:
    return [(path, type(message).__name__) for path, message in log]


# -- AuthFlow conversations ------------------------------------------------------------------


def test_ocserv_default_group_two_step() -> None:
    gateway = FakeOcserv(groups=[("group1", "group1"), ("group2", "Group Two")])
    done, phases = converse(make_flow(), gateway)
    assert done == AuthComplete()
    assert phases == ["group_select", "auth", "auth"]
    assert kinds(gateway.log) == [
        ("/", "ClientInit"),
        ("/auth", "ClientAuthReply"),
        ("/auth", "ClientAuthReply"),
    ]
    first, second = (m for _, m in gateway.log[1:])
    assert isinstance(first, ClientAuthReply) and isinstance(second, ClientAuthReply)
    # two round trips: username first, password only when asked (§2.5)
    assert first.fields == {"username": "alice"} and first.group_select == "group1"
    assert second.fields == {"password": "s3cret"}


def test_ocserv_non_default_group_by_alias_sends_second_init() -> None:
    gateway = FakeOcserv(groups=[("group1", "group1"), ("group2", "Group Two")])
    done, phases = converse(make_flow(group="group two"), gateway)
    assert isinstance(done, AuthComplete)
    assert phases == ["group_select", "group_select", "auth", "auth"]
    assert kinds(gateway.log)[:2] == [("/", "ClientInit"), ("/auth", "ClientInit")]
    second_init = gateway.log[1][1]
    assert isinstance(second_init, ClientInit) and second_init.group_select == "group2"
    assert gateway.group == "group2"


def test_ocserv_default_group_by_name_needs_no_second_init() -> None:
    gateway = FakeOcserv(groups=[("group1", "group1"), ("group2", "Group Two")])
    _, phases = converse(make_flow(group="GROUP1"), gateway)
    assert phases == ["group_select", "auth", "auth"]


def test_ocserv_without_groups() -> None:
    _, phases = converse(make_flow(), FakeOcserv())
    assert phases == ["group_select", "auth", "auth"]


def test_asa_one_step_with_token_and_opaque() -> None:
    gateway = FakeAsa()
    done, phases = converse(make_flow(), gateway)
    assert done.session_token == ASA_TOKEN
    assert phases == ["group_select", "auth"]
    reply = gateway.log[1][1]
    assert isinstance(reply, ClientAuthReply)
    assert reply.fields == {"username": "alice", "password": "s3cret"}
    assert reply.group_select == "Employees"


def test_asa_non_default_group_sends_second_init() -> None:
    gateway = FakeAsa()
    _, phases = converse(make_flow(group="contractors"), gateway)
    assert phases == ["group_select", "group_select", "auth"]
    reply = gateway.log[2][1]
    assert isinstance(reply, ClientAuthReply) and reply.group_select == "Contractors"


def test_ocserv_wrong_password_is_rejected_without_resending() -> None:
    gateway = FakeOcserv()
    with pytest.raises(AuthRejectedError, match="Login failed") as info:
        converse(make_flow(password="wrong-pw"), gateway)
    assert "wrong-pw" not in str(info.value)
    sent = [m for _, m in gateway.log if isinstance(m, ClientAuthReply) and "password" in m.fields]
    assert len(sent) == 1  # the password went out once, never again


def test_asa_error_element_is_a_rejection() -> None:
    with pytest.raises(AuthRejectedError, match="Login failed") as info:
        converse(make_flow(password="wrong-pw"), FakeAsa())
    assert info.value.status is None


def test_401_is_a_rejection_with_the_status_text() -> None:
    flow = make_flow()
    flow.start()
    with pytest.raises(AuthRejectedError, match="401 Authentication failed") as info:
        flow.receive(401, b"", reason="Authentication failed")
    assert info.value.status == 401
    with pytest.raises(LocalProtocolError):  # a failed flow refuses further use
        flow.receive(200, OCSERV_COMPLETE)


def test_other_status_is_http_status_error() -> None:
    flow = make_flow()
    flow.start()
    with pytest.raises(HttpStatusError, match="503") as info:
        flow.receive(503, b"busy", reason="Service Unavailable")
    assert info.value.status == 503 and isinstance(info.value, RemoteProtocolError)


def test_unknown_group_lists_the_offered_names() -> None:
    gateway = FakeOcserv(groups=[("group1", "group1"), ("group2", "Group Two")])
    with pytest.raises(GroupUnknownError) as info:
        converse(make_flow(group="sales"), gateway)
    assert info.value.wanted == "sales"
    assert info.value.available == ["group1", "group2", "Group Two"]


@pytest.mark.parametrize(
    ("fragment", "words"),
    [
        (b'<auth id="main"><form><input type="sso" name="sso-token"/></form></auth>', "sign-on"),
        (b'<auth id="main"/><host-scan><host-scan-ticket>T</host-scan-ticket></host-scan>', "Host"),
        (b"<multiple-client-cert-request/>", "two certificates"),
        (b'<auth id="main"><form method="get"><input type="text" name="username"/></form></auth>',
         "method"),
        (b'<auth id="main"><form><input type="text" name="username"/>'
         b'<input type="text" name="domain"/></form></auth>', "domain"),
        (b'<auth id="main"><form><input type="password" name="password"/>'
         b'<input type="password" name="secondary_password"/></form></auth>', "second factor"),
        (b'<auth id="main"><form action="https://evil.example/auth"/></auth>', "another server"),
    ],
)  # fmt: skip
def test_unsupported_requests(fragment: bytes, words: str) -> None:
    flow = make_flow()
    flow.start()
    body = b'<config-auth client="vpn" type="auth-request">' + fragment + b"</config-auth>"
    with pytest.raises(AuthUnsupportedError, match=words):
        flow.receive(200, body)


def test_otp_after_password_is_second_factor_not_rejected() -> None:
    flow = make_flow()
    flow.start()
    flow.receive(200, build_auth_request(message="m", inputs=[USERNAME, PASSWORD]))
    otp = FormInput(type="password", name="secondary_password", label="Password2:")
    with pytest.raises(SecondFactorRequiredError, match="secondary_password"):
        flow.receive(200, build_auth_request(message="Enter your OTP", inputs=[otp]))


def test_gateway_echoing_the_password_is_scrubbed() -> None:
    flow = make_flow(password="hunter2")
    flow.start()
    flow.receive(200, build_auth_request(message="m", inputs=[USERNAME, PASSWORD]))
    with pytest.raises(AuthRejectedError) as info:
        flow.receive(200, build_auth_request(message="m", inputs=[PASSWORD], error="bad hunter2"))
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_bad_packet_quoting_the_password_is_scrubbed() -> None:
    flow = make_flow(password="hunter2")
    flow.start()
    flow.receive(200, build_auth_request(message="m", inputs=[USERNAME, PASSWORD]))
    body = b"<config-auth><auth><form><input type='text' name='hunter2 x'/></form></auth>"
    body += b"</config-auth>"
    with pytest.raises(BadPacketError) as info:
        flow.receive(200, body)
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_username_asked_again_is_a_protocol_error() -> None:
    flow = make_flow()
    flow.start()
    form = build_auth_request(message="Please enter your username.", inputs=[USERNAME])
    flow.receive(200, form)
    with pytest.raises(RemoteProtocolError, match="webvpncontext"):
        flow.receive(200, form)


def test_round_trips_are_bounded() -> None:
    flow = make_flow()
    step: AuthRequest | AuthComplete = flow.start()
    loop = build_auth_request(
        message="again", inputs=[FormInput(type="hidden", name="n", value="1")]
    )
    with pytest.raises(RemoteProtocolError, match="round trips"):
        for _ in range(20):
            step = flow.receive(200, loop)
    assert isinstance(step, AuthRequest)


def test_complete_answer_to_init_and_misuse() -> None:
    flow = make_flow()
    with pytest.raises(LocalProtocolError):
        flow.receive(200, OCSERV_COMPLETE)
    request = flow.start()
    assert (request.path, flow.phase) == ("/", "group_select")
    assert b"s3cret" not in request.body and "s3cret" not in repr(flow)
    assert isinstance(flow.receive(200, OCSERV_COMPLETE), AuthComplete)
    with pytest.raises(LocalProtocolError):
        flow.start()


def test_auth_request_repr_hides_the_body() -> None:
    flow = make_flow()
    flow.start()
    step = flow.receive(200, build_auth_request(message="m", inputs=[USERNAME, PASSWORD]))
    assert isinstance(step, AuthRequest) and b"s3cret" in step.body
    assert "s3cret" not in repr(step)


def test_relative_and_absolute_actions_resolve_to_paths() -> None:
    for action, path in (("auth", "/auth"), ("https://127.0.0.1:4443/x?y=1", "/x?y=1")):
        flow = make_flow()
        flow.start()
        body = build_auth_request(message="m", inputs=[USERNAME], action=action)
        step = flow.receive(200, body)
        assert isinstance(step, AuthRequest) and step.path == path


# -- fuzzing ----------------------------------------------------------------------------------

SAMPLES = [
    OPENCONNECT_INIT,
    OCSERV_USERNAME_FORM_GROUPS,
    OCSERV_PASSWORD_FORM,
    ASA_FORM,
    ASA_COMPLETE,
    OCSERV_COMPLETE.replace(b"</auth></config-auth>\n", b"</auth>\n" + OCSERV_PROFILE_BLOCK),
    build_logout("T"),
]


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    sample = draw(st.sampled_from(SAMPLES))
    start = draw(st.integers(0, len(sample)))
    end = draw(st.integers(start, min(len(sample), start + 40)))
    return sample[:start] + draw(st.binary(max_size=24)) + sample[end:]


TAGS = [
    "auth", "form", "input", "select", "option", "opaque", "error", "message", "banner",
    "title", "config", "vpn-profile-manifest", "vpn-core-manifest", "vpn", "file", "uri",
    "hash", "session-token", "session-id", "group-select", "host-scan", "csd",
    "client-cert-request", "sso-v2-login", "vpn-base-config", "server-cert-hash",
]  # fmt: skip
ATTRS = ["type", "name", "label", "value", "id", "selected", "action", "method", "param1",
         "service-type", "version"]  # fmt: skip
ATTR_VALUES = st.sampled_from(
    ["text", "password", "hidden", "sso", "submit", "profile", "sha1", "true", "post", "get",
     "/auth", "", "a b", "group_list", "username", "%s", "A" * 40, "https://x/"]
)  # fmt: skip
TEXT = st.text(st.sampled_from("ab<&>\"' %s/:@;\n\u00e9"), max_size=12)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _element(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    attrs = st.dictionaries(st.sampled_from(ATTRS), ATTR_VALUES, max_size=3)
    return st.builds(
        lambda tag, a, kids, text: (
            f"<{tag}"
            + "".join(f' {k}="{_escape(v)}"' for k, v in a.items())
            + f">{_escape(text)}{''.join(kids)}</{tag}>"
        ),
        st.sampled_from(TAGS),
        attrs,
        st.lists(children, max_size=4),
        TEXT,
    )


XML_TREES = st.recursive(TEXT.map(_escape), _element, max_leaves=25)


@st.composite
def config_auth_documents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["auth-request", "complete", "init", "auth-reply", "logout", ""]))
    body = "".join(draw(st.lists(XML_TREES, max_size=4)))
    return f'<config-auth client="vpn" type="{kind}">{body}</config-auth>'.encode()


BODIES = st.one_of(st.binary(max_size=512), mutated_samples(), config_auth_documents())


@settings(max_examples=400, deadline=None)
@given(BODIES)
def test_fuzz_parse_auth_response(body: bytes) -> None:
    try:
        result = parse_auth_response_untrusted(body)
    except BadPacketError:
        return
    assert isinstance(result, AuthForm | AuthComplete)


@settings(max_examples=400, deadline=None)
@given(BODIES)
def test_fuzz_parse_client_message(body: bytes) -> None:
    try:
        result = parse_client_message_untrusted(body)
    except BadPacketError:
        return
    assert isinstance(result, ClientInit | ClientAuthReply | ClientLogout)


@settings(max_examples=200, deadline=None)
@given(st.integers(100, 599), BODIES)
def test_fuzz_auth_flow_raises_only_protocol_errors(status: int, body: bytes) -> None:
    flow = make_flow(group="group2")
    flow.start()
    try:
        step = flow.receive(status, body)
    except ProtocolError as exc:
        assert "s3cret" not in str(exc)
        return
    assert isinstance(step, AuthRequest | AuthComplete)


XML_SAFE_TEXT = st.text(
    st.characters(
        codec="utf-8",
        exclude_characters=[
            *(chr(c) for c in range(32) if c not in (9, 10, 13)),
            "\ufffe",
            "\uffff",
        ],
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(XML_SAFE_TEXT, XML_SAFE_TEXT, XML_SAFE_TEXT)
def test_reply_values_round_trip(username: str, password: str, group: str) -> None:
    form = AuthForm(auth_id="main", inputs=(USERNAME, PASSWORD))
    body = build_auth_reply(
        ClientInfo(), form, {"username": username, "password": password}, group_select=group
    )
    reply = parse_client_message_untrusted(body)
    assert isinstance(reply, ClientAuthReply)
    assert reply.fields == {"username": username, "password": password}
    assert reply.group_select == group
