"""Categories on every SQL adapter (SQLite and PostgreSQL): stored by every way in, a list filter
whose cursors page without gaps, counted per status, and (PostgreSQL) read through an index."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from insider.adapters.postgres import Pool
from insider.domain import Category, MessageStatus, NewMessage, Resolution
from insider.ports import CategoryCounter, LoadedFile, MessageRepository
from tests.integration import test_message_features_contract as features
from tests.integration.test_message_features_contract import LEASE_S, OTHER, PHONE, Backend

# The backends of the features' contract: SQLite in a file and PostgreSQL.
sqlite_backend = features.sqlite_backend
postgres_backend = features.postgres_backend
backend = features.backend

COMMERCIAL, TRANSACTIONAL = Category.COMMERCIAL, Category.TRANSACTIONAL


def new(content: str, category: Category, to: str = PHONE) -> NewMessage:
    return NewMessage.of(to, content, category=category)


async def walk(repo: MessageRepository, status: MessageStatus | None, **filters: Any) -> list[int]:
    """Every id of a listing, two at a time through its cursors."""
    ids: list[int] = []
    cursor = None
    while True:
        page = await repo.list_messages(status, 2, cursor, **filters)
        ids += [m.id for m in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids


async def test_every_way_in_stores_the_category(backend: Backend) -> None:
    repo = backend.repository
    (one,) = (await repo.enqueue_many([new("one", COMMERCIAL)])).messages
    assert one.category is COMMERCIAL and (await repo.get(one.id)) == one
    assert await repo.load([new("bulk c", COMMERCIAL), new("bulk t", TRANSACTIONAL)]) == 2
    async with repo.file_load() as load:
        await load.add([new("file c", COMMERCIAL), new("file t", TRANSACTIONAL)])
        await load.publish(LoadedFile(uuid.uuid4().hex * 2, "f.csv", 3, 2, 0))
    plain = await repo.enqueue(PHONE, "default")
    page = await repo.list_messages(MessageStatus.PENDING, 10)
    assert {m.content: m.category for m in page.items} == {
        "one": COMMERCIAL,
        "bulk c": COMMERCIAL,
        "bulk t": TRANSACTIONAL,
        "file c": COMMERCIAL,
        "file t": TRANSACTIONAL,
        "default": TRANSACTIONAL,
    }
    assert plain.category is TRANSACTIONAL


async def test_the_list_filter_pages_one_category_through_its_cursors(backend: Backend) -> None:
    repo = backend.repository
    made: dict[Category, list[int]] = {COMMERCIAL: [], TRANSACTIONAL: []}
    to_phone: set[int] = set()
    for i in range(11):
        category = COMMERCIAL if i % 3 else TRANSACTIONAL
        (m,) = (await repo.enqueue_many([new(f"m{i}", category, OTHER if i % 2 else PHONE)])).messages
        made[category].append(m.id)
        if m.recipient_phone == PHONE:
            to_phone.add(m.id)
        await backend.advance(1)
    for category, ids in made.items():
        assert await walk(repo, MessageStatus.PENDING, category=category) == ids[::-1]
        mine = await walk(repo, MessageStatus.PENDING, to=PHONE, category=category)
        assert mine == [i for i in ids[::-1] if i in to_phone]
    assert await walk(repo, MessageStatus.PENDING) == sorted(made[COMMERCIAL] + made[TRANSACTIONAL], reverse=True)

    claimed = await repo.claim(11, LEASE_S)
    now = backend.now()
    await repo.resolve(
        [Resolution(m.id, m.claim_token, MessageStatus.SENT, sent_at=now, message_id=f"p{m.id}") for m in claimed]
    )
    for category, ids in made.items():
        for status in (None, MessageStatus.SENT):  # by sent_at: ties broken by id
            assert await walk(repo, status, category=category) == sorted(ids, reverse=True)
        assert await walk(repo, MessageStatus.PENDING, category=category) == []


async def test_a_cursor_of_one_category_pages_on_in_it(backend: Backend) -> None:
    repo = backend.repository
    ids = [(await repo.enqueue_many([new(f"c{i}", COMMERCIAL)])).messages[0].id for i in range(3)]
    await repo.enqueue(PHONE, "t")
    first = await repo.list_messages(MessageStatus.PENDING, 1, category=COMMERCIAL)
    rest = await repo.list_messages(MessageStatus.PENDING, 5, first.next_cursor, category=COMMERCIAL)
    assert [m.id for m in first.items + rest.items] == ids[::-1]


async def test_category_counts_follow_every_change(backend: Backend) -> None:
    repo = backend.repository
    assert isinstance(repo, CategoryCounter)
    await repo.enqueue_many([new("a", COMMERCIAL), new("b", COMMERCIAL), new("c", TRANSACTIONAL)])
    await repo.load([new("d", COMMERCIAL)])
    go_row = await backend.insert_like_go(PHONE, "from another program")  # no category: the default
    counts = await repo.category_counts()
    assert counts[COMMERCIAL][MessageStatus.PENDING] == 3
    assert counts[TRANSACTIONAL][MessageStatus.PENDING] == 2

    page = await repo.list_messages(MessageStatus.PENDING, 10, category=COMMERCIAL)
    await repo.cancel(page.items[0].id)
    claimed = await repo.claim(10, LEASE_S)
    await repo.resolve(
        [
            Resolution(m.id, m.claim_token, MessageStatus.SENT, sent_at=backend.now(), message_id=f"p{m.id}")
            for m in claimed
        ]
    )
    counts = await repo.category_counts()
    assert {s: n for s, n in counts[COMMERCIAL].items() if n} == {MessageStatus.SENT: 2, MessageStatus.CANCELLED: 1}
    assert {s: n for s, n in counts[TRANSACTIONAL].items() if n} == {MessageStatus.SENT: 2}
    assert sum(n for c in counts.values() for n in c.values()) == sum((await repo.counts()).values())
    assert go_row in {m.id for m in claimed}


@pytest.mark.postgres
async def test_postgres_reads_a_category_through_an_index(postgres_backend: Backend) -> None:
    """Without the indexes, a rare category would be found by reading the whole table (or every
    row of a status) newest first until a page is full."""
    pool: Pool | None = postgres_backend.pool
    assert pool is not None
    listings = {
        "list_accepted_category": {"status": "accepted"},
        "list_sent_category": {"status": "sent"},
        "list_by_created_category": {"status": "pending"},
    }
    from insider.adapters.postgres import _QUERIES as queries  # the package's own named queries

    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        for name, params in listings.items():
            cur = await conn.execute(
                "EXPLAIN " + queries[name],
                params | {"category": "commercial", "limit": 51},
            )
            plan = "\n".join(str(row[0]) for row in await cur.fetchall())
            assert "messages_category_" in plan, (name, plan)
