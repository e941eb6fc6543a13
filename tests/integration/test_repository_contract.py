"""The MessageRepository contract, run against every adapter: SQLite (a file, ``:memory:`` on its
worker thread, and ``memory_repository``) and PostgreSQL.

Time: the SQLite adapters run on a FakeClock that ``advance`` moves;
PostgreSQL runs on real time, so its time-dependent checks use tiny intervals and wait
with ``eventually``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository
from insider.adapters.sqlite import SqliteMessageRepository, format_timestamp, memory_repository, open_sqlite
from insider.clock import FakeClock
from insider.domain import Message, MessageStatus, Resolution, UnstorableText
from insider.ports import InvalidCursor, InvalidState, MessageNotFound, MessageRepository, ProviderStore
from tests.conftest import eventually

LONG_LEASE_S = 30.0
SHORT_LEASE_S = 0.05
SLOT_INTERVAL_S = 0.1
PHONE = "+905301234001"
BASE = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class Backend:
    """One adapter under test, with what the suite needs to drive it."""

    repository: MessageRepository
    clock: FakeClock | None = None  # SQLite
    pool: Pool | None = None  # PostgreSQL only
    sqlite_file: Path | None = None  # SQLite in a file only

    def now(self) -> datetime:
        """The adapter's notion of now."""
        return self.clock.now() if self.clock is not None else datetime.now(UTC)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: at once on the fake clock; real time passes by itself."""
        if self.clock is not None:
            await self.clock.advance(seconds)

    async def add(self, content: str, created_at: datetime) -> Message:
        """A pending message inserted directly, as another program writing to the table would."""
        repository = self.repository
        if isinstance(repository, SqliteMessageRepository) and self.sqlite_file is None:  # :memory:

            def insert(lite: sqlite3.Connection) -> int | None:
                return lite.execute(
                    "INSERT INTO messages (recipient_phone, content, created_at) VALUES (?, ?, ?)",
                    (PHONE, content, format_timestamp(created_at)),
                ).lastrowid

            rowid = await repository.database.run(insert)
            assert rowid is not None
            added = await repository.get(rowid)
            assert added is not None
            return added
        if self.sqlite_file is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_file)) as lite, lite:
                cursor = lite.execute(
                    "INSERT INTO messages (recipient_phone, content, created_at) VALUES (?, ?, ?)",
                    (PHONE, content, format_timestamp(created_at)),
                )
            assert cursor.lastrowid is not None
            added = await repository.get(cursor.lastrowid)
            assert added is not None
            return added
        assert self.pool is not None
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO messages (recipient_phone, content, created_at) VALUES (%s, %s, %s) RETURNING id",
                (PHONE, content, created_at),
            )
            row = await cur.fetchone()
        assert row is not None
        message = await repository.get(row[0])
        assert message is not None
        return message


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """A migrated SQLite repository in a file of this test's own, on a fake clock."""
    clock = FakeClock()
    async with open_sqlite(f"sqlite:///{tmp_path / 'insider.db'}") as database:
        repository = SqliteMessageRepository(database, clock)
        await repository.migrate()
        yield Backend(repository, clock=clock, sqlite_file=tmp_path / "insider.db")


@pytest.fixture
async def sqlite_memory_url_backend() -> AsyncIterator[Backend]:
    """``sqlite:///:memory:`` as the service opens it (statements on the database's worker thread)."""
    clock = FakeClock()
    async with open_sqlite("sqlite:///:memory:") as database:
        repository = SqliteMessageRepository(database, clock)
        await repository.migrate()
        yield Backend(repository, clock=clock)


@pytest.fixture
async def memory_backend() -> AsyncIterator[Backend]:
    """``memory_repository``: what unit tests and embedders use (statements on the event loop's thread)."""
    clock = FakeClock()
    async with memory_repository(clock) as repository:
        yield Backend(repository, clock=clock)


@pytest.fixture(
    params=["sqlite-memory", "sqlite-memory-url", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param.startswith("sqlite"):
        fixture = {"sqlite": "sqlite_backend", "sqlite-memory": "memory_backend"}.get(
            request.param, "sqlite_memory_url_backend"
        )
        sqlite: Backend = request.getfixturevalue(fixture)
        return sqlite
    repository: PostgresMessageRepository = request.getfixturevalue("pg_repository")
    pool: Pool = request.getfixturevalue("pg_pool")
    return Backend(repository, pool=pool)


@pytest.fixture
def repository(backend: Backend) -> MessageRepository:
    return backend.repository


@pytest.fixture
def advance(backend: Backend) -> Callable[[float], Awaitable[None]]:
    return backend.advance


async def enqueue_many(repository: MessageRepository, n: int) -> list[Message]:
    return [await repository.enqueue(PHONE, f"Message content {i}") for i in range(n)]


async def fetch(repository: MessageRepository, message_id: int) -> Message:
    message = await repository.get(message_id)
    assert message is not None
    return message


async def test_enqueue_and_get_round_trip(repository: MessageRepository) -> None:
    message = await repository.enqueue(PHONE, "Merhaba dünya, çok güzel!")

    assert message.recipient_phone == PHONE
    assert message.content == "Merhaba dünya, çok güzel!"
    assert message.status is MessageStatus.PENDING
    assert message.attempts == 0
    assert message.created_at.utcoffset() == timedelta(0)
    assert uuid.UUID(message.idempotency_key)
    assert (message.sent_at, message.message_id, message.last_error) == (None, None, None)
    assert (message.claim_token, message.lease_expires_at, message.next_attempt_at) == (None, None, None)
    assert await repository.get(message.id) == message
    assert await repository.get(message.id + 1000) is None


async def test_each_message_has_its_own_idempotency_key(repository: MessageRepository) -> None:
    messages = await enqueue_many(repository, 3)

    assert len({m.idempotency_key for m in messages}) == 3


async def test_claim_takes_the_oldest_first_then_by_id_up_to_the_limit(backend: Backend) -> None:
    newest = await backend.add("newest", BASE + timedelta(minutes=2))
    middle_first = await backend.add("middle, lower id", BASE + timedelta(minutes=1))
    middle_second = await backend.add("middle, higher id", BASE + timedelta(minutes=1))
    oldest = await backend.add("oldest", BASE)
    repository = backend.repository

    first = await repository.claim(3, LONG_LEASE_S)
    second = await repository.claim(3, LONG_LEASE_S)

    assert [m.id for m in first] == [oldest.id, middle_first.id, middle_second.id]
    assert [m.id for m in second] == [newest.id]
    assert await repository.claim(3, LONG_LEASE_S) == []


async def test_claim_with_limit_zero_takes_nothing(repository: MessageRepository) -> None:
    message = await repository.enqueue(PHONE, "content")

    assert await repository.claim(0, LONG_LEASE_S) == []
    assert (await fetch(repository, message.id)).status is MessageStatus.PENDING


async def test_claimed_messages_are_leased_and_not_claimed_again_while_the_lease_holds(backend: Backend) -> None:
    repository = backend.repository
    messages = await enqueue_many(repository, 3)

    claimed = await repository.claim(10, LONG_LEASE_S)

    assert [m.id for m in claimed] == [m.id for m in messages]
    for m in claimed:
        assert m.status is MessageStatus.SENDING
        assert m.attempts == 1
        assert m.claim_token is not None
        assert m.lease_expires_at is not None
        assert m.lease_expires_at - backend.now() > timedelta(seconds=LONG_LEASE_S - 5)
        assert await repository.get(m.id) == m
    assert len({m.claim_token for m in claimed}) == 3
    assert {m.idempotency_key for m in claimed} == {m.idempotency_key for m in messages}
    assert await repository.claim(10, LONG_LEASE_S) == []


async def test_an_expired_lease_is_claimed_again_with_the_same_idempotency_key(
    repository: MessageRepository, advance: Callable[[float], Awaitable[None]]
) -> None:
    message = await repository.enqueue(PHONE, "content")
    [first] = await repository.claim(1, SHORT_LEASE_S)
    reclaimed: list[Message] = []

    async def claimed_again() -> bool:
        reclaimed.extend(await repository.claim(1, LONG_LEASE_S))
        return bool(reclaimed)

    await advance(SHORT_LEASE_S)
    await eventually(claimed_again, timeout_s=5.0, what="the expired lease to be claimed again")

    [second] = reclaimed
    assert second.id == message.id
    assert second.idempotency_key == first.idempotency_key == message.idempotency_key
    assert second.attempts == 2
    assert second.claim_token != first.claim_token
    assert second.status is MessageStatus.SENDING


async def test_a_message_due_later_is_skipped_while_later_messages_are_claimed(backend: Backend) -> None:
    repository = backend.repository
    older, newer = await enqueue_many(repository, 2)
    [claimed] = await repository.claim(1, LONG_LEASE_S)
    assert claimed.id == older.id
    await repository.resolve(
        [Resolution(older.id, claimed.claim_token, MessageStatus.PENDING, last_error="timeout", retry_in_s=60.0)]
    )

    assert [m.id for m in await repository.claim(10, LONG_LEASE_S)] == [newer.id]
    waiting = await fetch(repository, older.id)
    assert waiting.status is MessageStatus.PENDING
    assert waiting.next_attempt_at is not None
    assert timedelta(seconds=55) < waiting.next_attempt_at - backend.now() <= timedelta(seconds=60)


async def test_resolve_writes_mixed_outcomes_in_one_call(backend: Backend) -> None:
    repository = backend.repository
    await enqueue_many(repository, 4)
    sent, retried, failed, released = await repository.claim(4, LONG_LEASE_S)
    sent_at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)

    await repository.resolve(
        [
            Resolution(sent.id, sent.claim_token, MessageStatus.SENT, sent_at=sent_at, message_id="provider-1"),
            Resolution(retried.id, retried.claim_token, MessageStatus.PENDING, last_error="HTTP 503", retry_in_s=60.0),
            Resolution(failed.id, failed.claim_token, MessageStatus.FAILED, last_error="HTTP 400: bad number"),
            Resolution(released.id, released.claim_token, MessageStatus.PENDING, uncount_attempt=True),
        ]
    )

    now = backend.now()
    got_sent = await fetch(repository, sent.id)
    assert (got_sent.status, got_sent.sent_at, got_sent.message_id) == (MessageStatus.SENT, sent_at, "provider-1")
    assert (got_sent.attempts, got_sent.last_error, got_sent.next_attempt_at) == (1, None, None)
    got_retried = await fetch(repository, retried.id)
    assert (got_retried.status, got_retried.attempts, got_retried.last_error) == (MessageStatus.PENDING, 1, "HTTP 503")
    assert got_retried.next_attempt_at is not None
    assert timedelta(seconds=55) < got_retried.next_attempt_at - now <= timedelta(seconds=60)
    got_failed = await fetch(repository, failed.id)
    assert (got_failed.status, got_failed.attempts) == (MessageStatus.FAILED, 1)
    assert got_failed.last_error == "HTTP 400: bad number"
    got_released = await fetch(repository, released.id)
    assert (got_released.status, got_released.attempts) == (MessageStatus.PENDING, 0)
    assert (got_released.last_error, got_released.next_attempt_at) == (None, None)
    for m in (got_sent, got_retried, got_failed, got_released):
        assert (m.claim_token, m.lease_expires_at) == (None, None)
    # Only the released message is due again.
    assert [m.id for m in await repository.claim(10, LONG_LEASE_S)] == [released.id]


async def test_resolve_keeps_the_last_error_when_the_outcome_has_none(repository: MessageRepository) -> None:
    message = await repository.enqueue(PHONE, "content")
    [first] = await repository.claim(1, LONG_LEASE_S)
    await repository.resolve([Resolution(message.id, first.claim_token, MessageStatus.PENDING, last_error="timeout")])
    [second] = await repository.claim(1, LONG_LEASE_S)

    await repository.resolve([Resolution(message.id, second.claim_token, MessageStatus.PENDING, uncount_attempt=True)])

    got = await fetch(repository, message.id)
    assert (got.status, got.last_error, got.attempts) == (MessageStatus.PENDING, "timeout", 1)


async def test_resolve_of_nothing_and_of_unknown_ids_changes_nothing(repository: MessageRepository) -> None:
    message = await repository.enqueue(PHONE, "content")

    await repository.resolve([])
    await repository.resolve([Resolution(message.id + 1000, str(uuid.uuid4()), MessageStatus.FAILED)])

    assert await repository.get(message.id) == message


async def test_a_stale_claim_token_does_not_overwrite_but_a_sent_outcome_does(repository: MessageRepository) -> None:
    message = await repository.enqueue(PHONE, "content")
    [claimed] = await repository.claim(1, LONG_LEASE_S)
    stale = str(uuid.uuid4())

    for resolution in (
        Resolution(message.id, stale, MessageStatus.FAILED, last_error="stale"),
        Resolution(message.id, stale, MessageStatus.PENDING, retry_in_s=1.0),
        Resolution(message.id, None, MessageStatus.FAILED),
        Resolution(message.id, "not a uuid", MessageStatus.FAILED),
    ):
        await repository.resolve([resolution])
        assert await repository.get(message.id) == claimed

    sent_at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    await repository.resolve([Resolution(message.id, stale, MessageStatus.SENT, sent_at=sent_at, message_id="p-1")])
    got = await fetch(repository, message.id)
    assert (got.status, got.sent_at, got.message_id, got.claim_token) == (MessageStatus.SENT, sent_at, "p-1", None)

    # Once sent, neither the (now released) claim nor another sent outcome rewrites it.
    await repository.resolve([Resolution(message.id, claimed.claim_token, MessageStatus.FAILED, last_error="late")])
    await repository.resolve([Resolution(message.id, None, MessageStatus.SENT, sent_at=BASE, message_id="p-2")])
    assert await repository.get(message.id) == got


async def test_retry_puts_a_failed_message_back_to_pending(repository: MessageRepository) -> None:
    message = await repository.enqueue(PHONE, "content")
    [claimed] = await repository.claim(1, LONG_LEASE_S)
    await repository.resolve([Resolution(message.id, claimed.claim_token, MessageStatus.FAILED, last_error="HTTP 400")])

    retried = await repository.retry(message.id)

    assert (retried.status, retried.attempts, retried.next_attempt_at) == (MessageStatus.PENDING, 0, None)
    assert retried.idempotency_key == message.idempotency_key
    assert await repository.get(message.id) == retried
    [again] = await repository.claim(1, LONG_LEASE_S)
    assert (again.id, again.attempts) == (message.id, 1)


async def test_retry_of_an_unknown_message_raises_not_found(repository: MessageRepository) -> None:
    with pytest.raises(MessageNotFound):
        await repository.retry(12345)


async def test_retry_of_a_message_that_is_not_failed_raises_invalid_state(repository: MessageRepository) -> None:
    message = await repository.enqueue(PHONE, "content")

    with pytest.raises(InvalidState) as raised:
        await repository.retry(message.id)

    assert raised.value.message == message
    assert await repository.get(message.id) == message


async def page_through(repository: MessageRepository, status: MessageStatus, limit: int) -> list[list[int]]:
    """The ids of every page of a listing, following the cursors to the end."""
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        page = await repository.list_messages(status, limit, cursor)
        pages.append([m.id for m in page.items])
        if page.next_cursor is None:
            return pages
        assert len(pages) < 100, "the cursors do not end"
        cursor = page.next_cursor


async def test_list_messages_pages_newest_first_without_gaps_or_duplicates(
    repository: MessageRepository, advance: Callable[[float], Awaitable[None]]
) -> None:
    ids = []
    for i in range(7):
        ids.append((await repository.enqueue(PHONE, f"content {i}")).id)
        await advance(1.0)
    newest_first = list(reversed(ids))

    assert await page_through(repository, MessageStatus.PENDING, 3) == [
        newest_first[0:3],
        newest_first[3:6],
        newest_first[6:7],
    ]
    assert await page_through(repository, MessageStatus.PENDING, 7) == [newest_first]
    assert await page_through(repository, MessageStatus.PENDING, 10) == [newest_first]


async def test_list_messages_breaks_created_at_ties_by_id(backend: Backend) -> None:
    ids = [(await backend.add(f"content {i}", BASE)).id for i in range(5)]

    pages = await page_through(backend.repository, MessageStatus.PENDING, 2)

    assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]


async def test_list_messages_orders_sent_messages_by_sent_at(repository: MessageRepository) -> None:
    await enqueue_many(repository, 5)
    a, b, c, d, e = await repository.claim(5, LONG_LEASE_S)
    at = [BASE + timedelta(seconds=s) for s in (3, 1, 1, 2)]
    await repository.resolve(
        [
            Resolution(m.id, m.claim_token, MessageStatus.SENT, sent_at=when, message_id=f"p-{m.id}")
            for m, when in zip((a, b, c, d), at, strict=True)
        ]
    )
    await repository.resolve([Resolution(e.id, e.claim_token, MessageStatus.FAILED, last_error="HTTP 400")])

    assert await page_through(repository, MessageStatus.SENT, 2) == [[a.id, d.id], [c.id, b.id]]
    assert await page_through(repository, MessageStatus.FAILED, 2) == [[e.id]]
    assert await page_through(repository, MessageStatus.PENDING, 2) == [[]]
    assert await page_through(repository, MessageStatus.SENDING, 2) == [[]]


async def test_list_messages_filters_by_status(repository: MessageRepository) -> None:
    first, second, third = await enqueue_many(repository, 3)
    [claimed] = await repository.claim(1, LONG_LEASE_S)

    sending = await repository.list_messages(MessageStatus.SENDING, 10)
    pending = await repository.list_messages(MessageStatus.PENDING, 10)

    assert [m.id for m in sending.items] == [claimed.id] == [first.id]
    assert sending.items[0] == await repository.get(first.id)
    assert [m.id for m in pending.items] == [third.id, second.id]
    assert (sending.next_cursor, pending.next_cursor) == (None, None)


async def test_list_messages_rejects_a_cursor_it_did_not_hand_out(repository: MessageRepository) -> None:
    await enqueue_many(repository, 3)
    page = await repository.list_messages(MessageStatus.PENDING, 1)
    assert page.next_cursor is not None

    for bad in ("not a cursor", "bm90IGpzb24", "WyJwZW5kaW5nIl0"):
        with pytest.raises(InvalidCursor):
            await repository.list_messages(MessageStatus.PENDING, 1, bad)
    with pytest.raises(InvalidCursor):
        await repository.list_messages(MessageStatus.SENT, 1, page.next_cursor)


def _forged(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


FORGED_CURSORS = {
    "boolean id": _forged(["sent", "2020-01-01T00:00:00+00:00", True]),
    "id over 64 bits": _forged(["sent", "2020-01-01T00:00:00+00:00", 2**63]),
    "id zero": _forged(["sent", "2020-01-01T00:00:00+00:00", 0]),
    "negative id": _forged(["sent", "2020-01-01T00:00:00+00:00", -1]),
    "float id": _forged(["sent", "2020-01-01T00:00:00+00:00", 1.5]),
    "text id": _forged(["sent", "2020-01-01T00:00:00+00:00", "1"]),
    "before year 1 in UTC": _forged(["sent", "0001-01-01T00:00:00+14:00", 1]),
    "after year 9999 in UTC": _forged(["sent", "9999-12-31T23:59:59-14:00", 1]),
    "year 1": _forged(["sent", "0001-01-01T00:00:00+00:00", 1]),
    "naive time": _forged(["sent", "2020-01-01T00:00:00", 1]),
    "number as time": _forged(["sent", 1577836800, 1]),
    "null time": _forged(["sent", None, 1]),
    "four items": _forged(["sent", "2020-01-01T00:00:00+00:00", 1, 2]),
    "object": _forged({"status": "sent"}),
    "nested lists": base64.urlsafe_b64encode(b"[" * 180 + b"]" * 180).decode(),
    "huge id": base64.urlsafe_b64encode(b'["sent","2020-01-01T00:00:00+00:00",' + b"9" * 300 + b"]").decode(),
    "not ASCII": "çürük",
    "too long": "A" * 5000,
}


@pytest.mark.parametrize("cursor", FORGED_CURSORS.values(), ids=FORGED_CURSORS.keys())
async def test_list_messages_refuses_a_forged_cursor_before_the_database_sees_it(
    repository: MessageRepository, cursor: str
) -> None:
    """Each of these once reached a database and failed there (a 500 from the API)."""
    await enqueue_many(repository, 2)
    for status in (MessageStatus.SENT, MessageStatus.PENDING):
        with pytest.raises(InvalidCursor):
            await repository.list_messages(status, 1, cursor)


async def test_counts_every_status(repository: MessageRepository) -> None:
    assert await repository.counts() == dict.fromkeys(MessageStatus, 0)
    await enqueue_many(repository, 5)
    a, b, _still_sending = await repository.claim(3, LONG_LEASE_S)
    await repository.resolve(
        [
            Resolution(a.id, a.claim_token, MessageStatus.SENT, sent_at=BASE, message_id="p-1"),
            Resolution(b.id, b.claim_token, MessageStatus.FAILED, last_error="HTTP 400"),
        ]
    )

    assert await repository.counts() == dict.fromkeys(MessageStatus, 0) | {
        MessageStatus.PENDING: 2,
        MessageStatus.SENDING: 1,
        MessageStatus.SENT: 1,
        MessageStatus.FAILED: 1,
        MessageStatus.EXPIRED: 0,
        MessageStatus.CANCELLED: 0,
    }


async def test_acquire_slot_paces_the_takers(
    repository: MessageRepository, advance: Callable[[float], Awaitable[None]]
) -> None:
    assert await repository.acquire_slot("batch", SLOT_INTERVAL_S) == 0.0

    wait_s = await repository.acquire_slot("batch", SLOT_INTERVAL_S)
    assert SLOT_INTERVAL_S / 2 < wait_s <= SLOT_INTERVAL_S
    # Another slot is independent.
    assert await repository.acquire_slot("other", SLOT_INTERVAL_S) == 0.0

    async def taken() -> bool:
        return await repository.acquire_slot("batch", SLOT_INTERVAL_S) == 0.0

    await advance(SLOT_INTERVAL_S)
    await eventually(taken, timeout_s=5.0, what="the next slot")
    assert await repository.acquire_slot("batch", SLOT_INTERVAL_S) > 0.0


async def test_a_providers_turns_are_taken_only_when_near_and_the_next_one_is_told_without_taking_it(
    repository: MessageRepository,
) -> None:
    assert isinstance(repository, ProviderStore)
    assert await repository.next_turn_in("alpha") == 0.0  # never sent: free now
    assert await repository.take_send("alpha", 1.0, 0.25) == pytest.approx(0.0, abs=0.05)
    assert 0.5 < await repository.next_turn_in("alpha") <= 1.0
    assert await repository.take_send("alpha", 1.0, 0.25) is None  # a second away: not taken
    assert 0.5 < await repository.next_turn_in("alpha") <= 1.0  # and nothing was reserved
    wait_s = await repository.take_send("alpha", 1.0, 5.0)
    assert wait_s is not None and 0.5 < wait_s <= 1.0
    assert 1.5 < await repository.next_turn_in("alpha") <= 2.0
    assert await repository.next_turn_in("beta") == 0.0  # each provider its own


async def test_the_providers_pauses_and_members_are_shared_through_the_database(
    repository: MessageRepository, advance: Callable[[float], Awaitable[None]]
) -> None:
    assert isinstance(repository, ProviderStore)
    assert await repository.provider_states() == {}
    await repository.throttle_provider("alpha", 30.0)
    await repository.throttle_provider("alpha", 5.0)  # the longer pause wins
    state = (await repository.provider_states())["alpha"]
    assert state.enabled is True and state.throttled_s is not None and 25.0 < state.throttled_s <= 30.0
    await repository.switch_provider("alpha", False)
    state = (await repository.provider_states())["alpha"]
    assert state.enabled is False and state.throttled_s is not None and state.throttled_s > 25.0

    def names(members: list[tuple[str, float]]) -> list[str]:
        return [member for member, _ in members]

    assert names(await repository.provider_members("m-2", 60.0)) == ["m-2"]
    await advance(0.1)
    members = await repository.provider_members("m-1", 60.0)
    assert names(members) == ["m-1", "m-2"]  # one order for every process
    ages = dict(members)
    assert ages["m-1"] < ages["m-2"] and 0.0 <= ages["m-1"] < 1.0  # m-1 joined last
    await advance(0.1)
    assert dict(await repository.provider_members("m-1", 60.0))["m-1"] > ages["m-1"]  # when it joined stays
    await repository.provider_member_gone("m-1")
    assert names(await repository.provider_members("m-3", 60.0)) == ["m-2", "m-3"]
    await advance(0.3)

    async def only_the_one_alive() -> bool:  # m-2 says nothing more: it drops out once 0.2 s passed
        return names(await repository.provider_members("m-3", 0.2)) == ["m-3"]

    await eventually(only_the_one_alive, timeout_s=5.0, what="m-2 forgotten")


async def test_text_the_database_cannot_store_is_refused_the_same_way_everywhere(repository: MessageRepository) -> None:
    for content, why in (("lone \ud800 surrogate", "unpaired surrogates"), ("a NUL \x00 here", "NUL")):
        with pytest.raises(UnstorableText, match=why):
            await repository.enqueue(PHONE, content)
    with pytest.raises(UnstorableText, match="recipient_phone"):
        await repository.enqueue("+90530\x001234001", "content")

    assert await repository.counts() == dict.fromkeys(MessageStatus, 0)


async def test_provider_text_with_lone_surrogates_or_nul_is_stored_cleaned_the_same_way_everywhere(
    repository: MessageRepository,
) -> None:
    await enqueue_many(repository, 3)
    failed, sent, emoji = await repository.claim(3, LONG_LEASE_S)

    await repository.resolve(
        [
            Resolution(failed.id, failed.claim_token, MessageStatus.FAILED, last_error="HTTP 400: b\udcffad \x00 text"),
            Resolution(sent.id, sent.claim_token, MessageStatus.SENT, sent_at=BASE, message_id="id-\ud83d-\x00"),
            # A whole surrogate pair is no lone surrogate: the emoji is kept.
            Resolution(emoji.id, emoji.claim_token, MessageStatus.FAILED, last_error="HTTP 400: no 😀"),
        ]
    )

    assert (await fetch(repository, failed.id)).last_error == "HTTP 400: b\ufffdad \ufffd text"
    assert (await fetch(repository, sent.id)).message_id == "id-\ufffd-\ufffd"
    assert (await fetch(repository, emoji.id)).last_error == "HTTP 400: no 😀"
