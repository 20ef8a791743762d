"""One session's life, metered once: connect, serve, leave.

Every driver of a session (``loadgen connect``, the swarm of ``loadgen run``,
the Locust sidecar) runs it through a ``SessionRunner``: phases 1 to 6, then
the driver's own ``serve`` (an echo burst, a hold with a reconnect storm, a
queue of Locust commands), then a bounded DISCONNECT.  The runner is the one
place that

- counts the session where it is (``connecting``, then its data channel, and
  each move between CSTP and DTLS) and records its outcome (established, then
  closed or failed, with the channel it ended on);
- observes the phase latencies, the whole connect measured from the driver's
  scheduled start (no coordinated omission), and pushes the tunnel's DTLS
  and traffic counters as deltas (``loadgen.engine.meter``);
- turns every failure into a ``SessionFailedError`` in the phase it
  happened in: an unexpected exception is translated once, and a bug of ours
  is one session's ``internal`` failure with its traceback in the log.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Generic, Protocol, TypeVar

import trio

from loadgen.engine.echo import EchoResult
from loadgen.engine.meter import DtlsChannelLike, TunnelMeter
from loadgen.engine.session import SessionConfig, translate
from loadgen.failures import FallbackReason, Phase, Reason, SessionFailedError
from loadgen.proto.cstp import DisconnectReason

__all__ = [
    "NULL_METRICS",
    "RunnerMetrics",
    "RunnerSession",
    "RunnerTunnel",
    "SessionFactory",
    "SessionOutcome",
    "SessionRunner",
]

log = logging.getLogger("loadgen.engine")

#: bound on the final DISCONNECT
LEAVE_S = 10.0


class RunnerMetrics(Protocol):
    """What a session reports; ``loadgen.metrics.client.ClientMetrics`` fits."""

    def observe_phase(self, phase: str, seconds: float) -> None: ...
    def failure(self, phase: str, reason: str) -> None: ...
    def session_started(self) -> None: ...
    def session_outcome(self, outcome: str) -> None: ...
    def channel_change(self, old: str | None, new: str | None) -> None: ...
    def dtls_attempt(self) -> None: ...
    def dtls_fallback(self, reason: str) -> None: ...
    def dtls_retransmits(self, n: int) -> None: ...
    def echo(self, channel: str, rtt_s: float | None) -> None: ...
    def traffic(self, channel: str, direction: str, packets: int, bytes_: int) -> None: ...
    def reconnect(self, seconds: float) -> None: ...
    def session_final_channel(self, channel: str) -> None: ...


class _NullMetrics:
    """For a driver that reports no metrics (``loadgen connect``)."""

    def observe_phase(self, phase: str, seconds: float) -> None:
        pass

    def failure(self, phase: str, reason: str) -> None:
        pass

    def session_started(self) -> None:
        pass

    def session_outcome(self, outcome: str) -> None:
        pass

    def channel_change(self, old: str | None, new: str | None) -> None:
        pass

    def dtls_attempt(self) -> None:
        pass

    def dtls_fallback(self, reason: str) -> None:
        pass

    def dtls_retransmits(self, n: int) -> None:
        pass

    def echo(self, channel: str, rtt_s: float | None) -> None:
        pass

    def traffic(self, channel: str, direction: str, packets: int, bytes_: int) -> None:
        pass

    def reconnect(self, seconds: float) -> None:
        pass

    def session_final_channel(self, channel: str) -> None:
        pass


NULL_METRICS: RunnerMetrics = _NullMetrics()


class RunnerTunnel(Protocol):
    """What is used of a tunnel (``loadgen.engine.datapath.DataPath``)."""

    #: called with (old, new) channel names when data moves between CSTP and DTLS
    on_channel: Callable[[str, str], None] | None
    #: called once when the tunnel ends
    on_end: Callable[[], None] | None

    @property
    def channel(self) -> str: ...
    @property
    def ended(self) -> SessionFailedError | None: ...
    @property
    def dtls(self) -> DtlsChannelLike | None: ...
    @property
    def dtls_refused(self) -> FallbackReason | None: ...
    def traffic(self) -> dict[str, tuple[int, int, int, int]]: ...
    async def echo(
        self,
        target: IPv4Address,
        *,
        count: int,
        interval_s: float,
        timeout_s: float,
        payload_bytes: int = 56,
        udp: bool = False,
    ) -> EchoResult: ...


class RunnerSession(Protocol):
    """What is used of a session (``loadgen.engine.session.VpnSession``)."""

    phases: dict[Phase, float]
    #: the phase in progress, or the last one reached
    phase: Phase

    @property
    def tunnel(self) -> RunnerTunnel | None: ...
    async def connect(self) -> object: ...
    async def reconnect(self) -> object: ...
    async def wait_dtls(self) -> None: ...
    async def aclose(self) -> None: ...
    async def disconnect(self, reason: DisconnectReason | None = ...) -> None: ...
    def echo_target(self, override: IPv4Address | None) -> IPv4Address: ...


S = TypeVar("S", bound=RunnerSession)
#: ``open_session``'s signature: the session lives inside the context
SessionFactory = Callable[[SessionConfig, ssl.SSLContext], AbstractAsyncContextManager[S]]


@dataclass(frozen=True, kw_only=True)
class SessionOutcome:
    #: phases 1 to 6 completed (whatever came after)
    established: bool
    #: None: the session closed as asked
    failure: SessionFailedError | None


class SessionRunner(Generic[S]):
    """Runs one session; ``run`` once.  During ``serve`` the driver reports
    through ``push``, ``echo`` and ``reconnecting``/``reconnected``.
    ``session_factory`` is ``loadgen.engine.session.open_session`` (a fake in tests)."""

    # one per live session: no instance dict
    __slots__ = (
        "_channel",
        "_data_channel",
        "_done",
        "_leave_reason",
        "_leave_s",
        "_meter",
        "_name",
        "_open",
        "dtls_wait_s",
        "metrics",
        "session",
        "tunnel",
    )

    def __init__(
        self,
        metrics: RunnerMetrics = NULL_METRICS,
        *,
        session_factory: SessionFactory[S],
        name: object = "",
    ) -> None:
        self.metrics = metrics
        self._name = name
        self._open = session_factory
        self._meter = TunnelMeter()
        #: where the session counts: "connecting", a data channel, or None
        self._channel: str | None = None
        #: the last data channel it was on (None: never established)
        self._data_channel: str | None = None
        self._done = False
        #: the session, once opened (its phases stay readable after the end)
        self.session: S | None = None
        #: the last tunnel the session had (its DTLS report stays readable)
        self.tunnel: RunnerTunnel | None = None
        #: seconds the wait for DTLS took (phase 6, up or fallen back)
        self.dtls_wait_s: float | None = None
        self._leave_reason: DisconnectReason | None = DisconnectReason.USER
        self._leave_s = LEAVE_S

    @property
    def established(self) -> bool:
        return self._data_channel is not None

    # -- the life ---------------------------------------------------------------------

    async def run(
        self,
        cfg: SessionConfig,
        ssl_context: ssl.SSLContext,
        serve: Callable[[S], Awaitable[None]],
        *,
        started_at: float | None = None,
        cut: trio.CancelScope | None = None,
        cut_message: str = "the connect was given up",
        leave: DisconnectReason | None = DisconnectReason.USER,
        leave_s: float = LEAVE_S,
    ) -> SessionOutcome:
        """Connect, ``serve``, leave (DISCONNECT with ``leave``, bounded by
        ``leave_s``).  The whole connect is timed from ``started_at`` (default:
        now); cancelling ``cut`` during the connect gives it up
        (``connect/cancelled``, ``cut_message``).  Never raises for the
        session's own failures."""
        self._leave_reason, self._leave_s = leave, leave_s
        begun = trio.current_time() if started_at is None else started_at
        self.metrics.session_started()
        self.move("connecting")
        failure: SessionFailedError | None = None
        try:
            async with self._open(cfg, ssl_context) as session:
                self.session = session
                try:
                    await self.cuttable(session, session.connect, cut, cut_message)
                    self._established(session, begun)
                    await serve(session)
                    self.push()
                    await self.leave(session)
                    self._closed()
                except Exception as exc:
                    failure = self._failed(exc, session)
        except Exception as exc:  # raised while opening or closing the session
            if self._done:
                log.warning("session %s: error after its end: %r", self._name, exc)
            else:
                failure = self._failed(exc, None)
        except BaseException:
            # cancelled from outside (a sidecar closing at its deadline, a second
            # Ctrl-C): still one outcome, as a stop the user asked for
            if not self._done:
                self._stopped()
            raise
        finally:
            self.move(None)
        return SessionOutcome(established=self.established, failure=failure)

    async def cuttable(
        self,
        session: RunnerSession,
        connect: Callable[[], Awaitable[object]],
        cut: trio.CancelScope | None,
        message: str,
    ) -> None:
        """``connect`` (phases 1 to 5: a connect, a reconnect) then the wait for
        DTLS, given up when ``cut`` is cancelled: ``connect/cancelled``, after a
        DISCONNECT if the tunnel was up already."""
        cut = cut or trio.CancelScope()
        with cut:
            try:
                await connect()
                waited = trio.current_time()
                await session.wait_dtls()
                self.dtls_wait_s = trio.current_time() - waited
            finally:
                self.tunnel = session.tunnel or self.tunnel
        if cut.cancelled_caught:
            if session.tunnel is not None:
                # cut with its tunnel up (DTLS pending): it still says DISCONNECT
                await self.leave(session)
            raise SessionFailedError(Phase.CONNECT, Reason.CANCELLED, message)

    def _established(self, session: RunnerSession, begun: float) -> None:
        m = self.metrics
        for phase, seconds in session.phases.items():
            if phase is not Phase.CONNECT:
                m.observe_phase(str(phase), seconds)
        # from the scheduled start: a late start counts (no coordinated omission)
        m.observe_phase(str(Phase.CONNECT), trio.current_time() - begun)
        m.session_outcome("established")
        tunnel = session.tunnel
        assert tunnel is not None
        self.follow(tunnel)

    async def leave(self, session: RunnerSession) -> None:
        """DISCONNECT as the run said, bounded and shielded."""
        with trio.move_on_after(self._leave_s) as scope:
            scope.shield = True
            await session.disconnect(self._leave_reason)

    def refuse(self, failure: SessionFailedError) -> None:
        """A session that could not even start (no identity): started and failed."""
        self.metrics.session_started()
        self.move("connecting")
        self._failed(failure, None)
        self.move(None)

    # -- what the driver reports --------------------------------------------------------

    def move(self, new: str | None) -> None:
        """The session now counts as ``new`` (connecting, cstp, dtls; None: over)."""
        if new == self._channel:
            return
        self.metrics.channel_change(self._channel, new)
        self._channel = new
        if new not in (None, "connecting"):
            self._data_channel = new

    def follow(self, tunnel: RunnerTunnel) -> None:
        """Count the session on ``tunnel``'s channel, now and when it moves."""
        self.tunnel = tunnel
        self.push()
        self.move(tunnel.channel)

        def moved(old: str, new: str) -> None:
            del old
            self.move(new)

        tunnel.on_channel = moved

    def push(self) -> tuple[int, int]:
        """The tunnel's DTLS and traffic counters since the last push:
        (new DTLS attempts, new fallbacks)."""
        if self.tunnel is None:
            return 0, 0
        return self._meter.push(self.tunnel, self.metrics)

    def echo(self, channel: str, result: EchoResult) -> None:
        for rtt in result.rtts_s:
            self.metrics.echo(channel, rtt)
        for _ in range(result.sent - result.received):
            self.metrics.echo(channel, None)
        self.push()

    def reconnecting(self) -> None:
        """The tunnel was dropped to come back (a storm): a new one counts from zero."""
        self.push()
        self.tunnel = None
        self._meter.reset()
        self.move("connecting")

    def reconnected(self, tunnel: RunnerTunnel, seconds: float) -> None:
        self.metrics.reconnect(seconds)
        self.follow(tunnel)

    # -- outcomes -----------------------------------------------------------------------

    def _closed(self) -> None:
        self._done = True
        self._finish()
        self.metrics.session_outcome("closed")

    def _stopped(self) -> None:
        self.push()
        if self.established:
            self._closed()
        else:  # given up while connecting, as a run's end counts it
            self._record_failure(Phase.CONNECT, Reason.CANCELLED)

    def _failed(self, exc: Exception, session: RunnerSession | None) -> SessionFailedError:
        phase = Phase.CONNECT if session is None else session.phase
        failure = translate(phase, exc)
        # a bug of ours, raised bare or wrapped by the session: its traceback is logged
        wrapped = isinstance(exc, SessionFailedError) and exc.__cause__ is not None
        if failure.reason is Reason.INTERNAL and (wrapped or exc is not failure):
            log.error("session %s: unexpected error", self._name, exc_info=exc)
        if not self._done:
            if self.tunnel is None and session is not None:
                # a storm's reconnect that failed: its tunnel's counters still count
                self.tunnel = session.tunnel
            self.push()
            self._record_failure(failure.phase, failure.reason)
        return failure

    def _record_failure(self, phase: Phase, reason: Reason) -> None:
        self._done = True
        self.metrics.failure(str(phase), str(reason))
        self.metrics.session_outcome("failed")
        self._finish()

    def _finish(self) -> None:
        if self._data_channel is not None:
            # an established session that failed later still ended on a channel
            self.metrics.session_final_channel(self._data_channel)
