"""Is the load generator itself the bottleneck?  Event-loop lag and CPU.

A saturated generator delays every session it drives, so its latencies
measure itself, not the gateway (architecture.md, Metrics: "a run whose
generator saturates says so").  ``monitor_loop_lag`` asks trio to sleep for a
known interval and records how late it woke; ``SaturationDetector`` turns
that lag and the process's CPU time into a 0/1 gauge and a flag for the
summary.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import trio

__all__ = ["LagSink", "SaturationDetector", "generator_stats", "monitor_loop_lag"]


class LagSink(Protocol):
    """What the monitor needs from ``ClientMetrics``."""

    def observe_lag(self, seconds: float) -> None: ...

    def set_saturated(self, saturated: bool) -> None: ...


class SaturationDetector:
    """Decides, one check at a time, whether the generator is saturated.

    A check is *hot* when the process used more than ``cpu_threshold`` of one
    core since the previous check (trio runs on one core) or when the loop lag
    seen since then exceeds ``lag_threshold_s``.  The generator is saturated
    while the last ``sustain`` checks were all hot: one garbage collection or
    one burst of handshakes is not saturation.  ``ever_saturated`` latches for
    the summary.
    """

    def __init__(
        self,
        cpu_threshold: float = 0.9,
        lag_threshold_s: float = 0.1,
        *,
        sustain: int = 3,
        metrics: LagSink | None = None,
    ) -> None:
        if sustain < 1:
            raise ValueError("sustain must be at least 1 check")
        self.cpu_threshold = cpu_threshold
        self.lag_threshold_s = lag_threshold_s
        self.sustain = sustain
        self.metrics = metrics
        self.saturated = False
        self.ever_saturated = False
        #: CPU fraction of one core over the last interval (None before two checks)
        self.cpu_fraction: float | None = None
        self._hot_streak = 0
        self._last: tuple[float, float] | None = None

    def update(self, wall_s: float, cpu_s: float, lag_s: float) -> bool:
        """One check: monotonic wall time, process CPU time, recent max lag."""
        self.cpu_fraction = None
        if self._last is not None:
            wall0, cpu0 = self._last
            if wall_s > wall0:
                self.cpu_fraction = max(0.0, cpu_s - cpu0) / (wall_s - wall0)
        self._last = (wall_s, cpu_s)
        hot = lag_s > self.lag_threshold_s or (
            self.cpu_fraction is not None and self.cpu_fraction > self.cpu_threshold
        )
        self._hot_streak = self._hot_streak + 1 if hot else 0
        self.saturated = self._hot_streak >= self.sustain
        self.ever_saturated = self.ever_saturated or self.saturated
        if self.metrics is not None:
            self.metrics.set_saturated(self.saturated)
        return self.saturated


async def monitor_loop_lag(
    metrics: LagSink,
    *,
    interval_s: float = 0.1,
    clock: Callable[[], float] = trio.current_time,
    detector: SaturationDetector | None = None,
    check_every: int = 10,
    cpu_clock: Callable[[], float] = time.process_time,
) -> NoReturn:
    """Sleep ``interval_s`` over and over; observe ``actual - requested``.

    Runs until cancelled (start it in the run's nursery).  With a
    ``detector``, every ``check_every`` sleeps it is updated with ``clock()``,
    ``cpu_clock()`` and the largest lag since the previous check.
    """
    if interval_s <= 0 or check_every < 1:
        raise ValueError("interval_s must be positive and check_every at least 1")
    worst = 0.0
    n = 0
    if detector is not None:
        detector.update(clock(), cpu_clock(), 0.0)  # the CPU baseline
    while True:
        start = clock()
        await trio.sleep(interval_s)
        lag = max(0.0, clock() - start - interval_s)
        metrics.observe_lag(lag)
        if detector is not None:
            worst = max(worst, lag)
            n += 1
            if n >= check_every:
                detector.update(clock(), cpu_clock(), worst)
                worst = 0.0
                n = 0


def generator_stats(detector: SaturationDetector | None = None) -> dict[str, Any]:
    """The summary's ``generator`` section for this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return {
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * scale,
        "saturated": bool(detector is not None and detector.ever_saturated),
    }
