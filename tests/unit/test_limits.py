"""A provider's requests in flight in this process: a semaphore whose size follows its share."""

from __future__ import annotations

import asyncio

from insider.clock import FakeClock
from insider.providers.limits import Limiter


async def test_holds_up_to_its_capacity_and_lets_the_next_in_as_one_leaves(clock: FakeClock) -> None:
    limiter = Limiter(2, clock)
    assert await limiter.acquire(5.0) and await limiter.acquire(5.0)
    third = asyncio.ensure_future(limiter.acquire(5.0))
    await clock.settle()
    assert not third.done() and limiter.held == 2
    limiter.release()
    assert await third and limiter.held == 2


async def test_a_smaller_share_cuts_nothing_in_flight_and_later_ones_wait_for_it(clock: FakeClock) -> None:
    limiter = Limiter(3, clock)
    for _ in range(3):
        assert await limiter.acquire(5.0)
    limiter.resize(1)
    waiting = asyncio.ensure_future(limiter.acquire(5.0))
    limiter.release()
    limiter.release()
    await clock.settle()
    assert not waiting.done()  # one still held, and the share is one
    limiter.release()
    assert await waiting and limiter.held == 1


async def test_a_larger_share_lets_waiters_in_at_once(clock: FakeClock) -> None:
    limiter = Limiter(0, clock)
    waiters = [asyncio.ensure_future(limiter.acquire(5.0)) for _ in range(3)]
    await clock.settle()
    assert not any(w.done() for w in waiters)
    limiter.resize(2)
    await clock.settle()
    assert [w.done() for w in waiters] == [True, True, False]
    assert limiter.held == 2


async def test_no_place_within_the_deadline_is_false_and_holds_nothing(clock: FakeClock) -> None:
    limiter = Limiter(0, clock)  # the other processes hold the whole concurrency
    waiting = asyncio.ensure_future(limiter.acquire(2.0))
    await clock.settle()
    assert not waiting.done()
    await clock.advance(2.0)
    assert await waiting is False
    assert limiter.held == 0


async def test_a_cancelled_waiter_passes_its_wake_on(clock: FakeClock) -> None:
    limiter = Limiter(1, clock)
    assert await limiter.acquire(5.0)
    first = asyncio.ensure_future(limiter.acquire(5.0))
    second = asyncio.ensure_future(limiter.acquire(5.0))
    await clock.settle()
    limiter.release()  # wakes first...
    first.cancel()  # ...which is cancelled before it runs
    await clock.settle()
    assert first.cancelled()
    assert second.done() and second.result() is True and limiter.held == 1
