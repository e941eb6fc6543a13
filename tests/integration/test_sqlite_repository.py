"""What only the SQLite repository has: URLs, its file, migrations, several connections, a missing disk."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from insider.adapters.sqlite import (
    SqliteDatabase,
    SqliteMessageRepository,
    format_timestamp,
    load_migrations,
    open_sqlite,
    parse_timestamp,
    split_statements,
    sqlite_path,
)
from insider.domain import MessageStatus, Resolution
from insider.ports import RepositoryUnavailable
from insider.receipt_parsing import Receipt, ReceiptResult

PHONE = "+905301234001"


@pytest.fixture
async def repository(tmp_path: Path) -> AsyncIterator[SqliteMessageRepository]:
    async with open_sqlite(f"sqlite:///{tmp_path / 'insider.db'}") as database:
        repository = SqliteMessageRepository(database)
        await repository.migrate()
        yield repository


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///insider.db", "insider.db"),
        ("sqlite:///data/insider.db", "data/insider.db"),
        ("sqlite:////var/lib/insider/insider.db", "/var/lib/insider/insider.db"),
        ("sqlite:///my%20queue.db", "my queue.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url", ["sqlite://host/insider.db", "sqlite:///", "sqlite:insider.db", "postgresql://h/db", "sqlite:///x.db?a=1"]
)
def test_bad_sqlite_urls(url: str) -> None:
    with pytest.raises(ValueError):
        sqlite_path(url)


async def test_a_relative_url_is_a_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_sqlite("sqlite:///queue.db") as database:
        assert not (tmp_path / "queue.db").exists()  # nothing is opened before the first call
        await SqliteMessageRepository(database).migrate()
        assert database.location == str(tmp_path / "queue.db")
    assert (tmp_path / "queue.db").is_file()


def test_timestamps_are_fixed_width_utc_text_that_sorts_in_time_order() -> None:
    times = [
        datetime(2026, 1, 1, 9, 0, 0, 5, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0, 0, 999999, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC),
    ]
    texts = [format_timestamp(t) for t in times]

    assert texts == sorted(texts)
    assert len({len(t) for t in texts}) == 1
    assert texts[0] == "2026-01-01T09:00:00.000005Z"
    assert [parse_timestamp(t) for t in texts] == times
    # Read back aware, in UTC, whatever wrote them: a default of the schema, or a hand-written naive time.
    assert parse_timestamp("2026-01-01T12:00:00.123000Z") == datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert parse_timestamp("2026-01-01 12:00:00") == datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_split_statements_keeps_semicolons_inside_strings_and_drops_trailing_comments() -> None:
    script = "CREATE TABLE a (x TEXT DEFAULT 'a;b');\n-- comment\nCREATE INDEX i ON a (x);\n-- the end\n"

    assert list(split_statements(script)) == [
        "CREATE TABLE a (x TEXT DEFAULT 'a;b');",
        "-- comment\nCREATE INDEX i ON a (x);",
    ]
    with pytest.raises(ValueError):
        list(split_statements("CREATE TABLE b (x TEXT)"))


async def test_rows_inserted_by_another_program_get_the_defaults(
    repository: SqliteMessageRepository, tmp_path: Path
) -> None:
    # The statement the original Go service's users run.
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn, conn:
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status) "
            "VALUES ('+905301234001', 'Message content 1', 'pending')"
        )

    [claimed] = await repository.claim(10, 30.0)

    assert (claimed.content, claimed.attempts, claimed.status) == ("Message content 1", 1, MessageStatus.SENDING)
    assert uuid.UUID(claimed.idempotency_key).version == 4
    assert claimed.created_at.tzinfo is UTC
    assert abs((datetime.now(UTC) - claimed.created_at).total_seconds()) < 60


async def test_a_status_outside_the_four_is_refused(repository: SqliteMessageRepository, tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO messages (recipient_phone, content, status) VALUES ('+905301234001', 'x', 'queued')")


async def test_migrate_again_changes_nothing(repository: SqliteMessageRepository, tmp_path: Path) -> None:
    message = await repository.enqueue(PHONE, "content")

    await repository.migrate()

    assert await repository.get(message.id) == message
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM insider_schema_migrations")]
    assert versions == [version for version, _, _ in load_migrations()]


async def test_concurrent_migrations_on_a_fresh_file(tmp_path: Path) -> None:
    # Separate connections on one file take SQLite's locks as separate processes do.
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    async with contextlib.AsyncExitStack() as stack:
        databases = [await stack.enter_async_context(open_sqlite(url)) for _ in range(4)]
        repositories = [SqliteMessageRepository(d) for d in databases]

        await asyncio.gather(*(r.migrate() for r in repositories for _ in range(2)))

        message = await repositories[1].enqueue(PHONE, "content")
        assert await repositories[2].get(message.id) == message
    with contextlib.closing(sqlite3.connect(tmp_path / "fresh.db")) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM insider_schema_migrations")]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert versions == [version for version, _, _ in load_migrations()]


async def test_concurrent_claimers_on_one_file_never_take_the_same_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with contextlib.AsyncExitStack() as stack:
        databases = [await stack.enter_async_context(open_sqlite(url)) for _ in range(3)]
        repositories = [SqliteMessageRepository(d) for d in databases]
        await repositories[0].migrate()
        for i in range(60):
            await repositories[0].enqueue(PHONE, f"content {i}")

        async def claimer(repository: SqliteMessageRepository) -> list[int]:
            taken: list[int] = []
            while batch := await repository.claim(7, 30.0):
                taken.extend(m.id for m in batch)
            return taken

        results = await asyncio.gather(*(claimer(r) for r in repositories))

    every = [i for taken in results for i in taken]
    assert sorted(every) == list(range(1, 61))  # each once, none twice


async def test_acquire_slot_is_shared_by_connections_on_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'slots.db'}"
    async with open_sqlite(url) as first_db, open_sqlite(url) as second_db:
        first, second = SqliteMessageRepository(first_db), SqliteMessageRepository(second_db)
        await first.migrate()

        results = await asyncio.gather(*(r.acquire_slot("sender", 60.0) for r in (first, second, first, second)))

    assert sorted(results)[0] == 0.0
    assert all(55.0 < wait_s <= 60.0 for wait_s in sorted(results)[1:])  # one taker, the rest wait


async def test_resolve_writes_every_outcome_in_one_statement(repository: SqliteMessageRepository) -> None:
    for i in range(3):
        await repository.enqueue(PHONE, f"content {i}")
    a, b, c = await repository.claim(3, 30.0)
    sent_at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    await repository.resolve(
        [
            Resolution(a.id, a.claim_token, MessageStatus.SENT, sent_at=sent_at, message_id="p-ü"),
            Resolution(b.id, b.claim_token.upper() if b.claim_token else None, MessageStatus.FAILED, last_error="é"),
            Resolution(c.id, c.claim_token, MessageStatus.PENDING, last_error="HTTP 503", retry_in_s=0.0),
        ]
    )

    got = [await repository.get(m.id) for m in (a, b, c)]
    assert [m.status if m else None for m in got] == [MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.PENDING]
    assert got[0] is not None and (got[0].sent_at, got[0].message_id) == (sent_at, "p-ü")
    assert got[1] is not None and got[1].last_error == "é"  # a token is a UUID whatever its case


async def test_a_file_that_cannot_be_opened_makes_every_call_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no such directory' / 'insider.db'}"
    async with open_sqlite(url) as database:
        repository = SqliteMessageRepository(database)
        for call in (
            repository.migrate,
            repository.ping,
            lambda: repository.enqueue(PHONE, "content"),
            lambda: repository.get(1),
            lambda: repository.list_messages(MessageStatus.SENT, 10),
            lambda: repository.claim(10, 30.0),
            lambda: repository.resolve([Resolution(1, str(uuid.uuid4()), MessageStatus.FAILED)]),
            lambda: repository.retry(1),
            lambda: repository.acquire_slot("sender", 1.0),
            repository.counts,
        ):
            with pytest.raises(RepositoryUnavailable):
                await call()

        # Once the directory exists, the next call opens the file: no restart needed.
        (tmp_path / "no such directory").mkdir()
        await repository.migrate()
        assert (await repository.enqueue(PHONE, "content")).id == 1


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "garbage.db").write_bytes(b"this is not a database file, " * 100)
    async with open_sqlite(f"sqlite:///{tmp_path / 'garbage.db'}") as database:
        with pytest.raises(RepositoryUnavailable):
            await SqliteMessageRepository(database).migrate()


async def test_a_closed_database_is_unavailable(tmp_path: Path) -> None:
    database = SqliteDatabase(str(tmp_path / "closed.db"))
    await SqliteMessageRepository(database).migrate()
    await database.close()
    await database.close()  # twice is fine

    with pytest.raises(RepositoryUnavailable):
        await SqliteMessageRepository(database).ping()


async def test_a_query_error_is_not_mistaken_for_an_outage(tmp_path: Path) -> None:
    async with open_sqlite(f"sqlite:///{tmp_path / 'bare.db'}") as database:
        # Not migrated: a bug in the deployment, not a database that is down.
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await SqliteMessageRepository(database).get(1)


async def test_the_delivery_migration_keeps_every_row_of_an_older_file(tmp_path: Path) -> None:
    """0006 rebuilds the messages table (SQLite cannot change a CHECK): rows, ids and keys survive."""
    from insider.adapters.sqlite import load_migrations, split_statements

    columns = "id, status, idempotency_key, message_id, send_at, priority, valid_until, encoding, segments"
    path = tmp_path / "older.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE insider_schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version, _, text in load_migrations():
            if version >= 6:
                break
            for statement in split_statements(text):
                conn.execute(statement)
            conn.execute("INSERT INTO insider_schema_migrations VALUES (?, '2026-01-01T00:00:00.000000Z')", (version,))
        conn.execute("INSERT INTO messages (recipient_phone, content) VALUES ('+905301234001', 'pending one')")
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, sent_at, message_id) "
            "VALUES ('+905301234002', 'sent one', 'sent', '2026-01-01T00:00:01.000000Z', 'p-old')"
        )
        conn.execute("DELETE FROM messages WHERE id = 1")
        conn.execute("INSERT INTO messages (recipient_phone, content) VALUES ('+905301234003', 'after a delete')")
        # Migration 0005's columns and statuses (issue 13) survive the rebuild too.
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, send_at, priority, valid_until, encoding, "
            "segments) VALUES ('+905301234005', 'scheduled', 'pending', '2026-02-01T00:00:00.000000Z', 9, "
            "'2026-02-02T00:00:00.000000Z', 'UCS-2', 2)"
        )
        conn.execute("INSERT INTO messages (recipient_phone, content, status) VALUES ('+905301234006', 'x', 'expired')")
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, priority) "
            "VALUES ('+905301234007', 'y', 'cancelled', 0)"
        )
        before = conn.execute(f"SELECT {columns} FROM messages ORDER BY id").fetchall()

    async with open_sqlite(f"sqlite:///{path}") as database:
        repository = SqliteMessageRepository(database)
        await repository.migrate()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            after = conn.execute(f"SELECT {columns} FROM messages ORDER BY id").fetchall()
            indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        newest = await repository.enqueue("+905301234004", "new")
        outcomes = await repository.apply_receipts([Receipt("p-old", "delivered", datetime.now(UTC))], [None])

    assert after == before
    assert [row[:4] for row in after[:2]] == [(2, "sent", before[0][2], "p-old"), (3, "pending", before[1][2], None)]
    assert after[2][1:2] + after[2][4:] == (
        "pending",
        "2026-02-01T00:00:00.000000Z",
        9,
        "2026-02-02T00:00:00.000000Z",
        "UCS-2",
        2,
    )
    assert [(row[1], row[5]) for row in after[3:]] == [("expired", 5), ("cancelled", 0)]
    assert {
        "messages_due_idx",
        "messages_lease_idx",
        "messages_valid_until_idx",
        "messages_to_sent_idx",
        "messages_to_status_created_idx",
        "messages_message_id_idx",
        "messages_accepted_idx",
        "messages_to_accepted_idx",
    } <= indexes
    assert newest.id == 7  # ids are not reused
    assert [o.result for o in outcomes] == [ReceiptResult.APPLIED]


async def test_the_receipt_order_migration_numbers_the_receipts_already_waiting_by_arrival(tmp_path: Path) -> None:
    """0007 rebuilds the waiting table with a number per receipt; those waiting keep their arrival order."""
    from insider.adapters.sqlite import load_migrations, split_statements

    path = tmp_path / "older.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE insider_schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version, _, text in load_migrations():
            if version >= 7:
                break
            for statement in split_statements(text):
                conn.execute(statement)
            conn.execute("INSERT INTO insider_schema_migrations VALUES (?, '2026-01-01T00:00:00.000000Z')", (version,))
        # Stored out of their order of arrival.
        for status, final, received_at in [
            ("DELIVRD", "delivered", "2026-01-01T00:00:03.000000Z"),
            ("UNDELIV", "undelivered", "2026-01-01T00:00:01.000000Z"),
            ("ENROUTE", None, "2026-01-01T00:00:02.000000Z"),
        ]:
            conn.execute(
                "INSERT INTO insider_pending_receipts (provider_message_id, dedupe_key, receipt_status, "
                "delivery_status, final_status, received_at) VALUES ('p-1', ?, ?, ?, ?, ?)",
                (status, status, final, final, received_at),
            )

    async with open_sqlite(f"sqlite:///{path}") as database:
        repository = SqliteMessageRepository(database)
        await repository.migrate()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            numbered = conn.execute("SELECT receipt_status, seq FROM insider_pending_receipts ORDER BY seq").fetchall()
        later = await repository.apply_receipts([Receipt("p-1", "REJECTD", datetime.now(UTC))], [None])
        message = await repository.enqueue("+905301234001", "x")
        [claimed] = await repository.claim(1, 30.0)
        applied = await repository.resolve(
            [
                Resolution(
                    claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=datetime.now(UTC), message_id="p-1"
                )
            ]
        )
        got = await repository.get(message.id)

    assert numbered == [("UNDELIV", 1), ("ENROUTE", 2), ("DELIVRD", 3)]
    assert [o.result for o in later] == [ReceiptResult.WAITING]
    assert [o.result for o in applied] == [ReceiptResult.APPLIED] + [ReceiptResult.RECORDED] * 3
    assert got is not None and got.delivery_status == "undelivered"
