"""What only the PostgreSQL repository has: migrations, several processes at once, outages."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository, load_migrations, open_postgres_pool
from insider.domain import MessageStatus, Resolution
from insider.ports import RepositoryUnavailable
from insider.receipt_parsing import Receipt, ReceiptResult
from tests.conftest import eventually

pytestmark = pytest.mark.postgres

GO_INSERT = (
    "INSERT INTO messages (recipient_phone, content, status) VALUES ('+905301234001', 'Message content 1', 'pending')"
)

# A hand-made table with a serial id and a varchar status (not the original Go service's,
# whose table tests/integration/test_original_database.py builds): upgraded in place too.
GO_SCHEMA = """
CREATE TABLE messages (
    id SERIAL PRIMARY KEY,
    recipient_phone VARCHAR(20) NOT NULL,
    content TEXT NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    sent_at TIMESTAMP,
    message_id VARCHAR(255)
)
"""


@asynccontextmanager
async def pools(url: str, n: int, *, min_size: int = 1, max_size: int = 4) -> AsyncIterator[list[Pool]]:
    """``n`` pools on ``url``, as ``n`` processes would have, ready to use."""
    async with AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(open_postgres_pool(url, min_size=min_size, max_size=max_size))
            for _ in range(n)
        ]
        for pool in opened:
            await pool.wait(timeout=10.0)
        yield opened


async def query(pool: Pool, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall() if cur.description is not None else []


async def columns(pool: Pool) -> dict[str, str]:
    rows = await query(
        pool,
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'messages'",
    )
    return {name: data_type for name, data_type in rows}


async def test_migrate_creates_the_schema_other_programs_rely_on(
    pg_repository: PostgresMessageRepository, pg_pool: Pool
) -> None:
    assert await columns(pg_pool) == {
        "id": "bigint",
        "recipient_phone": "text",
        "content": "text",
        "status": "text",
        "created_at": "timestamp with time zone",
        "sent_at": "timestamp with time zone",
        "message_id": "text",
        "last_error": "text",
        "attempts": "integer",
        "next_attempt_at": "timestamp with time zone",
        "lease_expires_at": "timestamp with time zone",
        "claim_token": "uuid",
        "idempotency_key": "uuid",
        "updated_at": "timestamp with time zone",
        "uuid": "uuid",
        "send_at": "timestamp with time zone",
        "priority": "smallint",
        "valid_until": "timestamp with time zone",
        "encoding": "text",
        "segments": "integer",
        "delivered_at": "timestamp with time zone",
        "delivery_status": "text",
        "delivery_error": "text",
        "provider": "text",
        "provider_pin": "text",
        "cost": "double precision",
        "category": "text",
        "suppression_reason": "text",
        "wait_reason": "text",
        "respect_sending_hours": "boolean",
        "consent_reply": "boolean",
        "cap_admitted_at": "timestamp with time zone",
    }
    indexes = {
        name for (name,) in await query(pg_pool, "SELECT indexname FROM pg_indexes WHERE tablename = 'messages'")
    }
    assert {
        "messages_due_idx",
        "messages_lease_idx",
        "messages_valid_until_idx",
        "messages_sent_idx",
        "messages_status_created_idx",
        "messages_to_sent_idx",
        "messages_to_status_created_idx",
        "messages_message_id_idx",
        "messages_accepted_idx",
        "messages_to_accepted_idx",
    } <= indexes
    versions = [v for (v,) in await query(pg_pool, "SELECT version FROM insider_schema_migrations ORDER BY version")]
    assert versions == [version for version, _, _ in load_migrations()]
    with pytest.raises(psycopg.errors.CheckViolation):
        await query(pg_pool, "INSERT INTO messages (recipient_phone, content, status) VALUES ('+1', 'x', 'lost')")


async def test_migrate_again_changes_nothing(pg_repository: PostgresMessageRepository, pg_pool: Pool) -> None:
    message = await pg_repository.enqueue("+905301234001", "content")
    before = await query(pg_pool, "SELECT version, applied_at FROM insider_schema_migrations ORDER BY version")

    await pg_repository.migrate()

    assert await query(pg_pool, "SELECT version, applied_at FROM insider_schema_migrations ORDER BY version") == before
    assert await pg_repository.get(message.id) == message


async def test_the_go_services_insert_statement_works(pg_repository: PostgresMessageRepository, pg_pool: Pool) -> None:
    await query(pg_pool, GO_INSERT + " RETURNING id")

    [claimed] = await pg_repository.claim(10, 30.0)

    assert (claimed.id, claimed.recipient_phone, claimed.content) == (1, "+905301234001", "Message content 1")
    assert claimed.attempts == 1
    assert uuid.UUID(claimed.idempotency_key)


async def test_concurrent_migrations_on_a_fresh_database(fresh_postgres_url: str) -> None:
    async with pools(fresh_postgres_url, 4) as opened:
        repositories = [PostgresMessageRepository(pool) for pool in opened]

        await asyncio.gather(*(repository.migrate() for repository in repositories for _ in range(2)))

        versions = [v for (v,) in await query(opened[0], "SELECT version FROM insider_schema_migrations")]
        assert sorted(versions) == [version for version, _, _ in load_migrations()]
        message = await repositories[1].enqueue("+905301234001", "content")
        assert await repositories[2].get(message.id) == message


async def test_migrate_upgrades_a_table_with_a_serial_id_in_place(fresh_postgres_url: str) -> None:
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        conn.execute(GO_SCHEMA)
        conn.execute(GO_INSERT)
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, created_at, sent_at, message_id)"
            " VALUES ('+905301234002', 'Message content 2', 'sent',"
            " '2025-06-01 10:00:00', '2025-06-01 10:00:05', 'go-provider-id')"
        )
    async with pools(fresh_postgres_url, 1) as [pool]:
        repository = PostgresMessageRepository(pool)

        await repository.migrate()
        await repository.migrate()

        assert (await columns(pool))["id"] == "bigint"
        assert (await columns(pool))["created_at"] == "timestamp with time zone"
        old_sent = await repository.get(2)
        assert old_sent is not None
        assert old_sent.status is MessageStatus.SENT
        assert old_sent.created_at == datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
        assert old_sent.sent_at == datetime(2025, 6, 1, 10, 0, 5, tzinfo=UTC)
        assert old_sent.message_id == "go-provider-id"
        assert old_sent.attempts == 1  # sent before the upgrade: one attempt
        # The old rows are sent like any other, each with its own key.
        [old_pending] = await repository.claim(10, 30.0)
        assert (old_pending.id, old_pending.status) == (1, MessageStatus.SENDING)
        assert old_pending.idempotency_key != old_sent.idempotency_key
        await repository.resolve(
            [Resolution(1, old_pending.claim_token, MessageStatus.SENT, sent_at=datetime.now(UTC), message_id="p")]
        )
        # Both the Go statement and ours still insert, continuing the old id sequence.
        await query(pool, GO_INSERT)
        enqueued = await repository.enqueue("+905301234004", "content 4")
        assert enqueued.id == 4
        assert [m.id for m in await repository.claim(10, 30.0)] == [3, 4]
        page = await repository.list_messages(MessageStatus.SENT, 10)
        assert [m.id for m in page.items] == [1, 2]


async def test_concurrent_claimers_never_take_the_same_message(
    pg_repository: PostgresMessageRepository, pg_pool: Pool, postgres_url: str
) -> None:
    await query(
        pg_pool,
        "INSERT INTO messages (recipient_phone, content) SELECT '+905301234001', 'content ' || i"
        " FROM generate_series(1, 200) AS i",
    )
    async with pools(postgres_url, 2, min_size=4, max_size=4) as opened:
        repositories = [PostgresMessageRepository(pool) for pool in opened]

        async def claimer(repository: PostgresMessageRepository) -> list[int]:
            taken: list[int] = []
            while batch := await repository.claim(7, 30.0):
                assert len(batch) <= 7
                taken.extend(m.id for m in batch)
            return taken

        results = await asyncio.gather(*(claimer(repositories[i % 2]) for i in range(8)))

    every = [message_id for ids in results for message_id in ids]
    assert len(every) == len(set(every)) == 200
    assert set(every) == set(range(1, 201))
    assert sum(1 for ids in results if ids) > 1, "the claimers did not run concurrently"
    assert (await pg_repository.counts())[MessageStatus.SENDING] == 200


async def test_only_one_of_concurrent_takers_gets_the_slot(
    pg_repository: PostgresMessageRepository, pg_pool: Pool, postgres_url: str
) -> None:
    interval_s = 10.0
    async with pools(postgres_url, 4, min_size=2, max_size=2) as opened:
        repositories = [PostgresMessageRepository(pool) for pool in opened]

        async def race() -> list[float]:
            return await asyncio.gather(*(repositories[i % 4].acquire_slot("batch", interval_s) for i in range(8)))

        for results in (
            await race(),  # a slot nobody has taken yet
            await set_due_and_race(pg_pool, race),  # a slot whose time has come
        ):
            assert sorted(results)[0] == 0.0
            assert all(interval_s / 2 < wait_s <= interval_s for wait_s in sorted(results)[1:]), results


async def set_due_and_race(pool: Pool, race: Callable[[], Awaitable[list[float]]]) -> list[float]:
    await query(pool, "UPDATE insider_slots SET last_at = now() - interval '1 hour'")
    return await race()


async def test_the_slot_keeps_its_grid_when_taken_on_time(
    pg_repository: PostgresMessageRepository, pg_pool: Pool
) -> None:
    await query(
        pg_pool,
        "INSERT INTO insider_slots (name, last_at) VALUES ('grid', now() - interval '10 seconds 100 milliseconds')",
    )
    [(before,)] = await query(pg_pool, "SELECT last_at FROM insider_slots WHERE name = 'grid'")

    assert await pg_repository.acquire_slot("grid", 10.0) == 0.0

    # 0.1 s late is within the 0.5 s tolerance of a 10 s interval: this batch counts as sent
    # when it was due, one interval after the last.
    [(after,)] = await query(pg_pool, "SELECT last_at FROM insider_slots WHERE name = 'grid'")
    assert (after - before).total_seconds() == pytest.approx(10.0)


async def test_the_slot_restarts_from_now_when_taken_late(
    pg_repository: PostgresMessageRepository, pg_pool: Pool
) -> None:
    await query(pg_pool, "INSERT INTO insider_slots (name, last_at) VALUES ('late', now() - interval '1 hour')")

    assert await pg_repository.acquire_slot("late", 10.0) == 0.0

    [(ago_s,)] = await query(pg_pool, "SELECT EXTRACT(EPOCH FROM now() - last_at)::float8 FROM insider_slots")
    assert 0.0 <= ago_s < 0.5  # sent now: the next is never less than one interval after this batch
    assert 9.5 < await pg_repository.acquire_slot("late", 10.0) <= 10.0


async def test_the_slot_is_due_one_current_interval_after_the_last_batch(
    pg_repository: PostgresMessageRepository, pg_pool: Pool
) -> None:
    assert await pg_repository.acquire_slot("sender", 120.0) == 0.0  # a run with a 2-minute interval
    # Restarted with a 1 s interval: due 1 s after that batch, not 2 minutes.
    wait_s = await pg_repository.acquire_slot("sender", 1.0)
    assert 0.0 < wait_s <= 1.0
    await query(pg_pool, "UPDATE insider_slots SET last_at = last_at - interval '1 second'")
    assert await pg_repository.acquire_slot("sender", 1.0) == 0.0


async def test_migration_0003_reads_an_old_slot_conservatively(fresh_postgres_url: str) -> None:
    from insider.adapters.postgres import load_migrations

    async with open_postgres_pool(fresh_postgres_url) as pool:
        async with pool.connection() as conn:
            for version, _name, text in load_migrations():
                if version < 3:
                    await conn.execute(text)
            await conn.execute(
                "CREATE TABLE insider_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz"
                " NOT NULL DEFAULT now()); INSERT INTO insider_schema_migrations (version)"
                " SELECT v FROM unnest(ARRAY[1, 2]) AS v"
            )
            await conn.execute(
                "INSERT INTO insider_slots (name, next_at) VALUES ('future', now() + interval '90 seconds'),"
                " ('past', now() - interval '1 hour')"
            )
        repository = PostgresMessageRepository(pool)
        await repository.migrate()
        rows = dict(await query(pool, "SELECT name, EXTRACT(EPOCH FROM now() - last_at)::float8 FROM insider_slots"))
        assert rows["future"] == pytest.approx(0.0, abs=1.0)  # taken as now: one current interval from now
        assert rows["past"] == pytest.approx(3600.0, abs=1.0)
        assert 9.0 < await repository.acquire_slot("future", 10.0) <= 10.0


async def test_migration_0007_numbers_the_receipts_already_waiting_by_arrival(fresh_postgres_url: str) -> None:
    async with open_postgres_pool(fresh_postgres_url) as pool:
        async with pool.connection() as conn:
            for version, _name, text in load_migrations():
                if version < 7:
                    await conn.execute(text)
            await conn.execute(
                "CREATE TABLE insider_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz"
                " NOT NULL DEFAULT now()); INSERT INTO insider_schema_migrations (version)"
                " SELECT v FROM generate_series(1, 6) AS v"
            )
            # Inserted out of their order of arrival, as a physical order may hold them.
            for status, ago_s in [("DELIVRD", 1), ("UNDELIV", 3), ("ENROUTE", 2)]:
                await conn.execute(
                    "INSERT INTO insider_pending_receipts (provider_message_id, dedupe_key, receipt_status,"
                    " delivery_status, final_status, received_at) VALUES ('p-1', %s, %s, %s, %s,"
                    " now() - make_interval(secs => %s))",
                    (
                        status,
                        status,
                        {"DELIVRD": "delivered", "UNDELIV": "undelivered"}.get(status),
                        {"DELIVRD": "delivered", "UNDELIV": "undelivered"}.get(status),
                        ago_s,
                    ),
                )
        repository = PostgresMessageRepository(pool)
        await repository.migrate()
        numbered = await query(pool, "SELECT receipt_status, seq FROM insider_pending_receipts ORDER BY seq")
        assert numbered == [("UNDELIV", 1), ("ENROUTE", 2), ("DELIVRD", 3)]
        later = await repository.apply_receipts([Receipt("p-1", "REJECTD", datetime.now(UTC))], [None])
        assert [o.result for o in later] == [ReceiptResult.WAITING]
        assert (await query(pool, "SELECT max(seq) FROM insider_pending_receipts"))[0] == (4,)

        message = await repository.enqueue("+905301234001", "x")
        [claimed] = await repository.claim(1, 30.0)
        now = datetime.now(UTC)
        applied = await repository.resolve(
            [Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=now, message_id="p-1")]
        )
        assert [o.result for o in applied] == [
            ReceiptResult.APPLIED,
            ReceiptResult.RECORDED,
            ReceiptResult.RECORDED,
            ReceiptResult.RECORDED,
        ]
        got = await repository.get(message.id)
        assert got is not None and got.delivery_status == "undelivered"


async def test_a_receipt_waits_for_a_concurrent_taker_of_the_receipts_waiting_before_it(
    pg_repository: PostgresMessageRepository, pg_pool: Pool
) -> None:
    # A resolve or a periodic pass is taking the waiting receipt of p-1 (an UNDELIV that beat
    # the send's outcome) in a transaction not yet committed; a newer, contrary receipt comes
    # meanwhile. It must wait for that transaction and then lose to the receipt it took.
    message = await pg_repository.enqueue("+905301234001", "x")
    [claimed] = await pg_repository.claim(1, 30.0)
    await pg_repository.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=datetime.now(UTC), message_id="p-x")]
    )
    early = Receipt("p-1", "UNDELIV", datetime.now(UTC))
    assert [o.result for o in await pg_repository.apply_receipts([early], [None])] == [ReceiptResult.WAITING]
    await query(pg_pool, "UPDATE messages SET message_id = 'p-1' WHERE id = %s", (message.id,))

    async with pg_pool.connection() as taker:
        await taker.execute("BEGIN")
        # What the taker's statement does first: the waiting row out of the table (locked till commit).
        await taker.execute("DELETE FROM insider_pending_receipts WHERE provider_message_id = 'p-1'")
        newer = asyncio.ensure_future(
            pg_repository.apply_receipts([Receipt("p-1", "DELIVRD", datetime.now(UTC))], [message.id])
        )

        async def newer_waits_on_a_lock() -> bool:
            rows = await query(
                pg_pool,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            return bool(rows[0][0] == 1)

        await eventually(newer_waits_on_a_lock, what="the newer receipt to wait for the taker")
        assert not newer.done()
        # Then what it does next: the message moved by the receipt it took, in its history.
        await taker.execute(
            "UPDATE messages SET status = 'undelivered', delivery_status = 'undelivered'"
            " WHERE id = %s AND status = 'sent'",
            (message.id,),
        )
        await taker.execute(
            "INSERT INTO insider_message_events (message_id, at, kind, outcome, provider_message_id, receipt_status,"
            " dedupe_key) VALUES (%s, %s, 'receipt', 'undelivered', 'p-1', 'UNDELIV', %s)",
            (message.id, early.received_at, early.dedupe_key),
        )
        await taker.execute("COMMIT")

    assert [(o.result, o.message_id) for o in await newer] == [(ReceiptResult.RECORDED, message.id)]
    got = await pg_repository.get(message.id)
    assert got is not None and (got.status, got.delivery_status) == (MessageStatus.UNDELIVERED, "undelivered")


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_every_method_raises_repository_unavailable_when_the_server_is_unreachable() -> None:
    url = f"postgresql://root@127.0.0.1:{unused_port()}/insider?connect_timeout=2"
    async with open_postgres_pool(url, timeout_s=0.3) as pool:
        repository = PostgresMessageRepository(pool)
        calls: list[Callable[[], Awaitable[object]]] = [
            repository.migrate,
            repository.ping,
            lambda: repository.enqueue("+905301234001", "content"),
            lambda: repository.get(1),
            lambda: repository.list_messages(MessageStatus.SENT, 10),
            lambda: repository.claim(10, 30.0),
            lambda: repository.resolve([Resolution(1, str(uuid.uuid4()), MessageStatus.FAILED)]),
            lambda: repository.retry(1),
            lambda: repository.acquire_slot("batch", 1.0),
            repository.counts,
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(RepositoryUnavailable):
                await call()
            assert time.monotonic() - started < 3.0
