"""Datagram toxics, pure and deterministic: virtual ``now`` and a seeded rng.

Each test reads as a conversation with a :class:`DatagramChain`: datagrams in at a
time, what leaves and when.  The contract (loadgen/faultproxy/datagram/base.py) is
checked item by item: per-packet toxicity, order kept, nothing lost unless dropping
is the toxic's job, release on removal, bounded holding.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.faultproxy.chain import DataDropped, DatagramChain, DataHeld
from loadgen.faultproxy.datagram import DATAGRAM_TOXICS, check_datagram_toxic
from loadgen.faultproxy.datagram.base import MAX_HELD
from loadgen.faultproxy.datagram.hello_delay import is_handshake_datagram
from loadgen.faultproxy.model import ApiError, ToxicSpec

# DTLS-shaped datagrams (protocol.md §7.1 record layer: type | version | epoch | seq | len)
HELLO = bytes.fromhex("16 fefd 0000 000000000000 0004") + b"\x01\x00\x00\x00"
CCS = bytes.fromhex("14 fefd 0000 000000000001 0001 01")
DATA = bytes.fromhex("17 fefd 0001 000000000000 0003") + b"abc"
ALERT = bytes.fromhex("15 fefd 0001 000000000001 0002 0228")


def spec(type_: str, name: str | None = None, toxicity: float = 1.0, **attrs: float) -> ToxicSpec:
    return check_datagram_toxic(
        ToxicSpec(
            name=name or f"{type_}_upstream",
            type=type_,
            stream="upstream",
            toxicity=toxicity,
            attributes=attrs,
        )
    )


def chain(*specs: ToxicSpec, seed: int = 1) -> DatagramChain:
    return DatagramChain(specs, rng=random.Random(seed))


def numbered(n: int) -> list[bytes]:
    return [b"%d" % i for i in range(1, n + 1)]


# -- the type registry and attribute checks -------------------------------------------


def test_registry_holds_exactly_the_documented_types() -> None:
    assert set(DATAGRAM_TOXICS) == {
        "blackhole",
        "loss",
        "latency",
        "hello_delay",
        "duplicate",
        "reorder",
        "rate",
    }


@pytest.mark.parametrize(
    ("type_", "defaults"),
    [
        ("blackhole", {}),
        ("loss", {"percentage": 100}),
        ("latency", {"latency": 0, "jitter": 0}),
        ("hello_delay", {"delay": 1000}),
        ("duplicate", {"percentage": 100, "copies": 1}),
        ("reorder", {"gap": 1, "delay": 100}),
        ("rate", {"packets_per_second": 0, "bytes_per_second": 0}),
    ],
)
def test_defaults_are_filled_in(type_: str, defaults: dict[str, float]) -> None:
    filled = check_datagram_toxic(ToxicSpec(name="t", type=type_))
    assert dict(filled.attributes) == defaults
    assert filled.name == "t" and filled.type == type_


def test_given_attributes_are_kept_and_integers_normalised() -> None:
    filled = check_datagram_toxic(
        ToxicSpec(name="t", type="reorder", attributes={"gap": 3.0, "delay": 2.5})
    )
    assert filled.attributes == {"gap": 3, "delay": 2.5}
    assert isinstance(filled.attributes["gap"], int)


@pytest.mark.parametrize(
    ("type_", "attrs", "fragment"),
    [
        ("nosuch", {}, "unknown type nosuch"),
        ("slicer", {}, "unknown type slicer"),  # a TCP-only toxic
        ("blackhole", {"latency": 1}, "unknown attribute latency"),
        ("loss", {"percent": 5}, "unknown attribute percent"),
        ("loss", {"percentage": 100.5}, "between 0 and 100"),
        ("loss", {"percentage": -1}, "between 0 and 100"),
        ("latency", {"latency": -1}, "between 0 and 600000"),
        ("latency", {"jitter": 700_000}, "between 0 and 600000"),
        ("hello_delay", {"delay": -5}, "between"),
        ("duplicate", {"copies": 0}, "between 1 and 10"),
        ("duplicate", {"copies": 1.5}, "must be an integer"),
        ("reorder", {"gap": 0}, "between 1 and 1000"),
        ("reorder", {"delay": 0}, "between 1 and 600000"),
        ("rate", {"packets_per_second": -1}, "between"),
        ("rate", {"bytes_per_second": 1e11}, "between"),
    ],
)
def test_bad_toxics_are_400(type_: str, attrs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        check_datagram_toxic(ToxicSpec(name="t", type=type_, attributes=attrs))
    assert info.value.status == 400
    assert fragment in info.value.message


# -- blackhole, loss and per-packet toxicity --------------------------------------------


def test_blackhole_drops_everything_and_says_so() -> None:
    c = chain(spec("blackhole"))
    for d in numbered(5):
        c.receive(d, 0.0)
    assert c.datagrams_to_send(0.0) == []
    assert c.get_timer() is None
    events = c.events()
    assert events == [DataDropped(toxic_type="blackhole", size_bytes=1)] * 5
    assert c.events() == []  # drained


def test_toxicity_is_drawn_per_datagram_with_the_seeded_rng() -> None:
    sent = numbered(2000)

    def run(seed: int) -> list[bytes]:
        c = chain(spec("blackhole", toxicity=0.25), seed=seed)
        out = []
        for i, d in enumerate(sent):
            c.receive(d, i * 0.001)
            out += c.datagrams_to_send(i * 0.001)
        return out

    out = run(7)
    assert out == run(7)  # same seed, same trace
    assert out != run(8)
    assert 0.70 * len(sent) < len(out) < 0.80 * len(sent)  # about 75 % not selected
    assert out == [d for d in sent if d in set(out)]  # survivors in order, untouched
    # the expected trace, drawn independently: selected when random() < toxicity
    rng = random.Random(7)
    assert out == [d for d in sent if not rng.random() < 0.25]


def test_toxicity_zero_and_one_draw_nothing() -> None:
    rng = random.Random(3)
    before = rng.getstate()
    c = DatagramChain([spec("blackhole", "a", toxicity=0.0), spec("latency", "b")], rng=rng)
    c.receive(b"x", 0.0)
    assert c.datagrams_to_send(0.0) == [b"x"]
    assert rng.getstate() == before


@pytest.mark.parametrize(("percentage", "expected"), [(0, 0), (100, 1000)])
def test_loss_extremes(percentage: float, expected: int) -> None:
    c = chain(spec("loss", percentage=percentage))
    for d in numbered(1000):
        c.receive(d, 0.0)
    assert 1000 - len(c.datagrams_to_send(0.0)) == expected
    assert len(c.events()) == expected


def test_loss_percentage_with_a_seeded_rng() -> None:
    c = chain(spec("loss", percentage=30), seed=11)
    sent = numbered(5000)
    for d in sent:
        c.receive(d, 0.0)
    out = c.datagrams_to_send(0.0)
    rng = random.Random(11)
    assert out == [d for d in sent if not rng.random() < 0.30]  # exactly the draws
    assert 0.27 * 5000 < 5000 - len(out) < 0.33 * 5000


# -- latency ---------------------------------------------------------------------------


def test_latency_holds_each_datagram_exactly_and_in_order() -> None:
    c = chain(spec("latency", latency=250))
    c.receive(b"a", 0.0)
    c.receive(b"b", 0.1)
    assert c.datagrams_to_send(0.1) == []
    assert c.get_timer() == pytest.approx(0.25)
    assert c.datagrams_to_send(0.2499) == []
    assert c.datagrams_to_send(0.25) == [b"a"]
    assert c.get_timer() == pytest.approx(0.35)
    assert c.datagrams_to_send(0.35) == [b"b"]
    assert c.get_timer() is None
    events = c.events()
    assert all(isinstance(e, DataHeld) and e.toxic_type == "latency" for e in events)
    assert [e.delay_s for e in events if isinstance(e, DataHeld)] == pytest.approx([0.25, 0.25])


def test_latency_jitter_varies_the_delay_but_never_reorders() -> None:
    c = chain(spec("latency", latency=100, jitter=90), seed=5)
    sent = numbered(200)
    out: list[tuple[float, bytes]] = []
    for i, d in enumerate([*sent, b"end"]):
        t = i * 0.005
        # an event loop: every timer due before the next arrival fires first
        while (timer := c.get_timer()) is not None and timer <= t:
            out += [(timer, x) for x in c.datagrams_to_send(timer)]
        if d != b"end":
            c.receive(d, t)
    while (timer := c.get_timer()) is not None:
        out += [(timer, x) for x in c.datagrams_to_send(timer)]
    assert [d for _, d in out] == sent
    delays = [when - i * 0.005 for i, (when, _) in enumerate(out)]
    assert min(delays) >= 0.010 - 1e-9
    assert max(delays) <= 0.190 + 1e-9
    assert max(delays) - min(delays) > 0.05  # the jitter shows


def test_zero_latency_passes_at_once_without_a_hold() -> None:
    c = chain(spec("latency"))
    c.receive(b"a", 1.0)
    assert c.datagrams_to_send(1.0) == [b"a"]
    assert c.events() == []


# -- hello_delay ------------------------------------------------------------------------


def test_handshake_datagrams_are_recognised_by_their_first_record() -> None:
    assert is_handshake_datagram(HELLO)
    assert is_handshake_datagram(CCS + DATA)  # CCS + Finished flight starts with 20
    assert not is_handshake_datagram(DATA)
    assert not is_handshake_datagram(DATA + HELLO)  # only the first record counts
    assert not is_handshake_datagram(ALERT)
    assert not is_handshake_datagram(b"")


def test_hello_delay_holds_22_and_20_in_order_and_lets_23_through() -> None:
    c = chain(spec("hello_delay", delay=2000))
    c.receive(HELLO, 0.0)
    c.receive(DATA, 0.0)
    c.receive(CCS, 0.5)
    c.receive(ALERT, 0.5)
    c.receive(b"", 0.5)
    assert c.datagrams_to_send(0.5) == [DATA, ALERT, b""]  # data and others at once
    assert c.get_timer() == pytest.approx(2.0)
    assert c.datagrams_to_send(2.0) == [HELLO]
    assert c.datagrams_to_send(2.4) == []
    assert c.datagrams_to_send(2.5) == [CCS]
    assert [type(e) for e in c.events()] == [DataHeld, DataHeld]


def test_hello_delay_retransmissions_keep_their_order() -> None:
    c = chain(spec("hello_delay", delay=1000))
    flight = [HELLO + b"%d" % i for i in range(5)]
    for i, d in enumerate(flight):
        c.receive(d, i * 0.1)
    got: list[bytes] = []
    while (timer := c.get_timer()) is not None:
        got += c.datagrams_to_send(timer)
    assert got == flight


# -- duplicate -------------------------------------------------------------------------


def test_duplicate_sends_copies_back_to_back() -> None:
    c = chain(spec("duplicate", copies=2))
    c.receive(b"a", 0.0)
    c.receive(b"b", 0.0)
    assert c.datagrams_to_send(0.0) == [b"a", b"a", b"a", b"b", b"b", b"b"]


def test_duplicate_percentage_with_a_seeded_rng() -> None:
    c = chain(spec("duplicate", percentage=40), seed=2)
    sent = numbered(1000)
    for d in sent:
        c.receive(d, 0.0)
    counts = Counter(c.datagrams_to_send(0.0))
    rng = random.Random(2)
    assert [counts[d] for d in sent] == [2 if rng.random() < 0.4 else 1 for _ in sent]


# -- reorder ---------------------------------------------------------------------------


def test_reorder_gap_one_swaps_pairs() -> None:
    c = chain(spec("reorder"))
    for d in numbered(4):
        c.receive(d, 0.0)
    assert c.datagrams_to_send(0.0) == [b"2", b"1", b"4", b"3"]


def test_reorder_gap_two() -> None:
    c = chain(spec("reorder", gap=2))
    for d in numbered(6):
        c.receive(d, 0.0)
    assert c.datagrams_to_send(0.0) == [b"2", b"3", b"1", b"5", b"6", b"4"]


def test_reorder_releases_on_its_delay_when_the_flow_goes_quiet() -> None:
    c = chain(spec("reorder", gap=3, delay=50))
    c.receive(b"1", 0.0)
    c.receive(b"2", 0.01)
    assert c.datagrams_to_send(0.01) == [b"2"]
    assert c.get_timer() == pytest.approx(0.05)
    assert c.datagrams_to_send(0.05) == [b"1"]
    assert c.get_timer() is None


def test_reorder_counts_unselected_datagrams_towards_the_gap() -> None:
    c = DatagramChain([spec("reorder", toxicity=0.5)], rng=random.Random(4))
    sent = numbered(400)
    out: list[bytes] = []
    for d in sent:
        c.receive(d, 0.0)
        out += c.datagrams_to_send(0.0)
    out += c.datagrams_to_send(1.0)
    assert sorted(out) == sorted(sent)  # nothing lost
    moved = sum(1 for a, b in zip(out, sent, strict=True) if a != b)
    assert 0 < moved < len(sent)
    # a held datagram is never more than one place late (gap 1)
    for i, d in enumerate(out):
        assert abs(i - sent.index(d)) <= 1


# -- rate ------------------------------------------------------------------------------


def test_rate_packets_is_a_token_bucket_policer() -> None:
    c = chain(spec("rate", packets_per_second=10))
    for d in numbered(20):
        c.receive(d, 0.0)
    assert c.datagrams_to_send(0.0) == numbered(10)  # one second's worth of burst
    assert len(c.events()) == 10
    for d in numbered(10):
        c.receive(d, 0.5)
    assert len(c.datagrams_to_send(0.5)) == 5  # refilled at 10/s
    c.receive(b"x", 0.55)
    assert c.datagrams_to_send(0.55) == []
    c.receive(b"y", 0.6)
    assert c.datagrams_to_send(0.6) == [b"y"]


def test_rate_bytes_allows_debt_so_the_long_run_rate_is_the_limit() -> None:
    c = chain(spec("rate", bytes_per_second=1000))
    big = b"z" * 1500  # bigger than the bucket: still passes when the bucket is full
    passed = 0
    for step in range(100):  # 10 s, a datagram every 0.1 s
        c.receive(big, step * 0.1)
        passed += len(c.datagrams_to_send(step * 0.1))
    assert passed * 1500 == pytest.approx(10_000 + 1000, abs=1500)


def test_rate_zero_means_no_limit() -> None:
    c = chain(spec("rate"))
    for d in numbered(1000):
        c.receive(d, 0.0)
    assert len(c.datagrams_to_send(0.0)) == 1000


# -- the contract: release on removal, updates, chains, bounds -------------------------


def test_removed_latency_releases_what_it_holds_in_order() -> None:
    c = chain(spec("latency", latency=10_000))
    for d in numbered(3):
        c.receive(d, 0.0)
    assert c.datagrams_to_send(1.0) == []
    c.remove("latency_upstream", 1.0)
    assert c.datagrams_to_send(1.0) == numbered(3)
    assert c.get_timer() is None and c.names == []


def test_removed_toxic_releases_into_the_toxics_after_it() -> None:
    c = chain(spec("hello_delay", "h", delay=5000), spec("latency", "l", latency=100))
    c.receive(HELLO, 0.0)
    c.remove("h", 1.0)
    assert c.datagrams_to_send(1.0) == []  # now in the latency toxic
    assert c.datagrams_to_send(1.1) == [HELLO]


def test_removed_reorder_releases_its_held_datagram() -> None:
    c = chain(spec("reorder", delay=1000))
    c.receive(b"1", 0.0)
    c.remove("reorder_upstream", 0.2)
    assert c.datagrams_to_send(0.2) == [b"1"]


def test_update_keeps_held_datagrams_and_order() -> None:
    c = chain(spec("latency", latency=1000))
    c.receive(b"a", 0.0)
    c.update(spec("latency", latency=10), 0.0)
    c.receive(b"b", 0.1)  # due at 0.11 but must not overtake a (due at 1.0)
    assert c.datagrams_to_send(0.5) == []
    assert c.datagrams_to_send(1.0) == [b"a", b"b"]
    c.receive(b"c", 2.0)
    assert c.datagrams_to_send(2.01) == [b"c"]


def test_added_toxic_applies_to_the_next_datagram() -> None:
    c = chain()
    c.receive(b"a", 0.0)
    c.add(spec("blackhole"), 0.0)
    c.receive(b"b", 0.0)
    assert c.datagrams_to_send(0.0) == [b"a"]


def test_chain_runs_toxics_in_order() -> None:
    # duplicate then loss 100 %: both copies dropped, two drops counted
    c = chain(spec("duplicate", "d"), spec("loss", "l"))
    c.receive(b"a", 0.0)
    assert c.datagrams_to_send(0.0) == []
    assert c.events() == [DataDropped(toxic_type="loss", size_bytes=1)] * 2


def test_holding_is_bounded() -> None:
    c = chain(spec("latency", latency=1000))
    for _ in range(MAX_HELD + 10):
        c.receive(b"x", 0.0)
    assert c.held_count == MAX_HELD
    drops = [e for e in c.events() if isinstance(e, DataDropped)]
    assert len(drops) == 10
    assert len(c.datagrams_to_send(1.0)) == MAX_HELD


# -- property: any bytes, any times, any toxic: no exception, nothing lost -------------

_NON_DROPPING = ["latency", "hello_delay", "reorder"]


@settings(max_examples=200, deadline=None)
@given(
    type_=st.sampled_from(sorted(DATAGRAM_TOXICS)),
    datagrams=st.lists(st.binary(max_size=64), max_size=40),
    gaps=st.lists(st.floats(min_value=0, max_value=0.3), min_size=40, max_size=40),
    toxicity=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**32),
)
def test_any_datagrams_through_any_toxic(
    type_: str, datagrams: list[bytes], gaps: list[float], toxicity: float, seed: int
) -> None:
    attrs: dict[str, float] = {"latency": 100.0, "jitter": 50.0} if type_ == "latency" else {}
    c = chain(spec(type_, None, toxicity, **attrs), seed=seed)
    out: list[bytes] = []
    now = 0.0
    for d, gap in zip(datagrams, gaps, strict=False):
        now += gap
        c.receive(d, now)
        out += c.datagrams_to_send(now)
        if (timer := c.get_timer()) is not None:
            assert timer > now  # no busy loop: what is due has left
    if type_ in _NON_DROPPING:
        c.remove(c.names[0], now)
        out += c.datagrams_to_send(now)
        assert Counter(out) == Counter(datagrams)  # contract item 4
    if type_ == "latency" and toxicity == 1.0:
        assert out == datagrams  # contract item 3
    if type_ == "hello_delay" and toxicity == 1.0:
        handshakes = [d for d in datagrams if is_handshake_datagram(d)]
        assert [d for d in out if is_handshake_datagram(d)] == handshakes


# -- held bytes are kept as datagrams move: they must match a recount -------------------

_DATAGRAM_OPS = st.lists(
    st.tuples(
        st.sampled_from(["datagram", "handshake", "timer", "update", "remove_first"]),
        st.integers(1, 1500),
        st.floats(0, 0.2),
    ),
    max_size=40,
)


def _recount(c: DatagramChain) -> int:
    toxics = [s.toxic for s in c._stages]
    inside = sum(len(d) for t in toxics for d in [*t._out, *(d for _, d in t._queue)])
    return inside + sum(len(d) for d in c._out)


@settings(max_examples=150, deadline=None)
@given(ops=_DATAGRAM_OPS, seed=st.integers(0, 2**32), toxicity=st.sampled_from([0.5, 1.0]))
def test_held_bytes_match_a_recount(
    ops: list[tuple[str, int, float]], seed: int, toxicity: float
) -> None:
    specs = [
        spec("duplicate", "dup", toxicity, percentage=50, copies=2),
        spec("latency", "lat", toxicity, latency=50, jitter=40),
        spec("reorder", "reo", toxicity, gap=2, delay=30),
        spec("hello_delay", "hel", toxicity, delay=100),
        spec("rate", "rat", toxicity, packets_per_second=50),
        spec("loss", "los", toxicity, percentage=10),
    ]
    c = chain(*specs, seed=seed)
    now = 0.0
    for op, size, dt in ops:
        now += dt
        if op in ("datagram", "handshake"):
            c.receive((HELLO[:1] if op == "handshake" else b"\x17") + b"x" * (size - 1), now)
        elif op == "timer":
            c.datagrams_to_send(now)
        elif op == "update":
            if "lat" in c.names:
                c.update(spec("latency", "lat", toxicity, latency=size % 100), now)
        elif c.names:
            c.remove(c.names[0], now)
        assert c.held_bytes == _recount(c), (op, now)


def test_stats_for_sees_what_events_see() -> None:
    """The proxies take drops and holds through ``stats_for``; tests read ``events()``:
    both are fed by the same calls of the toxics."""
    seen: list[DataDropped | DataHeld] = []

    class Stats:
        def __init__(self, toxic_type: str) -> None:
            self.toxic_type = toxic_type

        def dropped(self, size_bytes: int) -> None:
            seen.append(DataDropped(toxic_type=self.toxic_type, size_bytes=size_bytes))

        def held(self, delay_s: float) -> None:
            seen.append(DataHeld(toxic_type=self.toxic_type, delay_s=delay_s))

    specs = [spec("latency", "l", 0.7, latency=20, jitter=10), spec("loss", "x", percentage=30)]
    by_events = DatagramChain(specs, rng=random.Random(9))
    by_stats = DatagramChain(specs, rng=random.Random(9), stats_for=Stats)
    events: list[DataDropped | DataHeld] = []
    for i, d in enumerate(numbered(300)):
        for c in (by_events, by_stats):
            c.receive(d, i * 0.01)
            c.datagrams_to_send(i * 0.01)
        events += by_events.events()
    assert by_stats.events() == []
    assert seen == events and len({type(e) for e in events}) == 2
