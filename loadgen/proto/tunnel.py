"""CONNECT request and response headers of phase 5, both roles (protocol.md §4, §6).

Headers travel as h11 hands them over: ``(name, value)`` byte pairs, names
case-insensitive and possibly repeated.  The client builds a
``ConnectRequest`` and parses the gateway's answer with
``parse_connect_response_untrusted``; the reference gateway does the mirror
image with ``ConnectRequest.from_headers_untrusted`` and
``TunnelParams.to_headers``.  Each class has one table of (header, field,
kind), the kinds being the (parse, format) pairs of
``loadgen.proto.header_codec``; both directions read that table, so that
``parse(to_headers(p)) == p``.  Which DTLS suite a gateway answers with is
its personality's choice (``loadgen.proto.personality``).

Decisions worth knowing:

* Timers that the gateway sends as ``none`` and timers it does not send are
  both ``None`` (openconnect reads both as "no limit"), so ``to_headers``
  omits them: re-emitting ocserv's capture drops its ``...: none`` lines and
  keeps everything else in order.
* ``ConnectRequest.mtu`` is not sent unless given: ocserv sizes the tunnel
  from ``X-CSTP-Base-MTU`` (§4.1).  Cisco and old servers read
  ``X-CSTP-MTU``; pass ``mtu=openconnect_tunnel_mtu(base_mtu)`` for them.
* Scalars repeated in a response: the last one wins (openconnect overwrites).
* When both ``X-DTLS-CipherSuite`` and ``X-DTLS12-CipherSuite`` are answered,
  the DTLS 1.2 one is kept and the other dropped (§6).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, Literal

from loadgen.proto import header_codec as kinds
from loadgen.proto.errors import BadPacketError, LocalProtocolError
from loadgen.proto.header_codec import (
    MASTER_SECRET_SIZE,
    SESSION_ID_SIZE,
    HeaderKind,
    IPAddress,
    IPNetwork,
    encode_header,
    header_name_untrusted,
    header_value_untrusted,
    prefix_length,
)
from loadgen.proto.http import parse_cookies

__all__ = [
    "CISCO_PROTOCOL",
    "CONNECT_TARGET",
    "DTLS12_CIPHER_HEADER",
    "DTLS_CIPHER_HEADER",
    "OPENCONNECT_DTLS_OVERHEAD",
    "PSK_NEGOTIATE",
    "SESSION_COOKIE",
    "CipherHeader",
    "ConnectRequest",
    "NoSessionCookieError",
    "TunnelParams",
    "openconnect_tunnel_mtu",
    "parse_connect_response_untrusted",
]

Headers = list[tuple[bytes, bytes]]
CipherHeader = Literal["X-DTLS-CipherSuite", "X-DTLS12-CipherSuite"]

#: ocserv answers 404 to any other CONNECT target (§4.1).
CONNECT_TARGET: Final = "/CSCOSSLC/tunnel"
#: the cookie that carries the session token on CONNECT (§2.6, §4.1)
SESSION_COOKIE: Final = "webvpn"
#: ``X-CSTP-Protocol``: sent by AnyConnect and openconnect master; some gateways insist.
CISCO_PROTOCOL: Final = "Copyright (c) 2004 Cisco Systems, Inc."
DTLS_CIPHER_HEADER: Final = "X-DTLS-CipherSuite"
DTLS12_CIPHER_HEADER: Final = "X-DTLS12-CipherSuite"
PSK_NEGOTIATE: Final = "PSK-NEGOTIATE"
#: openconnect's worst-case DTLS overhead: 1 type + 13 header + 20 MAC + 32 IV + 16 padding.
OPENCONNECT_DTLS_OVERHEAD: Final = 82


class NoSessionCookieError(BadPacketError):
    """The CONNECT carried no ``webvpn`` cookie (ocserv answers 503, §4.2)."""


def openconnect_tunnel_mtu(base_mtu: int, *, ipv6: bool = False) -> int:
    """``X-CSTP-MTU`` as openconnect computes it from the link MTU (§4.1).

    Base-MTU (at least 1280) minus the IP and UDP headers and the worst-case
    DTLS overhead: 1500 over IPv4 gives 1390.
    """
    return max(base_mtu, 1280) - OPENCONNECT_DTLS_OVERHEAD - 8 - (40 if ipv6 else 20)


# -- the tables' shape ------------------------------------------------------------


def _given(value: object) -> bool:
    return value is not None


def _always(value: object) -> bool:
    return True


def _any_text(text: str) -> bool:
    return True


def _ipv6_text(text: str) -> bool:
    return ":" in text


def _ipv4_text(text: str) -> bool:
    return ":" not in text


@dataclass(frozen=True)
class _Field:
    """One header of a table: which field it fills, and how its value reads and writes."""

    header: str
    attr: str
    kind: HeaderKind[Any]
    #: a repeated header that accumulates into a tuple
    many: bool = False
    #: which values of a header shared by two fields this one takes
    takes: Callable[[str], bool] = _any_text
    #: whether ``to_headers`` writes the field's value
    sent: Callable[[Any], bool] = _given


def _by_name(table: Iterable[_Field]) -> dict[str, tuple[_Field, ...]]:
    out: dict[str, tuple[_Field, ...]] = {}
    for spec in table:
        if spec.header:
            key = spec.header.lower()
            out[key] = (*out.get(key, ()), spec)
    return out


def _pick(specs: tuple[_Field, ...], value: str) -> _Field:
    # the ``takes`` of fields sharing a header are complementary
    return next(spec for spec in specs if spec.takes(value))


# -- the request: client builds it, gateway parses it -------------------------

_SESSION_COOKIE_KIND: Final = HeaderKind[str | None](
    "session_cookie",
    # the shared cookie parser; None (no usable webvpn pair) leaves an earlier one
    lambda name, text: parse_cookies([text]).get(SESSION_COOKIE),
    lambda token: f"{SESSION_COOKIE}={token}",
)
#: where ``ConnectRequest.extra`` goes: openconnect puts its mobile headers there
_EXTRA: Final = _Field("", "extra", kinds.TEXT)
#: openconnect's order (§4.1); ``version`` is a constant, read and ignored
_REQUEST_FIELDS: Final[tuple[_Field, ...]] = (
    _Field("Host", "host", kinds.TEXT, sent=_always),
    _Field("User-Agent", "user_agent", kinds.TEXT, sent=_always),
    _Field("Cookie", "cookie", _SESSION_COOKIE_KIND, sent=_always),
    _Field("X-CSTP-Version", "version", kinds.UINT, sent=_always),
    _Field("X-CSTP-Hostname", "hostname", kinds.TEXT, sent=bool),
    _Field("X-CSTP-Protocol", "protocol", kinds.TEXT),
    _EXTRA,
    _Field("X-CSTP-Base-MTU", "base_mtu", kinds.UINT16),
    _Field("X-CSTP-MTU", "mtu", kinds.UINT16),
    _Field("X-CSTP-Address-Type", "address_type", kinds.TEXT),
    _Field("X-CSTP-Address", "previous_address", kinds.IPV4_TEXT, takes=_ipv4_text),
    _Field("X-CSTP-Full-IPv6-Capability", "full_ipv6", kinds.FLAG, sent=bool),
    _Field("X-CSTP-Address", "previous_address_ip6", kinds.IPV6_TEXT, takes=_ipv6_text),
    _Field("X-DTLS-Master-Secret", "dtls_master_secret", kinds.MASTER_SECRET),
    _Field(DTLS_CIPHER_HEADER, "dtls_ciphers", kinds.CIPHER_LIST),
    _Field(DTLS12_CIPHER_HEADER, "dtls12_ciphers", kinds.CIPHER_LIST),
)
_REQUEST_BY_NAME: Final = _by_name(_REQUEST_FIELDS)
#: what a CONNECT without the header means (the dataclass defaults are the client's)
_REQUEST_ABSENT: Final[dict[str, Any]] = {
    "host": "",
    "user_agent": "",
    "hostname": "",
    "base_mtu": None,
    "address_type": None,
    "protocol": None,
}


def _check_mtu(name: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise LocalProtocolError(f"{name} {value} is outside 1..65535")


def _check_cipher_names(name: str, names: tuple[str, ...] | None) -> None:
    if names is None:
        return
    if not names:
        raise LocalProtocolError(f"{name}: use None rather than an empty offer")
    for item in names:
        if not item or ":" in item or item != item.strip(" \t"):
            raise LocalProtocolError(f"{name}: bad cipher name {item!r}")


@dataclass(frozen=True, kw_only=True)
class ConnectRequest:
    """The ``CONNECT /CSCOSSLC/tunnel`` header block (§4.1).

    ``mtu``, ``protocol``, ``previous_address*``, the DTLS fields and an empty
    ``hostname`` are not sent when None/empty; ``base_mtu`` and
    ``address_type`` likewise when None.  ``extra`` headers (for example
    ``X-AnyConnect-Identifier-*``) go where openconnect puts its mobile ones.
    """

    method: ClassVar[str] = "CONNECT"
    target: ClassVar[str] = CONNECT_TARGET
    #: ``X-CSTP-Version``: always 1
    version: ClassVar[int] = 1

    host: str
    user_agent: str
    #: the ``webvpn`` session token: a credential, never shown
    cookie: str = field(repr=False)
    #: ``X-CSTP-Hostname``; give each simulated client its own (ocserv shows it in occtl)
    hostname: str
    base_mtu: int | None = 1500
    mtu: int | None = None
    #: ``IPv6,IPv4`` or ``IPv4``; ocserv looks for each substring
    address_type: str | None = "IPv4"
    full_ipv6: bool = False
    #: the addresses of the previous tunnel, asked for again on reconnect
    previous_address: str | None = None
    previous_address_ip6: str | None = None
    protocol: str | None = CISCO_PROTOCOL
    #: 48 random bytes: the legacy DTLS master secret (§7.2), never shown
    dtls_master_secret: bytes | None = field(default=None, repr=False)
    dtls_ciphers: tuple[str, ...] | None = None
    dtls12_ciphers: tuple[str, ...] | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.cookie or ";" in self.cookie:
            raise LocalProtocolError("cookie must be a non-empty token without ';'")
        if (
            self.dtls_master_secret is not None
            and len(self.dtls_master_secret) != MASTER_SECRET_SIZE
        ):
            raise LocalProtocolError(f"dtls_master_secret must be {MASTER_SECRET_SIZE} bytes")
        _check_mtu("base_mtu", self.base_mtu)
        _check_mtu("mtu", self.mtu)
        _check_cipher_names("dtls_ciphers", self.dtls_ciphers)
        _check_cipher_names("dtls12_ciphers", self.dtls12_ciphers)
        for text, cls in (
            (self.previous_address, ipaddress.IPv4Address),
            (self.previous_address_ip6, ipaddress.IPv6Address),
        ):
            if text is not None:
                try:
                    cls(text)
                except ValueError:
                    raise LocalProtocolError(f"bad previous address {text!r}") from None
        for name, _value in self.extra:
            if name.lower() in _REQUEST_BY_NAME:
                raise LocalProtocolError(f"{name} is a field of ConnectRequest, not extra")

    @property
    def wants_ipv4(self) -> bool:
        """ocserv's rule: no ``IPv4`` in X-CSTP-Address-Type, no IPv4 lease."""
        return self.address_type is None or "IPv4" in self.address_type

    @property
    def wants_ipv6(self) -> bool:
        return self.address_type is None or "IPv6" in self.address_type

    def to_headers(self) -> Headers:
        """Headers in openconnect's order, without compression or HTTP-auth offers (§4.1, §5.5)."""
        items: list[tuple[str, str]] = []
        for spec in _REQUEST_FIELDS:
            if spec is _EXTRA:
                items.extend(self.extra)
                continue
            value = getattr(self, spec.attr)
            if spec.sent(value):
                items.append((spec.header, spec.kind.format(value)))
        return [encode_header(name, value) for name, value in items]

    @classmethod
    def from_headers_untrusted(cls, headers: Iterable[tuple[bytes, bytes]]) -> ConnectRequest:
        """The gateway's view of a CONNECT request, read the way ocserv reads it.

        Known headers with an empty value are ignored (as ocserv does).  The
        cookie is the last ``webvpn=`` pair of any ``Cookie`` header; without
        one, ``NoSessionCookieError``.  ``X-DTLS-Master-Secret`` needs at
        least 96 hex digits; the first 96 are used.
        """
        kwargs: dict[str, Any] = dict(_REQUEST_ABSENT)
        extra: list[tuple[str, str]] = []
        for raw_name, raw_value in headers:
            name = header_name_untrusted(raw_name)
            value = header_value_untrusted(name, raw_value)
            specs = _REQUEST_BY_NAME.get(name.lower())
            if specs is None:
                extra.append((name, value))
                continue
            if not value:
                continue
            spec = _pick(specs, value)
            parsed = spec.kind.parse(spec.header, value)
            # X-CSTP-Version: always 1, nothing to keep; None: nothing usable was given
            if spec.attr != "version" and parsed is not None:
                kwargs[spec.attr] = parsed
        if kwargs.get("cookie") is None:
            raise NoSessionCookieError("CONNECT without a webvpn cookie")
        try:
            return cls(extra=tuple(extra), **kwargs)
        except LocalProtocolError as exc:  # an invariant the bytes broke
            raise BadPacketError(f"unusable CONNECT request: {exc}") from None


# -- the response: gateway builds it, client parses it ------------------------

#: ocserv's emission order (§4.3 capture, worker-vpn.c).  Fields whose name
#: starts with ``_`` are only read: ocserv sends an IPv6 lease in
#: X-CSTP-Address/X-CSTP-Netmask to clients without full IPv6 capability.
_RESPONSE_FIELDS: Final[tuple[_Field, ...]] = (
    _Field("X-CSTP-Version", "version", kinds.UINT),
    _Field("X-CSTP-Server-Name", "server_name", kinds.TEXT),
    _Field("X-CSTP-Hostname", "hostname", kinds.TEXT),
    _Field("X-CSTP-DPD", "cstp_dpd_s", kinds.SECONDS),
    _Field("X-CSTP-Default-Domain", "default_domain", kinds.TEXT),
    _Field("X-CSTP-Address", "address", kinds.IPV4_ADDRESS, takes=_ipv4_text),
    _Field("X-CSTP-Address", "_address6", kinds.IPV6_ADDRESS, takes=_ipv6_text),
    _Field("X-CSTP-Netmask", "netmask", kinds.IPV4_NETMASK, takes=_ipv4_text),
    _Field("X-CSTP-Netmask", "_netmask6", kinds.IPV6_INTERFACE, takes=_ipv6_text),
    _Field("X-CSTP-Address-IP6", "address_ip6", kinds.IPV6_INTERFACE),
    _Field("X-CSTP-DNS", "dns", kinds.IP_ADDRESS, many=True),
    _Field("X-CSTP-DNS-IP6", "dns_ip6", kinds.IP_ADDRESS, many=True),
    _Field("X-CSTP-NBNS", "nbns", kinds.IP_ADDRESS, many=True),
    _Field("X-CSTP-Split-DNS", "split_dns", kinds.TEXT, many=True),
    _Field("X-CSTP-Split-Include", "split_include", kinds.NETWORK, many=True),
    _Field("X-CSTP-Split-Include-IP6", "split_include_ip6", kinds.NETWORK, many=True),
    _Field("X-CSTP-Tunnel-All-DNS", "tunnel_all_dns", kinds.BOOL),
    _Field("X-CSTP-Client-Bypass-Protocol", "client_bypass_protocol", kinds.BOOL),
    _Field("X-CSTP-Split-Exclude", "split_exclude", kinds.NETWORK, many=True),
    _Field("X-CSTP-Split-Exclude-IP6", "split_exclude_ip6", kinds.NETWORK, many=True),
    _Field("X-CSTP-Keepalive", "cstp_keepalive_s", kinds.SECONDS),
    _Field("X-CSTP-Idle-Timeout", "idle_timeout_s", kinds.SECONDS),
    _Field("X-CSTP-Smartcard-Removal-Disconnect", "smartcard_removal_disconnect", kinds.BOOL),
    _Field("X-CSTP-DynDNS", "dyndns", kinds.BOOL),
    _Field("X-CSTP-Rekey-Time", "cstp_rekey_time_s", kinds.SECONDS),
    _Field("X-CSTP-Rekey-Method", "cstp_rekey_method", kinds.TEXT),
    # openconnect matches "MSIE-Proxy-PAC-URL" case-sensitively; ocserv writes "Pac".
    _Field("X-CSTP-MSIE-Proxy-PAC-URL", "msie_proxy_pac_url", kinds.TEXT),
    _Field("X-CSTP-MSIE-Proxy-Lockdown", "msie_proxy_lockdown", kinds.BOOL),
    _Field("X-CSTP-Session-Timeout", "session_timeout_s", kinds.SECONDS),
    _Field("X-CSTP-Session-Timeout-Remaining", "session_timeout_remaining_s", kinds.SECONDS),
    _Field(
        "X-CSTP-Session-Timeout-Alert-Interval",
        "session_timeout_alert_interval_s",
        kinds.SECONDS,
    ),
    _Field("X-CSTP-Lease-Duration", "lease_duration_s", kinds.SECONDS),
    _Field("X-CSTP-Disconnected-Timeout", "disconnected_timeout_s", kinds.SECONDS),
    _Field("X-CSTP-Keep", "keep", kinds.BOOL),
    _Field("X-CSTP-TCP-Keepalive", "tcp_keepalive", kinds.BOOL),
    _Field("X-CSTP-License", "license", kinds.TEXT),
    _Field("X-CSTP-Routing-Filtering-Ignore", "routing_filtering_ignore", kinds.BOOL),
    _Field("X-CSTP-Quarantine", "quarantine", kinds.BOOL),
    _Field("X-CSTP-Disable-Always-On-VPN", "disable_always_on_vpn", kinds.BOOL),
    _Field("X-CSTP-Protocol", "protocol", kinds.TEXT),
    _Field("X-DTLS-DPD", "dtls_dpd_s", kinds.SECONDS),
    _Field("X-DTLS-Port", "dtls_port", kinds.UINT16),
    _Field("X-DTLS-Rekey-Time", "dtls_rekey_time_s", kinds.SECONDS),
    _Field("X-DTLS-Rekey-Method", "dtls_rekey_method", kinds.TEXT),
    _Field("X-DTLS-Keepalive", "dtls_keepalive_s", kinds.SECONDS),
    _Field("X-DTLS-App-ID", "dtls_app_id", kinds.APP_ID),
    _Field("X-DTLS-Session-ID", "dtls_session_id", kinds.SESSION_ID),
    _Field(DTLS_CIPHER_HEADER, "dtls_cipher", kinds.CIPHER),
    _Field(DTLS12_CIPHER_HEADER, "dtls_cipher", kinds.CIPHER),
    _Field("X-DTLS-MTU", "dtls_mtu", kinds.UINT16),
    _Field("X-CSTP-Base-MTU", "base_mtu", kinds.UINT16),
    _Field("X-CSTP-MTU", "mtu", kinds.UINT16),
    _Field("X-CSTP-Banner", "banner", kinds.TEXT),
    _Field("X-DTLS-Content-Encoding", "dtls_content_encoding", kinds.TEXT),
    _Field("X-CSTP-Content-Encoding", "cstp_content_encoding", kinds.TEXT),
    _Field("X-CSTP-Post-Auth-XML", "post_auth_xml", kinds.TEXT),
)
_RESPONSE_BY_NAME: Final = _by_name(_RESPONSE_FIELDS)
_UNKNOWN_PREFIXES: Final = ("x-cstp-", "x-dtls-", "x-dtls12-")


@dataclass(frozen=True, kw_only=True, repr=False)
class TunnelParams:
    """Everything the gateway said in its ``200 CONNECTED`` headers (§4.3).

    ``*_s`` fields are seconds; None means absent or ``none``.  At least one
    address (``address`` or ``address_ip6``) and one MTU (``mtu`` or
    ``dtls_mtu``) are required, as openconnect requires them.
    ``address_ip6`` holds ``X-CSTP-Address-IP6``, or the IPv6 pair of
    ``X-CSTP-Address``/``X-CSTP-Netmask`` that ocserv sends to clients without
    full IPv6 capability (then ``ip6_legacy_headers`` is True).
    """

    version: int | None = None
    server_name: str | None = None
    hostname: str | None = None
    protocol: str | None = None
    address: ipaddress.IPv4Address | None = None
    netmask: ipaddress.IPv4Address | None = None
    address_ip6: ipaddress.IPv6Interface | None = None
    ip6_legacy_headers: bool = False
    dns: tuple[IPAddress, ...] = ()
    dns_ip6: tuple[IPAddress, ...] = ()
    nbns: tuple[IPAddress, ...] = ()
    default_domain: str | None = None
    split_include: tuple[IPNetwork, ...] = ()
    split_exclude: tuple[IPNetwork, ...] = ()
    split_include_ip6: tuple[IPNetwork, ...] = ()
    split_exclude_ip6: tuple[IPNetwork, ...] = ()
    split_dns: tuple[str, ...] = ()
    tunnel_all_dns: bool | None = None
    #: X-CSTP-MTU: IP packet size on CSTP (ocserv: also the DTLS data MTU, §4.4)
    mtu: int | None = None
    base_mtu: int | None = None
    #: X-DTLS-MTU: legacy mode only
    dtls_mtu: int | None = None
    cstp_dpd_s: int | None = None
    dtls_dpd_s: int | None = None
    cstp_keepalive_s: int | None = None
    dtls_keepalive_s: int | None = None
    cstp_rekey_time_s: int | None = None
    cstp_rekey_method: str | None = None
    dtls_rekey_time_s: int | None = None
    dtls_rekey_method: str | None = None
    idle_timeout_s: int | None = None
    session_timeout_s: int | None = None
    session_timeout_remaining_s: int | None = None
    session_timeout_alert_interval_s: int | None = None
    lease_duration_s: int | None = None
    disconnected_timeout_s: int | None = None
    keep: bool | None = None
    tcp_keepalive: bool | None = None
    smartcard_removal_disconnect: bool | None = None
    license: str | None = None
    client_bypass_protocol: bool | None = None
    msie_proxy_pac_url: str | None = None
    msie_proxy_lockdown: bool | None = None
    routing_filtering_ignore: bool | None = None
    quarantine: bool | None = None
    disable_always_on_vpn: bool | None = None
    dyndns: bool | None = None
    banner: str | None = None
    cstp_content_encoding: str | None = None
    dtls_content_encoding: str | None = None
    #: absent means no DTLS
    dtls_port: int | None = None
    #: legacy mode: the 32-byte session id to resume
    dtls_session_id: bytes | None = None
    #: PSK mode: up to 32 bytes
    dtls_app_id: bytes | None = None
    dtls_cipher: str | None = None
    #: which header named the cipher; it decides DTLS 0.9 vs 1.2 (§12 gotcha 3)
    dtls_cipher_header: CipherHeader | None = None
    #: ASA: a whole config-auth document; may hold the session token
    post_auth_xml: str | None = field(default=None, repr=False)
    #: other X-CSTP-*/X-DTLS-* headers, in arrival order
    unknown: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.address is None and self.address_ip6 is None:
            raise LocalProtocolError("TunnelParams needs address or address_ip6")
        if self.mtu is None and self.dtls_mtu is None:
            raise LocalProtocolError("TunnelParams needs mtu or dtls_mtu")
        if self.ip6_legacy_headers and self.address_ip6 is None:
            raise LocalProtocolError("ip6_legacy_headers without address_ip6")
        for name in ("mtu", "base_mtu", "dtls_mtu", "dtls_port"):
            _check_mtu(name, getattr(self, name))
        if self.dtls_session_id is not None and len(self.dtls_session_id) != SESSION_ID_SIZE:
            raise LocalProtocolError(f"dtls_session_id must be {SESSION_ID_SIZE} bytes")
        if self.dtls_app_id is not None and not 1 <= len(self.dtls_app_id) <= SESSION_ID_SIZE:
            raise LocalProtocolError(f"dtls_app_id must be 1..{SESSION_ID_SIZE} bytes")
        if (self.dtls_cipher is None) != (self.dtls_cipher_header is None) or (
            self.dtls_cipher_header not in (None, DTLS_CIPHER_HEADER, DTLS12_CIPHER_HEADER)
        ):
            raise LocalProtocolError("dtls_cipher and dtls_cipher_header go together")
        if self.dtls_cipher == "":
            raise LocalProtocolError("dtls_cipher must not be empty")
        for name, _value in self.unknown:
            key = name.lower()
            if not key.startswith(_UNKNOWN_PREFIXES) or key in _RESPONSE_BY_NAME:
                raise LocalProtocolError(f"{name} cannot be an unknown header")

    def __repr__(self) -> str:
        # Only what was said; post_auth_xml never (it may carry the token).
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.repr or value is None or value == ():
                continue
            if f.name == "ip6_legacy_headers" and not value:
                continue
            parts.append(f"{f.name}={value.hex() if isinstance(value, bytes) else value!r}")
        if self.post_auth_xml is not None:
            parts.append("post_auth_xml=<elided>")
        return f"TunnelParams({', '.join(parts)})"

    @property
    def gateway_tunnel_address(self) -> ipaddress.IPv4Address | None:
        """First host of our address/netmask network: the default echo target.

        None without an IPv4 address and netmask, for /31 and /32, and when
        that first host is our own address.
        """
        if self.address is None or self.netmask is None:
            return None
        prefix = prefix_length(self.netmask)
        if prefix is None or prefix > 30:
            return None
        network = ipaddress.IPv4Network((self.address, prefix), strict=False)
        first = network.network_address + 1
        return None if first == self.address else first

    def to_headers(self) -> Headers:
        """The gateway's header block, in ocserv's order, None fields omitted."""
        items: list[tuple[str, str]] = []
        for spec in _RESPONSE_FIELDS:
            if spec.attr.startswith("_"):
                continue
            if spec.attr == "address_ip6":
                items.extend(self._ip6_items())
                continue
            value = getattr(self, spec.attr)
            if value is None or (
                spec.attr == "dtls_cipher" and spec.header != self.dtls_cipher_header
            ):
                continue
            if spec.many:
                items.extend((spec.header, spec.kind.format(item)) for item in value)
            else:
                items.append((spec.header, spec.kind.format(value)))
        items.extend(self.unknown)
        return [encode_header(name, value) for name, value in items]

    def _ip6_items(self) -> list[tuple[str, str]]:
        iface = self.address_ip6
        if iface is None:
            return []
        if not self.ip6_legacy_headers:
            return [("X-CSTP-Address-IP6", kinds.IPV6_INTERFACE.format(iface))]
        net = iface.network
        return [
            ("X-CSTP-Address", str(iface.ip)),
            ("X-CSTP-Netmask", f"{net.network_address}/{net.prefixlen}"),
        ]


def parse_connect_response_untrusted(headers: Iterable[tuple[bytes, bytes]]) -> TunnelParams:
    """Read the ``200 CONNECTED`` header block (§4.3).

    Names are case-insensitive; repeated list headers accumulate; other
    ``X-CSTP-*``/``X-DTLS-*`` headers land in ``unknown`` and the rest (Date,
    OWASP headers, ...) are ignored.  No address or no MTU raises
    BadPacketError, as openconnect aborts; so does a bad number, address,
    boolean or hex id, with the header named in the message.
    """
    scalars: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {}
    unknown: list[tuple[str, str]] = []
    ciphers: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = header_name_untrusted(raw_name)
        key = name.lower()
        value = header_value_untrusted(name, raw_value)
        specs = _RESPONSE_BY_NAME.get(key)
        if specs is None:
            if key.startswith(_UNKNOWN_PREFIXES):
                unknown.append((name, value))
            continue
        spec = _pick(specs, value)
        parsed = spec.kind.parse(spec.header, value)
        if spec.many:
            lists.setdefault(spec.attr, []).append(parsed)
        elif spec.attr == "dtls_cipher":
            ciphers[spec.header] = parsed
        else:
            scalars[spec.attr] = parsed
    addr6: ipaddress.IPv6Address | None = scalars.pop("_address6", None)
    mask6: ipaddress.IPv6Interface | None = scalars.pop("_netmask6", None)
    if "address_ip6" not in scalars and addr6 is not None:
        prefix = mask6.network.prefixlen if mask6 is not None else 128
        scalars["address_ip6"] = ipaddress.IPv6Interface((addr6, prefix))
        scalars["ip6_legacy_headers"] = True
    if scalars.get("address") is None and scalars.get("address_ip6") is None:
        raise BadPacketError("CONNECT response without X-CSTP-Address or X-CSTP-Address-IP6")
    if scalars.get("mtu") is None and scalars.get("dtls_mtu") is None:
        raise BadPacketError("CONNECT response without X-CSTP-MTU or X-DTLS-MTU")
    # A DTLS 1.2 answer overrides a legacy one (§6).
    for header in (DTLS12_CIPHER_HEADER, DTLS_CIPHER_HEADER):
        if header in ciphers:
            scalars["dtls_cipher"] = ciphers[header]
            scalars["dtls_cipher_header"] = header
            break
    scalars.update((attr, tuple(items)) for attr, items in lists.items())
    try:
        return TunnelParams(**scalars, unknown=tuple(unknown))
    except LocalProtocolError as exc:  # an invariant the bytes broke
        raise BadPacketError(f"unusable CONNECT response: {exc}") from None
