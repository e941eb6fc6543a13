"""Counts per status come from trigger-kept rows: exact through every kind of write, and O(1) to read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository
from insider.domain import MessageStatus, Resolution

pytestmark = pytest.mark.postgres


async def query(pool: Pool, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall() if cur.description is not None else []


async def true_counts(pool: Pool) -> dict[MessageStatus, int]:
    result = dict.fromkeys(MessageStatus, 0)
    for status, n in await query(pool, "SELECT status, count(*) FROM messages GROUP BY status"):
        result[MessageStatus(status)] = n
    return result


async def test_counts_follow_every_kind_of_write(pg_repository: PostgresMessageRepository, pg_pool: Pool) -> None:
    repo = pg_repository
    assert await repo.counts() == dict.fromkeys(MessageStatus, 0)
    # The original service's statement, a multi-row insert, and the API's enqueue.
    await query(
        pg_pool,
        "INSERT INTO messages (recipient_phone, content, status) "
        "VALUES ('+905301234001', 'Message content 1', 'pending')",
    )
    await query(
        pg_pool,
        "INSERT INTO messages (recipient_phone, content) SELECT '+905301234002', 'bulk' FROM generate_series(1, 9)",
    )
    await repo.enqueue("+905301234003", "api")
    assert (await repo.counts())[MessageStatus.PENDING] == 11

    claimed = await repo.claim(6, 60)
    assert await repo.counts() == await true_counts(pg_pool)
    outcomes = [MessageStatus.SENT, MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.PENDING]
    await repo.resolve(
        [
            Resolution(m.id, m.claim_token, status, sent_at=m.created_at if status is MessageStatus.SENT else None)
            for m, status in zip(claimed, outcomes, strict=False)
        ]
    )
    counts = await repo.counts()
    assert counts == await true_counts(pg_pool)
    assert counts == dict.fromkeys(MessageStatus, 0) | {
        MessageStatus.PENDING: 6,
        MessageStatus.SENDING: 2,
        MessageStatus.SENT: 2,
        MessageStatus.FAILED: 1,
        MessageStatus.EXPIRED: 0,
        MessageStatus.CANCELLED: 0,
    }

    await query(pg_pool, "DELETE FROM messages WHERE status = 'failed'")
    assert await repo.counts() == await true_counts(pg_pool)
    await query(pg_pool, "TRUNCATE messages")
    assert await repo.counts() == dict.fromkeys(MessageStatus, 0)


async def test_counts_stay_exact_under_concurrent_writers(
    pg_repository: PostgresMessageRepository, pg_pool: Pool
) -> None:
    await query(
        pg_pool,
        "INSERT INTO messages (recipient_phone, content) "
        "SELECT '+905301234002', 'm' || g FROM generate_series(1, 300) g",
    )

    async def worker() -> None:
        for _ in range(10):
            claimed = await pg_repository.claim(5, 60)
            await pg_repository.resolve(
                [Resolution(m.id, m.claim_token, MessageStatus.SENT, sent_at=m.created_at) for m in claimed]
            )
            await pg_repository.enqueue("+905301234003", "more")

    await asyncio.gather(*(worker() for _ in range(6)))  # no deadlock, no lost update
    assert await pg_repository.counts() == await true_counts(pg_pool)


async def test_reading_counts_does_not_touch_the_messages_table(
    pg_pool: Pool, pg_repository: PostgresMessageRepository
) -> None:
    from insider.adapters.postgres import _q

    plan = "\n".join(row[0] for row in await query(pg_pool, "EXPLAIN " + _q("counts")))
    assert "messages " not in plan.replace("insider_message_counts", "")
