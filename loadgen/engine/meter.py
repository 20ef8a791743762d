"""A tunnel's counters pushed to the metrics as deltas: one rule for the swarm and the sidecar.

A tunnel keeps running totals (DTLS attempts, fallbacks, retransmits, and
packets and bytes per channel); the metrics want increments.  ``TunnelMeter``
remembers what it already pushed for one session, so a push at any time (an
echo, the session's end, a reconnect) adds exactly what is new.
"""

from __future__ import annotations

from typing import Protocol

from loadgen.failures import FallbackReason

__all__ = ["DtlsChannelLike", "DtlsReportLike", "MeteredTunnel", "TunnelMeter", "TunnelMetrics"]


class DtlsReportLike(Protocol):
    """What is read of ``loadgen.engine.dtls.DtlsReport``."""

    @property
    def attempts(self) -> int: ...
    @property
    def retransmits(self) -> int: ...
    @property
    def fallbacks(self) -> list[FallbackReason]: ...


class DtlsChannelLike(Protocol):
    @property
    def report(self) -> DtlsReportLike: ...


class MeteredTunnel(Protocol):
    """What is read of a tunnel (``loadgen.engine.datapath.DataPath``)."""

    @property
    def dtls(self) -> DtlsChannelLike | None: ...
    #: why there is no DTLS channel (not offered, disabled, unusable); None: there is one
    @property
    def dtls_refused(self) -> FallbackReason | None: ...
    def traffic(self) -> dict[str, tuple[int, int, int, int]]: ...


class TunnelMetrics(Protocol):
    """The part of ``loadgen.metrics.client.ClientMetrics`` a push feeds."""

    def dtls_attempt(self) -> None: ...
    def dtls_fallback(self, reason: str) -> None: ...
    def dtls_retransmits(self, n: int) -> None: ...
    def traffic(self, channel: str, direction: str, packets: int, bytes_: int) -> None: ...


class TunnelMeter:
    """What one session's tunnel has already pushed."""

    __slots__ = ("attempts", "fallbacks", "retransmits", "traffic")

    def __init__(self) -> None:
        self.attempts = 0
        self.fallbacks = 0
        self.retransmits = 0
        #: channel -> (tx packets, tx bytes, rx packets, rx bytes)
        self.traffic: dict[str, tuple[int, int, int, int]] = {}

    def reset(self) -> None:
        """A new tunnel (after a reconnect) counts from zero again."""
        self.__init__()  # type: ignore[misc]

    def push(self, tunnel: MeteredTunnel, metrics: TunnelMetrics) -> tuple[int, int]:
        """Add what is new; returns (new DTLS attempts, new fallbacks)."""
        new_attempts = new_fallbacks = 0
        dtls = tunnel.dtls
        refused = tunnel.dtls_refused
        if dtls is None and refused not in (None, FallbackReason.DISABLED) and not self.attempts:
            # DTLS asked for and not given: an attempt and its fallback, so the
            # fallback ratio (fallbacks over attempts) stays within 0 and 1
            metrics.dtls_attempt()
            metrics.dtls_fallback(str(refused))
            self.attempts, self.fallbacks = 1, 1
            new_attempts = new_fallbacks = 1
        if dtls is not None:
            report = dtls.report
            new_attempts = report.attempts - self.attempts
            for _ in range(new_attempts):
                metrics.dtls_attempt()
            fresh = report.fallbacks[self.fallbacks :]
            for reason in fresh:
                metrics.dtls_fallback(str(reason))
            new_fallbacks = len(fresh)
            if report.retransmits > self.retransmits:
                metrics.dtls_retransmits(report.retransmits - self.retransmits)
            self.attempts, self.fallbacks = report.attempts, len(report.fallbacks)
            self.retransmits = report.retransmits
        for name, now in tunnel.traffic().items():
            before = self.traffic.get(name, (0, 0, 0, 0))
            if now != before:
                metrics.traffic(name, "tx", now[0] - before[0], now[1] - before[1])
                metrics.traffic(name, "rx", now[2] - before[2], now[3] - before[3])
                self.traffic[name] = now
        return new_attempts, new_fallbacks
