"""One contract for every adapter of the SentCache port: the in-process cache and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from insider.adapters.memory import InMemorySentCache
from insider.adapters.redis import RedisSentCache
from insider.ports import SentCache, SentEntry
from tests.conftest import REDIS_URL, _unavailable

START = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[SentCache]:
    if request.param == "memory":
        yield InMemorySentCache()
        return
    prefix: str = request.getfixturevalue("redis_prefix")
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        _unavailable(f"Redis at {REDIS_URL}", exc)
    try:
        yield RedisSentCache(client, prefix=prefix, ttl_s=60)
    finally:
        async for key in client.scan_iter(f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


async def test_round_trip_keeps_every_field(cache: SentCache) -> None:
    entry = SentEntry("pm-1", START, 42)
    await cache.remember([entry])
    assert await cache.lookup("pm-1") == entry


async def test_a_batch_at_once_and_unknown_ids(cache: SentCache) -> None:
    entries = [SentEntry(f"pm-{i}", START + timedelta(seconds=i), i) for i in range(100)]
    await cache.remember(entries)
    await cache.remember([])
    for e in entries:
        assert await cache.lookup(e.provider_message_id) == e
    assert await cache.lookup("never-sent") is None


async def test_the_latest_write_wins(cache: SentCache) -> None:
    await cache.remember([SentEntry("pm-1", START, 1)])
    await cache.remember([SentEntry("pm-1", START + timedelta(minutes=1), 1)])
    found = await cache.lookup("pm-1")
    assert found is not None and found.sent_at == START + timedelta(minutes=1)


async def test_ping(cache: SentCache) -> None:
    await cache.ping()
