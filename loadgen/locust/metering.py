"""The sidecar's sessions in the ``loadgen_*`` metric catalogue, as ``loadgen run`` counts them.

One ``SessionMetering`` per Locust user's session: the same outcomes,
channels, phase histograms, DTLS counters, echo and traffic counters as the
swarm records (``loadgen.engine.swarm``), so that the dashboards and
thresholds read a Locust run and an engine run alike.  The whole ``connect``
is timed from the moment the sidecar received the command.
"""

from __future__ import annotations

from typing import Protocol

from loadgen.engine.echo import EchoResult
from loadgen.engine.meter import MeteredTunnel, TunnelMeter
from loadgen.failures import Phase, Reason, SessionFailedError
from loadgen.metrics.client import ClientMetrics

__all__ = ["SessionMetering"]


class _Tunnel(MeteredTunnel, Protocol):
    @property
    def channel(self) -> str: ...


class SessionMetering:
    """Where one session counts (connecting, a channel, gone) and what it has pushed."""

    __slots__ = ("_channel", "_data_channel", "_done", "_meter", "_metrics")

    def __init__(self, metrics: ClientMetrics) -> None:
        self._metrics = metrics
        self._meter = TunnelMeter()
        self._channel: str | None = None
        self._data_channel: str | None = None
        self._done = False
        metrics.session_started()
        self.move("connecting")

    def move(self, new: str | None) -> None:
        """The session now counts as ``new`` (connecting, cstp, dtls; None: over)."""
        if new == self._channel:
            return
        self._metrics.channel_change(self._channel, new)
        self._channel = new
        if new not in (None, "connecting"):
            self._data_channel = new

    def established(self, phases: dict[Phase, float], whole_s: float, tunnel: _Tunnel) -> None:
        m = self._metrics
        for phase, seconds in phases.items():
            if phase is not Phase.CONNECT:
                m.observe_phase(str(phase), seconds)
        m.observe_phase(str(Phase.CONNECT), whole_s)
        m.session_outcome("established")
        self.push(tunnel)
        self.move(tunnel.channel)

    def push(self, tunnel: MeteredTunnel | None) -> None:
        if tunnel is not None:
            self._meter.push(tunnel, self._metrics)

    def echo(self, channel: str, result: EchoResult) -> None:
        for rtt in result.rtts_s:
            self._metrics.echo(channel, rtt)
        for _ in range(result.sent - result.received):
            self._metrics.echo(channel, None)

    def failed(self, failure: SessionFailedError, tunnel: MeteredTunnel | None) -> None:
        """The connect failed or an established tunnel ended by itself."""
        if self._done:
            return
        self._done = True
        self.push(tunnel)
        self._metrics.failure(str(failure.phase), str(failure.reason))
        self._metrics.session_outcome("failed")
        self._finish()

    def closed(self, tunnel: MeteredTunnel | None) -> None:
        """The end the user asked for (or the run's end)."""
        if self._done:
            return
        self._done = True
        self.push(tunnel)
        if self._data_channel is not None:
            self._metrics.session_outcome("closed")
        else:  # given up while connecting, as the swarm counts a run's end
            self._metrics.failure(str(Phase.CONNECT), str(Reason.CANCELLED))
            self._metrics.session_outcome("failed")
        self._finish()

    def _finish(self) -> None:
        if self._data_channel is not None:
            self._metrics.session_final_channel(self._data_channel)
        self.move(None)
