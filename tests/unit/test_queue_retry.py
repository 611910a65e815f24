"""RetrySchedule: exponential backoff with jitter, capped, ending at the lifetime; pure (time and RNG passed in)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from hisp.errors import ConfigError
from hisp.ports import RetrySchedule

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_no_jitter_doubles_up_to_the_cap() -> None:
    schedule = RetrySchedule(
        initial=timedelta(minutes=1), factor=2, maximum=timedelta(minutes=10), lifetime=timedelta(days=1), jitter=0
    )
    rng = random.Random(1)
    delays = [schedule.delay(n, rng) for n in range(1, 8)]
    assert delays == [timedelta(minutes=m) for m in (1, 2, 4, 8, 10, 10, 10)]
    assert schedule.delay(0, rng) == timedelta(minutes=1)
    assert schedule.delay(10_000, rng) == timedelta(minutes=10)  # no float overflow for huge attempt counts


def test_jitter_stays_in_bounds_and_is_reproducible() -> None:
    schedule = RetrySchedule(initial=timedelta(minutes=10), jitter=0.25)
    first = [schedule.delay(1, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same delay
    rng = random.Random(42)
    seen = {schedule.delay(1, rng) for _ in range(200)}
    assert all(timedelta(minutes=7.5) <= d <= timedelta(minutes=12.5) for d in seen)
    assert len(seen) > 100  # actually spread


def test_next_attempt_never_passes_the_lifetime() -> None:
    schedule = RetrySchedule(
        initial=timedelta(hours=1), maximum=timedelta(hours=8), lifetime=timedelta(hours=10), jitter=0.1
    )
    rng = random.Random(3)
    now, attempts, times = T0, 1, []
    while (next_at := schedule.next_attempt_at(now, T0, attempts, rng)) is not None:
        assert now < next_at <= T0 + schedule.lifetime
        times.append(next_at)
        now, attempts = next_at, attempts + 1
    assert times[-1] == T0 + schedule.lifetime  # the last retry is at the deadline, then it bounces
    assert schedule.next_attempt_at(T0 + schedule.lifetime, T0, 1, rng) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": timedelta(0)},
        {"initial": timedelta(hours=5), "maximum": timedelta(hours=1)},
        {"factor": 0.5},
        {"lifetime": timedelta(0)},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
    ids=["zero-initial", "max-below-initial", "shrinking", "no-lifetime", "jitter-1", "negative-jitter"],
)
def test_bad_schedules_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RetrySchedule(**kwargs)  # type: ignore[arg-type]
