"""Aggregate-auth XML codec, both roles (protocol.md §2.3 to §2.7, §3).

Client role: build ``init`` / ``auth-reply`` / ``logout``, parse the gateway's
``auth-request`` forms and ``complete`` answers.  Server role: parse what a
client posts and build ocserv 1.1.6 shaped forms and success bodies.

Every parser goes through ``xml_safe`` (defusedxml, size and depth caps,
ocserv's banners repaired); every failure becomes a BadPacketError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from loadgen.proto.errors import BadPacketError, LocalProtocolError
from loadgen.proto.xml_safe import MAX_BODY_BYTES, MAX_DEPTH, parse_config_auth_untrusted, short

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "AuthComplete",
    "AuthForm",
    "ClientAuthReply",
    "ClientInfo",
    "ClientInit",
    "ClientLogout",
    "CoreManifestEntry",
    "FormInput",
    "FormSelect",
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


_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
#: ocserv 1.1.6 announces itself with this fixed version string (§2.4, §2.6).
_SG_VERSION = '<version who="sg">0.1(1)</version>\n'
#: openconnect's renaming rules for reply fields (§2.5).
_RENAMED_TO_PASSWORD = frozenset({"answer", "whichpin", "new_password"})
_DROPPED_FIELDS = frozenset({"verify_pin", "verify_password"})
#: Children of <auth> that start a SAML / external-browser login (openconnect).
_SSO_TAGS = ("sso-v2-login", "sso-v2-login-final", "sso-v2-token-cookie-name")
_HOST_SCAN_TAGS = ("csd", "csdLinux", "csdMac")

# Form field names become element names in our reply, so they must be XML names
# (ASCII subset, no namespace prefix).
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*\Z")
# A path or URI from the gateway ends up in an HTTP request line.
_URI_CHARS = re.compile(r"[\x21-\x7e]{1,2048}\Z")
# A session token ends up in a Cookie header.
_TOKEN_CHARS = re.compile(r"[\x21-\x2b\x2d-\x3a\x3c-\x7e]{1,4096}\Z")
_SHA1_HEX = re.compile(r"[0-9A-Fa-f]{40}\Z")
#: Real documents nest five or six deep; a deeper one is an attack on the parser.
# Characters XML 1.0 cannot carry, even escaped.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# -- data types ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientInfo:
    """What the client says about itself in every message (§2.3)."""

    version: str = "4.10.07061"
    device_id: str = "linux-64"


@dataclass(frozen=True, kw_only=True)
class FormInput:
    """One ``<input>`` of a form: type is text, password, hidden or sso."""

    type: str
    name: str
    label: str = ""
    #: only meaningful for hidden inputs, whose value is echoed back
    value: str = ""


@dataclass(frozen=True, kw_only=True)
class SelectOption:
    #: what is submitted: the ``value`` attribute, else the text (§2.4)
    value: str
    label: str
    selected: bool = False


@dataclass(frozen=True, kw_only=True)
class FormSelect:
    name: str
    label: str
    options: tuple[SelectOption, ...]

    @property
    def default(self) -> SelectOption | None:
        """The option marked selected, else the first (ocserv lists the chosen group first)."""
        for option in self.options:
            if option.selected:
                return option
        return self.options[0] if self.options else None


@dataclass(frozen=True, kw_only=True)
class AuthForm:
    """A gateway ``auth-request``: a login form to fill in (§2.4)."""

    auth_id: str
    title: str | None = None
    message: str | None = None
    banner: str | None = None
    #: text of ``<error>`` (ASA's way of saying "login failed", §2.7)
    error: str | None = None
    action: str = "/"
    #: upper-case; only POST is supported by anyone (§2.4)
    method: str = "POST"
    inputs: tuple[FormInput, ...] = ()
    selects: tuple[FormSelect, ...] = ()
    #: the top-level ``<opaque>`` element, byte for byte, to echo back
    opaque: bytes | None = None
    #: Cisco Secure Desktop / HostScan (``<host-scan>``, ``<csd*>``)
    host_scan_requested: bool = False
    #: SAML / external browser login (``type="sso"`` inputs, ``<sso-v2-*>``)
    sso_requested: bool = False
    #: ``<client-cert-request>``: present a certificate, or say ``<client-cert-fail/>`` (§2.9)
    client_cert_requested: bool = False
    #: ``<multiple-client-cert-request>``: the two-certificate signature flow
    multiple_cert_requested: bool = False

    @property
    def group_list(self) -> FormSelect | None:
        for select in self.selects:
            if select.name == "group_list":
                return select
        return None


@dataclass(frozen=True, kw_only=True)
class ProfileManifestEntry:
    """A ``<vpn-profile-manifest>`` file (§2.6, §3)."""

    uri: str
    #: upper-case hex, compared case-insensitively with the body's SHA-1
    sha1_hex: str
    service_type: str = "user"


@dataclass(frozen=True, kw_only=True)
class CoreManifestEntry:
    """A ``<vpn-core-manifest>`` file (ASA only; AnyConnect self-update)."""

    uri: str
    version: str


@dataclass(frozen=True, kw_only=True)
class AuthComplete:
    """``type="complete"`` or ``auth id="success"`` (§2.6)."""

    #: ASA only; ocserv sends the credential as the ``webvpn`` Set-Cookie
    session_token: str | None = field(default=None, repr=False)
    session_id: str | None = field(default=None, repr=False)
    server_cert_hash: str | None = None
    profiles: tuple[ProfileManifestEntry, ...] = ()
    core_manifest: tuple[CoreManifestEntry, ...] = ()
    banner: str | None = None
    message: str | None = None
    #: the text of an ``<error>``: a ``complete`` that is no success (ASA, e.g. CSD missing)
    error: str | None = None
    #: manifest entries that could not be used and were skipped (openconnect skips them)
    skipped_entries: int = 0
    #: False for a ``type="complete"`` without ``auth id="success"`` that carries an error
    succeeded: bool = True


@dataclass(frozen=True, kw_only=True)
class ClientInit:
    """A client's ``init`` (§2.3), seen by the gateway."""

    version: str
    device_id: str
    group_access: str
    group_select: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClientAuthReply:
    """A client's ``auth-reply`` (§2.5): the ``<auth>`` children by element name."""

    fields: dict[str, str] = field(repr=False, hash=False)
    group_select: str | None = None
    opaque: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ClientLogout:
    """A client's XML logout (§5.4; honoured by Cisco, not by ocserv 1.1.6)."""

    session_token: str | None = field(default=None, repr=False)


# -- parsing --------------------------------------------------------------------


def _message(element: Element | None) -> str | None:
    """Element text with ASA's ``%s`` placeholders filled from param1/param2.

    Empty text counts as absent, as in openconnect's ``xmlnode_msg``.
    """
    if element is None:
        return None
    text = "".join(element.itertext())
    if not text:
        return None
    for param in (element.get("param1"), element.get("param2")):
        if param is not None and "%s" in text:
            text = text.replace("%s", param, 1)
    return text


def _stripped(element: Element | None) -> str | None:
    if element is None:
        return None
    return "".join(element.itertext()).strip() or None


def _checked_uri(value: str, what: str) -> str:
    if not _URI_CHARS.match(value):
        raise BadPacketError(f"{what} {short(value)} is not a printable URI without spaces")
    return value


def _parse_input(element: Element) -> FormInput | None:
    kind = (element.get("type") or "").lower()
    name = element.get("name")
    # openconnect skips inputs without type or name, submit/reset buttons, and
    # types it does not know; it keeps sso so it can refuse it.
    if not kind or name is None or kind not in ("text", "password", "hidden", "sso"):
        return None
    if kind != "sso" and not _XML_NAME.match(name):
        raise BadPacketError(f"form field name {short(name)} is not an XML name")
    return FormInput(
        type=kind, name=name, label=element.get("label") or "", value=element.get("value") or ""
    )


def _parse_select(element: Element) -> FormSelect:
    name = element.get("name")
    if name is None:
        raise BadPacketError("<select> without a name")
    if not _XML_NAME.match(name):
        raise BadPacketError(f"<select> name {short(name)} is not an XML name")
    options = []
    for option in element.findall("option"):
        label = "".join(option.itertext())
        value = option.get("value")
        options.append(
            SelectOption(
                value=label if value is None else value,
                label=label,
                selected=(option.get("selected") or "").lower() == "true",
            )
        )
    return FormSelect(name=name, label=element.get("label") or "", options=tuple(options))


def _parse_form(root: Element, auth: Element | None, opaque: bytes | None) -> AuthForm:
    host_scan = root.find("host-scan") is not None
    client_cert = root.find("client-cert-request") is not None
    multiple_cert = root.find("multiple-client-cert-request") is not None
    if auth is None and not (host_scan or client_cert or multiple_cert):
        raise BadPacketError("auth response has neither <auth> nor a known request")
    # openconnect also reads a top-level <error>.
    error = _message(root.find("error"))
    fields: dict[str, str | None] = {"title": None, "message": None, "banner": None}
    action, method, sso = "/", "POST", False
    inputs: list[FormInput] = []
    selects: list[FormSelect] = []
    if auth is not None:
        for name in fields:
            fields[name] = _message(auth.find(name))
        error = _message(auth.find("error")) or error
        host_scan = host_scan or any(auth.find(tag) is not None for tag in _HOST_SCAN_TAGS)
        sso = any(auth.find(tag) is not None for tag in _SSO_TAGS)
        form = auth.find("form")
        if form is not None:
            method = (form.get("method") or "POST").upper()
            action = _checked_uri(form.get("action", "/"), "form action")
            for child in form:
                if child.tag == "input":
                    parsed = _parse_input(child)
                    if parsed is not None:
                        inputs.append(parsed)
                        sso = sso or parsed.type == "sso"
                elif child.tag == "select":
                    selects.append(_parse_select(child))
    return AuthForm(
        auth_id=auth.get("id", "") if auth is not None else "",
        title=fields["title"],
        message=fields["message"],
        banner=fields["banner"],
        error=error,
        action=action,
        method=method,
        inputs=tuple(inputs),
        selects=tuple(selects),
        opaque=opaque,
        host_scan_requested=host_scan,
        sso_requested=sso,
        client_cert_requested=client_cert,
        multiple_cert_requested=multiple_cert,
    )


def _parse_profile_file(element: Element) -> ProfileManifestEntry:
    uri = _stripped(element.find("uri"))
    if uri is None:
        raise BadPacketError("profile manifest entry without <uri>")
    sha1 = None
    for digest in element.findall("hash"):
        if (digest.get("type") or "sha1").lower() == "sha1":
            sha1 = _stripped(digest)
    if sha1 is None or not _SHA1_HEX.match(sha1):
        raise BadPacketError(f"profile manifest entry {short(uri)} has no valid SHA-1 hash")
    return ProfileManifestEntry(
        uri=_checked_uri(uri, "profile URI"),
        sha1_hex=sha1.upper(),
        service_type=element.get("service-type") or "user",
    )


def _parse_complete(root: Element, auth: Element | None) -> AuthComplete:
    token = _stripped(root.find("session-token"))
    if token is not None and not _TOKEN_CHARS.match(token):
        # it goes into a Cookie header; never quote it
        raise BadPacketError("<session-token> holds characters a cookie cannot carry")
    cert_hash: str | None = None
    profiles: list[ProfileManifestEntry] = []
    core: list[CoreManifestEntry] = []
    skipped = 0
    for config in root.findall("config"):
        cert_hash = _stripped(config.find("vpn-base-config/server-cert-hash")) or cert_hash
        for entry in config.findall("vpn-profile-manifest/vpn/file"):
            if (entry.get("type") or "profile") == "profile":
                try:
                    profiles.append(_parse_profile_file(entry))
                except BadPacketError:
                    # openconnect skips an entry it cannot use; the login goes on
                    skipped += 1
        for entry in config.iterfind(".//vpn-core-manifest/vpn/file"):
            uri = _stripped(entry.find("uri"))
            if uri is not None and _URI_CHARS.match(uri):
                core.append(CoreManifestEntry(uri=uri, version=entry.get("version") or ""))
            else:
                skipped += 1
    error = _message(root.find("error"))
    if auth is not None:
        error = _message(auth.find("error")) or error
    succeeded = (
        error is None or token is not None or (auth is not None and auth.get("id") == "success")
    )
    return AuthComplete(
        session_token=token,
        session_id=_stripped(root.find("session-id")),
        server_cert_hash=cert_hash,
        profiles=tuple(profiles),
        core_manifest=tuple(core),
        banner=_message(auth.find("banner")) if auth is not None else None,
        message=_message(auth.find("message")) if auth is not None else None,
        error=error,
        skipped_entries=skipped,
        succeeded=succeeded,
    )


def parse_auth_response_untrusted(body: bytes) -> AuthForm | AuthComplete:
    """Parse a gateway's answer to ``init`` or ``auth-reply`` (§2.4, §2.6)."""
    root, opaque = parse_config_auth_untrusted(body, "auth response")
    kind = root.get("type") or ""
    if kind in ("init", "auth-reply", "logout"):
        raise BadPacketError(f"auth response has the client message type {kind!r}")
    auth = root.find("auth")
    # openconnect takes auth id="success" as success whatever the type says.
    if kind == "complete" or (auth is not None and auth.get("id") == "success"):
        return _parse_complete(root, auth)
    return _parse_form(root, auth, opaque)


def parse_client_message_untrusted(body: bytes) -> ClientInit | ClientAuthReply | ClientLogout:
    """Parse what a client POSTs (server role, §2.3, §2.5, §5.4)."""
    root, opaque = parse_config_auth_untrusted(body, "client message")
    kind = root.get("type") or ""
    group = root.find("group-select")
    group_select = None if group is None else "".join(group.itertext())
    if kind == "init":
        return ClientInit(
            version=_stripped(root.find("version")) or "",
            device_id=_stripped(root.find("device-id")) or "",
            group_access=_stripped(root.find("group-access")) or "",
            group_select=group_select,
        )
    if kind == "auth-reply":
        fields: dict[str, str] = {}
        auth = root.find("auth")
        for child in auth if auth is not None else ():
            # the first occurrence wins, as in ocserv's substring search (§2.5)
            fields.setdefault(str(child.tag), "".join(child.itertext()))
        return ClientAuthReply(fields=fields, group_select=group_select, opaque=opaque)
    if kind == "logout":
        return ClientLogout(session_token=_stripped(root.find("session-token")))
    raise BadPacketError(f"client message has unexpected type {short(kind)}")


# -- building ------------------------------------------------------------------


def _esc(value: str) -> str:
    """Escape text or an attribute value (§2.5: ``&``, ``<``, ``>`` and quotes)."""
    if _XML_INVALID.search(value):
        # never quote the value: it may be a password
        raise LocalProtocolError("value holds a character that XML 1.0 cannot carry")
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .replace("\r", "&#13;")
    )


def _name(name: str) -> str:
    if not _XML_NAME.match(name):
        raise LocalProtocolError(f"{name!r} cannot be an element name")
    return name


def _client_head(info: ClientInfo, kind: str) -> list[str]:
    return [
        _DECL,
        f'<config-auth client="vpn" type="{kind}" aggregate-auth-version="2">',
        f'<version who="vpn">{_esc(info.version)}</version>',
        f"<device-id>{_esc(info.device_id)}</device-id>",
    ]


def build_init(
    info: ClientInfo,
    *,
    group_access: str,
    group_select: str | None = None,
    client_cert_fail: bool = False,
) -> bytes:
    """``init`` as openconnect sends it (§2.3), without SSO or multiple-cert capabilities.

    ``client_cert_fail`` answers a ``<client-cert-request/>`` we cannot satisfy (§2.9).
    """
    parts = _client_head(info, "init")
    parts.append(f"<group-access>{_esc(group_access)}</group-access>")
    if client_cert_fail:
        parts.append("<client-cert-fail/>")
    if group_select is not None:
        parts.append(f"<group-select>{_esc(group_select)}</group-select>")
    # libxml2 (openconnect) ends the document with a newline
    parts.append("</config-auth>\n")
    return "".join(parts).encode()


def build_auth_reply(
    info: ClientInfo,
    form: AuthForm,
    answers: Mapping[str, str],
    *,
    group_select: str | None,
) -> bytes:
    """``auth-reply`` for ``form`` (§2.5).

    Fields go inside ``<auth>`` by the form's names, with openconnect's renames;
    hidden inputs echo their value unless answered; the group goes in a
    top-level ``<group-select>`` (``group_select``, else the ``group_list``
    answer or default); the form's ``<opaque>`` is copied byte for byte.
    """
    fields: list[str] = []
    for item in form.inputs:
        if item.type == "sso" or item.name in _DROPPED_FIELDS:
            continue
        value = answers.get(item.name)
        if value is None and item.type == "hidden":
            value = item.value
        if value is None:
            raise LocalProtocolError(f"no answer for form field {item.name!r}")
        tag = "password" if item.name in _RENAMED_TO_PASSWORD else _name(item.name)
        fields.append(f"<{tag}>{_esc(value)}</{tag}>")
    group = group_select
    for select in form.selects:
        default = select.default
        value = answers.get(select.name) or (default.value if default is not None else None)
        if select.name == "group_list":
            group = group if group is not None else value
        elif value is None:
            raise LocalProtocolError(f"no answer for form select {select.name!r}")
        else:
            tag = _name(select.name)
            fields.append(f"<{tag}>{_esc(value)}</{tag}>")
    parts = _client_head(info, "auth-reply")
    if form.opaque is not None:
        try:
            parts.append(form.opaque.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LocalProtocolError("form.opaque is not UTF-8") from exc
    parts.append("<auth>" + "".join(fields) + "</auth>")
    if group is not None:
        parts.append(f"<group-select>{_esc(group)}</group-select>")
    parts.append("</config-auth>\n")
    return "".join(parts).encode()


def build_logout(session_token: str) -> bytes:
    """The XML logout some Cisco gateways honour (§5.4)."""
    return (
        f'{_DECL}<config-auth client="vpn" type="logout">'
        f"<session-token>{_esc(session_token)}</session-token></config-auth>\n"
    ).encode()


def build_auth_request(
    *,
    message: str,
    inputs: Sequence[FormInput],
    groups: Sequence[tuple[str, str]] | None = None,
    selected_group: str | None = None,
    error: str | None = None,
    action: str = "/auth",
) -> bytes:
    """An ocserv 1.1.6 login form (§2.4).

    ``groups`` are (value, label) pairs; like ocserv, the selected group is
    listed first instead of being marked ``selected``.  ``error`` adds an
    ASA-style ``<error>`` (§2.7), which clients treat as a final rejection.
    """
    parts = [
        _DECL,
        '<config-auth client="vpn" type="auth-request">\n',
        _SG_VERSION,
        '<auth id="main">\n',
        f"<message>{_esc(message)}</message>\n",
    ]
    if error is not None:
        parts.append(f'<error id="88" param1="" param2="">{_esc(error)}</error>\n')
    parts.append(f'<form method="post" action="{_esc(action)}">\n')
    for item in inputs:
        attrs = f'type="{_esc(item.type)}" name="{_esc(_name(item.name))}"'
        if item.label:
            attrs += f' label="{_esc(item.label)}"'
        if item.value or item.type == "hidden":
            attrs += f' value="{_esc(item.value)}"'
        parts.append(f"<input {attrs} />\n")
    if groups:
        ordered = list(groups)
        if selected_group is not None:
            chosen = [g for g in ordered if g[0] == selected_group]
            if not chosen:
                raise LocalProtocolError(f"selected group {selected_group!r} is not in groups")
            ordered = chosen + [g for g in ordered if g[0] != selected_group]
        parts.append('<select name="group_list" label="Group:">\n')
        parts.extend(
            f'<option value="{_esc(value)}">{_esc(label)}</option>\n' for value, label in ordered
        )
        parts.append("</select>\n")
    parts.append("</form></auth>\n</config-auth>")
    return "".join(parts).encode()


def build_auth_complete(
    *,
    banner: str | None = None,
    profiles: Sequence[ProfileManifestEntry] = (),
    session_token: str | None = None,
) -> bytes:
    """An ocserv 1.1.6 success body (§2.6), optionally with an ASA-style token."""
    parts = [_DECL, '<config-auth client="vpn" type="complete">\n', _SG_VERSION]
    if session_token is not None:
        parts.append(f"<session-token>{_esc(session_token)}</session-token>\n")
    parts.append('<auth id="success">\n<title>SSL VPN Service</title>')
    if banner is not None:
        parts.append(f"<banner>{_esc(banner)}</banner>")
    if not profiles:
        parts.append("</auth></config-auth>\n")
        return "".join(parts).encode()
    parts.append(
        '</auth>\n<config client="vpn" type="private"><vpn-profile-manifest><vpn rev="1.0">'
    )
    parts.extend(
        f'<file type="profile" service-type="{_esc(entry.service_type)}">'
        f"<uri>{_esc(entry.uri)}</uri>"
        f'<hash type="sha1">{_esc(entry.sha1_hex.upper())}</hash></file>'
        for entry in profiles
    )
    parts.append("</vpn></vpn-profile-manifest>\n</config></config-auth>")
    return "".join(parts).encode()
