"""Issue 13 on every SQL adapter (SQLite and PostgreSQL): schedules, priorities, expiry, cancel,
batches with idempotency keys, bulk loads, the recipient filter, encodings and segments.

SQLite runs on a FakeClock; PostgreSQL on real time, so its time-dependent checks use
short delays and wait with ``eventually``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository
from insider.adapters.sqlite import SqliteMessageRepository, open_sqlite
from insider.clock import FakeClock
from insider.domain import Encoding, MessageStatus, NewMessage, Resolution, SendOrder
from insider.ports import IdempotencyConflict, IdempotencyKey, InvalidState, MessageNotFound, MessageRepository
from tests.conftest import eventually

PHONE = "+905301234001"
OTHER = "+15555550100"
LEASE_S = 30.0


class Backend:
    def __init__(
        self,
        repository: MessageRepository,
        clock: FakeClock | None = None,
        pool: Pool | None = None,
        sqlite_file: Path | None = None,
    ) -> None:
        self.repository = repository
        self.clock = clock
        self.pool = pool
        self.sqlite_file = sqlite_file

    def now(self) -> datetime:
        return self.clock.now() if self.clock is not None else datetime.now(UTC)

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            await self.clock.advance(seconds)

    async def insert_like_go(self, phone: str, content: str) -> int:
        """The original Go service's users' INSERT (recipient_phone, content, status)."""
        if self.sqlite_file is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_file)) as lite, lite:
                cursor = lite.execute(
                    "INSERT INTO messages (recipient_phone, content, status, created_at) VALUES (?, ?, 'pending', ?)",
                    (phone, content, self.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
                )
            assert cursor.lastrowid is not None
            return cursor.lastrowid
        assert self.pool is not None
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO messages (recipient_phone, content, status) VALUES (%s, %s, 'pending') RETURNING id",
                (phone, content),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    clock = FakeClock()
    async with open_sqlite(f"sqlite:///{tmp_path / 'insider.db'}") as database:
        repository = SqliteMessageRepository(database, clock)
        await repository.migrate()
        yield Backend(repository, clock=clock, sqlite_file=tmp_path / "insider.db")


@pytest.fixture
async def postgres_backend(pg_repository: PostgresMessageRepository, pg_pool: Pool) -> Backend:
    async with pg_pool.connection() as conn:
        await conn.execute("TRUNCATE insider_idempotency_keys")
    return Backend(pg_repository, pool=pg_pool)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    return chosen


async def test_new_fields_round_trip(backend: Backend) -> None:
    repo = backend.repository
    send_at = (backend.now() + timedelta(hours=1)).replace(microsecond=0)
    valid_until = send_at + timedelta(hours=2)
    message = await repo.enqueue(PHONE, "Merhaba dünya 😀", send_at=send_at, priority=8, valid_until=valid_until)

    assert (message.send_at, message.priority, message.valid_until) == (send_at, 8, valid_until)
    assert (message.encoding, message.segments) == (Encoding.UCS2, 1)
    assert await repo.get(message.id) == message
    plain = await repo.enqueue(PHONE, "Hello")
    assert (plain.send_at, plain.priority, plain.valid_until, plain.encoding) == (None, 5, None, Encoding.GSM7)


async def test_scheduled_message_is_not_claimed_before_its_time(backend: Backend) -> None:
    repo = backend.repository
    delay_s = 3600.0 if backend.clock is not None else 0.4
    scheduled = await repo.enqueue(PHONE, "later", send_at=backend.now() + timedelta(seconds=delay_s))

    assert await repo.claim(10, LEASE_S) == []
    await backend.advance(delay_s - 1 if backend.clock is not None else 0)
    assert await repo.claim(10, LEASE_S) == []
    await backend.advance(1.0)

    claimed: list[int] = []

    async def taken() -> bool:
        claimed.extend(m.id for m in await repo.claim(10, LEASE_S))
        return bool(claimed)

    await eventually(taken, timeout_s=5.0, what="the scheduled message to become due")
    assert claimed == [scheduled.id]


async def test_past_send_at_is_due_at_once(backend: Backend) -> None:
    message = await backend.repository.enqueue(PHONE, "x", send_at=backend.now() - timedelta(days=1))
    assert [m.id for m in await backend.repository.claim(10, LEASE_S)] == [message.id]


async def test_higher_priority_overtakes_a_backlog(backend: Backend) -> None:
    repo = backend.repository
    await repo.enqueue_many([NewMessage.of(PHONE, f"campaign {i}", priority=2) for i in range(300)])
    otp = await repo.enqueue(PHONE, "OTP 123456", priority=9)
    normal = await repo.enqueue(PHONE, "normal")

    first = await repo.claim(2, LEASE_S)
    assert [m.id for m in first] == [otp.id, normal.id]


@pytest.mark.parametrize("order", list(SendOrder))
async def test_send_order_within_a_priority(backend: Backend, order: SendOrder) -> None:
    repo = backend.repository
    ids = []
    for i in range(4):
        ids.append((await repo.enqueue(PHONE, f"m{i}")).id)
        await backend.advance(1.0)

    claimed = [m.id for m in await repo.claim(2, LEASE_S, order)]
    assert claimed == (ids[:2] if order is SendOrder.OLDEST else ids[::-1][:2])


async def test_the_originals_insert_is_due_at_once_with_priority_5(backend: Backend) -> None:
    row_id = await backend.insert_like_go(PHONE, "Message content 1 €")
    message = await backend.repository.get(row_id)
    assert message is not None
    assert (message.priority, message.send_at, message.encoding, message.segments) == (5, None, Encoding.GSM7, 1)
    assert [m.id for m in await backend.repository.claim(5, LEASE_S)] == [row_id]


async def test_a_message_past_valid_until_expires_and_is_never_claimed(backend: Backend) -> None:
    repo = backend.repository
    life_s = 3600.0 if backend.clock is not None else 0.3
    doomed = await repo.enqueue(PHONE, "soon stale", valid_until=backend.now() + timedelta(seconds=life_s))
    scheduled_too_late = await repo.enqueue(
        PHONE,
        "never",
        send_at=backend.now() + timedelta(seconds=life_s / 2),
        valid_until=backend.now() + timedelta(seconds=life_s),
    )
    await repo.cancel(scheduled_too_late.id)  # only doomed stays pending
    # Stopped sending: the claim is not called; reading it already says expired.
    await backend.advance(life_s + 1)

    async def expired_on_read() -> bool:
        message = await repo.get(doomed.id)
        return message is not None and message.status is MessageStatus.EXPIRED

    await eventually(expired_on_read, timeout_s=5.0, what="the message to read as expired")
    expired = await repo.get(doomed.id)
    assert expired is not None and expired.last_error is not None
    assert expired.last_error.startswith("expired: not sent before validUntil")
    assert await repo.claim(10, LEASE_S) == []
    listed = await repo.list_messages(MessageStatus.EXPIRED, 10)
    assert [m.id for m in listed.items] == [doomed.id]


async def test_every_expiry_is_worded_alike(backend: Backend) -> None:
    """The sweep, and a sender's expired outcome with or without the failure it retried on."""
    repo = backend.repository
    life_s = 3600.0 if backend.clock is not None else 0.5
    valid_until = backend.now() + timedelta(seconds=life_s)
    swept, retried, found_late = [await repo.enqueue(PHONE, f"m{i}", valid_until=valid_until) for i in range(3)]
    tokens = {m.id: m.claim_token for m in await repo.claim(10, LEASE_S)}
    await repo.resolve(
        [
            Resolution(swept.id, tokens[swept.id], MessageStatus.PENDING, last_error="HTTP 503", retry_in_s=life_s * 9),
            Resolution(retried.id, tokens[retried.id], MessageStatus.EXPIRED, last_error="HTTP 503"),
            Resolution(found_late.id, tokens[found_late.id], MessageStatus.EXPIRED),
        ]
    )
    await backend.advance(life_s + 1)
    await eventually(lambda: backend.now() > valid_until, timeout_s=5.0, what="validUntil to pass")
    await repo.expire()

    when = valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")
    reasons = {}
    for m in (swept, retried, found_late):
        got = await repo.get(m.id)
        assert got is not None and got.status is MessageStatus.EXPIRED
        reasons[m.id] = got.last_error
    assert reasons == {
        swept.id: f"expired: not sent before validUntil {when} (last error: HTTP 503)",
        retried.id: f"expired: not sent before validUntil {when} (last error: HTTP 503)",
        found_late.id: f"expired: not sent before validUntil {when}",
    }


async def test_the_claim_expires_and_reports_stale_rows(backend: Backend) -> None:
    repo = backend.repository
    life_s = 3600.0 if backend.clock is not None else 0.3
    valid_until = backend.now() + timedelta(seconds=life_s)
    doomed = await repo.enqueue(PHONE, "stale", valid_until=valid_until)
    fresh = await repo.enqueue(PHONE, "fresh")
    await backend.advance(life_s + 1)
    await eventually(lambda: backend.now() > valid_until, timeout_s=5.0, what="validUntil to pass")

    got = await repo.claim(10, LEASE_S)
    by_status = {m.status: m.id for m in got}
    assert by_status == {MessageStatus.EXPIRED: doomed.id, MessageStatus.SENDING: fresh.id}
    # Both changes of the one statement are counted (PostgreSQL: the count triggers see both).
    counts = await repo.counts()
    assert (counts[MessageStatus.EXPIRED], counts[MessageStatus.SENDING], counts[MessageStatus.PENDING]) == (1, 1, 0)


async def test_cancel_a_pending_or_scheduled_message(backend: Backend) -> None:
    repo = backend.repository
    scheduled = await repo.enqueue(PHONE, "later", send_at=backend.now() + timedelta(hours=1))
    cancelled = await repo.cancel(scheduled.id)
    assert cancelled.status is MessageStatus.CANCELLED
    await backend.advance(7200)
    assert await repo.claim(10, LEASE_S) == []
    with pytest.raises(InvalidState):
        await repo.cancel(scheduled.id)
    with pytest.raises(MessageNotFound):
        await repo.cancel(scheduled.id + 1000)


async def test_cancel_a_message_waiting_for_a_retry(backend: Backend) -> None:
    repo = backend.repository
    message = await repo.enqueue(PHONE, "x")
    (claimed,) = await repo.claim(1, LEASE_S)
    await repo.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.PENDING, last_error="503", retry_in_s=60.0)]
    )
    assert (await repo.cancel(message.id)).status is MessageStatus.CANCELLED


async def test_a_claimed_message_cannot_be_cancelled_and_a_cancelled_one_stays_so(backend: Backend) -> None:
    repo = backend.repository
    message = await repo.enqueue(PHONE, "x")
    (claimed,) = await repo.claim(1, LEASE_S)
    with pytest.raises(InvalidState) as caught:
        await repo.cancel(message.id)
    assert caught.value.message.status is MessageStatus.SENDING

    # Put back (a stop), cancelled, then a late "sent" from an old claim must not undo the cancel.
    await repo.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.PENDING, retry_in_s=0.0, uncount_attempt=True)]
    )
    await repo.cancel(message.id)
    await repo.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=backend.now(), message_id="late")]
    )
    after = await repo.get(message.id)
    assert after is not None and after.status is MessageStatus.CANCELLED


async def test_enqueue_many_stores_all_in_order_or_none(backend: Backend) -> None:
    repo = backend.repository
    stored = await repo.enqueue_many([NewMessage.of(PHONE, f"m{i}") for i in range(5)])
    assert [m.content for m in stored.messages] == [f"m{i}" for i in range(5)]
    assert not stored.replayed

    bad = [NewMessage.of(PHONE, "ok"), NewMessage.of(PHONE, "bad", priority=42), NewMessage.of(PHONE, "ok2")]
    with pytest.raises(Exception):  # noqa: B017 - the database refuses the row; the point is that none is kept
        await repo.enqueue_many(bad)
    counts = await repo.counts()
    assert counts[MessageStatus.PENDING] == 5


async def test_idempotency_key_replays_and_conflicts(backend: Backend) -> None:
    repo = backend.repository
    key = IdempotencyKey("retry-me", "hash-1")
    first = await repo.enqueue_many([NewMessage.of(PHONE, "a"), NewMessage.of(PHONE, "b")], key)
    again = await repo.enqueue_many([NewMessage.of(PHONE, "a"), NewMessage.of(PHONE, "b")], key)

    assert again.replayed and [m.id for m in again.messages] == [m.id for m in first.messages]
    assert (await repo.counts())[MessageStatus.PENDING] == 2
    with pytest.raises(IdempotencyConflict):
        await repo.enqueue_many([NewMessage.of(PHONE, "other")], IdempotencyKey("retry-me", "hash-2"))
    assert (await repo.counts())[MessageStatus.PENDING] == 2


async def test_concurrent_requests_with_one_key_create_once(backend: Backend) -> None:
    repo = backend.repository
    key = IdempotencyKey("race", "h")
    results = await asyncio.gather(*(repo.enqueue_many([NewMessage.of(PHONE, "x")], key) for _ in range(5)))

    assert len({r.messages[0].id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert (await repo.counts())[MessageStatus.PENDING] == 1


async def test_a_stale_idempotency_key_is_forgotten(backend: Backend) -> None:
    repo = backend.repository
    await repo.enqueue_many([NewMessage.of(PHONE, "x")], IdempotencyKey("old", "h"))
    if backend.clock is not None:
        await backend.advance(24 * 3600 + 1)
    else:
        assert backend.pool is not None
        async with backend.pool.connection() as conn:
            await conn.execute("UPDATE insider_idempotency_keys SET created_at = now() - interval '25 hours'")
    again = await repo.enqueue_many([NewMessage.of(PHONE, "y")], IdempotencyKey("old", "h2"))
    assert not again.replayed and again.messages[0].content == "y"


async def test_list_by_recipient(backend: Backend) -> None:
    repo = backend.repository
    mine = [await repo.enqueue(PHONE, f"mine {i}") for i in range(3)]
    await repo.enqueue(OTHER, "theirs")

    first = await repo.list_messages(MessageStatus.PENDING, 2, to=PHONE)
    second = await repo.list_messages(MessageStatus.PENDING, 2, first.next_cursor, to=PHONE)
    assert [m.id for m in first.items + second.items] == [m.id for m in reversed(mine)]
    assert second.next_cursor is None
    assert (await repo.list_messages(MessageStatus.SENT, 10, to=PHONE)).items == []


async def test_bulk_load(backend: Backend) -> None:
    repo = backend.repository
    rows = [NewMessage.of(PHONE, f"bulk {i}", priority=i % 10) for i in range(2500)]
    assert await repo.load(rows) == 2500
    assert (await repo.counts())[MessageStatus.PENDING] == 2500
    top = await repo.claim(3, LEASE_S)
    assert {m.priority for m in top} == {9}


async def test_counts_and_segments_of_the_new_statuses(backend: Backend) -> None:
    repo = backend.repository
    long_gsm = await repo.enqueue(PHONE, "a" * 161)  # 2 segments
    cancelled = await repo.enqueue(PHONE, "c")
    await repo.cancel(cancelled.id)
    (claimed,) = await repo.claim(1, LEASE_S)
    assert claimed.id == long_gsm.id
    await repo.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=backend.now(), message_id="p1")]
    )
    counts = await repo.counts()
    assert counts[MessageStatus.CANCELLED] == 1 and counts[MessageStatus.SENT] == 1
    assert counts[MessageStatus.EXPIRED] == 0
    assert await repo.segments_sent() == 2


async def test_segments_of_a_row_inserted_by_another_program_are_stored_when_sent(backend: Backend) -> None:
    repo = backend.repository
    row_id = await backend.insert_like_go(PHONE, "€" * 100)  # 200 septets: 2 segments
    (claimed,) = await repo.claim(1, LEASE_S)
    await repo.resolve(
        [
            Resolution(
                row_id,
                claimed.claim_token,
                MessageStatus.SENT,
                sent_at=backend.now(),
                message_id="p",
                segments=2,
                encoding=Encoding.GSM7,
            )
        ]
    )
    assert await repo.segments_sent() == 2


async def test_cancel_racing_claims_never_lets_a_cancelled_message_be_claimed(backend: Backend) -> None:
    repo = backend.repository
    ids = [m.id for m in (await repo.enqueue_many([NewMessage.of(PHONE, f"m{i}") for i in range(200)])).messages]
    claimed: set[int] = set()
    cancelled: set[int] = set()
    refused: set[int] = set()

    async def claimer() -> None:
        for _ in range(40):
            claimed.update(m.id for m in await repo.claim(7, LEASE_S))

    async def canceller() -> None:
        for message_id in reversed(ids):
            try:
                await repo.cancel(message_id)
            except InvalidState as exc:
                assert exc.message.status is MessageStatus.SENDING
                refused.add(message_id)
            else:
                cancelled.add(message_id)

    await asyncio.gather(claimer(), claimer(), canceller())

    assert cancelled.isdisjoint(claimed)
    assert refused <= claimed
    assert cancelled | claimed == set(ids)
    for message_id in cancelled:
        message = await repo.get(message_id)
        assert message is not None and message.status is MessageStatus.CANCELLED


async def test_upgrading_a_database_of_the_previous_schema_keeps_every_row(tmp_path: Path) -> None:
    """A SQLite file migrated before 0005 (rows in every old status) is rebuilt with nothing lost."""
    from insider.adapters.sqlite import load_migrations, split_statements

    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as lite, lite:
        lite.execute("CREATE TABLE insider_schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version, _name, text in load_migrations():
            if version >= 5:
                break
            for statement in split_statements(text):
                lite.execute(statement)
            lite.execute("INSERT INTO insider_schema_migrations VALUES (?, '2026-01-01T00:00:00.000000Z')", (version,))
        for i, status in enumerate(["pending", "sending", "sent", "failed", "pending"]):
            lite.execute(
                "INSERT INTO messages (recipient_phone, content, status, created_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    PHONE,
                    f"old {i}",
                    status,
                    f"2026-01-01T00:00:0{i}.000000Z",
                    "2026-01-01T01:00:00.000000Z" if i == 4 else None,
                ),
            )
        lite.execute("DELETE FROM messages WHERE content = 'old 4'")  # AUTOINCREMENT must not reuse 5
        lite.execute(
            "INSERT INTO messages (recipient_phone, content, status, created_at, next_attempt_at)"
            " VALUES (?, 'retrying', 'pending', '2026-01-01T00:00:05.000000Z', '2026-01-01T01:00:00.000000Z')",
            (PHONE,),
        )
    clock = FakeClock(start=datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    async with open_sqlite(f"sqlite:///{path}") as database:
        repository = SqliteMessageRepository(database, clock)
        await repository.migrate()
        kept = [await repository.get(i) for i in (1, 2, 3, 4, 6)]
        assert [(m.content, m.status.value) for m in kept if m is not None] == [
            ("old 0", "pending"),
            ("old 1", "sending"),
            ("old 2", "sent"),
            ("old 3", "failed"),
            ("retrying", "pending"),
        ]
        assert all(m is not None and (m.priority, m.segments) == (5, 1) for m in kept)
        assert [m.id for m in await repository.claim(10, LEASE_S)] == [1]  # the retry is not due until 01:00
        new = await repository.enqueue(PHONE, "new")
        assert new.id == 7
