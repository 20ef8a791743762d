"""The value kinds of the CONNECT headers: one (parse, format) pair each (protocol.md §4).

``ConnectRequest`` and ``TunnelParams`` (``loadgen.proto.tunnel``) describe
their headers as tables of (header, field, kind); both directions of both
roles are driven from those tables and the kinds below, so a kind is parsed
and written in one place.  ``parse`` takes the header's name (for the
error) and its text, and raises only ``BadPacketError``; ``format`` gives
the text that ``parse`` reads back to the same value.

Strictness is ocserv's and openconnect's: decimal numbers are ASCII digits
only, booleans are ``true``/``false``, hex ids have exact sizes (§4.3).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = [
    "APP_ID",
    "BOOL",
    "CIPHER",
    "CIPHER_LIST",
    "FLAG",
    "IPV4_ADDRESS",
    "IPV4_NETMASK",
    "IPV4_TEXT",
    "IPV6_ADDRESS",
    "IPV6_INTERFACE",
    "IPV6_TEXT",
    "IP_ADDRESS",
    "KINDS",
    "MASTER_SECRET",
    "MASTER_SECRET_SIZE",
    "NETWORK",
    "SECONDS",
    "SESSION_ID",
    "SESSION_ID_SIZE",
    "TEXT",
    "UINT",
    "UINT16",
    "HeaderKind",
    "IPAddress",
    "IPNetwork",
    "encode_header",
    "header_name_untrusted",
    "header_value_untrusted",
    "prefix_length",
    "shown",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")

MASTER_SECRET_SIZE: Final = 48
SESSION_ID_SIZE: Final = 32

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_MAX_SECONDS = 9_999_999_999
#: Values that may hold the session token or key material: never echoed in errors.
_SECRET_HEADERS: Final = frozenset({"cookie", "x-dtls-master-secret", "x-cstp-post-auth-xml"})


@dataclass(frozen=True)
class HeaderKind(Generic[_T]):
    """How one kind of header value is read and written."""

    name: str
    #: (header name, text) -> value; BadPacketError naming the header
    parse: Callable[[str, str], _T]
    format: Callable[[_T], str]


# -- header names and values, both directions -----------------------------------


def shown(name: str, text: str) -> str:
    """A header value for an error message: short, and never a secret."""
    if name.lower() in _SECRET_HEADERS:
        return "<elided>"
    return repr(text if len(text) <= 60 else text[:60] + "...")


def header_name_untrusted(raw: bytes) -> str:
    name = raw.decode("latin-1")
    if not _TOKEN.fullmatch(name):
        raise BadPacketError(f"malformed header name {name[:40]!r}")
    return name


def header_value_untrusted(name: str, raw: bytes) -> str:
    """Header text: UTF-8 when it is, else Latin-1; surrounding OWS removed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if _CTL.search(text):
        raise BadPacketError(f"{name}: control character in value")
    return text.strip(" \t")


def encode_header(name: str, value: str) -> tuple[bytes, bytes]:
    """One outgoing header, refused if h11 would refuse it or it would not round trip."""
    if not _TOKEN.fullmatch(name):
        raise LocalProtocolError(f"bad header name {name!r}")
    if _CTL.search(value) or value != value.strip(" \t"):
        raise LocalProtocolError(f"{name}: control character or surrounding blanks in value")
    try:
        return name.encode("ascii"), value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{name}: value cannot be encoded") from exc


# -- parsers and formatters -----------------------------------------------------


def _uint_in(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, text: str) -> int:
        # Strict: ASCII digits only (no sign, no blanks, no Unicode digits).
        if not (text.isascii() and text.isdigit() and len(text) <= 10):
            raise BadPacketError(f"{name}: not a decimal number: {shown(name, text)}")
        number = int(text)
        if not lo <= number <= hi:
            raise BadPacketError(f"{name}: {number} is outside {lo}..{hi}")
        return number

    return parse


_uint = _uint_in(0, _MAX_SECONDS)


def _seconds(name: str, text: str) -> int | None:
    # openconnect reads ``none`` as "no limit", like an absent header (§4.3)
    return None if text.lower() == "none" else _uint(name, text)


def _bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise BadPacketError(f"{name}: expected true or false, got {shown(name, text)}")
    return lowered == "true"


def _flag(name: str, text: str) -> bool:
    # ocserv looks for the substring (X-CSTP-Full-IPv6-Capability, §4.1)
    return "true" in text


def _through(parse: Callable[[str], Any], what: str) -> Callable[[str, str], Any]:
    """An address or network through ``ipaddress``, errors naming the header."""

    def checked(name: str, text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            raise BadPacketError(f"{name}: not {what}: {shown(name, text)}") from None

    return checked


def _network(text: str) -> IPNetwork:
    # Routes come as 10.0.0.0/255.0.0.0 or 10.0.0.0/8 (§4.3); host bits are tolerated.
    return ipaddress.ip_network(text, strict=False)


def _network_text(net: IPNetwork) -> str:
    # The netmask style is what Cisco sends and every client understands.
    return net.with_netmask if net.version == 4 else net.with_prefixlen


def prefix_length(netmask: ipaddress.IPv4Address) -> int | None:
    """Prefix length of a contiguous netmask, None if the mask has holes."""
    inverted = ~int(netmask) & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None
    return 32 - inverted.bit_length()


_ipv4 = _through(ipaddress.IPv4Address, "an IPv4 address")
_ipv6 = _through(ipaddress.IPv6Address, "an IPv6 address")


def _checked(check: Callable[[str, str], object]) -> Callable[[str, str], str]:
    """The text itself, once ``check`` accepted it."""

    def parse(name: str, text: str) -> str:
        check(name, text)
        return text

    return parse


def _netmask(name: str, text: str) -> ipaddress.IPv4Address:
    mask: ipaddress.IPv4Address = _ipv4(name, text)
    if prefix_length(mask) is None:
        raise BadPacketError(f"{name}: not a contiguous netmask: {shown(name, text)}")
    return mask


def _hex_of(min_size: int, max_size: int) -> Callable[[str, str], bytes]:
    def parse(name: str, text: str) -> bytes:
        if len(text) % 2 or not _HEX.fullmatch(text):
            raise BadPacketError(f"{name}: not hexadecimal: {shown(name, text)}")
        data = bytes.fromhex(text)
        if not min_size <= len(data) <= max_size:
            # openconnect aborts on a Session-ID that is not 32 bytes (§4.3).
            want = str(min_size) if min_size == max_size else f"{min_size}..{max_size}"
            raise BadPacketError(f"{name}: {len(data)} bytes, expected {want}")
        return data

    return parse


def _master_secret(name: str, text: str) -> bytes:
    # ocserv decodes the first 96 hex digits and ignores the rest (§4.1)
    digits = 2 * MASTER_SECRET_SIZE
    if len(text) < digits:
        raise BadPacketError(f"{name}: fewer than {digits} hex digits")
    if not _HEX.fullmatch(text[:digits]):
        raise BadPacketError(f"{name}: not hexadecimal")
    return bytes.fromhex(text[:digits])


def _cipher(name: str, text: str) -> str:
    if not text:
        raise BadPacketError(f"{name}: empty cipher name")
    return text


def _cipher_list(name: str, text: str) -> tuple[str, ...] | None:
    # ocserv splits on ':' and skips empty tokens (§6).
    names = tuple(part.strip(" \t") for part in text.split(":") if part.strip(" \t"))
    return names or None


def _text(name: str, text: str) -> str:
    return text


def _join(names: tuple[str, ...] | None) -> str:
    return ":".join(names or ())


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


# -- the kinds ------------------------------------------------------------------------

UINT: Final = HeaderKind[int]("uint", _uint, str)
SECONDS: Final = HeaderKind[int | None]("seconds", _seconds, str)
#: MTUs and ports: 1..65535
UINT16: Final = HeaderKind[int]("uint16", _uint_in(1, 65535), str)

BOOL: Final = HeaderKind[bool]("bool", _bool, _bool_text)
#: a capability flag (tables send it only when true)
FLAG: Final = HeaderKind[bool]("flag", _flag, _bool_text)
TEXT: Final = HeaderKind[str]("text", _text, str)
IP_ADDRESS: Final = HeaderKind[IPAddress](
    "ip", _through(ipaddress.ip_address, "an IP address"), str
)
NETWORK: Final = HeaderKind[IPNetwork]("network", _through(_network, "a network"), _network_text)
IPV4_NETMASK: Final = HeaderKind[ipaddress.IPv4Address]("netmask", _netmask, str)
IPV6_INTERFACE: Final = HeaderKind[ipaddress.IPv6Interface](
    "ipv6_interface",
    _through(ipaddress.IPv6Interface, "an IPv6 address/prefix"),
    lambda iface: iface.with_prefixlen,
)
IPV4_ADDRESS: Final = HeaderKind[ipaddress.IPv4Address]("ipv4", _ipv4, str)
IPV6_ADDRESS: Final = HeaderKind[ipaddress.IPv6Address]("ipv6", _ipv6, str)
#: an address kept as the text the peer sent, once checked
IPV4_TEXT: Final = HeaderKind[str]("ipv4_text", _checked(_ipv4), str)
IPV6_TEXT: Final = HeaderKind[str]("ipv6_text", _checked(_ipv6), str)
SESSION_ID: Final = HeaderKind[bytes](
    "session_id", _hex_of(SESSION_ID_SIZE, SESSION_ID_SIZE), bytes.hex
)
APP_ID: Final = HeaderKind[bytes]("app_id", _hex_of(1, SESSION_ID_SIZE), bytes.hex)
MASTER_SECRET: Final = HeaderKind[bytes]("master_secret", _master_secret, lambda b: b.hex().upper())
CIPHER: Final = HeaderKind[str]("cipher", _cipher, str)
CIPHER_LIST: Final = HeaderKind[tuple[str, ...] | None]("cipher_list", _cipher_list, _join)

#: every kind, for tests that walk them all
KINDS: Final[tuple[HeaderKind[Any], ...]] = (
    UINT,
    SECONDS,
    UINT16,
    BOOL,
    FLAG,
    TEXT,
    IP_ADDRESS,
    NETWORK,
    IPV4_NETMASK,
    IPV6_INTERFACE,
    IPV4_ADDRESS,
    IPV6_ADDRESS,
    IPV4_TEXT,
    IPV6_TEXT,
    SESSION_ID,
    APP_ID,
    MASTER_SECRET,
    CIPHER,
    CIPHER_LIST,
)
