"""Loads of whole files (the FileLoads port) on every SQL adapter: staged out of sight, stored all
at once with the file's record or not at all, the same bytes once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository
from insider.adapters.sqlite import SqliteMessageRepository, open_sqlite
from insider.clock import FakeClock
from insider.domain import MessageStatus, NewMessage
from insider.ports import FileAlreadyLoaded, LoadedFile, MessageRepository

PHONE = "+905301234001"


@pytest.fixture
async def sqlite_repository(tmp_path: Path) -> AsyncIterator[SqliteMessageRepository]:
    async with open_sqlite(f"sqlite:///{tmp_path / 'insider.db'}") as database:
        repository = SqliteMessageRepository(database, FakeClock())
        await repository.migrate()
        yield repository


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def repository(request: pytest.FixtureRequest) -> MessageRepository:
    name = "sqlite_repository" if request.param == "sqlite" else "pg_repository"
    chosen: MessageRepository = request.getfixturevalue(name)
    return chosen


def messages(n: int, prefix: str = "m") -> list[NewMessage]:
    return [NewMessage.of(PHONE, f"{prefix}{i}", priority=i % 10) for i in range(n)]


def record(stored: int, rejected: int = 0, name: str = "campaign.csv") -> LoadedFile:
    return LoadedFile(uuid.uuid4().hex * 2, name, stored + rejected + 1, stored, rejected)


async def pending(repository: MessageRepository) -> int:
    return (await repository.counts())[MessageStatus.PENDING]


async def test_staged_messages_are_out_of_sight_until_published_then_stored_in_file_order(
    repository: MessageRepository,
) -> None:
    wanted = record(2500, rejected=3)
    async with repository.file_load() as load:
        await load.add(messages(1000))
        await load.add(messages(1500, prefix="n"))
        assert await pending(repository) == 0
        assert await repository.claim(10, 30) == []
        stored = await load.publish(wanted)

    assert await pending(repository) == 2500
    assert (stored.digest, stored.name, stored.lines, stored.stored, stored.rejected, stored.loads) == (
        wanted.digest,
        "campaign.csv",
        2504,
        2500,
        3,
        1,
    )
    assert stored.loaded_at is not None and await repository.loaded_file(wanted.digest) == stored
    page = await repository.list_messages(MessageStatus.PENDING, 500)
    ids_by_content = {m.content: m.id for m in page.items}
    assert ids_by_content["n1499"] > ids_by_content["n1498"] > ids_by_content["n1001"]  # ids follow the file


async def test_a_load_left_without_publishing_stores_nothing_and_leaves_nothing_behind(
    repository: MessageRepository,
) -> None:
    with pytest.raises(RuntimeError, match="cut short"):
        async with repository.file_load() as load:
            await load.add(messages(100))
            raise RuntimeError("cut short")
    assert await pending(repository) == 0

    async with repository.file_load() as load:  # on the same connection: the staging table starts empty
        await load.add(messages(7))
        await load.publish(record(7))
    assert await pending(repository) == 7


async def test_the_same_digest_is_refused_with_nothing_stored_unless_again(repository: MessageRepository) -> None:
    first = record(3)
    async with repository.file_load() as load:
        await load.add(messages(3))
        stored = await load.publish(first)

    with pytest.raises(FileAlreadyLoaded) as refused:
        async with repository.file_load() as load:
            await load.add(messages(3))
            await load.publish(LoadedFile(first.digest, "copy.csv", 4, 3, 0))
    assert refused.value.previous == stored
    assert await pending(repository) == 3

    async with repository.file_load() as load:
        await load.add(messages(3))
        again = await load.publish(LoadedFile(first.digest, "copy.csv", 4, 3, 0), again=True)
    assert (again.name, again.loads) == ("copy.csv", 2)
    assert await pending(repository) == 6
    assert await repository.loaded_file(first.digest) == again
    assert await repository.loaded_file("0" * 64) is None


async def test_two_loads_of_the_same_bytes_at_once_store_it_once(repository: MessageRepository) -> None:
    same = record(50)
    ready = asyncio.Barrier(2)

    async def one() -> LoadedFile:
        async with repository.file_load() as load:
            await load.add(messages(50))
            await ready.wait()
            return await load.publish(same)

    results = await asyncio.gather(one(), one(), return_exceptions=True)

    assert sorted(type(r).__name__ for r in results) == ["FileAlreadyLoaded", "LoadedFile"]
    assert await pending(repository) == 50


async def test_sqlite_staging_takes_no_lock_on_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'insider.db'}"
    async with open_sqlite(url) as loading_db, open_sqlite(url, busy_timeout_s=0.2) as other_db:
        loading = SqliteMessageRepository(loading_db)
        other = SqliteMessageRepository(other_db)
        await loading.migrate()
        async with loading.file_load() as load:
            await load.add(messages(5000))
            await other.enqueue(PHONE, "written while a load is staged")  # would time out on a held lock
            await load.publish(record(5000))
        assert (await other.counts())[MessageStatus.PENDING] == 5001


@pytest.mark.postgres
async def test_postgres_staging_holds_no_transaction_open(
    pg_repository: PostgresMessageRepository, pg_pool: Pool
) -> None:
    async with pg_repository.file_load() as load:
        await load.add(messages(100))
        async with pg_pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND (state LIKE 'idle in transaction%' OR backend_xmin IS NOT NULL AND pid <> pg_backend_pid())"
            )
            assert await cur.fetchone() == (0,)
        await load.publish(record(100))
