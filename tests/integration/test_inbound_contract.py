"""Replies on every SQL adapter (SQLite and PostgreSQL): stored once per provider id, listed newest first by
sender through cursors, and their keywords' effect on the suppression list in the same transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository
from insider.adapters.sqlite import SqliteMessageRepository, open_sqlite
from insider.clock import FakeClock
from insider.domain import Category, MessageStatus, NewMessage
from insider.inbound import Inbound
from insider.ports import InboundStore, InvalidCursor, MessageRepository

PHONE = "+905301234567"
OTHER = "+905301234568"


class Backend:
    def __init__(self, repository: MessageRepository, pool: Pool | None = None) -> None:
        self.repository = repository
        self.pool = pool
        assert isinstance(repository, InboundStore)
        self.store: InboundStore = repository

    async def suppressions(self) -> dict[str, tuple[str, str, str]]:
        query = "SELECT phone, scope, reason, source FROM insider_suppressions"
        if self.pool is not None:
            async with self.pool.connection() as conn:
                rows: list[Any] = await (await conn.execute(query)).fetchall()
        else:
            assert isinstance(self.repository, SqliteMessageRepository)
            rows = await self.repository.database.run(lambda conn: conn.execute(query).fetchall())
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    async def suppress(self, phone: str, scope: str) -> None:
        if self.pool is not None:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO insider_suppressions (phone, scope, reason, source, created_at) "
                    "VALUES (%s, %s, 'manual', 'api', now())",
                    (phone, scope),
                )
            return
        assert isinstance(self.repository, SqliteMessageRepository)

        def write(conn: Any) -> None:
            conn.execute(
                "INSERT INTO insider_suppressions (phone, scope, reason, source, created_at) "
                "VALUES (?, ?, 'manual', 'api', '2026-01-01T00:00:00.000000Z')",
                (phone, scope),
            )
            conn.commit()

        await self.repository.database.run(write)


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_sqlite(f"sqlite:///{tmp_path / 'insider.db'}") as database:
        repository = SqliteMessageRepository(database, FakeClock())
        await repository.migrate()
        yield Backend(repository)


@pytest.fixture
async def postgres_backend(pg_repository: PostgresMessageRepository, pg_pool: Pool) -> Backend:
    async with pg_pool.connection() as conn:
        await conn.execute("TRUNCATE insider_inbound, insider_suppressions RESTART IDENTITY")
    return Backend(pg_repository, pool=pg_pool)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    return chosen


def reply(text: str, sender: str = PHONE, **options: Any) -> Inbound:
    return Inbound(sender, text, **options)


async def test_a_reply_round_trips(backend: Backend) -> None:
    inbound = reply("Evet 👍", to_phone="INSIDER", provider="carrier", provider_message_id="m1")
    recorded = await backend.store.record_inbound(inbound, None, "all", None)
    stored = recorded.reply
    assert not recorded.replayed
    assert (stored.from_phone, stored.to_phone, stored.text, stored.provider, stored.provider_message_id) == (
        PHONE,
        "INSIDER",
        "Evet 👍",
        "carrier",
        "m1",
    )
    assert stored.action is None and stored.received_at.tzinfo is UTC
    page = await backend.store.list_inbound(10)
    assert page.items == [stored] and page.next_cursor is None
    assert await backend.suppressions() == {}


async def test_the_same_provider_id_is_stored_and_acted_on_once(backend: Backend) -> None:
    confirmation = NewMessage.of(PHONE, "Bye", category=Category.TRANSACTIONAL)
    first = await backend.store.record_inbound(reply("STOP", provider_message_id="SM1"), "opt-out", "all", confirmation)
    again = await backend.store.record_inbound(reply("STOP", provider_message_id="SM1"), "opt-out", "all", confirmation)
    assert again.replayed and again.reply == first.reply
    assert (await backend.repository.counts())[MessageStatus.PENDING] == 1
    # Another provider's id, or none at all, is another reply.
    elsewhere = reply("STOP", provider="b", provider_message_id="SM1")
    other = await backend.store.record_inbound(elsewhere, None, "all", None)
    plain = [await backend.store.record_inbound(reply("hi"), None, "all", None) for _ in range(2)]
    assert not other.replayed and not any(r.replayed for r in plain)
    assert len((await backend.store.list_inbound(10)).items) == 4


@pytest.mark.postgres
async def test_two_deliveries_of_one_reply_at_once_store_it_once(postgres_backend: Backend) -> None:
    store = postgres_backend.store
    results = await asyncio.gather(
        *(store.record_inbound(reply("STOP", provider_message_id="SM9"), "opt-out", "all", None) for _ in range(5))
    )
    assert sum(not r.replayed for r in results) == 1
    assert {r.reply.id for r in results} == {results[0].reply.id}


async def test_opt_out_and_opt_in_keep_the_suppression_list(backend: Backend) -> None:
    store = backend.store
    await store.record_inbound(reply("STOP"), "opt-out", "commercial", None)
    assert await backend.suppressions() == {PHONE: ("commercial", "opt-out", "inbound")}
    await store.record_inbound(reply("STOP"), "opt-out", "all", None)  # widened
    assert await backend.suppressions() == {PHONE: ("all", "opt-out", "inbound")}
    await store.record_inbound(reply("STOP"), "opt-out", "commercial", None)  # never narrowed
    assert await backend.suppressions() == {PHONE: ("all", "opt-out", "inbound")}
    await backend.suppress(OTHER, "commercial")
    await store.record_inbound(reply("START"), "opt-in", "all", None)
    assert await backend.suppressions() == {OTHER: ("commercial", "manual", "api")}
    await store.record_inbound(reply("START", OTHER), "opt-in", "all", None)  # whoever made it
    assert await backend.suppressions() == {}


async def test_the_confirmation_is_queued_as_a_consent_reply_past_the_suppression(backend: Backend) -> None:
    confirmation = NewMessage.of(PHONE, "Bye", category=Category.TRANSACTIONAL)
    await backend.store.record_inbound(reply("STOP"), "opt-out", "all", confirmation)
    [queued] = (await backend.repository.list_messages(MessageStatus.PENDING, 10)).items
    assert (queued.recipient_phone, queued.content, queued.category) == (PHONE, "Bye", Category.TRANSACTIONAL)
    assert queued.consent_reply
    [claimed] = await backend.repository.claim(10, 30.0)
    assert claimed.id == queued.id and claimed.status is MessageStatus.SENDING
    # An ordinary message to the number is suppressed.
    assert (await backend.repository.enqueue(PHONE, "a code")).status is MessageStatus.SUPPRESSED


async def test_listing_pages_newest_first_and_by_sender(backend: Backend) -> None:
    store = backend.store
    for i in range(7):
        await store.record_inbound(reply(f"r{i}", PHONE if i % 3 else OTHER), None, "all", None)

    async def walk(**options: Any) -> list[str]:
        texts: list[str] = []
        cursor = None
        while True:
            page = await store.list_inbound(2, cursor, **options)
            texts += [r.text for r in page.items]
            if page.next_cursor is None:
                return texts
            cursor = page.next_cursor

    assert await walk() == [f"r{i}" for i in reversed(range(7))]
    assert await walk(from_phone=OTHER) == ["r6", "r3", "r0"]
    assert await walk(from_phone=PHONE) == ["r5", "r4", "r2", "r1"]
    assert (await store.list_inbound(2, from_phone="+905300000000")).items == []
    with pytest.raises(InvalidCursor):
        await store.list_inbound(2, "bm9wZQ")
