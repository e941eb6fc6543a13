"""The Redis sent-message cache against the real Redis: key format, fields, TTL, one round trip."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection

from insider.adapters.redis import RedisSentCache, open_redis
from insider.ports import SentEntry

pytestmark = pytest.mark.redis

TTL_S = 3600.0
ISTANBUL = timezone(timedelta(hours=3))


@pytest.fixture
async def client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    async with open_redis(redis_url) as c:
        try:
            yield c
        finally:
            keys = [k async for k in c.scan_iter(match=f"{redis_prefix}:*")]
            if keys:
                await c.delete(*keys)


@pytest.fixture
def cache(client: aioredis.Redis, redis_prefix: str) -> RedisSentCache:
    return RedisSentCache(client, prefix=redis_prefix, ttl_s=TTL_S)


class RoundTripSpy:
    """Counts what a client sends to Redis: one send is one round trip, whatever it carries."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sends = 0
        original = AbstractConnection.send_packed_command

        async def counted(conn: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            self.sends += 1
            await original(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)


async def test_remember_writes_exactly_the_three_fields_with_ttl(
    cache: RedisSentCache, client: aioredis.Redis, redis_prefix: str
) -> None:
    sent_at = datetime(2026, 1, 1, 3, 0, 0, 123456, tzinfo=ISTANBUL)

    await cache.remember([SentEntry(provider_message_id="prov-1", sent_at=sent_at, id=42)])

    key = f"{redis_prefix}:sent:prov-1"
    assert await client.hgetall(key) == {
        "messageId": "prov-1",
        "sentAt": "2026-01-01T00:00:00.123456+00:00",
        "id": "42",
    }
    ttl = await client.ttl(key)
    assert TTL_S - 60 <= ttl <= TTL_S


@pytest.mark.parametrize(
    "provider_message_id",
    ['quote " back \\ slash', "Çağrı 👋", "12345678901234567890", "1e3", "[]", "null"],
)
async def test_any_message_id_is_stored_as_it_came(
    cache: RedisSentCache, client: aioredis.Redis, redis_prefix: str, provider_message_id: str
) -> None:
    # The values cross into the script as JSON: text that looks like JSON numbers or
    # structures must arrive as the same text.
    await cache.remember([SentEntry(provider_message_id, datetime(2026, 1, 1, tzinfo=UTC), 7)])

    stored = await client.hgetall(f"{redis_prefix}:sent:{provider_message_id}")
    assert stored == {"messageId": provider_message_id, "sentAt": "2026-01-01T00:00:00+00:00", "id": "7"}


async def test_lookup_round_trip(cache: RedisSentCache) -> None:
    entry = SentEntry(provider_message_id="67f2f8a8-ea58-4ed0", sent_at=datetime.now(UTC), id=7)

    await cache.remember([entry])

    assert await cache.lookup("67f2f8a8-ea58-4ed0") == entry
    assert await cache.lookup("unknown") is None


async def test_lookup_with_a_client_that_does_not_decode(
    cache: RedisSentCache, redis_url: str, redis_prefix: str
) -> None:
    entry = SentEntry(provider_message_id="bytes-1", sent_at=datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC), id=9)
    await cache.remember([entry])
    raw = aioredis.Redis.from_url(redis_url)  # decode_responses=False: bytes come back
    try:
        assert await RedisSentCache(raw, prefix=redis_prefix).lookup("bytes-1") == entry
    finally:
        await raw.aclose()


async def test_unreadable_hash_is_not_an_entry(
    cache: RedisSentCache, client: aioredis.Redis, redis_prefix: str
) -> None:
    await client.hset(f"{redis_prefix}:sent:odd", mapping={"messageId": "odd", "sentAt": "yesterday", "id": "x"})

    assert await cache.lookup("odd") is None


async def test_default_prefix_is_the_shared_key_format(client: aioredis.Redis) -> None:
    provider_id = f"contract-{uuid.uuid4().hex}"
    key = f"insider:sent:{provider_id}"
    try:
        await RedisSentCache(client).remember(
            [SentEntry(provider_message_id=provider_id, sent_at=datetime(2026, 1, 1, tzinfo=UTC), id=1)]
        )
        assert await client.hgetall(key) == {"messageId": provider_id, "sentAt": "2026-01-01T00:00:00+00:00", "id": "1"}
        assert 7 * 86400 - 60 <= await client.ttl(key) <= 7 * 86400
    finally:
        await client.delete(key)


async def test_many_entries_in_one_round_trip(
    cache: RedisSentCache, client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.ping()  # connected before counting
    spy = RoundTripSpy(monkeypatch)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    entries = [SentEntry(f"prov-{i}", start + timedelta(seconds=i), i) for i in range(50)]

    await cache.remember(entries)

    assert spy.sends == 1
    for e in entries:
        assert await cache.lookup(e.provider_message_id) == e
        assert await client.ttl(f"{redis_prefix}:sent:{e.provider_message_id}") > 0


async def test_empty_list_makes_no_round_trip(
    cache: RedisSentCache, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.ping()
    spy = RoundTripSpy(monkeypatch)

    await cache.remember([])

    assert spy.sends == 0


async def test_ttl_is_whole_seconds_and_at_least_one(client: aioredis.Redis, redis_prefix: str) -> None:
    cache = RedisSentCache(client, prefix=redis_prefix, ttl_s=0.25)

    await cache.remember([SentEntry("short", datetime.now(UTC), 1)])

    assert 0 < await client.pttl(f"{redis_prefix}:sent:short") <= 1000


async def test_ping(cache: RedisSentCache) -> None:
    await cache.ping()


async def test_rejects_non_positive_ttl(client: aioredis.Redis) -> None:
    for ttl_s in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl_s"):
            RedisSentCache(client, ttl_s=ttl_s)


async def test_unreachable_redis_raises_within_the_socket_timeouts() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    async with open_redis(f"redis://127.0.0.1:{port}/0") as unreachable:
        cache = RedisSentCache(unreachable, prefix="unused")
        async with asyncio.timeout(15):
            with pytest.raises(redis.exceptions.ConnectionError):
                await cache.remember([SentEntry("p", datetime.now(UTC), 1)])
            with pytest.raises(redis.exceptions.ConnectionError):
                await cache.ping()


# --- issue 12, point 5: the original Go service's list (REDIS_KEY) ------------------------------


async def test_with_a_list_each_entry_is_also_pushed_as_the_originals_json_in_the_same_round_trip(
    client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    list_key = f"{redis_prefix}:sent:messages"
    await client.rpush(list_key, '{"messageId":"from-the-go-service","sentAt":"2026-03-02T15:00:00.123+03:00"}')
    cache = RedisSentCache(client, prefix=redis_prefix, ttl_s=TTL_S, sent_list=list_key)
    entries = [
        SentEntry("p-1", datetime(2026, 3, 3, 12, 0, 0, tzinfo=UTC), 1),
        SentEntry("p-2", datetime(2026, 3, 3, 15, 0, 0, 250000, tzinfo=ISTANBUL), 2),
    ]
    spy = RoundTripSpy(monkeypatch)
    await cache.remember(entries)
    assert spy.sends == 1

    assert await client.lrange(list_key, 0, -1) == [
        '{"messageId":"from-the-go-service","sentAt":"2026-03-02T15:00:00.123+03:00"}',  # kept, before ours
        '{"messageId":"p-1","sentAt":"2026-03-03T12:00:00Z"}',
        '{"messageId":"p-2","sentAt":"2026-03-03T12:00:00.25Z"}',
    ]
    assert await client.ttl(list_key) == -1  # the list never expires, as the original's did not
    assert await cache.lookup("p-2") == entries[1]


async def test_the_list_keeps_only_its_newest_items(client: aioredis.Redis, redis_prefix: str) -> None:
    list_key = f"{redis_prefix}:sent:messages"
    cache = RedisSentCache(client, prefix=redis_prefix, ttl_s=TTL_S, sent_list=list_key, sent_list_max=3)
    sent_at = datetime(2026, 3, 3, 12, 0, 0, tzinfo=UTC)
    await cache.remember([SentEntry(f"p-{n}", sent_at, n) for n in range(1, 3)])
    await cache.remember([SentEntry(f"p-{n}", sent_at, n) for n in range(3, 6)])
    items = await client.lrange(list_key, 0, -1)
    assert [json.loads(item)["messageId"] for item in items] == ["p-3", "p-4", "p-5"]


async def test_without_a_list_nothing_but_the_hashes_is_written(cache: RedisSentCache, client: aioredis.Redis) -> None:
    await cache.remember([SentEntry("p-1", datetime(2026, 3, 3, tzinfo=UTC), 1)])
    assert [k async for k in client.scan_iter(match=f"{cache.key('')}*")] == [cache.key("p-1")]


async def test_lookup_ids_reads_our_ids_of_many_provider_ids_in_one_round_trip(
    cache: RedisSentCache, client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    await cache.remember([SentEntry(f"p-{i}", now, 100 + i) for i in range(50)])
    await client.hset(f"{redis_prefix}:sent:p-odd", mapping={"messageId": "p-odd", "id": "not-a-number"})
    spy = RoundTripSpy(monkeypatch)

    found = await cache.lookup_ids([f"p-{i}" for i in range(50)] + ["p-missing", "p-odd"])

    assert found == {f"p-{i}": 100 + i for i in range(50)}  # missing and unreadable ones left out
    assert spy.sends == 1
    assert await cache.lookup_ids([]) == {}


async def test_lookup_ids_leaves_a_key_that_is_not_a_hash_to_the_database(
    cache: RedisSentCache, client: aioredis.Redis, redis_prefix: str
) -> None:
    # Another program's string under our name must not fail the other receipts' lookup.
    await cache.remember([SentEntry("p-1", datetime.now(UTC), 7)])
    await client.set(f"{redis_prefix}:sent:p-string", "not a hash")

    assert await cache.lookup_ids(["p-string", "p-1"]) == {"p-1": 7}


async def test_receipts_are_matched_by_the_database_when_redis_is_down(tmp_path: Any) -> None:
    from insider.adapters.sqlite import SqliteMessageRepository, open_sqlite
    from insider.clock import FakeClock
    from insider.domain import MessageStatus, Resolution
    from insider.receipt_parsing import Receipt, ReceiptResult
    from insider.receipt_writer import ReceiptWriter

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock()
    async with (
        open_sqlite(f"sqlite:///{tmp_path / 'x.db'}") as database,
        open_redis(f"redis://127.0.0.1:{port}/0") as down,
    ):
        repository = SqliteMessageRepository(database, clock)
        await repository.migrate()
        message = await repository.enqueue("+905301234001", "x")
        [claimed] = await repository.claim(1, 30.0)
        await repository.resolve(
            [Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=clock.now(), message_id="p-1")]
        )
        receipts = ReceiptWriter(repository, RedisSentCache(down, prefix="unused"), clock)
        async with asyncio.timeout(15), receipts.running():
            [outcome] = await receipts.submit([Receipt("p-1", "delivered", clock.now())])

        assert (outcome.result, outcome.message_id) == (ReceiptResult.APPLIED, message.id)
        got = await repository.get(message.id)
        assert got is not None and got.status is MessageStatus.DELIVERED


@pytest.mark.postgres
@pytest.mark.parametrize("poison", [str(2**63), "99999999999999999999", "0", "-1"])
async def test_a_poisoned_entry_fails_no_receipt_of_its_batch(
    cache: RedisSentCache, client: aioredis.Redis, redis_prefix: str, pg_repository: Any, poison: str
) -> None:
    # An id too large for the database's integer (or none of ours) under insider:sent:<messageId>:
    # that receipt is matched by the database's index, and the others of its write are applied.
    from insider.clock import SystemClock
    from insider.domain import MessageStatus, Resolution
    from insider.receipt_parsing import Receipt, ReceiptResult
    from insider.receipt_writer import ReceiptWriter

    for i in range(5):
        await pg_repository.enqueue("+905301234001", f"m{i}")
    claimed = await pg_repository.claim(5, 30.0)
    now = datetime.now(UTC)
    await pg_repository.resolve(
        [Resolution(m.id, m.claim_token, MessageStatus.SENT, sent_at=now, message_id=f"p-{m.id}") for m in claimed]
    )
    await cache.remember([SentEntry(f"p-{m.id}", now, m.id) for m in claimed])
    await client.hset(f"{redis_prefix}:sent:p-{claimed[2].id}", "id", poison)
    writes: list[int] = []

    class Recording:
        async def apply_receipts(self, receipts: Any, hints: Any) -> Any:
            writes.append(len(receipts))
            return await pg_repository.apply_receipts(receipts, hints)

    receipts = ReceiptWriter(Recording(), cache, SystemClock())  # type: ignore[arg-type]
    async with receipts.running():
        results = await asyncio.gather(
            *(receipts.submit([Receipt(f"p-{m.id}", "DELIVRD", datetime.now(UTC))]) for m in claimed)
        )

    assert writes == [5]  # one write for the five
    assert [(r[0].result, r[0].message_id) for r in results] == [(ReceiptResult.APPLIED, m.id) for m in claimed]
    for m in claimed:
        got = await pg_repository.get(m.id)
        assert got is not None and got.status is MessageStatus.DELIVERED
