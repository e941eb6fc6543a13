"""Frequency caps on every SQL adapter (SQLite and PostgreSQL): the repository's admission (what
counts, the earliest time, the index), the sender with the cap gate, and on PostgreSQL two
processes (two pools) admitting for the same recipients at once, never over the cap."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from insider.adapters.memory import InMemorySmsClient
from insider.adapters.postgres import Pool, PostgresMessageRepository, open_postgres_pool
from insider.adapters.postgres import _q as postgres_query
from insider.caps import CapGate, FrequencyCap
from insider.clock import SystemClock
from insider.consent import CAP
from insider.domain import Category, MessageStatus, NewMessage, Resolution
from insider.sender import BatchSender, SenderOptions
from tests.integration import test_message_features_contract as features
from tests.integration.test_message_features_contract import LEASE_S, OTHER, PHONE, Backend

sqlite_backend = features.sqlite_backend
postgres_backend = features.postgres_backend
backend = features.backend

HOUR_S = 3600.0


def commercial(content: str, to: str = PHONE) -> NewMessage:
    return NewMessage.of(to, content, category=Category.COMMERCIAL)


async def test_admission_counts_what_reaches_the_recipient_in_the_window(backend: Backend) -> None:
    repo = backend.repository
    stored = (await repo.enqueue_many([commercial(f"c{i}") for i in range(4)] + [commercial("o", OTHER)])).messages
    claimed = await repo.claim(10, LEASE_S)
    assert len(claimed) == 5
    candidates = [(m.id, m.recipient_phone) for m in claimed]
    before = backend.now()
    decided = await repo.admit_capped(candidates, 2, HOUR_S)
    after = backend.now()

    c0, c1, c2, c3, o = (m.id for m in stored)
    assert (decided[c0], decided[c1], decided[o]) == (None, None, None)  # in the batch's order, per number
    rows = {m.id: m for m in [await repo.get(i) for i in (c0, c1, c2, c3, o)] if m is not None}
    admitted_at = rows[c0].cap_admitted_at
    assert admitted_at is not None and before - timedelta(seconds=1) <= admitted_at <= after + timedelta(seconds=1)
    assert rows[c1].cap_admitted_at == admitted_at and rows[o].cap_admitted_at == admitted_at
    # Over the cap: the earliest time the count allows another, the oldest admission + the window.
    assert decided[c2] == decided[c3] == admitted_at + timedelta(hours=1)
    assert rows[c2].cap_admitted_at is None and rows[c3].cap_admitted_at is None

    # c1 goes back to pending (a retry): it reached nobody, so its place is free again for c2.
    await repo.resolve(
        [Resolution(c1, rows[c1].claim_token, MessageStatus.PENDING, last_error="HTTP 503", retry_in_s=3600)]
    )
    again = await repo.admit_capped([(c2, PHONE), (c3, PHONE)], 2, HOUR_S)
    assert again[c2] is None and again[c3] == admitted_at + timedelta(hours=1)


async def test_a_failed_message_never_counts(backend: Backend) -> None:
    repo = backend.repository
    first, second, third = (await repo.enqueue_many([commercial("a"), commercial("b"), commercial("c")])).messages
    claimed = {m.id: m for m in await repo.claim(10, LEASE_S)}
    assert await repo.admit_capped([(first.id, PHONE)], 1, HOUR_S) == {first.id: None}
    await repo.resolve(
        [Resolution(first.id, claimed[first.id].claim_token, MessageStatus.FAILED, last_error="HTTP 400")]
    )
    assert await repo.admit_capped([(second.id, PHONE)], 1, HOUR_S) == {second.id: None}
    decided = await repo.admit_capped([(third.id, PHONE)], 1, HOUR_S)
    assert decided[third.id] is not None  # the second one is being sent: it counts


@pytest.mark.postgres
async def test_the_admissions_are_read_through_the_cap_index(fresh_postgres_url: str) -> None:
    # A database of its own: the statistics of its table must not steer other tests' plans.
    async with (
        open_postgres_pool(fresh_postgres_url, min_size=1, max_size=2) as pool,
        pool.connection() as conn,
    ):
        await PostgresMessageRepository(pool).migrate()
        # A table of some size: 20,000 sent messages to 2,000 numbers, a third of them commercial and admitted.
        await conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, category, sent_at, cap_admitted_at)"
            " SELECT '+9053' || lpad((n % 2000)::text, 8, '0'), 'x', 'sent',"
            " CASE WHEN n % 3 = 0 THEN 'commercial' ELSE 'transactional' END, now() - n * interval '1 minute',"
            " CASE WHEN n % 3 = 0 THEN now() - n * interval '1 minute' END"
            " FROM generate_series(1, 20000) AS n"
        )
        await conn.execute("ANALYZE messages")
        params = {
            "phones": '["+905300000003", "+905300000006"]',
            "ids": "[1, 2]",
            "since": datetime.now(UTC) - timedelta(hours=24),
        }
        cur = await conn.execute("EXPLAIN " + postgres_query("cap_admissions"), params)
        plan = "\n".join(row[0] for row in await cur.fetchall())
    # One range of the index per recipient: the number and the window both bound the scan.
    assert re.search(
        r"using messages_cap_idx .*\n\s+Index Cond: \(\(recipient_phone = ANY .*cap_admitted_at >", plan
    ), plan


async def test_the_sender_with_the_cap_sends_n_and_the_rest_wait(backend: Backend) -> None:
    repo = backend.repository
    clock = backend.clock or SystemClock()
    stored = (await repo.enqueue_many([commercial(f"c{i}") for i in range(3)])).messages
    sms = InMemorySmsClient()
    gate = CapGate(repo, FrequencyCap(2, HOUR_S, "1h"))
    report = await BatchSender(repo, sms, None, clock, SenderOptions(batch_size=10), gates=[gate]).run_batch()
    assert (report.sent, report.deferred) == (2, 1)
    assert sorted(r.content for r in sms.requests) == ["c0", "c1"]
    first = await repo.get(stored[0].id)
    waiting = await repo.get(stored[2].id)
    assert first is not None and first.cap_admitted_at is not None
    assert waiting is not None and (waiting.status, waiting.wait_reason) == (MessageStatus.PENDING, CAP)
    assert waiting.waiting_until is not None
    assert abs((waiting.waiting_until - (first.cap_admitted_at + timedelta(hours=1))).total_seconds()) < 2
    assert await repo.claim(10, LEASE_S) == []  # waiting: not due


# --- two processes on PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
async def other_pool(postgres_url: str) -> AsyncIterator[Pool]:
    """A second pool on the same database: another process's connections."""
    async with open_postgres_pool(postgres_url, min_size=1, max_size=10) as pool:
        await pool.wait(timeout=10.0)
        yield pool


@pytest.mark.postgres
async def test_two_processes_admitting_at_once_never_go_over_the_cap(
    pg_repository: PostgresMessageRepository, other_pool: Pool
) -> None:
    one = pg_repository
    two = PostgresMessageRepository(other_pool)
    limit, rounds = 2, 40

    async def claim_and_admit(repo: PostgresMessageRepository) -> dict[int, datetime | None]:
        claimed = await repo.claim(4, LEASE_S)
        return await repo.admit_capped([(m.id, m.recipient_phone) for m in claimed], limit, HOUR_S)

    for round_number in range(rounds):
        # Two numbers of this round's own, their messages interleaved: each process's batch holds
        # both, in either order (the locks are taken in one order whatever the batch's).
        mine = [f"+9053{round_number:03d}{n:05d}" for n in range(2)]
        await one.enqueue_many([commercial(f"r{round_number}-{i}", to=mine[i % 2]) for i in range(8)])
        first, second = await asyncio.gather(claim_and_admit(one), claim_and_admit(two))
        assert not first.keys() & second.keys()  # each message claimed by one process
        assert len(first | second) == 8
        assert sum(1 for until in (first | second).values() if until is None) == limit * 2, (first, second)
        async with other_pool.connection() as conn:
            cur = await conn.execute(
                "SELECT recipient_phone, count(*) FROM messages WHERE cap_admitted_at IS NOT NULL"
                " AND recipient_phone = ANY(%s) GROUP BY recipient_phone",
                (mine,),
            )
            assert dict(await cur.fetchall()) == dict.fromkeys(mine, limit), round_number


@pytest.mark.postgres
async def test_a_batch_to_more_numbers_than_the_lock_table_has_room_for_is_admitted(
    pg_repository: PostgresMessageRepository, other_pool: Pool
) -> None:
    # PostgreSQL's lock table, shared by every session, has room for about
    # max_locks_per_transaction (64) x max_connections (100) locks by default, and some more:
    # here another session holds 8,000 advisory locks while 8,000 numbers are admitted, which
    # one transaction holding a lock per number could not do.
    count = 8000
    await pg_repository.load([commercial("sale", to=f"+9053{n:08d}") for n in range(count)])
    claimed = await pg_repository.claim(count, LEASE_S)
    assert len(claimed) == count
    async with other_pool.connection() as hog, hog.transaction():
        await hog.execute("SELECT count(pg_advisory_xact_lock(1, n)) FROM generate_series(1, %s) AS n", (count,))
        decided = await pg_repository.admit_capped([(m.id, m.recipient_phone) for m in claimed], 1, HOUR_S)
    assert len(decided) == count and set(decided.values()) == {None}
