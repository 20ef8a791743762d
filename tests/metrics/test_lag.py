"""Event-loop lag monitor (under trio's mock clock) and the saturation detector."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.lag import SaturationDetector, generator_stats, monitor_loop_lag


class Sink:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self.saturated: list[bool] = []

    def observe_lag(self, seconds: float) -> None:
        self.lags.append(seconds)

    def set_saturated(self, saturated: bool) -> None:
        self.saturated.append(saturated)


async def test_no_lag_on_an_idle_loop(autojump_clock: trio.testing.MockClock) -> None:
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: monitor_loop_lag(sink, interval_s=0.1))
        await trio.sleep(1.05)
        nursery.cancel_scope.cancel()
    assert len(sink.lags) == 10
    assert all(lag == pytest.approx(0.0, abs=1e-9) for lag in sink.lags)


async def test_a_blocked_loop_shows_as_lag(autojump_clock: trio.testing.MockClock) -> None:
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: monitor_loop_lag(sink, interval_s=0.1))
        # A task hogs the loop for 0.25 s just before the monitor's 3rd wake-up at 0.3:
        # the clock jumps while no task yields, as a blocking computation would.
        await trio.sleep(0.29)
        autojump_clock.jump(0.25)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert sink.lags[:2] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert sink.lags[2] == pytest.approx(0.24)  # woke at 0.54 instead of 0.3
    assert all(lag == pytest.approx(0.0, abs=1e-9) for lag in sink.lags[3:])


async def test_monitor_feeds_the_histogram(autojump_clock: trio.testing.MockClock) -> None:
    reg = CollectorRegistry()
    metrics = ClientMetrics(reg, process=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: monitor_loop_lag(metrics, interval_s=0.05))
        await trio.sleep(0.101)
        autojump_clock.jump(0.3)  # the monitor was due at 0.15
        await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    count = reg.get_sample_value("loadgen_event_loop_lag_seconds_count")
    assert count == 3
    assert reg.get_sample_value("loadgen_event_loop_lag_seconds_bucket", {"le": "0.2"}) == 2
    assert reg.get_sample_value("loadgen_event_loop_lag_seconds_bucket", {"le": "0.5"}) == 3


class FakeCpu:
    """Process CPU time that grows at ``rate`` cores while trio's clock runs."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.cpu = 0.0
        self.last = 0.0

    def __call__(self) -> float:
        now = trio.current_time()
        self.cpu += (now - self.last) * self.rate
        self.last = now
        return self.cpu


class RecordingDetector(SaturationDetector):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[float, float, float]] = []

    def update(self, wall_s: float, cpu_s: float, lag_s: float) -> bool:
        self.calls.append((wall_s, cpu_s, lag_s))
        return super().update(wall_s, cpu_s, lag_s)


async def test_monitor_passes_worst_lag_per_window(autojump_clock: trio.testing.MockClock) -> None:
    detector = RecordingDetector(sustain=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: monitor_loop_lag(
                Sink(), interval_s=0.1, detector=detector, check_every=2, cpu_clock=FakeCpu(0.0)
            )
        )
        await trio.sleep(0.15)  # the monitor woke at 0.1 and is due again at 0.2
        autojump_clock.jump(0.2)  # a 0.2 s stall: it wakes at 0.35, 0.15 late
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert detector.calls[0] == (0.0, 0.0, 0.0)  # the baseline
    assert detector.calls[1] == pytest.approx((0.35, 0.0, 0.15))
    assert detector.calls[2] == pytest.approx((0.55, 0.0, 0.0))  # the next window is calm
    assert len(detector.calls) == 3
    assert not detector.ever_saturated  # one hot window of two needed


async def test_monitor_drives_the_detector(autojump_clock: trio.testing.MockClock) -> None:
    reg = CollectorRegistry()
    metrics = ClientMetrics(reg, process=False)
    detector = SaturationDetector(cpu_threshold=0.9, sustain=2, metrics=metrics)
    cpu = FakeCpu(0.95)  # a busy process: 95 % of a core

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: monitor_loop_lag(
                metrics, interval_s=0.1, detector=detector, check_every=2, cpu_clock=cpu
            )
        )
        await trio.sleep(0.3)  # checks at 0.2 (hot)
        assert not detector.saturated
        assert reg.get_sample_value("loadgen_generator_saturated") == 0
        await trio.sleep(0.2)  # check at 0.4 (hot, second in a row)
        assert detector.saturated
        assert detector.cpu_fraction == pytest.approx(0.95)
        assert reg.get_sample_value("loadgen_generator_saturated") == 1
        cpu.rate = 0.1  # calm again: the next check clears the gauge, the latch stays
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert not detector.saturated
    assert detector.ever_saturated
    assert reg.get_sample_value("loadgen_generator_saturated") == 0
    assert generator_stats(detector)["saturated"] is True


async def test_monitor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await monitor_loop_lag(Sink(), interval_s=0)
    with pytest.raises(ValueError):
        await monitor_loop_lag(Sink(), check_every=0)


# --- the detector alone: (wall, cpu, lag) per check ------------------------------------


def test_cpu_saturation_needs_a_sustained_window() -> None:
    sink = Sink()
    d = SaturationDetector(cpu_threshold=0.9, lag_threshold_s=0.1, sustain=3, metrics=sink)
    assert d.update(0.0, 0.0, 0.0) is False  # baseline, no fraction yet
    assert d.cpu_fraction is None
    assert d.update(1.0, 0.95, 0.0) is False  # 95 % of a core: hot 1
    assert d.cpu_fraction == pytest.approx(0.95)
    assert d.update(2.0, 1.90, 0.0) is False  # hot 2
    assert d.update(3.0, 2.85, 0.0) is True  # hot 3: saturated
    assert d.ever_saturated
    assert d.update(4.0, 3.10, 0.0) is False  # 25 %: cool, clears at once
    assert d.ever_saturated
    assert sink.saturated == [False, False, False, True, False]


def test_a_cool_check_resets_the_streak() -> None:
    d = SaturationDetector(sustain=3)
    d.update(0.0, 0.0, 0.0)
    for wall, cpu in ((1.0, 0.95), (2.0, 1.9), (3.0, 2.0), (4.0, 2.95), (5.0, 3.9)):
        assert d.update(wall, cpu, 0.0) is False
    assert not d.ever_saturated
    assert d.update(6.0, 4.85, 0.0) is True


def test_cpu_exactly_at_threshold_is_not_hot() -> None:
    d = SaturationDetector(cpu_threshold=0.5, sustain=1)
    d.update(0.0, 0.0, 0.0)
    assert d.update(2.0, 1.0, 0.0) is False
    assert d.update(4.0, 2.2, 0.0) is True


def test_lag_saturation() -> None:
    d = SaturationDetector(cpu_threshold=0.9, lag_threshold_s=0.1, sustain=3)
    assert not d.update(0.0, 0.0, 0.5)  # lag alone counts, even on the baseline check
    assert not d.update(1.0, 0.1, 0.2)
    assert d.update(2.0, 0.2, 0.15)
    assert not d.update(3.0, 0.3, 0.1)  # at the threshold: not above it


def test_lag_and_cpu_mix_in_one_streak() -> None:
    d = SaturationDetector(sustain=2)
    d.update(0.0, 0.0, 0.0)
    assert not d.update(1.0, 0.99, 0.0)  # CPU hot
    assert d.update(2.0, 1.0, 0.3)  # lag hot, CPU cool: still two hot checks in a row


def test_clock_not_advancing_gives_no_cpu_fraction() -> None:
    d = SaturationDetector(sustain=1)
    d.update(5.0, 1.0, 0.0)
    assert not d.update(5.0, 3.0, 0.0)
    assert d.cpu_fraction is None


def test_detector_arguments() -> None:
    with pytest.raises(ValueError):
        SaturationDetector(sustain=0)


def test_generator_stats_of_this_process() -> None:
    g = generator_stats()
    assert set(g) == {"cpu_seconds", "peak_rss_bytes", "saturated"}
    assert g["cpu_seconds"] > 0
    assert g["peak_rss_bytes"] > 1_000_000  # a Python process is larger than 1 MB
    assert g["saturated"] is False
