"""The fake clock that drives the schedule in tests, and the real one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from insider.clock import FakeClock, SystemClock


async def test_time_moves_only_when_advanced() -> None:
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    clock = FakeClock(start)

    assert clock.monotonic() == 0.0
    assert clock.now() == start
    await clock.advance(90)
    assert clock.monotonic() == 90.0
    assert clock.now() == start + timedelta(seconds=90)
    assert clock.now().tzinfo is UTC


async def test_sleepers_wake_in_order_at_their_time() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in [("c", 30), ("a", 10), ("b", 20)]]
    await clock.settle()
    assert clock.sleepers == 3
    assert clock.next_wake() == 10

    await clock.advance(9.5)
    assert woke == []
    await clock.advance(15)  # to 24.5: a and b, each seeing its own wake time
    assert woke == [("a", 10.0), ("b", 20.0)]
    assert clock.monotonic() == 24.5
    await clock.advance(10)
    assert woke == [("a", 10.0), ("b", 20.0), ("c", 30.0)]
    await asyncio.gather(*tasks)


async def test_a_sleeper_that_sleeps_again_is_woken_within_the_same_advance() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(10)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(ticker())
    await clock.advance(35)
    assert ticks == [10.0, 20.0, 30.0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_sleeper_is_not_counted_and_not_woken() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(5))
    await clock.settle()
    assert clock.sleepers == 1

    task.cancel()
    await clock.settle()
    assert clock.sleepers == 0
    assert clock.next_wake() is None
    await clock.advance(10)  # must not trip over the cancelled future
    assert task.cancelled()


async def test_sleeping_zero_or_less_returns_at_once() -> None:
    clock = FakeClock()
    await clock.sleep(0)
    await clock.sleep(-3)
    assert clock.sleepers == 0
    assert clock.monotonic() == 0.0


@pytest.mark.parametrize("seconds", [-1.0, float("nan")])
async def test_the_fake_clock_never_goes_back(seconds: float) -> None:
    clock = FakeClock()
    await clock.advance(5)
    with pytest.raises(ValueError):
        await clock.advance(seconds)
    assert clock.monotonic() == 5.0


async def test_system_clock_gives_aware_utc_and_monotonic_time() -> None:
    clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(-1)  # negative is no sleep, not an error
    assert clock.monotonic() >= before
    assert clock.now().tzinfo is UTC
