"""Descriptor limits, the capacity check and source address pools (no traffic)."""

from __future__ import annotations

import ipaddress
import itertools
import resource
from collections.abc import Iterator

import pytest

from loadgen.engine.limits import (
    DEFAULT_PORTS_PER_SOURCE_IP,
    CapacityError,
    SourceIpPool,
    check_capacity,
    check_source_ports,
    max_sessions_per_process,
    parse_source_ips,
    processes_needed,
    raise_nofile_limit,
)

# -- file descriptors -------------------------------------------------------------


@pytest.fixture
def restore_nofile() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_raise_nofile_limit_raises_soft_to_hard(restore_nofile: tuple[int, int]) -> None:
    _, hard = restore_nofile
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard limit above 256, have {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    soft, new_hard = raise_nofile_limit()
    assert (soft, new_hard) == (hard, hard)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_raise_nofile_limit_is_idempotent(restore_nofile: tuple[int, int]) -> None:
    soft, hard = raise_nofile_limit()
    assert soft <= hard or hard == resource.RLIM_INFINITY
    assert raise_nofile_limit() == (soft, hard)


def test_raise_nofile_limit_never_crashes() -> None:
    calls: list[tuple[int, int]] = []

    def refuse(_kind: int, limits: tuple[int, int]) -> None:
        calls.append(limits)
        raise PermissionError("not allowed")

    assert raise_nofile_limit(getrlimit=lambda _: (1024, 4096), setrlimit=refuse) == (1024, 4096)
    assert calls == [(4096, 4096)]

    def broken(_kind: int) -> tuple[int, int]:
        raise OSError("no")

    assert raise_nofile_limit(getrlimit=broken, setrlimit=refuse) == (-1, -1)


def test_raise_nofile_limit_with_unlimited_hard_tries_finite_targets() -> None:
    inf = resource.RLIM_INFINITY
    state = {"limits": (1024, inf)}
    tried: list[int] = []

    def put(_kind: int, limits: tuple[int, int]) -> None:
        tried.append(limits[0])
        if limits[0] > 65536:  # pretend nr_open is low
            raise ValueError("not allowed to raise maximum limit")
        state["limits"] = limits

    soft, hard = raise_nofile_limit(getrlimit=lambda _: state["limits"], setrlimit=put)
    assert (soft, hard) == (65536, inf)
    assert inf not in tried


# -- capacity ---------------------------------------------------------------------------


def test_per_process_maximum() -> None:
    assert max_sessions_per_process(dtls=True, soft_limit=20_000) == 9968
    assert max_sessions_per_process(dtls=False, soft_limit=20_000) == 19_936
    assert max_sessions_per_process(dtls=True, soft_limit=50, reserve=64) == 0
    assert processes_needed(50_000, dtls=True, soft_limit=20_000) == 6
    assert processes_needed(0, dtls=True, soft_limit=20_000) == 1


def test_capacity_fits() -> None:
    check_capacity(9968, dtls=True, soft_limit=20_000)
    check_capacity(19_936, dtls=False, soft_limit=20_000)
    check_capacity(10**9, dtls=True, soft_limit=-1)  # unlimited or unknown


def test_capacity_error_names_maximum_and_processes() -> None:
    with pytest.raises(CapacityError) as info:
        check_capacity(10_000, dtls=True, soft_limit=20_000)
    msg = str(info.value)
    assert "10000 sessions with DTLS need 20064 file descriptors" in msg
    assert "1 TCP + 1 UDP socket each" in msg
    assert "soft RLIMIT_NOFILE of this process is 20000" in msg
    assert "at most 9968 sessions" in msg
    assert "--processes 2" in msg


def test_capacity_error_without_dtls_and_many_processes() -> None:
    with pytest.raises(CapacityError, match=r"at most 19936 sessions: use --processes 6\b"):
        check_capacity(100_000, dtls=False, soft_limit=20_000)
    with pytest.raises(CapacityError, match=r"at most 460 sessions: use --processes 22\b"):
        check_capacity(10_000, dtls=True, soft_limit=1024, reserve=104)


def test_capacity_error_when_nothing_fits() -> None:
    with pytest.raises(CapacityError, match="not even one session fits"):
        check_capacity(1, dtls=True, soft_limit=64)


def test_capacity_rejects_negative_sessions() -> None:
    with pytest.raises(ValueError):
        check_capacity(-1, dtls=False, soft_limit=100)


def test_source_port_check() -> None:
    check_source_ports(DEFAULT_PORTS_PER_SOURCE_IP, source_ips=1)
    with pytest.raises(
        CapacityError, match=r"at least 2 source addresses \(e.g. 127.0.0.2-127.0.0.3\)"
    ):
        check_source_ports(DEFAULT_PORTS_PER_SOURCE_IP + 1, source_ips=1)
    check_source_ports(100_000, source_ips=4)


# -- source addresses ---------------------------------------------------------------------


def test_parse_range() -> None:
    addrs = parse_source_ips("127.0.0.2-127.0.0.200")
    assert len(addrs) == 199
    assert str(addrs[0]) == "127.0.0.2"
    assert str(addrs[-1]) == "127.0.0.200"


def test_parse_cidr_without_network_and_broadcast() -> None:
    addrs = parse_source_ips("127.0.0.0/24")
    assert len(addrs) == 254
    assert ipaddress.ip_address("127.0.0.0") not in addrs
    assert ipaddress.ip_address("127.0.0.255") not in addrs
    assert [str(a) for a in parse_source_ips("127.0.1.7/32")] == ["127.0.1.7"]


def test_parse_comma_list_dedupes_in_order() -> None:
    addrs = parse_source_ips(" 127.0.0.9, 127.0.0.2-127.0.0.3 ,127.0.0.9,, 127.0.0.4/30")
    assert [str(a) for a in addrs] == [
        "127.0.0.9",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.5",
        "127.0.0.6",
    ]


def test_parse_ipv6_loopback() -> None:
    assert [str(a) for a in parse_source_ips("::1")] == ["::1"]


@pytest.mark.parametrize(
    "spec", ["10.0.0.1", "127.0.0.2,192.168.1.10", "192.168.1.0/30", "126.255.255.254-127.0.0.1"]
)
def test_loopback_guard(spec: str) -> None:
    with pytest.raises(ValueError, match=r"not loopback.*allow_non_loopback"):
        parse_source_ips(spec)


def test_non_loopback_with_explicit_opt_in() -> None:
    # parsing only: nothing is sent anywhere
    addrs = parse_source_ips("192.0.2.0/30", allow_non_loopback=True)
    assert [str(a) for a in addrs] == ["192.0.2.1", "192.0.2.2"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "no source address"),
        (" , ", "no source address"),
        ("127.0.0.300", "bad source address '127.0.0.300'"),
        ("localhost", "bad source address"),
        ("127.0.0.9-127.0.0.2", "LOW-HIGH"),
        ("127.0.0.1-::1", "one family"),
        ("127.0.0.1,::1", "mixes IPv4 and IPv6"),
        ("127.0.0.1/24", "bad source network"),
        ("127.0.0.0/8", "larger than 65536"),
        ("127.0.0.0-127.1.0.0", "larger than 65536"),
    ],
)
def test_parse_errors(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_source_ips(spec)


def test_pool_round_robin_with_offset() -> None:
    addrs = parse_source_ips("127.0.0.2-127.0.0.4")
    pool = SourceIpPool(addrs)
    assert [pool.next() for _ in range(7)] == [
        "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2",
    ]  # fmt: skip
    shifted = SourceIpPool(addrs, start=4)
    assert list(itertools.islice(shifted, 3)) == ["127.0.0.3", "127.0.0.4", "127.0.0.2"]
    assert len(shifted) == 3


def test_pools_of_processes_spread_evenly() -> None:
    addrs = parse_source_ips("127.0.0.2-127.0.0.5")
    pools = [SourceIpPool(addrs, start=k) for k in range(4)]
    first = [p.next() for p in pools]
    assert sorted(first) == [str(a) for a in addrs]


def test_pool_needs_an_address() -> None:
    with pytest.raises(ValueError):
        SourceIpPool([])
