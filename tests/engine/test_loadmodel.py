"""Load models: schedules on a virtual clock, length distributions, storm plans."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from loadgen.engine.loadmodel import (
    ClosedModel,
    ExponentialLength,
    FixedLength,
    OpenModel,
    Scheduler,
    StormMode,
    StormPlan,
    UniformLength,
    UntilEnd,
    parse_length,
    parse_seconds,
    parse_think_time,
    take_due,
)


def drive(sched: Scheduler, until_s: float, step_s: float, active: int = 0) -> list[float]:
    """Ask every step_s like a swarm would; return the scheduled times handed out."""
    out: list[float] = []
    for i in range(round(until_s / step_s) + 1):
        due = take_due(sched, i * step_s, active + len(out))
        out.extend(s.scheduled_s for s in due.starts)
    return out


# -- closed model ---------------------------------------------------------------


def test_closed_ramp_reaches_target_at_ramp_rate_and_stops() -> None:
    model = ClosedModel(50, 10.0, start_s=0.0)
    starts = drive(model, until_s=20.0, step_s=0.01)
    assert len(starts) == 50
    assert starts == pytest.approx([k / 10.0 for k in range(50)])
    # nothing more once the target is active
    assert model.next_start(100.0, 50) is None


def test_closed_ramp_count_follows_rate_over_time() -> None:
    model = ClosedModel(1000, 20.0, start_s=0.0)
    starts = drive(model, until_s=10.0, step_s=0.05)
    # at t = 10 s: starts at 0, 0.05, ..., 10.0 -> 201
    assert len(starts) == 201
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g == pytest.approx(0.05) for g in gaps)


def test_closed_replaces_ended_sessions_at_once() -> None:
    model = ClosedModel(5, math.inf, start_s=0.0)
    first = take_due(model, 0.0, 0)
    assert len(first.starts) == 5
    assert first.wake_s is None  # wait for a session to end
    # three sessions end at t = 42
    again = take_due(model, 42.0, 2)
    assert [s.scheduled_s for s in again.starts] == [42.0, 42.0, 42.0]
    assert all(s.lateness_s == 0 for s in again.starts)
    assert model.next_start(43.0, 5) is None
    assert not model.exhausted


def test_closed_replacement_during_ramp_does_not_speed_up_the_ramp() -> None:
    model = ClosedModel(10, 1.0, start_s=0.0)
    assert drive(model, until_s=2.0, step_s=0.5) == [0.0, 1.0, 2.0]
    # one of the three failed at 2.2: replaced now, the ramp keeps its pace
    assert model.next_start(2.2, 2) == 2.2
    assert model.next_start(2.2, 3) == 3.0  # future: not consumed
    assert model.next_start(2.9, 3) == 3.0
    assert model.next_start(3.0, 3) == 3.0  # due now: consumed
    assert model.next_start(3.0, 4) == 4.0


def test_closed_anchors_on_first_call() -> None:
    model = ClosedModel(3, 2.0)
    assert model.next_start(100.0, 0) == 100.0
    assert model.next_start(100.0, 1) == 100.5


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan])
def test_closed_rejects_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="ramp_rate_per_s"):
        ClosedModel(10, rate)


# -- open model -----------------------------------------------------------------


def test_open_fixed_rate_regardless_of_active() -> None:
    model = OpenModel(5.0, start_s=0.0)
    starts = drive(model, until_s=10.0, step_s=0.1, active=1_000_000)
    assert len(starts) == 51  # 0, 0.2, ..., 10.0
    assert starts == pytest.approx([k * 0.2 for k in range(51)])


def test_open_poisson_rate_with_seeded_rng() -> None:
    model = OpenModel(100.0, rng=random.Random(1234), start_s=0.0)
    starts = drive(model, until_s=100.0, step_s=0.5)
    assert len(starts) == pytest.approx(10_000, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert statistics.fmean(gaps) == pytest.approx(0.01, rel=0.03)
    # exponential gaps: the standard deviation is close to the mean
    assert statistics.stdev(gaps) == pytest.approx(0.01, rel=0.06)


def test_open_poisson_is_reproducible() -> None:
    a = drive(OpenModel(10.0, rng=random.Random(7), start_s=0.0), 5.0, 0.1)
    b = drive(OpenModel(10.0, rng=random.Random(7), start_s=0.0), 5.0, 0.1)
    assert a == b


def test_open_late_starts_keep_scheduled_times_and_report_lateness() -> None:
    model = OpenModel(2.0, start_s=0.0)
    # the swarm was stuck until t = 10: every missed arrival comes out at once
    due = take_due(model, 10.0, 0)
    assert [s.scheduled_s for s in due.starts] == [k * 0.5 for k in range(21)]
    assert [s.lateness_s for s in due.starts] == pytest.approx([10.0 - k * 0.5 for k in range(21)])
    assert due.starts[0].released_s == 10.0
    assert due.wake_s == 10.5
    # a later arrival on time has no lateness
    on_time = take_due(model, 10.5, 21)
    assert [(s.scheduled_s, s.lateness_s) for s in on_time.starts] == [(10.5, 0.0)]


def test_open_max_sessions_exhausts() -> None:
    model = OpenModel(10.0, 25, start_s=0.0)
    starts = drive(model, until_s=100.0, step_s=1.0)
    assert len(starts) == 25
    assert model.exhausted
    assert model.next_start(200.0, 0) is None
    assert take_due(model, 200.0, 0).exhausted


def test_open_max_active_delays_without_dropping() -> None:
    model = OpenModel(1.0, max_active=2, start_s=0.0)
    assert take_due(model, 0.0, 0).wake_s == 1.0
    assert model.next_start(1.0, 1) == 1.0
    # cap reached: the arrival at 2.0 waits, nothing consumed
    assert model.next_start(2.0, 2) is None
    assert model.next_start(5.0, 2) is None
    # a session ends at 5.0: the waiting arrival keeps its time (3 s late)
    due = take_due(model, 5.0, 1)
    assert [(s.scheduled_s, s.lateness_s) for s in due.starts] == [(2.0, 3.0)]
    assert due.wake_s is None  # still at the cap


def test_take_due_limit_bounds_one_call() -> None:
    model = OpenModel(1000.0, start_s=0.0)
    due = take_due(model, 10.0, 0, limit=100)
    assert len(due.starts) == 100
    assert due.wake_s == 10.0  # more are due: ask again now
    assert take_due(model, 10.0, 100, limit=100).starts[0].scheduled_s == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arrival_rate_per_s": 0.0}, "arrival_rate_per_s"),
        ({"arrival_rate_per_s": math.inf}, "finite"),
        ({"arrival_rate_per_s": 1.0, "max_sessions": -1}, "max_sessions"),
        ({"arrival_rate_per_s": 1.0, "max_active": 0}, "max_active"),
    ],
)
def test_open_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OpenModel(**kwargs)  # type: ignore[arg-type]


# -- lengths ----------------------------------------------------------------------


def test_fixed_and_until_end() -> None:
    rng = random.Random(0)
    assert FixedLength(300.0).sample(rng) == 300.0
    assert UntilEnd().sample(rng) is None


def test_exponential_mean_within_tolerance() -> None:
    rng = random.Random(42)
    samples = [ExponentialLength(60.0).sample(rng) for _ in range(20_000)]
    assert min(samples) >= 0
    assert statistics.fmean(samples) == pytest.approx(60.0, rel=0.03)


def test_uniform_bounds_and_mean() -> None:
    rng = random.Random(42)
    dist = UniformLength(30.0, 90.0)
    samples = [dist.sample(rng) for _ in range(20_000)]
    assert min(samples) >= 30.0
    assert max(samples) <= 90.0
    assert statistics.fmean(samples) == pytest.approx(60.0, rel=0.02)
    assert min(samples) < 31.0
    assert max(samples) > 89.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300", FixedLength(300.0)),
        (" 2.5 ", FixedLength(2.5)),
        ("5m", FixedLength(300.0)),
        ("250ms", FixedLength(0.25)),
        ("1h", FixedLength(3600.0)),
        ("0", FixedLength(0.0)),
        ("exp:60", ExponentialLength(60.0)),
        ("EXP:1m", ExponentialLength(60.0)),
        ("uniform:30-90", UniformLength(30.0, 90.0)),
        ("uniform:30s-1.5m", UniformLength(30.0, 90.0)),
        ("until-end", UntilEnd()),
    ],
)
def test_parse_length(text: str, expected: object) -> None:
    assert parse_length(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not a duration"),
        ("abc", "not a duration"),
        ("-5", "not a duration"),
        ("5 days", "not a duration"),
        ("nan", "not a duration"),
        ("exp:", "not a duration"),
        ("exp:0", "mean must be finite and > 0"),
        ("uniform:30", "uniform needs LO-HI"),
        ("uniform:90-30", "lo <= hi"),
        ("gauss:5", "unknown distribution 'gauss'"),
    ],
)
def test_parse_length_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_length(text)
    assert "until-end" in str(info.value)  # the message lists the accepted forms


def test_think_time_refuses_until_end() -> None:
    assert parse_think_time("exp:5") == ExponentialLength(5.0)
    with pytest.raises(ValueError, match="not allowed") as info:
        parse_think_time("until-end")
    assert '"until-end"' not in str(info.value).split("; use ")[1]


def test_parse_seconds() -> None:
    assert parse_seconds("1.5") == 1.5
    assert parse_seconds(".5s") == 0.5
    assert parse_seconds("2min") == 120.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_seconds("1e3")


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_length_constructors_validate(bad: float) -> None:
    with pytest.raises(ValueError):
        FixedLength(bad)
    with pytest.raises(ValueError):
        ExponentialLength(bad)
    with pytest.raises(ValueError):
        UniformLength(0.0, bad)


# -- storms -----------------------------------------------------------------------


def test_storm_plan_parse() -> None:
    plan = StormPlan.parse("at=30,jitter=2,backoff=1")
    assert plan == StormPlan(
        at_s=30.0, jitter_s=2.0, backoff_s=1.0, retries=3, mode=StormMode.COOKIE
    )
    assert StormPlan.parse(" at = 1m , mode = REAUTH , retries=0, backoff=250ms") == StormPlan(
        at_s=60.0, backoff_s=0.25, retries=0, mode=StormMode.REAUTH
    )
    assert StormPlan.parse("at=5").mode == "cookie"  # a StrEnum compares with strings


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "at=SECONDS is required"),
        ("jitter=2", "at=SECONDS is required"),
        ("at=30,at=31", "given twice"),
        ("at=30,speed=3", "unknown key 'speed'"),
        ("at=30,jitter", "not KEY=VALUE"),
        ("at=", "not KEY=VALUE"),
        ("at=soon", "not a duration"),
        ("at=30,mode=relogin", "cookie or reauth"),
        ("at=30,retries=-1", "whole number"),
        ("at=30,retries=1.5", "whole number"),
    ],
)
def test_storm_plan_parse_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StormPlan.parse(text)


def test_storm_delay_bounds_and_spread() -> None:
    rng = random.Random(3)
    plan = StormPlan(at_s=30.0, jitter_s=2.0, backoff_s=1.0)
    delays = [plan.storm_delay(rng) for _ in range(5000)]
    assert min(delays) >= 0.0
    assert max(delays) <= 2.0
    assert statistics.fmean(delays) == pytest.approx(1.0, rel=0.04)
    # no jitter: everybody at the same instant (the worst case)
    assert {StormPlan(at_s=0.0).storm_delay(rng) for _ in range(10)} == {0.0}


def test_storm_retry_delay_is_exponential() -> None:
    plan = StormPlan(at_s=0.0, backoff_s=0.5)
    assert [plan.retry_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(ValueError):
        plan.retry_delay(0)


def test_storm_plan_validates() -> None:
    with pytest.raises(ValueError, match="jitter_s"):
        StormPlan(at_s=1.0, jitter_s=-1.0)
    with pytest.raises(ValueError, match="retries"):
        StormPlan(at_s=1.0, retries=-1)
