"""The in-process cache (the embedded default when no Redis is set) is bounded like Redis."""

from __future__ import annotations

from datetime import UTC, datetime

from insider.adapters.memory import InMemorySentCache
from insider.clock import FakeClock
from insider.ports import SentEntry

SENT_AT = datetime(2026, 1, 1, tzinfo=UTC)


def entry(i: int) -> SentEntry:
    return SentEntry(f"pm-{i}", SENT_AT, i)


async def test_entries_expire_after_the_ttl(clock: FakeClock) -> None:
    cache = InMemorySentCache(ttl_s=60, clock=clock)
    await cache.remember([entry(1)])
    await clock.advance(59)
    assert await cache.lookup("pm-1") == entry(1)
    await clock.advance(1)
    assert await cache.lookup("pm-1") is None
    assert cache.entries == {}


async def test_the_oldest_entries_go_past_the_bound(clock: FakeClock) -> None:
    cache = InMemorySentCache(max_entries=3, clock=clock)
    await cache.remember([entry(i) for i in range(5)])
    assert list(cache.entries) == ["pm-2", "pm-3", "pm-4"]
    assert await cache.lookup("pm-0") is None
    await cache.remember([entry(2)])  # written again: the newest now
    await cache.remember([entry(5)])
    assert list(cache.entries) == ["pm-4", "pm-2", "pm-5"]
