"""Hypothesis over the datagram input of the sans-IO DTLS server (protocol.md §7.1):
whatever arrives, from a known or an unknown address, is counted, never raised."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS1_2,
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    AssociationDown,
    DropReason,
    ServerEvent,
    State,
    screen_client_hello_untrusted,
)
from loadgen.proto.dtls.association import Address
from loadgen.proto.dtls.records import encode_record
from tests.proto.dtls.dtls_testlib import make_session
from tests.proto.dtls.server_lab import NEW_PEER_REASONS, Lab, Target, client_hello_bytes

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN = make_session(DTLS12_CIPHERS_HEADER, "AES128-GCM-SHA256", seed=30)
STRANGER = make_session(DTLS_CIPHERS_HEADER, "AES256-SHA", seed=31)
PEERS: list[Address] = [("127.0.0.1", 40000), ("127.0.0.1", 40001), ("127.0.0.2", 40000)]
UNKNOWN_PEER: Address = ("203.0.113.9", 5555)


def _flipped(data: bytes) -> st.SearchStrategy[bytes]:
    def apply(flips: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for index, bit in flips:
            out[index] ^= 1 << bit
        return bytes(out)

    return st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)), max_size=4).map(
        apply
    )


#: well-framed records with plausible headers and arbitrary bodies
_RECORDS = st.builds(
    encode_record,
    st.sampled_from([20, 21, 22, 23, 24]),
    st.sampled_from([DTLS0_9, DTLS1_2, 0xFEFF, 0x0303]),
    st.integers(0, 2),
    st.integers(0, 5),
    st.binary(max_size=200),
)


def _established() -> tuple[Lab, bytes]:
    """A lab with KNOWN up at PEERS[0], and a DPD-REQ record its client would send next."""
    lab = Lab(dpd_s=1.0)
    client, _ = lab.up(KNOWN, PEERS[0], seed=32)
    client.conn.send_application_data(cstp.encode_dtls_payload(cstp.PacketType.DPD_REQ, b"p"))
    (record,) = client.conn.datagrams_to_send(lab.now)
    return lab, record


_HELLO = client_hello_bytes(KNOWN, random_=b"\x07" * 32)
_RECORD = _established()[1]  # deterministic: seeded randomness


def _check_event_order(events: list[ServerEvent[Target]]) -> None:
    """Each association's AssociationDown comes once, as its last event."""
    downs = Counter(id(e.association) for e in events if isinstance(e, AssociationDown))
    assert all(n == 1 for n in downs.values())
    ended: set[int] = set()
    for event in events:
        assert id(event.association) not in ended, event
        if isinstance(event, AssociationDown):
            ended.add(id(event.association))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(PEERS),
            st.one_of(st.binary(max_size=300), _flipped(_HELLO), _flipped(_RECORD), _RECORDS),
            st.floats(0.0, 2.0),
        ),
        max_size=30,
    )
)
def test_any_datagrams_from_any_peer_are_counted_never_raised(
    traffic: list[tuple[Address, bytes, float]],
) -> None:
    lab, _ = _established()
    stats = lab.stats
    before = stats.datagrams_in
    for peer, datagram, step in traffic:
        lab.now += step
        lab.send(peer, datagram)  # must not raise
        lab.server.handle_timer(lab.now)
        lab.collect()
        assert lab.server.association_count <= 1  # one per session id
    assert stats.datagrams_in == before + len(traffic)
    assert stats.internal_errors == 0
    assert stats.associations_active == lab.server.association_count
    events = lab.take()
    _check_event_order(events)
    downs = [e for e in events if isinstance(e, AssociationDown)]
    assert stats.associations_total - stats.associations_active == len(downs)
    assert {str(e.reason) for e in downs} <= {
        "replaced",
        "dpd",
        "timeout",
        "closed",
        "alert",
        "handshake_failed",
    }
    assert lab.server.timer_entries <= 2 * stats.associations_total + 1


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        _RECORDS,
        _flipped(client_hello_bytes(STRANGER, random_=b"\x03" * 32)),
        _flipped(_RECORD),
    )
)
def test_a_datagram_from_an_unknown_address_is_one_drop_and_leaves_nothing(data: bytes) -> None:
    lab = Lab()
    lab.add(KNOWN)
    lab.send(UNKNOWN_PEER, data)
    dropped = {r: n for r, n in lab.stats.dropped.items() if n}
    assert list(dropped.values()) == [1] and set(dropped) <= set(NEW_PEER_REASONS)
    (reason,) = dropped
    screened = screen_client_hello_untrusted(data)
    if isinstance(screened, DropReason):
        assert reason is screened or (reason is DropReason.OVERSIZE and len(data) > 16384)
    else:
        assert reason is DropReason.UNKNOWN_SESSION
    server = lab.server
    assert server.association_count == server.timer_entries == server.handover_entries == 0
    assert lab.take() == [] and lab.wire == []


@FUZZ
@given(_flipped(_HELLO))
def test_a_damaged_hello_for_a_known_session_opens_at_most_one_association(data: bytes) -> None:
    lab = Lab(retransmit_schedule_s=(0.0, 0.5, 1.0))
    lab.add(KNOWN)
    lab.send(UNKNOWN_PEER, data)
    created = lab.stats.associations_total
    drops = sum(lab.stats.dropped[r] for r in NEW_PEER_REASONS)
    assert created + drops == 1 and lab.stats.internal_errors == 0
    lab.advance(5.0)  # a handshake it started ends on the schedule...
    left = lab.server.association_for(KNOWN.session_id)
    if left is not None:
        # ...but a hello the connection dropped (say, a record version of FE FC) leaves
        # the association waiting for a good one, with no timer, as before the split
        assert left.state is State.WAIT_CLIENT_HELLO and lab.server.get_timer() is None
    lab.server.shutdown(lab.now)
    lab.collect()
    events = lab.take()
    _check_event_order(events)
    assert len([e for e in events if isinstance(e, AssociationDown)]) == created
