"""Hypothesis: every ``*_untrusted`` parser and ``receive_datagram`` on both roles.

Any bytes in -> a result or BadPacketError from parsers; never any exception from
``receive_datagram`` (undecodable datagrams are counted, not raised).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS1_2,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    ConnectionTerminated,
    DtlsConnection,
    HandshakeTimedOut,
    State,
    parse_client_hello_datagram_untrusted,
)
from loadgen.proto.dtls import handshake as hs
from loadgen.proto.dtls.records import encode_record, parse_records_untrusted
from loadgen.proto.errors import BadPacketError
from tests.proto.dtls.dtls_testlib import events, handshake, make_pair, make_session

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARSERS: list[Callable[[bytes], Any]] = [
    parse_records_untrusted,
    hs.parse_handshake_fragments_untrusted,
    hs.parse_client_hello_untrusted,
    hs.parse_server_hello_untrusted,
    hs.parse_hello_verify_request_untrusted,
    hs.parse_finished_untrusted,
    parse_client_hello_datagram_untrusted,
    lambda data: hs.parse_change_cipher_spec_untrusted(DTLS0_9, data),
    lambda data: hs.parse_change_cipher_spec_untrusted(DTLS1_2, data),
]

SUITES = [
    (DTLS_CIPHERS_HEADER, "AES128-SHA"),
    (DTLS_CIPHERS_HEADER, "OC-DTLS1_2-AES256-GCM"),
    (DTLS12_CIPHERS_HEADER, "AES128-SHA"),
]


def _records(
    content_types: list[int] | None = None,
) -> st.SearchStrategy[bytes]:
    """Well-framed records with plausible headers and arbitrary bodies."""
    return st.builds(
        encode_record,
        st.sampled_from(content_types or [20, 21, 22, 23, 24]),
        st.sampled_from([DTLS0_9, 0xFEFF, DTLS1_2, 0x0303]),
        st.sampled_from([0, 1, 2]),
        st.integers(0, 2**48 - 1) | st.integers(0, 8),
        st.binary(max_size=200),
    )


def _handshake_records() -> st.SearchStrategy[bytes]:
    """Epoch-0 handshake records holding arbitrary (possibly fragmented) messages."""
    fragment = st.builds(
        lambda t, length, mseq, off, body: (
            bytes([t])
            + length.to_bytes(3)
            + mseq.to_bytes(2)
            + off.to_bytes(3)
            + len(body).to_bytes(3)
            + body
        ),
        st.sampled_from([0, 1, 2, 3, 20, 99]),
        st.integers(0, 300),
        st.integers(0, 5),
        st.integers(0, 300),
        st.binary(max_size=120),
    )
    return st.builds(
        lambda version, seq, frags: encode_record(22, version, 0, seq, b"".join(frags)),
        st.sampled_from([DTLS0_9, DTLS1_2]),
        st.integers(0, 20),
        st.lists(fragment, min_size=1, max_size=3),
    )


DATAGRAMS = st.one_of(
    st.binary(max_size=300),
    st.lists(_records(), min_size=1, max_size=4).map(b"".join),
    _handshake_records(),
)


@pytest.mark.parametrize("parser", PARSERS)
@FUZZ
@given(data=st.binary(max_size=400))
def test_parsers_raise_only_bad_packet_error(parser: Callable[[bytes], Any], data: bytes) -> None:
    with contextlib.suppress(BadPacketError):
        parser(data)


@FUZZ
@given(data=_handshake_records())
def test_handshake_parsers_on_framed_records(data: bytes) -> None:
    reassembler = hs.Reassembler()
    try:
        for record in parse_records_untrusted(data):
            for frag in hs.parse_handshake_fragments_untrusted(record.fragment):
                body = reassembler.add(frag)
                if body is not None:
                    for parser in PARSERS[2:6]:
                        with contextlib.suppress(BadPacketError):
                            parser(body)
    except BadPacketError:
        pass


@FUZZ
@given(body=st.binary(max_size=200))
def test_client_hello_prefix_mutations(body: bytes) -> None:
    """Valid ClientHello with a fuzzed tail: decoding still never escapes."""
    hello = hs.ClientHello(
        client_version=DTLS1_2, random=b"r" * 32, session_id=b"s" * 32, cipher_suites=(0x9D,)
    ).encode()
    try:
        parsed = hs.parse_client_hello_untrusted(hello[:40] + body)
    except BadPacketError:
        return
    assert parsed.random == b"r" * 32


def _mutations(base: list[bytes]) -> st.SearchStrategy[bytes]:
    """Real datagrams, bit-flipped, truncated, spliced or repeated."""
    pick = st.sampled_from(base)
    flip = st.builds(
        lambda d, i, bit: (
            d[: i % len(d)] + bytes([d[i % len(d)] ^ (1 << bit)]) + d[i % len(d) + 1 :]
        ),
        pick,
        st.integers(0, 10_000),
        st.integers(0, 7),
    )
    cut = st.builds(lambda d, n: d[: n % (len(d) + 1)], pick, st.integers(0, 10_000))
    splice = st.builds(
        lambda a, b, n: a[: n % (len(a) + 1)] + b, pick, pick, st.integers(0, 10_000)
    )
    return st.one_of(pick, flip, cut, splice, DATAGRAMS)


def _conversation(names: tuple[str, str], hello_verify: bool) -> list[bytes]:
    """Every datagram of a complete handshake plus some data, both directions."""
    client, server = make_pair(make_session(*names), hello_verify=hello_verify)
    client.connect(0.0)
    seen: list[bytes] = []
    for _ in range(6):
        for a, b in ((client, server), (server, client)):
            for datagram in a.datagrams_to_send(0.0):
                seen.append(datagram)
                b.receive_datagram(datagram, 0.0)
    client.send_application_data(b"\x00data")
    server.send_application_data(b"\x03dpd")
    seen += client.datagrams_to_send(0.0) + server.datagrams_to_send(0.0)
    return seen


def _fresh(kind: str, names: tuple[str, str], hello_verify: bool) -> DtlsConnection:
    """A connection in a given state, built with the same seeds as ``_conversation``, so
    the unmutated datagrams of that conversation are exactly what it expects."""
    session = make_session(*names)
    if kind.startswith("established"):
        client, server = handshake(session, hello_verify=hello_verify)
        return client if kind.endswith("client") else server
    client, server = make_pair(session, hello_verify=hello_verify)
    if kind == "server":
        return server
    client.connect(0.0)
    for _ in range(4):
        to_server = client.datagrams_to_send(0.0)
        if kind == "client":
            return client
        for datagram in to_server:
            server.receive_datagram(datagram, 0.0)
        to_client = server.datagrams_to_send(0.0)
        if kind == "server_waiting_finished" and server.state is State.WAIT_CLIENT_FINISHED:
            return server
        if kind == "client_waiting_finished" and len(to_client) == 3:
            client.receive_datagram(to_client[0], 0.0)  # the ServerHello only
            assert client.state is State.WAIT_SERVER_FINISHED
            return client
        for datagram in to_client:
            client.receive_datagram(datagram, 0.0)
    raise AssertionError(kind)


KINDS = [
    "client",
    "client_waiting_finished",
    "server",
    "server_waiting_finished",
    "established_client",
    "established_server",
]


@pytest.mark.parametrize("names", SUITES, ids=[f"{h[2:8]}-{n}" for h, n in SUITES])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hello_verify", [False, True], ids=["plain", "hvr"])
def test_receive_datagram_never_raises(
    names: tuple[str, str], kind: str, hello_verify: bool
) -> None:
    base = _conversation(names, hello_verify)

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(datagrams=st.lists(_mutations(base), min_size=1, max_size=6))
    def run(datagrams: list[bytes]) -> None:
        conn = _fresh(kind, names, hello_verify)
        now = 0.0
        for datagram in datagrams:
            now += 0.25
            conn.receive_datagram(datagram, now)
            conn.datagrams_to_send(now)
            timer = conn.get_timer()
            if timer is not None:
                conn.handle_timer(timer)
        evs = events(conn)
        terminal = [e for e in evs if isinstance(e, ConnectionTerminated | HandshakeTimedOut)]
        assert len(terminal) <= 1
        if terminal:
            assert conn.state is State.CLOSED and evs[-1] is terminal[0]
        if conn.state is State.CLOSED:
            conn.receive_datagram(base[0], now)  # a closed connection stays closed and quiet
            assert events(conn) == [] and conn.datagrams_to_send(now) == []

    run()
