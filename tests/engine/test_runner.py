"""The session runner: one session's connect, serve and leave, metered and translated once.

Fake sessions on trio's MockClock; the metrics are the real ``ClientMetrics``
on a fresh registry, read back as the summary reads them.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from loadgen.engine.echo import EchoResult
from loadgen.engine.runner import SessionRunner
from loadgen.engine.session import SessionConfig
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import FallbackReason, Phase, Reason, SessionFailedError
from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.summary import samples_from_registry
from loadgen.proto.cstp import DisconnectReason

CFG = SessionConfig(url=parse_gateway_url("https://127.0.0.1:4443/"), username="u", password="p")
CTX = ssl.create_default_context()


@dataclass
class _Report:
    attempts: int = 1
    retransmits: int = 0
    fallbacks: list[FallbackReason] = field(default_factory=list)


@dataclass
class _Dtls:
    report: _Report = field(default_factory=_Report)


class FakeTunnel:
    def __init__(self) -> None:
        self.channel = "dtls"
        self.ended: SessionFailedError | None = None
        self.dtls: _Dtls | None = _Dtls()
        self.dtls_refused: FallbackReason | None = None
        self.on_channel: Callable[[str, str], None] | None = None
        self.on_end: Callable[[], None] | None = None
        self.sent = [0, 0]

    def traffic(self) -> dict[str, tuple[int, int, int, int]]:
        return {"dtls": (self.sent[0], self.sent[1], self.sent[0], self.sent[1])}

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
        self.sent[0] += count
        self.sent[1] += count * (payload_bytes + 28)
        await trio.sleep(0.001)
        return EchoResult(sent=count, received=count - 1, rtts_s=[0.001] * (count - 1))


class FakeSession:
    """Fails where told: an exception raised in ``fail_in`` (a phase) or by serve."""

    def __init__(self, fail_in: Phase | None, error: Exception | None, hang: bool) -> None:
        self.phases: dict[Phase, float] = {}
        self.phase = Phase.TLS
        self.tunnel: FakeTunnel | None = None
        self._fail_in, self._error, self._hang = fail_in, error, hang
        self.disconnects: list[DisconnectReason | None] = []

    async def connect(self) -> object:
        for phase in (Phase.TLS, Phase.AUTH, Phase.CSTP_CONNECT):
            self.phase = phase
            await trio.sleep(0.01)
            if phase is self._fail_in:
                assert self._error is not None
                raise self._error
            self.phases[phase] = 0.01
        self.tunnel = FakeTunnel()
        self.phase = Phase.DTLS
        return object()

    async def reconnect(self) -> object:
        return await self.connect()

    async def wait_dtls(self) -> None:
        if self._hang:
            await trio.sleep_forever()
        self.phases[Phase.DTLS] = 0.02
        self.phase = Phase.TUNNEL

    async def aclose(self) -> None:
        self.tunnel = None

    async def disconnect(self, reason: DisconnectReason | None = DisconnectReason.USER) -> None:
        self.disconnects.append(reason)
        self.tunnel = None

    def echo_target(self, override: IPv4Address | None) -> IPv4Address:
        return override or IPv4Address("10.0.0.1")


def factory(session: FakeSession) -> Callable[..., object]:
    @asynccontextmanager
    async def open_fake(cfg: SessionConfig, ctx: ssl.SSLContext) -> AsyncIterator[FakeSession]:
        del cfg, ctx
        yield session

    return open_fake


def _runner(session: FakeSession) -> tuple[SessionRunner[FakeSession], CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry, process=False)
    return SessionRunner(metrics, session_factory=factory(session), name=1), registry  # type: ignore[arg-type]


def _counts(registry: CollectorRegistry) -> dict[str, float]:
    s = samples_from_registry(registry)
    return {
        "started": s.total("loadgen_sessions_started_total"),
        "established": s.total("loadgen_sessions_total", outcome="established"),
        "closed": s.total("loadgen_sessions_total", outcome="closed"),
        "failed": s.total("loadgen_sessions_total", outcome="failed"),
        "active": s.total("loadgen_sessions_active"),
    }


async def _nothing(session: FakeSession) -> None:
    del session


async def test_a_closed_session_is_metered_once(autojump_clock: trio.testing.MockClock) -> None:
    session = FakeSession(None, None, hang=False)
    runner, registry = _runner(session)

    async def serve(s: FakeSession) -> None:
        assert s.tunnel is not None
        runner.echo(
            s.tunnel.channel,
            await s.tunnel.echo(IPv4Address("10.0.0.1"), count=3, interval_s=0, timeout_s=1),
        )

    started = trio.current_time()
    await trio.sleep(0.5)  # a late start: the whole connect counts from the schedule
    outcome = await runner.run(CFG, CTX, serve, started_at=started)
    assert outcome.failure is None and outcome.established
    assert session.disconnects == [DisconnectReason.USER]
    assert _counts(registry) == {
        "started": 1,
        "established": 1,
        "closed": 1,
        "failed": 0,
        "active": 0,
    }
    s = samples_from_registry(registry)
    assert s.total("loadgen_echo_requests_total") == 3
    assert s.total("loadgen_echo_lost_total") == 1
    assert s.total("loadgen_tunnel_packets_total", direction="tx") == 3
    assert s.total("loadgen_dtls_attempts_total") == 1
    whole = s.total("loadgen_phase_duration_seconds_sum", phase="connect")
    assert whole == pytest.approx(0.5 + 0.03, abs=0.01)


@pytest.mark.parametrize(
    ("fail_in", "error", "label"),
    [
        (
            Phase.AUTH,
            SessionFailedError(Phase.AUTH, Reason.AUTH_REJECTED, "no"),
            "auth/auth_rejected",
        ),
        # an unexpected exception is ours: internal, in the phase the session was in
        (Phase.AUTH, RuntimeError("a bug"), "auth/internal"),
        # a transport error, not translated by the session, is translated once here
        (Phase.CSTP_CONNECT, ConnectionResetError(), "cstp_connect/reset"),
    ],
)
async def test_failures_come_in_the_phase_they_happened_in(
    autojump_clock: trio.testing.MockClock,
    fail_in: Phase,
    error: Exception,
    label: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _check_failure(fail_in, error, label, caplog)
    if label.endswith("/internal"):
        assert "a bug" in caplog.text


async def test_a_bug_the_session_wrapped_still_logs_its_traceback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    wrapped = SessionFailedError(Phase.AUTH, Reason.INTERNAL, "our bug")
    wrapped.__cause__ = KeyError("the real bug")
    await _check_failure(Phase.AUTH, wrapped, "auth/internal", caplog)
    assert "the real bug" in caplog.text


@pytest.mark.parametrize("up", [False, True])
async def test_a_session_cancelled_from_outside_still_has_one_outcome(
    autojump_clock: trio.testing.MockClock, up: bool
) -> None:
    session = FakeSession(None, None, hang=not up)
    runner, registry = _runner(session)

    async def serve(s: FakeSession) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(5.0):
        await runner.run(CFG, CTX, serve)
    counts = _counts(registry)
    assert counts["active"] == 0
    if up:  # as a stop the user asked for
        assert (counts["established"], counts["closed"], counts["failed"]) == (1, 1, 0)
    else:
        assert (counts["closed"], counts["failed"]) == (0, 1)
        s = samples_from_registry(registry)
        assert s.total("loadgen_phase_failures_total", phase="connect", reason="cancelled") == 1


async def _check_failure(
    fail_in: Phase, error: Exception, label: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = FakeSession(fail_in, error, hang=False)
    runner, registry = _runner(session)
    with caplog.at_level(logging.ERROR, "loadgen.engine"):
        outcome = await runner.run(CFG, CTX, _nothing)
    assert outcome.failure is not None and outcome.failure.label == label
    assert not outcome.established
    assert _counts(registry) == {
        "started": 1,
        "established": 0,
        "closed": 0,
        "failed": 1,
        "active": 0,
    }
    s = samples_from_registry(registry)
    phase, reason = label.split("/")
    assert s.total("loadgen_phase_failures_total", phase=phase, reason=reason) == 1
    # a bug of ours leaves its traceback in the log; an expected failure does not
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == (1 if reason == "internal" else 0)


async def test_a_tunnel_that_ends_while_served_fails_in_the_tunnel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = FakeSession(None, None, hang=False)
    runner, registry = _runner(session)

    async def serve(s: FakeSession) -> None:
        raise SessionFailedError(Phase.TUNNEL, Reason.TERMINATED, "gateway said bye")

    outcome = await runner.run(CFG, CTX, serve)
    assert outcome.established and outcome.failure is not None
    assert outcome.failure.label == "tunnel/terminated"
    assert session.disconnects == []  # no DISCONNECT on a tunnel that is gone
    counts = _counts(registry)
    assert (counts["established"], counts["failed"], counts["closed"]) == (1, 1, 0)
    s = samples_from_registry(registry)
    assert s.total("loadgen_sessions_final_channel_total", channel="dtls") == 1


async def test_a_cut_connect_is_cancelled_and_leaves_its_tunnel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = FakeSession(None, None, hang=True)  # DTLS never settles
    runner, registry = _runner(session)
    cut = trio.CancelScope()

    async def cutter() -> None:
        await trio.sleep(1.0)
        cut.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cutter)
        outcome = await runner.run(CFG, CTX, _nothing, cut=cut, leave=None)
    assert outcome.failure is not None and outcome.failure.label == "connect/cancelled"
    assert session.disconnects == [None]  # its tunnel was up: it still said DISCONNECT
    assert _counts(registry)["failed"] == 1


async def test_a_session_refused_before_it_starts_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = FakeSession(None, None, hang=False)
    runner, registry = _runner(session)
    runner.refuse(SessionFailedError(Phase.CONNECT, Reason.RESOURCE, "no identity"))
    assert _counts(registry) == {
        "started": 1,
        "established": 0,
        "closed": 0,
        "failed": 1,
        "active": 0,
    }
