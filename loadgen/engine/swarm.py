"""The swarm: many synthetic sessions in one trio process, one task each.

The swarm starts sessions on a schedule (closed or open model), holds each for
its length with echo traffic, drives reconnect storms, and stops everything
by itself at the run's end.  Every session's failure is an outcome recorded
in the metrics; nothing a session does can stop the others or the run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address
from typing import Protocol

import trio

from loadgen.engine.runner import (
    RunnerMetrics,
    RunnerSession,
    RunnerTunnel,
    SessionFactory,
    SessionRunner,
)
from loadgen.engine.session import SessionConfig, open_session
from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.proto.cstp import DisconnectReason

__all__ = [
    "Identity",
    "SessionFactory",
    "Swarm",
    "SwarmConfig",
    "SwarmMetrics",
    "SwarmSession",
    "SwarmStats",
    "SwarmTunnel",
]

log = logging.getLogger("loadgen.engine")

#: why a connect or reconnect still in progress when the stop grace ran out failed
CUT_MESSAGE = "the run ended before the session was up"


@dataclass(frozen=True, kw_only=True)
class Identity:
    username: str
    password: str = field(repr=False)
    group: str | None
    hostname: str
    #: the identity's own TLS context (its client certificate); None: the swarm's
    ssl_context: ssl.SSLContext | None = None
    #: SessionConfig fields of its own (``SessionProfile.identity``: certificate, token)
    extra: Mapping[str, object] = field(default_factory=dict, repr=False)


class Schedule(Protocol):
    """When to start the next session (a scheduled time, or None: not now)."""

    def next_start(self, now: float, active: int) -> float | None: ...


#: what the swarm reports and uses of sessions and tunnels: the runner's contracts
SwarmMetrics = RunnerMetrics
SwarmSession = RunnerSession
SwarmTunnel = RunnerTunnel


@dataclass(frozen=True, kw_only=True)
class StormSpec:
    """Every session drops and reconnects at ``at_s`` into the run."""

    at_s: float
    jitter_s: float = 0.0
    backoff_s: float = 1.0
    retries: int = 3
    #: "cookie": CONNECT again with the cookie; "reauth": the whole login again
    mode: str = "cookie"


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    base: SessionConfig
    duration_s: float
    #: seconds a session holds its tunnel; None: until the run ends
    session_length: Callable[[random.Random], float | None] = lambda rng: None
    #: seconds between a session's echo bursts (0: none)
    echo_every_s: float = 0.0
    echo_timeout_s: float = 2.0
    echo_payload_bytes: int = 56
    #: echo requests per burst (bursts for throughput) and their spacing
    echo_burst: int = 1
    echo_spacing_s: float = 0.0
    #: None: the gateway's tunnel address
    echo_target: IPv4Address | None = None
    #: UDP echo (port 7) instead of ICMP echo
    echo_udp: bool = False
    #: extra pause after each echo (a user's think time); None: none
    think_time: Callable[[random.Random], float | None] | None = None
    storm: StormSpec | None = None
    #: bound on sessions started over the whole run (None: unbounded)
    max_sessions: int | None = None
    #: starts per second, replacements included: a gateway that refuses every
    #: session must not turn a closed model into a tight retry loop
    max_start_rate: float | None = None
    seed: int = 0
    #: DISCONNECT 0xb0 at the end (the cookie dies) rather than an empty one
    logout: bool = True
    #: grace for the final DISCONNECTs after the duration
    stop_grace_s: float = 10.0


@dataclass
class SwarmStats:
    """Live figures for the progress display (the metrics hold the real record)."""

    started: int = 0
    established: int = 0
    failed: int = 0
    closed: int = 0
    connecting: int = 0
    active: dict[str, int] = field(default_factory=lambda: {"cstp": 0, "dtls": 0})
    failures: dict[str, int] = field(default_factory=dict)
    connect_times: list[float] = field(default_factory=list)
    echo_sent: int = 0
    echo_received: int = 0
    echo_rtts: list[float] = field(default_factory=list)
    dtls_attempted: int = 0
    dtls_fallbacks: int = 0
    reconnects: int = 0
    #: scheduled starts that began late (the generator could not keep up)
    late_starts: int = 0
    max_start_lateness_s: float = 0.0

    def keep_recent(self, limit: int = 10_000) -> None:
        for name in ("connect_times", "echo_rtts"):
            values: list[float] = getattr(self, name)
            if len(values) > limit:
                del values[: len(values) - limit]


class _StartBucket:
    """A token bucket on session starts: ``rate`` per second, with one second of
    catch-up burst, so a generator that fell behind can still catch up."""

    def __init__(self, rate: float | None, now: float) -> None:
        self._rate = rate if rate and math.isfinite(rate) else None
        self._capacity = max(1.0, self._rate or 1.0)
        self._tokens = 1.0
        self._at = now

    def ready_at(self, now: float) -> float:
        if self._rate is None:
            return now
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            return now
        return now + (1.0 - self._tokens) / self._rate

    def take(self) -> None:
        if self._rate is not None:
            self._tokens -= 1.0


class _Counting:
    """The metrics, with the live figures of ``SwarmStats`` kept from the same calls."""

    def __init__(self, metrics: RunnerMetrics, stats: SwarmStats) -> None:
        self._m = metrics
        self._st = stats

    def observe_phase(self, phase: str, seconds: float) -> None:
        self._m.observe_phase(phase, seconds)
        if phase == Phase.CONNECT:
            self._st.connect_times.append(seconds)
            self._st.keep_recent()

    def failure(self, phase: str, reason: str) -> None:
        self._m.failure(phase, reason)
        label = f"{phase}/{reason}"
        self._st.failures[label] = self._st.failures.get(label, 0) + 1

    def session_started(self) -> None:
        self._m.session_started()
        self._st.started += 1

    def session_outcome(self, outcome: str) -> None:
        self._m.session_outcome(outcome)
        st = self._st
        if outcome == "established":
            st.established += 1
        elif outcome == "failed":
            st.failed += 1
        elif outcome == "closed":
            st.closed += 1

    def channel_change(self, old: str | None, new: str | None) -> None:
        self._m.channel_change(old, new)
        st = self._st
        if old == "connecting":
            st.connecting -= 1
        elif old is not None:
            st.active[old] -= 1
        if new == "connecting":
            st.connecting += 1
        elif new is not None:
            st.active[new] += 1

    def dtls_attempt(self) -> None:
        self._m.dtls_attempt()
        self._st.dtls_attempted += 1

    def dtls_fallback(self, reason: str) -> None:
        self._m.dtls_fallback(reason)
        self._st.dtls_fallbacks += 1

    def dtls_retransmits(self, n: int) -> None:
        self._m.dtls_retransmits(n)

    def echo(self, channel: str, rtt_s: float | None) -> None:
        self._m.echo(channel, rtt_s)
        st = self._st
        st.echo_sent += 1
        if rtt_s is not None:
            st.echo_received += 1
            st.echo_rtts.append(rtt_s)

    def traffic(self, channel: str, direction: str, packets: int, bytes_: int) -> None:
        self._m.traffic(channel, direction, packets, bytes_)

    def reconnect(self, seconds: float) -> None:
        self._m.reconnect(seconds)
        self._st.reconnects += 1

    def session_final_channel(self, channel: str) -> None:
        self._m.session_final_channel(channel)


class Swarm:
    def __init__(
        self,
        config: SwarmConfig,
        *,
        ssl_context: ssl.SSLContext,
        schedule: Schedule,
        identities: Callable[[int], Identity],
        metrics: SwarmMetrics,
        source_ips: Iterator[str] | None = None,
        release_identity: Callable[[Identity], None] | None = None,
        session_factory: SessionFactory[SwarmSession] = open_session,
    ) -> None:
        self.config = config
        self._ctx = ssl_context
        self._schedule = schedule
        self._identities = identities
        self._release_identity = release_identity
        self._open_session = session_factory
        self.metrics = metrics
        self._source_ips = source_ips
        self._rng = random.Random(config.seed)
        self.stats = SwarmStats()
        self._counting = _Counting(metrics, self.stats)
        self._active = 0
        self._stop = trio.Event()
        self._storm = trio.Event()
        self._changed = trio.Event()
        #: one event per holding session, set to wake it (stop, storm, tunnel end)
        self._pokes: set[trio.Event] = set()
        #: connects and reconnects in progress, cut when the stop grace runs out
        self._cuttable: set[trio.CancelScope] = set()
        self.started_at = 0.0

    @property
    def active(self) -> int:
        return self._active

    def stop(self) -> None:
        """End the run early (Ctrl-C): sessions disconnect and the summary still comes."""
        self._stop.set()
        self._poke_all()

    def _poke_all(self) -> None:
        for poke in self._pokes:
            poke.set()

    async def run(self) -> SwarmStats:
        """Start, hold and stop sessions; returns when every session has ended."""
        cfg = self.config
        self.started_at = trio.current_time()
        end = self.started_at + cfg.duration_s
        async with trio.open_nursery() as nursery:
            if cfg.storm is not None:
                nursery.start_soon(self._storm_timer, self.started_at + cfg.storm.at_s)
            index = 0
            bucket = _StartBucket(cfg.max_start_rate, self.started_at)
            with trio.move_on_at(end):
                while not self._stop.is_set():
                    if cfg.max_sessions is not None and index >= cfg.max_sessions:
                        await self._stop.wait()
                        break
                    now = trio.current_time()
                    ready_at = bucket.ready_at(now)
                    if ready_at > now:
                        # starts, replacements included, stay under the rate: a
                        # gateway refusing everything cannot cause a retry storm
                        with trio.move_on_at(ready_at):
                            await self._stop.wait()
                        continue
                    scheduled = self._schedule.next_start(now, self._active)
                    if scheduled is None:
                        # nothing due: wait until a session ends or a short tick
                        with trio.move_on_after(0.05):
                            await self._changed.wait()
                        self._changed = trio.Event()
                        continue
                    if scheduled > now:
                        with trio.move_on_at(scheduled):
                            await self._stop.wait()
                        continue
                    lateness = now - scheduled
                    if lateness > 0.05:
                        self.stats.late_starts += 1
                        self.stats.max_start_lateness_s = max(
                            self.stats.max_start_lateness_s, lateness
                        )
                    self._active += 1
                    bucket.take()
                    nursery.start_soon(self._user, index, scheduled)
                    index += 1
            self._stop.set()
            self._poke_all()
            # Holding sessions leave at once; a connect or reconnect still in
            # progress gets the grace to finish (then it disconnects), and is
            # cut after it: every run ends by itself, whatever the gateway does.
            with trio.move_on_after(cfg.stop_grace_s):
                while self._active > 0:
                    await self._changed.wait()
                    self._changed = trio.Event()
            for scope in list(self._cuttable):
                scope.cancel()
        return self.stats

    async def _storm_timer(self, at: float) -> None:
        with trio.move_on_at(at):
            await self._stop.wait()
        if not self._stop.is_set():
            log.info("reconnect storm: every session drops and reconnects")
            self._storm.set()
            self._poke_all()

    # -- one session ----------------------------------------------------------------

    def _session_config(self, ident: Identity) -> SessionConfig:
        source = next(self._source_ips) if self._source_ips is not None else None
        return dataclasses.replace(
            self.config.base,
            username=ident.username,
            password=ident.password,
            group=ident.group,
            hostname=ident.hostname,
            source_ip=source or self.config.base.source_ip,
            **ident.extra,  # type: ignore[arg-type]
        )

    async def _user(self, index: int, scheduled: float) -> None:
        runner = SessionRunner(self._counting, name=index, session_factory=self._open_session)
        ident: Identity | None = None
        cut = trio.CancelScope()
        try:
            try:
                ident = self._identities(index)
                cfg = self._session_config(ident)
            except Exception as exc:  # e.g. every identity is in use
                log.warning("session %d: no identity: %s", index, exc)
                runner.refuse(
                    SessionFailedError(Phase.CONNECT, Reason.RESOURCE, f"no identity: {exc}")
                )
                return
            length = self.config.session_length(self._rng)
            # a connect in progress is cut when the stop grace has run out
            self._cuttable.add(cut)
            await runner.run(
                cfg,
                ident.ssl_context or self._ctx,
                partial(self._hold, runner, cut, length),
                started_at=scheduled,
                cut=cut,
                cut_message=CUT_MESSAGE,
                leave=DisconnectReason.USER if self.config.logout else None,
                leave_s=self.config.stop_grace_s,
            )
        finally:
            self._cuttable.discard(cut)
            if ident is not None and self._release_identity is not None:
                self._release_identity(ident)  # before a replacement asks for one
            self._active -= 1
            self._changed.set()

    def _deadline(self, length: float | None) -> float:
        end = self.started_at + self.config.duration_s
        if length is None:
            return end
        return min(end, trio.current_time() + length)

    async def _hold(
        self,
        runner: SessionRunner[SwarmSession],
        cut: trio.CancelScope,
        length: float | None,
        session: SwarmSession,
    ) -> None:
        """The session is up: echo, follow a storm, until its length or the run's end.
        (The runner's ``serve``; one frame, since every live session keeps it.)"""
        self._cuttable.discard(cut)  # up: from now on the session leaves by itself
        deadline = self._deadline(length)
        cfg = self.config
        every = cfg.echo_every_s
        target = session.echo_target(cfg.echo_target) if every > 0 else None
        # a session that came up after the storm has nothing to reconnect from
        stormed = self._storm.is_set()
        # spread the first echo so thousands of sessions do not beat in step
        next_echo = trio.current_time() + (self._rng.uniform(0, every) if every > 0 else 0)
        # this session's wake-up event (stop, storm, tunnel end), renewed after each use
        poke = trio.Event()
        self._pokes.add(poke)
        try:
            while not self._stop.is_set():
                tunnel = session.tunnel
                assert tunnel is not None
                tunnel.on_end = poke.set
                wake = min(deadline, next_echo if target is not None else math.inf)
                if tunnel.ended is None and not (self._storm.is_set() and not stormed):
                    with trio.move_on_at(wake):
                        await poke.wait()
                if poke.is_set():
                    self._pokes.discard(poke)
                    poke = trio.Event()
                    self._pokes.add(poke)
                if tunnel.ended is not None:
                    raise tunnel.ended
                if self._stop.is_set() or trio.current_time() >= deadline:
                    return
                if self._storm.is_set() and cfg.storm is not None and not stormed:
                    stormed = True
                    await self._reconnect(runner, session, cfg.storm)
                    continue
                if target is not None and trio.current_time() >= next_echo:
                    await self._echo(runner, tunnel, target)
                    next_echo += every
                    if cfg.think_time is not None:
                        next_echo += cfg.think_time(self._rng) or 0.0
        finally:
            self._pokes.discard(poke)

    async def _echo(
        self, runner: SessionRunner[SwarmSession], tunnel: SwarmTunnel, target: IPv4Address
    ) -> None:
        cfg = self.config
        channel = tunnel.channel
        result = await tunnel.echo(
            target,
            count=cfg.echo_burst,
            interval_s=cfg.echo_spacing_s,
            timeout_s=cfg.echo_timeout_s,
            payload_bytes=cfg.echo_payload_bytes,
            udp=cfg.echo_udp,
        )
        runner.echo(channel, result)

    async def _reconnect(
        self, runner: SessionRunner[SwarmSession], session: SwarmSession, storm: StormSpec
    ) -> None:
        """Drop the tunnel (no DISCONNECT) and come back, as after a network blip;
        the reconnect is cut, like a connect, when the stop grace has run out."""
        runner.push()
        await trio.sleep(self._rng.uniform(0, storm.jitter_s) if storm.jitter_s else 0)
        start = trio.current_time()
        await session.aclose()
        runner.reconnecting()

        async def again() -> None:
            last: SessionFailedError | None = None
            for attempt in range(storm.retries + 1):
                if attempt:
                    await trio.sleep(storm.backoff_s * 2 ** (attempt - 1))
                try:
                    if storm.mode == "reauth":
                        session.phases.clear()
                        await session.connect()
                    else:
                        await session.reconnect()
                    return
                except SessionFailedError as exc:
                    last = exc
            assert last is not None
            raise last

        # the attempts and their back-off, cut as one when the stop grace has run out
        cut = trio.CancelScope()
        self._cuttable.add(cut)
        try:
            await runner.cuttable(session, again, cut, CUT_MESSAGE)
        finally:
            self._cuttable.discard(cut)
        tunnel = session.tunnel
        assert tunnel is not None
        runner.reconnected(tunnel, trio.current_time() - start)
