"""The CONNECT header kinds (protocol.md §4): each (parse, format) pair round trips, writes
only what h11 sends, keeps ocserv's strictness, and raises nothing but BadPacketError."""

from __future__ import annotations

import ipaddress
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.proto import header_codec as kinds
from loadgen.proto.errors import BadPacketError
from loadgen.proto.header_codec import KINDS, HeaderKind, encode_header

word_st = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=16)
text_st = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=30).map(
    lambda s: s.strip(" \t")
)
net_st = st.builds(
    lambda ip, plen: ipaddress.ip_network(
        f"{ip}/{plen % (33 if ip.version == 4 else 129)}", strict=False
    ),
    st.ip_addresses(),
    st.integers(0, 128),
)

#: values of every kind, as the dataclass fields hold them
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "uint": st.integers(0, 9_999_999_999),
    "seconds": st.integers(0, 9_999_999_999),
    "uint16": st.integers(1, 65535),
    "bool": st.booleans(),
    "flag": st.just(True),
    "text": text_st,
    "ip": st.ip_addresses(),
    "network": net_st,
    "netmask": st.integers(0, 32).map(lambda n: ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask),
    "ipv6_interface": st.builds(
        lambda ip, n: ipaddress.IPv6Interface((ip, n)), st.ip_addresses(v=6), st.integers(0, 128)
    ),
    "ipv4": st.ip_addresses(v=4),
    "ipv6": st.ip_addresses(v=6),
    "ipv4_text": st.ip_addresses(v=4).map(str),
    "ipv6_text": st.ip_addresses(v=6).map(str),
    "session_id": st.binary(min_size=32, max_size=32),
    "app_id": st.binary(min_size=1, max_size=32),
    "master_secret": st.binary(min_size=48, max_size=48),
    "cipher": word_st,
    "cipher_list": st.lists(word_st, min_size=1, max_size=5).map(tuple),
}


def test_every_kind_has_values() -> None:
    assert sorted(VALUES) == sorted(kind.name for kind in KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@settings(max_examples=100)
@given(data=st.data())
def test_round_trip(kind: HeaderKind[Any], data: st.DataObject) -> None:
    value = data.draw(VALUES[kind.name])
    text = kind.format(value)
    encode_header("X-Test", text)  # h11 can send it and it survives the trip
    assert kind.parse("X-Test", text) == value


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@settings(max_examples=100)
@given(text=st.text(max_size=100) | st.sampled_from(["", "none", "true", "1", "::", "0/0"]))
def test_fuzz_parse(kind: HeaderKind[Any], text: str) -> None:
    try:
        value = kind.parse("X-Test", text)
    except BadPacketError as exc:
        assert "X-Test" in str(exc)
        return
    # what it accepts, it writes back in a form it reads the same
    if value is not None:
        assert kind.parse("X-Test", kind.format(value)) == value


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (kinds.UINT, "+1"),
        (kinds.UINT, "-1"),
        (kinds.UINT, "9O"),
        (kinds.UINT, "\u0663"),  # an Arabic-Indic digit
        (kinds.UINT, "99999999999"),
        (kinds.UINT16, "0"),
        (kinds.UINT16, "65536"),
        (kinds.BOOL, "yes"),
        (kinds.IPV4_ADDRESS, "10.0.0.256"),
        (kinds.IPV4_NETMASK, "255.0.255.0"),
        (kinds.IPV6_INTERFACE, "fd00::1/129"),
        (kinds.NETWORK, "10.0.0.0/33"),
        (kinds.SESSION_ID, "ab" * 31),
        (kinds.SESSION_ID, "zz" * 32),
        (kinds.APP_ID, ""),
        (kinds.APP_ID, "ab" * 33),
        (kinds.MASTER_SECRET, "ab" * 47),
        (kinds.MASTER_SECRET, "Z" + "b" * 95),
        (kinds.CIPHER, ""),
    ],
)
def test_strictness(kind: HeaderKind[Any], text: str) -> None:
    with pytest.raises(BadPacketError, match="X-Test"):
        kind.parse("X-Test", text)


def test_lenient_where_ocserv_is() -> None:
    assert kinds.SECONDS.parse("X-Test", "None") is None
    assert kinds.BOOL.parse("X-Test", "TRUE") is True
    assert kinds.FLAG.parse("X-Test", "untrue") is True  # ocserv looks for the substring
    assert kinds.FLAG.parse("X-Test", "false") is False
    assert kinds.NETWORK.parse("X-Test", "10.1.2.3/255.0.0.0") == ipaddress.ip_network("10.0.0.0/8")
    assert kinds.NETWORK.format(ipaddress.ip_network("10.0.0.0/8")) == "10.0.0.0/255.0.0.0"
    assert kinds.CIPHER_LIST.parse("X-Test", ": A :: B:") == ("A", "B")
    assert kinds.CIPHER_LIST.parse("X-Test", ":") is None
    secret = bytes(range(48))
    assert kinds.MASTER_SECRET.parse("X-Test", secret.hex() + "ffff") == secret
    assert kinds.MASTER_SECRET.format(secret) == secret.hex().upper()
    assert kinds.SESSION_ID.parse("X-Test", "AB" * 32) == b"\xab" * 32


def test_secrets_never_reach_the_message() -> None:
    secret = "Z" + "1234567890abcdef" * 6
    with pytest.raises(BadPacketError) as info:
        kinds.UINT.parse("X-DTLS-Master-Secret", secret)
    assert "1234567890" not in str(info.value)
    assert kinds.shown("Cookie", "webvpn=tok") == "<elided>"
