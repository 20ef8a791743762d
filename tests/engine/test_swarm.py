"""The swarm on trio's MockClock (autojump) with scripted fake sessions.

Virtual time makes every schedule exact: ramp starts, replacements, storm
timing, backoff and the scheduled-start latency are checked to the
millisecond.  Each fake session follows a ``Script`` (delays, failures,
channels); every metrics call goes both to a recorder and to the real
``ClientMetrics`` on a fresh registry, whose summary must agree with the
swarm's own figures.
"""

from __future__ import annotations

import itertools
import math
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from loadgen.engine.echo import EchoResult
from loadgen.engine.feeder import Credentials, FeederExhaustedError, ListFeeder
from loadgen.engine.loadmodel import ClosedModel, OpenModel
from loadgen.engine.session import SessionConfig
from loadgen.engine.swarm import (
    Identity,
    StormSpec,
    Swarm,
    SwarmConfig,
    SwarmSession,
)
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import FallbackReason, Phase, Reason, SessionFailedError
from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.summary import build_summary, samples_from_registry
from loadgen.proto.cstp import DisconnectReason

ECHO_TARGET = IPv4Address("10.200.0.1")
GEN = {"cpu_seconds": 0.0, "peak_rss_bytes": 0, "saturated": False}


# -- fakes --------------------------------------------------------------------------


@dataclass
class Script:
    """How one fake session behaves (all delays in virtual seconds)."""

    connect_s: float = 0.05
    #: synchronous stall at the start of connect (the event loop is blocked)
    stall_s: float = 0.0
    connect_error: BaseException | None = None
    #: connect never returns (a gateway that stalls)
    connect_hangs: bool = False
    dtls_s: float = 0.01
    dtls_up: bool = True
    #: wait_dtls never returns (DTLS handshake still in progress)
    dtls_hangs: bool = False
    echo_rtt_s: float = 0.002
    echo_error: BaseException | None = None
    #: the gateway ends the tunnel this long after it came up
    ended_after_s: float | None = None
    #: first reconnect attempts that fail, and how
    reconnect_failures: int = 0
    reconnect_error: SessionFailedError = field(
        default_factory=lambda: SessionFailedError(Phase.CSTP_CONNECT, Reason.TIMEOUT, "scripted")
    )
    reconnect_s: float = 0.1
    reconnect_dtls_up: bool = True
    #: after a reconnect, DTLS comes up this much later (a re-attempt)
    redtls_after_s: float | None = None
    disconnect_s: float = 0.01


class FakeDtls:
    def __init__(self) -> None:
        self.report = _Report()


@dataclass
class _Report:
    attempts: int = 0
    retransmits: int = 0
    fallbacks: list[FallbackReason] = field(default_factory=list)


class FakeTunnel:
    def __init__(self, session: FakeSession) -> None:
        self.session = session
        self.channel = "cstp"
        self.ended: SessionFailedError | None = None
        self.dtls: FakeDtls | None = FakeDtls()
        self.dtls_refused: FallbackReason | None = None
        self.on_channel: Callable[[str, str], None] | None = None
        self.on_end: Callable[[], None] | None = None
        self.counters = {"cstp": [0, 0, 0, 0], "dtls": [0, 0, 0, 0]}
        self.stopped = False

    def move(self, new: str) -> None:
        old, self.channel = self.channel, new
        if self.on_channel is not None and old != new:
            self.on_channel(old, new)

    def end(self, exc: SessionFailedError) -> None:
        self.ended = exc
        if self.on_end is not None:
            self.on_end()

    def traffic(self) -> dict[str, tuple[int, int, int, int]]:
        return {k: (v[0], v[1], v[2], v[3]) for k, v in self.counters.items()}

    async def echo(
        self,
        target: IPv4Address,
        *,
        count: int,
        interval_s: float,
        timeout_s: float,
        payload_bytes: int = 56,
        udp: bool = False,
    ) -> EchoResult:
        script = self.session.script
        self.session.log("echo", count)
        assert target == ECHO_TARGET
        if script.echo_error is not None:
            raise script.echo_error
        await trio.sleep(script.echo_rtt_s)
        size = payload_bytes + 28
        c = self.counters[self.channel]
        self.session.world.tx_bytes += count * size
        c[0] += count
        c[1] += count * size
        c[2] += count
        c[3] += count * size
        return EchoResult(
            sent=count,
            received=count,
            rtts_s=[script.echo_rtt_s] * count,
            channels={self.channel: count},
        )


class FakeSession:
    """Implements what the swarm uses of VpnSession, as the script says."""

    def __init__(self, world: World, cfg: SessionConfig, script: Script) -> None:
        self.world = world
        self.cfg = cfg
        self.script = script
        self.phases: dict[Phase, float] = {}
        self.phase = Phase.TLS
        self.tunnel: FakeTunnel | None = None
        self.events: list[tuple[float, str, object]] = []
        self.exited = False
        self.reconnect_attempts: list[float] = []

    def log(self, what: str, arg: object = None) -> None:
        self.events.append((trio.current_time() - self.world.t0, what, arg))

    def times(self, what: str) -> list[float]:
        return [t for t, w, _ in self.events if w == what]

    def args(self, what: str) -> list[object]:
        return [a for _, w, a in self.events if w == what]

    async def _tunnel_up(self, *, dtls_up: bool) -> None:
        tunnel = FakeTunnel(self)
        self.tunnel = tunnel
        if self.script.ended_after_s is not None:
            self.world.nursery.start_soon(self._end_later, tunnel, self.script.ended_after_s)

    async def _end_later(self, tunnel: FakeTunnel, after: float) -> None:
        await trio.sleep(after)
        if not tunnel.stopped:
            tunnel.end(SessionFailedError(Phase.TUNNEL, Reason.TERMINATED, "gateway said bye"))

    async def connect(self) -> object:
        self.log("connect")
        s = self.script
        if s.stall_s:
            self.world.clock.jump(s.stall_s)  # CPU-bound: nothing else runs meanwhile
        if s.connect_hangs:
            await trio.sleep_forever()
        await trio.sleep(s.connect_s)
        if s.connect_error is not None:
            raise s.connect_error
        self.phases.update(
            {Phase.TLS: s.connect_s / 2, Phase.AUTH: s.connect_s / 4, Phase.CSTP_CONNECT: 0.001}
        )
        await self._tunnel_up(dtls_up=s.dtls_up)
        self.phase = Phase.DTLS
        return object()

    async def wait_dtls(self) -> None:
        s = self.script
        tunnel = self.tunnel
        assert tunnel is not None
        if s.dtls_hangs:
            await trio.sleep_forever()
        await trio.sleep(s.dtls_s)
        self.phase = Phase.TUNNEL
        reconnected = bool(self.reconnect_attempts)
        up = s.reconnect_dtls_up if reconnected else s.dtls_up
        assert tunnel.dtls is not None
        tunnel.dtls.report.attempts += 1
        if up:
            tunnel.move("dtls")
            self.phases[Phase.DTLS] = s.dtls_s
        else:
            tunnel.dtls.report.retransmits += 4
            tunnel.dtls.report.fallbacks.append(FallbackReason.TIMEOUT)
            if reconnected and s.redtls_after_s is not None:
                self.world.nursery.start_soon(self._dtls_later, tunnel, s.redtls_after_s)

    async def _dtls_later(self, tunnel: FakeTunnel, after: float) -> None:
        await trio.sleep(after)
        if not tunnel.stopped:
            assert tunnel.dtls is not None
            tunnel.dtls.report.attempts += 1
            tunnel.move("dtls")

    async def reconnect(self) -> object:
        self.log("reconnect")
        s = self.script
        self.reconnect_attempts.append(trio.current_time())
        await trio.sleep(s.reconnect_s)
        if len(self.reconnect_attempts) <= s.reconnect_failures:
            raise s.reconnect_error
        await self._tunnel_up(dtls_up=s.reconnect_dtls_up)
        return object()

    async def aclose(self) -> None:
        self.log("aclose")
        if self.tunnel is not None:
            self.tunnel.stopped = True
            self.tunnel = None

    async def disconnect(self, reason: DisconnectReason | None = DisconnectReason.USER) -> None:
        self.log("disconnect", reason)
        await trio.sleep(self.script.disconnect_s)
        if self.tunnel is not None:
            self.tunnel.stopped = True
            self.tunnel = None

    def echo_target(self, override: IPv4Address | None) -> IPv4Address:
        return override or ECHO_TARGET


class World:
    """The fake sessions of one run, scripted by session index (from the user name)."""

    def __init__(
        self,
        clock: trio.testing.MockClock,
        nursery: trio.Nursery,
        scripts: dict[int, Script] | None = None,
        default: Script | None = None,
    ) -> None:
        self.clock = clock
        self.nursery = nursery
        self.scripts = scripts or {}
        self.default = default or Script()
        self.sessions: dict[int, FakeSession] = {}
        self.t0 = trio.current_time()
        self.live_users: set[str] = set()
        self.max_live = 0
        #: tunnel bytes sent by every fake, for the throughput check
        self.tx_bytes = 0

    @asynccontextmanager
    async def factory(self, cfg: SessionConfig, ctx: ssl.SSLContext) -> AsyncIterator[SwarmSession]:
        del ctx
        index = int(cfg.hostname.rsplit("-", 1)[1])
        session = FakeSession(self, cfg, self.scripts.get(index, self.default))
        self.sessions[index] = session
        assert cfg.username not in self.live_users, f"{cfg.username} used by two live sessions"
        self.live_users.add(cfg.username)
        self.max_live = max(self.max_live, len(self.live_users))
        try:
            yield session
        finally:
            self.live_users.discard(cfg.username)
            session.exited = True
            if session.tunnel is not None:
                session.tunnel.stopped = True


class RecordingMetrics:
    """Every call recorded, and passed on to the real ClientMetrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.real = ClientMetrics(self.registry, process=False)
        self.calls: list[tuple[float, str, tuple[Any, ...]]] = []

    def _rec(self, name: str, *args: Any) -> None:
        self.calls.append((trio.current_time(), name, args))
        getattr(self.real, name)(*args)

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [a for _, n, a in self.calls if n == name]

    def observe_phase(self, phase: str, seconds: float) -> None:
        self._rec("observe_phase", phase, seconds)

    def failure(self, phase: str, reason: str) -> None:
        self._rec("failure", phase, reason)

    def session_started(self) -> None:
        # a swarm starting sessions in a loop without time passing would hang
        # the virtual clock: fail instead
        assert len(self.calls) < 200_000, "runaway session starts"
        self._rec("session_started")

    def session_outcome(self, outcome: str) -> None:
        self._rec("session_outcome", outcome)

    def channel_change(self, old: str | None, new: str | None) -> None:
        self._rec("channel_change", old, new)

    def dtls_attempt(self) -> None:
        self._rec("dtls_attempt")

    def dtls_fallback(self, reason: str) -> None:
        self._rec("dtls_fallback", reason)

    def dtls_retransmits(self, n: int) -> None:
        self._rec("dtls_retransmits", n)

    def echo(self, channel: str, rtt_s: float | None) -> None:
        self._rec("echo", channel, rtt_s)

    def traffic(self, channel: str, direction: str, packets: int, bytes_: int) -> None:
        self._rec("traffic", channel, direction, packets, bytes_)

    def reconnect(self, seconds: float) -> None:
        self._rec("reconnect", seconds)

    def session_final_channel(self, channel: str) -> None:
        self._rec("session_final_channel", channel)

    def active(self, channel: str) -> float:
        value = samples_from_registry(self.registry).value(
            "loadgen_sessions_active", channel=channel
        )
        assert value is not None
        return value


# -- harness ------------------------------------------------------------------------


def _identity(n: int) -> Identity:
    return Identity(username=f"user{n}", password="pw", group=None, hostname=f"fake-{n}")


def make_swarm(
    world: World,
    metrics: RecordingMetrics,
    schedule: ClosedModel | OpenModel,
    *,
    duration_s: float,
    identities: Callable[[int], Identity] = _identity,
    release: Callable[[Identity], None] | None = None,
    **cfg: Any,
) -> Swarm:
    base = SessionConfig(url=parse_gateway_url("https://127.0.0.1:1/"), username="", password="")
    return Swarm(
        SwarmConfig(base=base, duration_s=duration_s, **cfg),
        ssl_context=ssl.create_default_context(),
        schedule=schedule,
        identities=identities,
        metrics=metrics,
        release_identity=release,
        session_factory=world.factory,
    )


@asynccontextmanager
async def fake_world(
    clock: trio.testing.MockClock,
    scripts: dict[int, Script] | None = None,
    default: Script | None = None,
) -> AsyncIterator[World]:
    async with trio.open_nursery() as nursery:
        yield World(clock, nursery, scripts, default)
        nursery.cancel_scope.cancel()


def check_consistent(swarm: Swarm, m: RecordingMetrics, world: World) -> dict[str, Any]:
    """The recorder, the real registry's summary and the swarm's stats agree."""
    st = swarm.stats
    summary = build_summary(samples_from_registry(m.registry), generator=GEN)
    outcomes = [a[0] for a in m.of("session_outcome")]
    assert summary["sessions"] == {
        "started": st.started,
        "established": st.established,
        "failed": st.failed,
    }
    assert (
        len(m.of("session_started"))
        == st.started
        == len(world.sessions) + st.failures.get("connect/resource", 0)
    )
    assert outcomes.count("established") == st.established
    assert outcomes.count("failed") == st.failed
    assert outcomes.count("closed") == st.closed
    # every session ends exactly once, as closed or failed
    assert st.closed + st.failed == st.started
    assert summary["failures"] == st.failures
    assert sum(st.failures.values()) == st.failed
    # each established session is counted once on its final channel
    assert sum(summary["channels"].values()) == st.established
    assert summary["echo"]["sent"] == st.echo_sent == len(m.of("echo"))
    assert summary["echo"]["received"] == st.echo_received
    connects = [a[1] for a in m.of("observe_phase") if a[0] == "connect"]
    assert len(connects) == st.established
    # nothing is left active: the gauges and the live figures are back to zero
    for channel in ("connecting", "cstp", "dtls"):
        assert m.active(channel) == 0
    assert st.connecting == 0 and st.active == {"cstp": 0, "dtls": 0}
    assert swarm.active == 0
    # every session's context was left: no task of a session outlives the run
    assert all(s.exited for s in world.sessions.values())
    # the traffic deltas pushed add up to exactly what the fakes sent
    assert summary["throughput"]["tx_bytes"] == summary["throughput"]["rx_bytes"] == world.tx_bytes
    return summary


async def sample_every(
    swarm: Swarm, m: RecordingMetrics, start: float, step: float, count: int, out: list[Any]
) -> None:
    """Record (t, active sessions, gauge values) at start, start+step, ... (relative)."""
    await sample_at(swarm, m, [start + i * step for i in range(count)], out)


async def sample_at(swarm: Swarm, m: RecordingMetrics, times: list[float], out: list[Any]) -> None:
    t0 = trio.current_time()
    for t in times:
        await trio.sleep_until(t0 + t)
        st = swarm.stats
        out.append(
            (
                round(trio.current_time() - t0, 6),
                swarm.active,
                st.connecting + sum(st.active.values()),
                {c: m.active(c) for c in ("connecting", "cstp", "dtls")},
            )
        )


async def run_bounded(swarm: Swarm, limit_s: float = 1000.0) -> None:
    """``swarm.run()``, failing the test instead of hanging (virtual seconds)."""
    with trio.fail_after(limit_s):
        await swarm.run()


# -- closed model -------------------------------------------------------------------


async def test_closed_model_ramps_at_rate_holds_and_replaces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    samples: list[Any] = []
    async with fake_world(autojump_clock, default=Script(connect_s=0.1)) as world:
        swarm = make_swarm(
            world,
            m,
            ClosedModel(10, 5.0),
            duration_s=10.0,
            session_length=lambda rng: 2.95,
            echo_every_s=1.0,
        )
        async with trio.open_nursery() as n:
            n.start_soon(sample_every, swarm, m, 0.03, 0.1, 100, samples)
            await run_bounded(swarm)
        ended = trio.current_time() - world.t0

    # ramp: start k at exactly k / 5 s; then each slot is refilled the moment
    # its session ends (0.1 s connect + 0.01 s DTLS + 2.95 s held + 0.01 s DISCONNECT)
    starts = sorted(s.times("connect")[0] for s in world.sessions.values())
    assert starts[:10] == pytest.approx([k / 5 for k in range(10)], abs=1e-9)
    cycle = 0.1 + 0.01 + 2.95 + 0.01
    expected = sorted(
        k / 5 + j * cycle for k in range(10) for j in range(5) if k / 5 + j * cycle < 10
    )
    assert starts == pytest.approx(expected, abs=1e-6)
    # the number of sessions reaches the target at the ramp rate and stays there
    by_time = {t: (active, counted, gauges) for t, active, counted, gauges in samples}
    for t, (active, counted, gauges) in by_time.items():
        assert active == counted <= 10
        assert sum(gauges.values()) == active
        if t < 1.9:
            assert active == math.floor(t * 5) + 1, t
        elif t < 10:
            # a slot is empty only between a session's end and its replacement's
            # start, which is the same instant
            assert active == 10, t
    # the run ends by itself: at 10 s plus the last DISCONNECTs
    assert ended == pytest.approx(10.01)
    for s in world.sessions.values():
        assert s.args("disconnect") == [DisconnectReason.USER]
    summary = check_consistent(swarm, m, world)
    assert summary["sessions"]["started"] == len(expected)
    assert summary["channels"] == {"dtls": len(expected), "cstp": 0}
    assert summary["failures"] == {}


async def test_closed_model_all_at_once_with_infinite_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    async with fake_world(autojump_clock) as world:
        swarm = make_swarm(world, m, ClosedModel(7, math.inf), duration_s=1.0)
        await run_bounded(swarm)
    assert sorted(s.times("connect")[0] for s in world.sessions.values()) == [0.0] * 7
    check_consistent(swarm, m, world)


# -- open model ---------------------------------------------------------------------


async def test_open_model_arrivals_at_the_rate_whatever_is_active(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    # sessions take far longer to connect than the gap between arrivals
    async with fake_world(autojump_clock, default=Script(connect_s=1.5)) as world:
        swarm = make_swarm(world, m, OpenModel(5.0), duration_s=4.0)
        await run_bounded(swarm)
    starts = sorted(s.times("connect")[0] for s in world.sessions.values())
    assert starts == pytest.approx([k / 5 for k in range(20)], abs=1e-9)
    # the connect latency is the session's own 1.5 s + DTLS, starts were on time
    connects = [a[1] for a in m.of("observe_phase") if a[0] == "connect"]
    assert connects == pytest.approx([1.51] * len(connects), abs=1e-6)
    assert swarm.stats.late_starts == 0
    check_consistent(swarm, m, world)


async def test_open_model_latency_counts_from_the_scheduled_start_after_a_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No coordinated omission: the loop blocked 1 s (a CPU stall in session 0),
    so the arrivals due meanwhile start late, and their connect time includes
    the lateness although each session itself needed only 0.05 s."""
    m = RecordingMetrics()
    scripts = {0: Script(stall_s=1.0, connect_s=0.05, dtls_s=0.0)}
    async with fake_world(autojump_clock, scripts, Script(connect_s=0.05, dtls_s=0.0)) as world:
        swarm = make_swarm(world, m, OpenModel(5.0, max_sessions=8), duration_s=3.0)
        await run_bounded(swarm)
    started = {i: s.times("connect")[0] for i, s in world.sessions.items()}
    # arrivals 1 to 5 were due at 0.2 .. 1.0 and all began when the loop woke at 1.0
    assert [started[i] for i in range(1, 6)] == pytest.approx([1.0] * 5)
    assert [started[i] for i in (6, 7)] == pytest.approx([1.2, 1.4])
    connects = [a[1] for a in m.of("observe_phase") if a[0] == "connect"]
    # session 0 stalled itself: 1.0 + 0.05; sessions 1..5: 1.05 - 0.2 k; 6, 7: on time
    assert sorted(connects) == pytest.approx(
        sorted([1.05, 0.85, 0.65, 0.45, 0.25, 0.05, 0.05, 0.05])
    )
    tls = [a[1] for a in m.of("observe_phase") if a[0] == "tls"]
    assert tls == pytest.approx([0.025] * 8)  # the phases themselves were quick
    assert swarm.stats.late_starts == 4  # 1.0 - 1.0 is on time; 0.2 .. 0.8 late
    assert swarm.stats.max_start_lateness_s == pytest.approx(0.8)
    summary = check_consistent(swarm, m, world)
    assert summary["phases"]["connect"]["max"] == pytest.approx(1.05)
    assert summary["phases"]["connect"]["p95"] > 0.5


async def test_open_model_cap_shows_up_as_latency(autojump_clock: trio.testing.MockClock) -> None:
    """With max_active reached, arrivals wait keeping their scheduled time:
    the wait is measured, and grows while the generator is behind."""
    m = RecordingMetrics()
    async with fake_world(autojump_clock, default=Script(connect_s=0.05, dtls_s=0.0)) as world:
        swarm = make_swarm(
            world,
            m,
            OpenModel(10.0, max_sessions=10, max_active=2),
            duration_s=5.0,
            session_length=lambda rng: 0.44,
        )
        await run_bounded(swarm)
    connects = [a[1] for a in m.of("observe_phase") if a[0] == "connect"]
    # two slots of 0.5 s each against arrivals every 0.1 s: pair k starts at
    # 0.5 k instead of 0.2 k, and the wait is in its latency
    assert connects == pytest.approx([0.05, 0.05, 0.35, 0.35, 0.65, 0.65, 0.95, 0.95, 1.25, 1.25])
    assert swarm.stats.late_starts == 8
    assert swarm.stats.max_start_lateness_s == pytest.approx(1.2)
    check_consistent(swarm, m, world)


# -- failures -----------------------------------------------------------------------


async def test_failures_are_recorded_and_never_stop_other_sessions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    scripts = {
        1: Script(connect_error=SessionFailedError(Phase.AUTH, Reason.AUTH_REJECTED, "no")),
        2: Script(connect_error=RuntimeError("a bug while connecting")),
        3: Script(ended_after_s=1.0),
        4: Script(echo_error=ValueError("a bug in the tunnel")),
    }

    def identities(n: int) -> Identity:
        if n == 6:
            raise FeederExhaustedError("all identities in use")
        return _identity(n)

    async with fake_world(autojump_clock, scripts) as world:
        swarm = make_swarm(
            world,
            m,
            OpenModel(100.0, max_sessions=8),
            duration_s=5.0,
            echo_every_s=0.5,
            identities=identities,
        )
        await run_bounded(swarm)
    st = swarm.stats
    # each failure in the phase it happened in: the bug while connecting came in TLS
    assert st.failures == {
        "auth/auth_rejected": 1,
        "tls/internal": 1,
        "tunnel/terminated": 1,
        "tunnel/internal": 1,
        "connect/resource": 1,
    }
    assert sorted(m.of("failure")) == sorted(
        [
            ("auth", "auth_rejected"),
            ("tls", "internal"),
            ("tunnel", "terminated"),
            ("tunnel", "internal"),
            ("connect", "resource"),
        ]
    )
    # the healthy sessions ran to the end: echo every 0.5 s, then DISCONNECT
    for i in (0, 5, 7):
        s = world.sessions[i]
        assert len(s.times("echo")) >= 9
        assert s.args("disconnect") == [DisconnectReason.USER]
    # failed sessions sent no DISCONNECT, but their contexts were left (closed)
    for i in (1, 2, 3, 4):
        assert world.sessions[i].args("disconnect") == []
    assert 6 not in world.sessions
    summary = check_consistent(swarm, m, world)
    assert summary["sessions"] == {"started": 8, "established": 5, "failed": 5}
    # established sessions that failed later still count on their final channel
    assert summary["channels"] == {"dtls": 5, "cstp": 0}
    assert summary["failure_ratio"] == pytest.approx(5 / 8)


async def test_dtls_fallback_is_an_outcome_not_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    async with fake_world(autojump_clock, {0: Script(dtls_up=False)}) as world:
        swarm = make_swarm(world, m, OpenModel(10.0, max_sessions=4), duration_s=2.0)
        await run_bounded(swarm)
    assert m.of("dtls_fallback") == [("timeout",)]
    assert m.of("dtls_retransmits") == [(4,)]
    assert len(m.of("dtls_attempt")) == 4
    summary = check_consistent(swarm, m, world)
    assert summary["channels"] == {"dtls": 3, "cstp": 1}
    assert summary["dtls_fallback_ratio"] == pytest.approx(0.25)
    assert summary["failures"] == {}


# -- reconnect storm ----------------------------------------------------------------


async def test_storm_every_session_reconnects_once_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    scripts = {
        1: Script(reconnect_dtls_up=False, redtls_after_s=3.0),
        2: Script(reconnect_failures=1),
        3: Script(reconnect_failures=99),
    }
    gauges: list[Any] = []
    async with fake_world(autojump_clock, scripts) as world:
        swarm = make_swarm(
            world,
            m,
            ClosedModel(5, math.inf),
            duration_s=6.0,
            storm=StormSpec(at_s=2.0, jitter_s=0.5, backoff_s=0.25, retries=2),
            echo_every_s=0.5,
        )
        async with trio.open_nursery() as n:
            n.start_soon(sample_at, swarm, m, [2.9, 3.7, 5.7], gauges)
            await run_bounded(swarm)
    s = world.sessions
    # every original session dropped its tunnel once (no DISCONNECT) within the jitter
    for i in range(5):
        drops = s[i].times("aclose")
        assert len(drops) == 1 and 2.0 <= drops[0] <= 2.5
        assert s[i].reconnect_attempts[0] - world.t0 == pytest.approx(drops[0])
    # retries with exponential backoff after a failed attempt (0.1 s each)
    assert len(s[2].reconnect_attempts) == 2
    assert s[2].reconnect_attempts[1] - s[2].reconnect_attempts[0] == pytest.approx(0.1 + 0.25)
    a3 = s[3].reconnect_attempts
    assert len(a3) == 3  # first attempt + 2 retries, then the session fails
    assert [b - a for a, b in itertools.pairwise(a3)] == pytest.approx([0.35, 0.6])
    assert swarm.stats.failures == {"cstp_connect/timeout": 1}
    # its replacement came up after the storm: nothing to reconnect from
    assert s[5].reconnect_attempts == [] and s[5].times("aclose") == []
    # reconnect durations: from the drop to the tunnel back (DTLS outcome included)
    durations = sorted(a[0] for a in m.of("reconnect"))
    assert durations == pytest.approx(sorted([0.11, 0.11, 0.46, 0.11]))
    assert swarm.stats.reconnects == 4
    # at 3.7 s everybody is back (session 3 failed by 3.55 s, its replacement is
    # up); session 1 came back on CSTP (DTLS fell back), then DTLS came up again
    # 3 s later: the gauges follow the new tunnel too
    during, first, second = gauges
    # at 2.9 s session 3 is still between attempts (2 + jitter .. + 1.05 s): a
    # reconnecting session counts as connecting, not on its old channel
    assert during[3]["connecting"] >= 1
    assert sum(during[3].values()) == during[1] == 5
    assert first[3] == {"connecting": 0.0, "cstp": 1.0, "dtls": 4.0}
    assert second[3]["cstp"] == 0.0 and second[3]["dtls"] == 5.0
    for i in (0, 1, 2, 4, 5):
        assert s[i].args("disconnect") == [DisconnectReason.USER]
    summary = check_consistent(swarm, m, world)
    assert summary["channels"] == {"dtls": 6, "cstp": 0}
    # the fallback after the reconnect was pushed with the new tunnel's counters
    assert m.of("dtls_fallback") == [("timeout",)]
    assert len(m.of("dtls_attempt")) == 6 + 4 + 1


async def test_storm_reauth_runs_the_whole_login_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    async with fake_world(autojump_clock) as world:
        swarm = make_swarm(
            world,
            m,
            ClosedModel(3, math.inf),
            duration_s=3.0,
            storm=StormSpec(at_s=1.0, mode="reauth"),
        )
        await run_bounded(swarm)
    for s in world.sessions.values():
        assert len(s.times("connect")) == 2 and s.reconnect_attempts == []
    assert [a[0] for a in m.of("reconnect")] == pytest.approx([0.06] * 3)
    check_consistent(swarm, m, world)


# -- stopping -----------------------------------------------------------------------


async def test_stop_disconnects_every_session_and_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    async with fake_world(autojump_clock, default=Script(connect_s=0.2)) as world:
        swarm = make_swarm(world, m, ClosedModel(8, 4.0), duration_s=100.0, echo_every_s=1.0)

        async def stopper() -> None:
            await trio.sleep(1.3)
            swarm.stop()

        async with trio.open_nursery() as n:
            n.start_soon(stopper)
            await run_bounded(swarm)
        ended = trio.current_time() - world.t0
    # starts at 0, 0.25 .. 1.25; the last was still connecting at the stop, finished
    # (0.2 s + DTLS) and left at once; nothing started after the stop
    assert len(world.sessions) == 6
    assert ended == pytest.approx(1.25 + 0.2 + 0.01 + 0.01)
    for s in world.sessions.values():
        assert s.args("disconnect") == [DisconnectReason.USER]
    summary = check_consistent(swarm, m, world)
    assert summary["sessions"] == {"started": 6, "established": 6, "failed": 0}


async def test_stop_cuts_connects_that_never_finish_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    scripts = {1: Script(dtls_hangs=True), 2: Script(connect_hangs=True)}
    async with fake_world(autojump_clock, scripts) as world:
        swarm = make_swarm(
            world, m, OpenModel(10.0, max_sessions=3), duration_s=100.0, stop_grace_s=4.0
        )

        async def stopper() -> None:
            await trio.sleep(1.0)
            swarm.stop()

        async with trio.open_nursery() as n:
            n.start_soon(stopper)
            await run_bounded(swarm)
        ended = trio.current_time() - world.t0
    assert ended == pytest.approx(1.0 + 4.0 + 0.01)
    s = world.sessions
    assert s[0].args("disconnect") == [DisconnectReason.USER]
    # session 1 had its tunnel (DTLS still pending): it still says DISCONNECT
    assert s[1].args("disconnect") == [DisconnectReason.USER]
    assert s[2].args("disconnect") == []
    assert swarm.stats.failures == {"connect/cancelled": 2}
    check_consistent(swarm, m, world)


async def test_bounded_run_ends_by_itself_whatever_the_sessions_do(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = RecordingMetrics()
    scripts = {3: Script(connect_hangs=True)}
    async with fake_world(autojump_clock, scripts) as world:
        swarm = make_swarm(
            world, m, OpenModel(2.0), duration_s=3.0, stop_grace_s=2.0, echo_every_s=0.25
        )
        await run_bounded(swarm)
        ended = trio.current_time() - world.t0
    # arrivals at 0, 0.5 .. 2.5; the hanging one is cut at the end of the grace
    assert len(world.sessions) == 6
    assert ended == pytest.approx(3.0 + 2.0)
    assert swarm.stats.failures == {"connect/cancelled": 1}
    for i in (0, 1, 2, 4, 5):
        # at the end, or right after the echo in flight then (2 ms)
        disc = world.sessions[i].times("disconnect")
        assert disc == pytest.approx([3.0], abs=0.003)
    check_consistent(swarm, m, world)


async def test_max_sessions_bounds_the_starts(autojump_clock: trio.testing.MockClock) -> None:
    m = RecordingMetrics()
    async with fake_world(autojump_clock) as world:
        swarm = make_swarm(
            world,
            m,
            ClosedModel(4, 10.0),
            duration_s=5.0,
            max_sessions=6,
            session_length=lambda rng: 1.0,
        )
        await run_bounded(swarm)
    assert swarm.stats.started == 6
    check_consistent(swarm, m, world)


# -- identities ---------------------------------------------------------------------


async def test_identities_are_reused_after_release_never_shared(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A closed model with exactly N identities and short sessions: replacements
    take released identities; no two live sessions ever share a user."""
    pool = ListFeeder([Credentials(f"u{i}", "pw") for i in range(3)]).pool()

    def identities(n: int) -> Identity:
        c = pool.acquire()
        return Identity(username=c.username, password=c.password, group=None, hostname=f"f-{n}")

    def release(ident: Identity) -> None:
        pool.release(Credentials(ident.username, ident.password))

    m = RecordingMetrics()
    async with fake_world(autojump_clock) as world:
        swarm = make_swarm(
            world,
            m,
            ClosedModel(3, 10.0),
            duration_s=4.0,
            session_length=lambda rng: 0.5,
            identities=identities,
            release=release,
        )
        await run_bounded(swarm)
    assert len(world.sessions) > 12
    assert world.max_live == 3
    assert {s.cfg.username for s in world.sessions.values()} == {"u0", "u1", "u2"}
    assert pool.in_use == 0
    assert swarm.stats.failures == {}
    check_consistent(swarm, m, world)
