"""CONNECT request and response headers of phase 5, both roles (protocol.md §4, §6).

Headers travel as h11 hands them over: ``(name, value)`` byte pairs, names
case-insensitive and possibly repeated.  The client builds a
``ConnectRequest`` and parses the gateway's answer with
``parse_connect_response_untrusted``; the reference gateway does the mirror
image with ``ConnectRequest.from_headers_untrusted``, ``choose_dtls_cipher``
and ``TunnelParams.to_headers``.  Both codecs share one declarative table so
that ``parse(to_headers(p)) == p``.

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
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, TypeVar

from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "CISCO_PROTOCOL",
    "CONNECT_TARGET",
    "DEFAULT_DTLS12_PRIORITIES",
    "DEFAULT_LEGACY_PRIORITIES",
    "DTLS12_CIPHER_HEADER",
    "DTLS_CIPHER_HEADER",
    "OPENCONNECT_DTLS_OVERHEAD",
    "PSK_NEGOTIATE",
    "Channel",
    "CipherHeader",
    "ConnectRequest",
    "NoSessionCookieError",
    "TunnelParams",
    "choose_dtls_cipher",
    "openconnect_tunnel_mtu",
    "parse_connect_response_untrusted",
]

Headers = list[tuple[bytes, bytes]]
Channel = Literal["cstp", "dtls"]
CipherHeader = Literal["X-DTLS-CipherSuite", "X-DTLS12-CipherSuite"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")

#: ocserv answers 404 to any other CONNECT target (§4.1).
CONNECT_TARGET: Final = "/CSCOSSLC/tunnel"
#: ``X-CSTP-Protocol``: sent by AnyConnect and openconnect master; some gateways insist.
CISCO_PROTOCOL: Final = "Copyright (c) 2004 Cisco Systems, Inc."
DTLS_CIPHER_HEADER: Final = "X-DTLS-CipherSuite"
DTLS12_CIPHER_HEADER: Final = "X-DTLS12-CipherSuite"
PSK_NEGOTIATE: Final = "PSK-NEGOTIATE"
MASTER_SECRET_SIZE: Final = 48
SESSION_ID_SIZE: Final = 32
#: openconnect's worst-case DTLS overhead: 1 type + 13 header + 20 MAC + 32 IV + 16 padding.
OPENCONNECT_DTLS_OVERHEAD: Final = 82

#: ocserv's ``X-DTLS-CipherSuite`` table, name -> server priority (§6).
DEFAULT_LEGACY_PRIORITIES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "OC-DTLS1_2-AES256-GCM": 90,
        "OC-DTLS1_2-AES128-GCM": 80,
        "AES256-SHA": 60,
        "AES128-SHA": 50,
        "DES-CBC3-SHA": 1,
    }
)
#: ocserv master's ``X-DTLS12-CipherSuite`` table (1.1.6 lacks the ECDHE names, §11.11).
DEFAULT_DTLS12_PRIORITIES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "AES256-GCM-SHA384": 90,
        "ECDHE-RSA-AES256-GCM-SHA384": 80,
        "ECDHE-RSA-AES128-GCM-SHA256": 70,
        "AES128-GCM-SHA256": 50,
    }
)


class NoSessionCookieError(BadPacketError):
    """The CONNECT carried no ``webvpn`` cookie (ocserv answers 503, §4.2)."""


# -- helpers shared by both directions -----------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_MAX_SECONDS = 9_999_999_999
#: Values that may hold the session token or key material: never echoed in errors.
_SECRET_HEADERS: Final = frozenset({"cookie", "x-dtls-master-secret", "x-cstp-post-auth-xml"})


def openconnect_tunnel_mtu(base_mtu: int, *, ipv6: bool = False) -> int:
    """``X-CSTP-MTU`` as openconnect computes it from the link MTU (§4.1).

    Base-MTU (at least 1280) minus the IP and UDP headers and the worst-case
    DTLS overhead: 1500 over IPv4 gives 1390.
    """
    return max(base_mtu, 1280) - OPENCONNECT_DTLS_OVERHEAD - 8 - (40 if ipv6 else 20)


def _show(name: str, text: str) -> str:
    if name.lower() in _SECRET_HEADERS:
        return "<elided>"
    return repr(text if len(text) <= 60 else text[:60] + "...")


def _name_untrusted(raw: bytes) -> str:
    name = raw.decode("latin-1")
    if not _TOKEN.fullmatch(name):
        raise BadPacketError(f"malformed header name {name[:40]!r}")
    return name


def _value_untrusted(name: str, raw: bytes) -> str:
    """Header text: UTF-8 when it is, else Latin-1; surrounding OWS removed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if _CTL.search(text):
        raise BadPacketError(f"{name}: control character in value")
    return text.strip(" \t")


def _header(name: str, value: str) -> tuple[bytes, bytes]:
    """One outgoing header, refused if h11 would refuse it or it would not round trip."""
    if not _TOKEN.fullmatch(name):
        raise LocalProtocolError(f"bad header name {name!r}")
    if _CTL.search(value) or value != value.strip(" \t"):
        raise LocalProtocolError(f"{name}: control character or surrounding blanks in value")
    try:
        return name.encode("ascii"), value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{name}: value cannot be encoded") from exc


def _uint(name: str, text: str, lo: int = 0, hi: int = _MAX_SECONDS) -> int:
    # Strict: ASCII digits only (no sign, no blanks, no Unicode digits).
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        raise BadPacketError(f"{name}: not a decimal number: {_show(name, text)}")
    number = int(text)
    if not lo <= number <= hi:
        raise BadPacketError(f"{name}: {number} is outside {lo}..{hi}")
    return number


def _seconds(name: str, text: str) -> int | None:
    return None if text.lower() == "none" else _uint(name, text)


def _bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise BadPacketError(f"{name}: expected true or false, got {_show(name, text)}")
    return lowered == "true"


def _addr(parse: Callable[[str], _T], what: str, name: str, text: str) -> _T:
    """An address or network through ``ipaddress``, errors naming the header."""
    try:
        return parse(text)
    except ValueError:
        raise BadPacketError(f"{name}: not {what}: {_show(name, text)}") from None


def _net(text: str) -> IPNetwork:
    # Routes come as 10.0.0.0/255.0.0.0 or 10.0.0.0/8 (§4.3); host bits are tolerated.
    return ipaddress.ip_network(text, strict=False)


def _net_text(net: IPNetwork) -> str:
    # The netmask style is what Cisco sends and every client understands.
    return net.with_netmask if net.version == 4 else net.with_prefixlen


def _prefixlen(netmask: ipaddress.IPv4Address) -> int | None:
    """Prefix length of a contiguous netmask, None if the mask has holes."""
    inverted = ~int(netmask) & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None
    return 32 - inverted.bit_length()


def _hex(name: str, text: str, *, min_size: int, max_size: int) -> bytes:
    if len(text) % 2 or not _HEX.fullmatch(text):
        raise BadPacketError(f"{name}: not hexadecimal: {_show(name, text)}")
    data = bytes.fromhex(text)
    if not min_size <= len(data) <= max_size:
        # openconnect aborts on a Session-ID that is not 32 bytes (§4.3).
        want = str(min_size) if min_size == max_size else f"{min_size}..{max_size}"
        raise BadPacketError(f"{name}: {len(data)} bytes, expected {want}")
    return data


# -- the request: client builds it, gateway parses it -------------------------

_REQUEST_KNOWN: Final = frozenset(
    {
        "host",
        "user-agent",
        "cookie",
        "x-cstp-version",
        "x-cstp-hostname",
        "x-cstp-protocol",
        "x-cstp-base-mtu",
        "x-cstp-mtu",
        "x-cstp-address-type",
        "x-cstp-full-ipv6-capability",
        "x-cstp-address",
        "x-dtls-master-secret",
        "x-dtls-ciphersuite",
        "x-dtls12-ciphersuite",
    }
)


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


def _cipher_list(value: str) -> tuple[str, ...] | None:
    # ocserv splits on ':' and skips empty tokens (§6).
    names = tuple(part.strip(" \t") for part in value.split(":") if part.strip(" \t"))
    return names or None


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
            if name.lower() in _REQUEST_KNOWN:
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
        items: list[tuple[str, str]] = [
            ("Host", self.host),
            ("User-Agent", self.user_agent),
            ("Cookie", f"webvpn={self.cookie}"),
            ("X-CSTP-Version", "1"),
        ]
        if self.hostname:
            items.append(("X-CSTP-Hostname", self.hostname))
        if self.protocol is not None:
            items.append(("X-CSTP-Protocol", self.protocol))
        items.extend(self.extra)
        if self.base_mtu is not None:
            items.append(("X-CSTP-Base-MTU", str(self.base_mtu)))
        if self.mtu is not None:
            items.append(("X-CSTP-MTU", str(self.mtu)))
        if self.address_type is not None:
            items.append(("X-CSTP-Address-Type", self.address_type))
        if self.previous_address is not None:
            items.append(("X-CSTP-Address", self.previous_address))
        if self.full_ipv6:
            items.append(("X-CSTP-Full-IPv6-Capability", "true"))
        if self.previous_address_ip6 is not None:
            items.append(("X-CSTP-Address", self.previous_address_ip6))
        if self.dtls_master_secret is not None:
            items.append(("X-DTLS-Master-Secret", self.dtls_master_secret.hex().upper()))
        if self.dtls_ciphers is not None:
            items.append((DTLS_CIPHER_HEADER, ":".join(self.dtls_ciphers)))
        if self.dtls12_ciphers is not None:
            items.append((DTLS12_CIPHER_HEADER, ":".join(self.dtls12_ciphers)))
        return [_header(name, value) for name, value in items]

    @classmethod
    def from_headers_untrusted(cls, headers: Iterable[tuple[bytes, bytes]]) -> ConnectRequest:
        """The gateway's view of a CONNECT request, read the way ocserv reads it.

        Known headers with an empty value are ignored (as ocserv does).  The
        cookie is the last ``webvpn=`` pair of any ``Cookie`` header; without
        one, ``NoSessionCookieError``.  ``X-DTLS-Master-Secret`` needs at
        least 96 hex digits; the first 96 are used.
        """
        kwargs: dict[str, Any] = {"host": "", "user_agent": "", "hostname": ""}
        kwargs.update(base_mtu=None, address_type=None, protocol=None)
        cookie: str | None = None
        extra: list[tuple[str, str]] = []
        for raw_name, raw_value in headers:
            name = _name_untrusted(raw_name)
            key = name.lower()
            value = _value_untrusted(name, raw_value)
            if key not in _REQUEST_KNOWN:
                extra.append((name, value))
                continue
            if not value:
                continue
            if key == "host":
                kwargs["host"] = value
            elif key == "user-agent":
                kwargs["user_agent"] = value
            elif key == "cookie":
                for part in value.split(";"):
                    pair = part.lstrip()
                    if pair.startswith("webvpn=") and pair[7:].rstrip():
                        cookie = pair[7:].rstrip()
            elif key == "x-cstp-hostname":
                kwargs["hostname"] = value
            elif key == "x-cstp-protocol":
                kwargs["protocol"] = value
            elif key == "x-cstp-base-mtu":
                kwargs["base_mtu"] = _uint(name, value, 1, 65535)
            elif key == "x-cstp-mtu":
                kwargs["mtu"] = _uint(name, value, 1, 65535)
            elif key == "x-cstp-address-type":
                kwargs["address_type"] = value
            elif key == "x-cstp-full-ipv6-capability":
                kwargs["full_ipv6"] = "true" in value
            elif key == "x-cstp-address":
                if ":" in value:
                    _addr(ipaddress.IPv6Address, "an IPv6 address", name, value)
                    kwargs["previous_address_ip6"] = value
                else:
                    _addr(ipaddress.IPv4Address, "an IPv4 address", name, value)
                    kwargs["previous_address"] = value
            elif key == "x-dtls-master-secret":
                if len(value) < 2 * MASTER_SECRET_SIZE:
                    raise BadPacketError(f"{name}: fewer than 96 hex digits")
                if not _HEX.fullmatch(value[: 2 * MASTER_SECRET_SIZE]):
                    raise BadPacketError(f"{name}: not hexadecimal")
                kwargs["dtls_master_secret"] = bytes.fromhex(value[: 2 * MASTER_SECRET_SIZE])
            elif key == "x-dtls-ciphersuite":
                kwargs["dtls_ciphers"] = _cipher_list(value)
            elif key == "x-dtls12-ciphersuite":
                kwargs["dtls12_ciphers"] = _cipher_list(value)
            # x-cstp-version: always 1, nothing to keep
        if cookie is None:
            raise NoSessionCookieError("CONNECT without a webvpn cookie")
        try:
            return cls(cookie=cookie, extra=tuple(extra), **kwargs)
        except LocalProtocolError as exc:  # an invariant the bytes broke
            raise BadPacketError(f"unusable CONNECT request: {exc}") from None


def choose_dtls_cipher(
    req: ConnectRequest,
    *,
    legacy_prefs: Mapping[str, int] = DEFAULT_LEGACY_PRIORITIES,
    dtls12_prefs: Mapping[str, int] = DEFAULT_DTLS12_PRIORITIES,
) -> tuple[str, CipherHeader] | None:
    """The legacy DTLS suite an ocserv-like gateway answers with (§6).

    None when the request has no master secret (legacy DTLS is impossible)
    or offers nothing we know.  A match in ``X-DTLS12-CipherSuite`` wins and
    is answered in that header; otherwise the best match of
    ``X-DTLS-CipherSuite``.  Within a header the highest server priority
    wins, ties going to the client's earlier name (ocserv uses a strict
    ``<``).  ``PSK-NEGOTIATE`` is ignored: we only do legacy mode.  ocserv's
    "same cipher as the TLS session" shortcut is not modelled.
    """
    if req.dtls_master_secret is None:
        return None
    best12 = _best_offer(req.dtls12_ciphers, dtls12_prefs)
    if best12 is not None:
        return best12, DTLS12_CIPHER_HEADER
    best = _best_offer(req.dtls_ciphers, legacy_prefs)
    if best is not None:
        return best, DTLS_CIPHER_HEADER
    return None


def _best_offer(offer: tuple[str, ...] | None, prefs: Mapping[str, int]) -> str | None:
    best: str | None = None
    best_prio = 0
    for name in offer or ():
        prio = prefs.get(name)
        if name == PSK_NEGOTIATE or prio is None:
            continue
        if best is None or prio > best_prio:
            best, best_prio = name, prio
    return best


# -- the response: gateway builds it, client parses it ------------------------

#: (header, attribute, kind) in ocserv's emission order (§4.3 capture,
#: worker-vpn.c); parse and to_headers both read this table.
_RESPONSE_FIELDS: Final[tuple[tuple[str, str, str], ...]] = (
    ("X-CSTP-Version", "version", "uint"),
    ("X-CSTP-Server-Name", "server_name", "str"),
    ("X-CSTP-Hostname", "hostname", "str"),
    ("X-CSTP-DPD", "cstp_dpd_s", "seconds"),
    ("X-CSTP-Default-Domain", "default_domain", "str"),
    ("X-CSTP-Address", "address", "address"),
    ("X-CSTP-Netmask", "netmask", "netmask"),
    ("X-CSTP-Address-IP6", "address_ip6", "address_ip6"),
    ("X-CSTP-DNS", "dns", "ips"),
    ("X-CSTP-DNS-IP6", "dns_ip6", "ips"),
    ("X-CSTP-NBNS", "nbns", "ips"),
    ("X-CSTP-Split-DNS", "split_dns", "strs"),
    ("X-CSTP-Split-Include", "split_include", "nets"),
    ("X-CSTP-Split-Include-IP6", "split_include_ip6", "nets"),
    ("X-CSTP-Tunnel-All-DNS", "tunnel_all_dns", "bool"),
    ("X-CSTP-Client-Bypass-Protocol", "client_bypass_protocol", "bool"),
    ("X-CSTP-Split-Exclude", "split_exclude", "nets"),
    ("X-CSTP-Split-Exclude-IP6", "split_exclude_ip6", "nets"),
    ("X-CSTP-Keepalive", "cstp_keepalive_s", "seconds"),
    ("X-CSTP-Idle-Timeout", "idle_timeout_s", "seconds"),
    ("X-CSTP-Smartcard-Removal-Disconnect", "smartcard_removal_disconnect", "bool"),
    ("X-CSTP-DynDNS", "dyndns", "bool"),
    ("X-CSTP-Rekey-Time", "cstp_rekey_time_s", "seconds"),
    ("X-CSTP-Rekey-Method", "cstp_rekey_method", "str"),
    # openconnect matches "MSIE-Proxy-PAC-URL" case-sensitively; ocserv writes "Pac".
    ("X-CSTP-MSIE-Proxy-PAC-URL", "msie_proxy_pac_url", "str"),
    ("X-CSTP-MSIE-Proxy-Lockdown", "msie_proxy_lockdown", "bool"),
    ("X-CSTP-Session-Timeout", "session_timeout_s", "seconds"),
    ("X-CSTP-Session-Timeout-Remaining", "session_timeout_remaining_s", "seconds"),
    ("X-CSTP-Session-Timeout-Alert-Interval", "session_timeout_alert_interval_s", "seconds"),
    ("X-CSTP-Lease-Duration", "lease_duration_s", "seconds"),
    ("X-CSTP-Disconnected-Timeout", "disconnected_timeout_s", "seconds"),
    ("X-CSTP-Keep", "keep", "bool"),
    ("X-CSTP-TCP-Keepalive", "tcp_keepalive", "bool"),
    ("X-CSTP-License", "license", "str"),
    ("X-CSTP-Routing-Filtering-Ignore", "routing_filtering_ignore", "bool"),
    ("X-CSTP-Quarantine", "quarantine", "bool"),
    ("X-CSTP-Disable-Always-On-VPN", "disable_always_on_vpn", "bool"),
    ("X-CSTP-Protocol", "protocol", "str"),
    ("X-DTLS-DPD", "dtls_dpd_s", "seconds"),
    ("X-DTLS-Port", "dtls_port", "port"),
    ("X-DTLS-Rekey-Time", "dtls_rekey_time_s", "seconds"),
    ("X-DTLS-Rekey-Method", "dtls_rekey_method", "str"),
    ("X-DTLS-Keepalive", "dtls_keepalive_s", "seconds"),
    ("X-DTLS-App-ID", "dtls_app_id", "app_id"),
    ("X-DTLS-Session-ID", "dtls_session_id", "session_id"),
    (DTLS_CIPHER_HEADER, "dtls_cipher", "cipher"),
    (DTLS12_CIPHER_HEADER, "dtls_cipher", "cipher"),
    ("X-DTLS-MTU", "dtls_mtu", "mtu"),
    ("X-CSTP-Base-MTU", "base_mtu", "mtu"),
    ("X-CSTP-MTU", "mtu", "mtu"),
    ("X-CSTP-Banner", "banner", "str"),
    ("X-DTLS-Content-Encoding", "dtls_content_encoding", "str"),
    ("X-CSTP-Content-Encoding", "cstp_content_encoding", "str"),
    ("X-CSTP-Post-Auth-XML", "post_auth_xml", "str"),
)
_RESPONSE_BY_NAME: Final = {spec[0].lower(): spec for spec in _RESPONSE_FIELDS}
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
    def dtls_offered(self) -> bool:
        """A UDP port and an id to present in the ClientHello (§4.3, §7)."""
        return self.dtls_port is not None and (
            self.dtls_session_id is not None or self.dtls_app_id is not None
        )

    @property
    def dtls_psk(self) -> bool:
        """The gateway chose ocserv's PSK-NEGOTIATE mode (§7.6), not legacy."""
        return self.dtls_cipher == PSK_NEGOTIATE

    @property
    def gateway_tunnel_address(self) -> ipaddress.IPv4Address | None:
        """First host of our address/netmask network: the default echo target.

        None without an IPv4 address and netmask, for /31 and /32, and when
        that first host is our own address.
        """
        if self.address is None or self.netmask is None:
            return None
        prefix = _prefixlen(self.netmask)
        if prefix is None or prefix > 30:
            return None
        network = ipaddress.IPv4Network((self.address, prefix), strict=False)
        first = network.network_address + 1
        return None if first == self.address else first

    def data_mtu(self, channel: Channel) -> int:
        """Largest IP packet to send on ``channel``.

        CSTP: ``X-CSTP-MTU`` (AnyConnect limits packets to it on TLS, §7.9).
        DTLS: ``X-DTLS-MTU`` in legacy mode, else ``X-CSTP-MTU`` (ocserv
        derives that from the chosen DTLS cipher, §4.4).  Each falls back to
        the other when absent.
        """
        first, second = (
            (self.mtu, self.dtls_mtu) if channel == "cstp" else (self.dtls_mtu, self.mtu)
        )
        result = first if first is not None else second
        assert result is not None  # __post_init__ guarantees one of them
        return result

    @property
    def interface_mtu(self) -> int:
        """max(X-CSTP-MTU, X-DTLS-MTU), the interface MTU openconnect uses (§4.3)."""
        return max(m for m in (self.mtu, self.dtls_mtu) if m is not None)

    def to_headers(self) -> Headers:
        """The gateway's header block, in ocserv's order, None fields omitted."""
        items: list[tuple[str, str]] = []
        for header, attr, kind in _RESPONSE_FIELDS:
            value = getattr(self, attr)
            if kind == "address_ip6":
                items.extend(self._ip6_items())
            elif kind == "cipher":
                if value is not None and self.dtls_cipher_header == header:
                    items.append((header, value))
            elif value is None:
                continue
            elif kind in ("ips", "strs"):
                items.extend((header, str(item)) for item in value)
            elif kind == "nets":
                items.extend((header, _net_text(item)) for item in value)
            elif kind == "bool":
                items.append((header, "true" if value else "false"))
            elif kind in ("session_id", "app_id"):
                items.append((header, value.hex()))
            else:  # str, uint, seconds, mtu, port, address, netmask
                items.append((header, str(value)))
        items.extend(self.unknown)
        return [_header(name, value) for name, value in items]

    def _ip6_items(self) -> list[tuple[str, str]]:
        iface = self.address_ip6
        if iface is None:
            return []
        if not self.ip6_legacy_headers:
            return [("X-CSTP-Address-IP6", iface.with_prefixlen)]
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
    addr6: ipaddress.IPv6Address | None = None
    mask6: ipaddress.IPv6Interface | None = None
    for raw_name, raw_value in headers:
        name = _name_untrusted(raw_name)
        key = name.lower()
        value = _value_untrusted(name, raw_value)
        spec = _RESPONSE_BY_NAME.get(key)
        if spec is None:
            if key.startswith(_UNKNOWN_PREFIXES):
                unknown.append((name, value))
            continue
        header, attr, kind = spec
        if kind == "str":
            scalars[attr] = value
        elif kind == "seconds":
            scalars[attr] = _seconds(header, value)
        elif kind == "uint":
            scalars[attr] = _uint(header, value)
        elif kind in ("mtu", "port"):
            scalars[attr] = _uint(header, value, 1, 65535)
        elif kind == "bool":
            scalars[attr] = _bool(header, value)
        elif kind == "ips":
            lists.setdefault(attr, []).append(
                _addr(ipaddress.ip_address, "an IP address", header, value)
            )
        elif kind == "nets":
            lists.setdefault(attr, []).append(_addr(_net, "a network", header, value))
        elif kind == "strs":
            lists.setdefault(attr, []).append(value)
        elif kind == "address":
            # Without full IPv6 capability ocserv sends the IPv6 lease here (§4.3).
            if ":" in value:
                addr6 = _addr(ipaddress.IPv6Address, "an IPv6 address", header, value)
            else:
                scalars[attr] = _addr(ipaddress.IPv4Address, "an IPv4 address", header, value)
        elif kind == "netmask":
            if ":" in value:
                mask6 = _addr(ipaddress.IPv6Interface, "an IPv6 address/prefix", header, value)
            else:
                mask = _addr(ipaddress.IPv4Address, "an IPv4 address", header, value)
                if _prefixlen(mask) is None:
                    raise BadPacketError(
                        f"{header}: not a contiguous netmask: {_show(header, value)}"
                    )
                scalars[attr] = mask
        elif kind == "address_ip6":
            scalars[attr] = _addr(ipaddress.IPv6Interface, "an IPv6 address/prefix", header, value)
        elif kind == "session_id":
            scalars[attr] = _hex(header, value, min_size=SESSION_ID_SIZE, max_size=SESSION_ID_SIZE)
        elif kind == "app_id":
            scalars[attr] = _hex(header, value, min_size=1, max_size=SESSION_ID_SIZE)
        else:  # cipher
            if not value:
                raise BadPacketError(f"{header}: empty cipher name")
            ciphers[header] = value
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
