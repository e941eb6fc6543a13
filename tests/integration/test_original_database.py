"""Issue 12, point 1: the original Go service's database, upgraded in place.

The database is built from the original's own statements (tests/original_service.py), used
for a while (rows sent, failed and pending), in a database whose TimeZone is not UTC. Then
insider migrates it and sends through its real API and sender to a real local provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from insider.adapters.postgres import PostgresMessageRepository, open_postgres_pool
from insider.config import load_settings
from insider.container import Container, resolve
from insider.domain import MessageStatus
from insider.ports import SchemaUpgradeRefused
from insider.supervisor import Supervisor
from insider.web.app import create_app
from tests.conftest import Provider
from tests.original_service import OriginalRow, build_original_database, column_types, original_insert

pytestmark = pytest.mark.postgres

ISTANBUL = ZoneInfo("Europe/Istanbul")


def _settings(database_url: str, webhook_url: str) -> Any:
    return load_settings(
        {
            "INSIDER_DATABASE_URL": database_url,
            "INSIDER_WEBHOOK_URL": webhook_url,
            "INSIDER_AUTOSTART": "false",
            "INSIDER_BATCH_SIZE": "10",
            "INSIDER_SHUTDOWN_TIMEOUT": "0",
        },
        env_file=None,
    )


@asynccontextmanager
async def service(database_url: str, webhook_url: str) -> AsyncIterator[tuple[TestClient[Any, Any], Supervisor]]:
    """The API and the sender (not started: batches are sent with run_once) on ``database_url``."""
    container = Container(settings=_settings(database_url, webhook_url))
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
    await client.start_server()  # the lifespan migrates
    try:
        yield client, await resolve(container.supervisor)
    finally:
        await client.close()


def _aware(naive: datetime | None) -> datetime | None:
    """A TIMESTAMP of the original as the instant it meant: wall time in the database's zone."""
    return naive.replace(tzinfo=ISTANBUL) if naive is not None else None


async def _drain(supervisor: Supervisor) -> None:
    for _ in range(20):
        if not (await supervisor.run_once()).claimed:
            return
    raise AssertionError("the queue did not drain in 20 batches")


async def test_every_row_keeps_its_status_and_times_and_only_pending_ones_are_sent(
    fresh_postgres_url: str, provider: Provider
) -> None:
    before = build_original_database(fresh_postgres_url, pending=50, sent=3, failed=2)
    by_uuid = {row.uuid: row for row in before}
    async with service(fresh_postgres_url, provider.url) as (client, supervisor):
        listed: list[dict[str, Any]] = []
        for status in ("pending", "sent", "failed"):
            response = await client.get("/api/v1/messages", params={"status": status, "limit": "100"})
            assert response.status == 200
            listed += (await response.json())["data"]
        assert sorted(item["uuid"] for item in listed) == sorted(by_uuid)
        for item in listed:
            row = by_uuid[item["uuid"]]
            assert isinstance(item["id"], int)
            assert (item["recipientPhone"], item["content"], item["status"]) == (
                row.recipient_phone,
                row.content,
                row.status,
            )
            assert datetime.fromisoformat(item["createdAt"]) == _aware(row.created_at)
            sent_at = item["sentAt"]
            assert (datetime.fromisoformat(sent_at) if sent_at else None) == _aware(row.sent_at)
        # Ids follow creation order, so insider's oldest-first order is the original's rows' age.
        ids_by_age = [item["id"] for item in sorted(listed, key=lambda i: i["createdAt"])]
        assert ids_by_age == list(range(1, 51))

        # Either id finds the row.
        some = listed[0]
        for path in (
            f"/api/v1/messages/{some['id']}",
            f"/api/v1/messages/{some['uuid']}",
            f"/api/v1/messages/{some['uuid'].upper()}",
        ):
            response = await client.get(path)
            assert response.status == 200, path
            assert (await response.json())["id"] == some["id"]
        assert (await client.get("/api/v1/messages/00000000-0000-4000-8000-000000000000")).status == 404

        await _drain(supervisor)
        sent_contents = [hit["body"]["content"] for hit in provider.received]
        pending_contents = sorted(row.content for row in before if row.status == "pending")
        assert sorted(sent_contents) == pending_contents  # each pending row once; sent and failed ones never

        failed = [item for item in listed if item["status"] == "failed"]
        for item in failed:
            response = await client.get(f"/api/v1/messages/{item['id']}")
            assert (await response.json())["status"] == "failed"
        retried = await client.post(f"/api/v1/messages/{failed[0]['id']}/retry")
        assert retried.status == 200
        again = await client.post(f"/api/v1/messages/{failed[0]['uuid']}/retry")  # pending now: not failed
        assert again.status == 409
        missing = await client.post("/api/v1/messages/00000000-0000-4000-8000-000000000000/retry")
        assert missing.status == 404
        await _drain(supervisor)
        assert [hit["body"]["content"] for hit in provider.received][len(sent_contents) :] == [failed[0]["content"]]

        # The original's INSERT still works, and its rows are sent (and get a UUID of their own).
        with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
            conn.execute(original_insert(51, 52))
        await _drain(supervisor)
        assert sorted(hit["body"]["content"] for hit in provider.received[-2:]) == [
            "Message content 51",
            "Message content 52",
        ]
        response = await client.get("/api/v1/messages", params={"status": "sent", "limit": "2"})
        newest = (await response.json())["data"]
        assert all(item["uuid"] and item["id"] > 50 for item in newest)

        counts = (await (await client.get("/api/v1/stats")).json())["counts"]
        assert [counts[s] for s in ("pending", "sending", "sent", "failed")] == [0, 0, 3 + 45 + 1 + 2, 1]
        # The other failed one, replayed by the UUID the original showed.
        retried = await client.post(f"/api/v1/messages/{failed[1]['uuid']}/retry")
        assert retried.status == 200
        assert (await retried.json())["id"] == failed[1]["id"]
        assert (await retried.json())["status"] == "pending"
        # Pending again: it can be cancelled by its UUID too, and then it is not sent.
        cancelled = await client.post(f"/api/v1/messages/{failed[1]['uuid'].upper()}/cancel")
        assert cancelled.status == 200
        assert (await cancelled.json())["status"] == "cancelled"
        assert (await client.post(f"/api/v1/messages/{failed[1]['uuid']}/cancel")).status == 409
        assert (await client.post("/api/v1/messages/00000000-0000-4000-8000-000000000000/cancel")).status == 404
    types = column_types(fresh_postgres_url)
    assert (types["id"], types["uuid"], types["status"], types["created_at"]) == (
        "bigint",
        "uuid",
        "text",
        "timestamp with time zone",
    )


async def test_the_upgrade_is_applied_once_by_processes_starting_together(fresh_postgres_url: str) -> None:
    build_original_database(fresh_postgres_url, timezone=None)
    async with open_postgres_pool(fresh_postgres_url) as pool:
        repositories = [PostgresMessageRepository(pool) for _ in range(3)]
        await asyncio.gather(*(r.migrate() for r in repositories))
        assert (await repositories[0].counts())[MessageStatus.PENDING] == 45


def _break(url: str, statements: str) -> None:
    build_original_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statements)


@pytest.mark.parametrize(
    ("statements", "said"),
    [
        (
            "ALTER TABLE messages ALTER COLUMN content DROP NOT NULL; "
            "INSERT INTO messages (recipient_phone, content) VALUES ('+905301234099', NULL)",
            '1 row(s) of "messages" have no content (NULL); to fix: give them a content or delete them',
        ),
        (
            "ALTER TABLE messages ALTER COLUMN created_at TYPE text",
            'column "messages.created_at" is of type text, which insider cannot upgrade; to fix: give it back',
        ),
        (
            "ALTER TYPE message_status ADD VALUE 'queued'",
            None,  # checked below, after the enum value can be used
        ),
        (
            "CREATE TABLE deliveries (message uuid REFERENCES messages (id))",
            'foreign keys of other tables point at "messages"',
        ),
    ],
)
async def test_what_cannot_be_upgraded_is_refused_in_one_line_and_nothing_changes(
    fresh_postgres_url: str, statements: str, said: str | None
) -> None:
    _break(fresh_postgres_url, statements)
    if said is None:
        with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
            conn.execute("UPDATE messages SET status = 'queued' WHERE content = 'Message content 1'")
        said = "\"messages\" has rows with the status 'queued', which insider does not know; to fix: set them"
    rows = _break_rows(fresh_postgres_url)
    types = column_types(fresh_postgres_url)
    async with open_postgres_pool(fresh_postgres_url) as pool:
        with pytest.raises(SchemaUpgradeRefused) as refused:
            await PostgresMessageRepository(pool).migrate()
    assert said in str(refused.value)
    assert "\n" not in str(refused.value)
    assert column_types(fresh_postgres_url) == types
    assert _break_rows(fresh_postgres_url) == rows
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('insider_schema_migrations')").fetchone() == (None,)


def _break_rows(url: str) -> list[OriginalRow]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [
            OriginalRow(*row)
            for row in conn.execute(
                "SELECT id::text, recipient_phone, content, status::text, created_at, sent_at FROM messages ORDER BY id"
            ).fetchall()
        ]


async def test_a_null_created_at_takes_sent_at_and_failed_rows_say_the_original_kept_no_reason(
    fresh_postgres_url: str,
) -> None:
    build_original_database(fresh_postgres_url, pending=3, sent=1, failed=1)
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        # Its column allowed NULL: a row inserted with one, and a sent one that lost it.
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, created_at) "
            "VALUES ('+905301234077', 'no time', 'pending', NULL)"
        )
        conn.execute("UPDATE messages SET created_at = NULL WHERE status = 'sent'")
        started = conn.execute("SELECT now()").fetchone()
    assert started is not None
    async with open_postgres_pool(fresh_postgres_url) as pool:
        repository = PostgresMessageRepository(pool)
        with capture_logs() as logs:
            await repository.migrate()
            await repository.migrate()  # nothing more to do, nothing more said
        assert [entry["event"] for entry in logs] == [
            'upgraded the original Go service\'s table "messages" in place: 4 rows kept: 2 pending, 1 sent, '
            "1 failed; their UUIDs are in the column uuid"
        ]
        [sent] = (await repository.list_messages(MessageStatus.SENT, 10)).items
        assert sent.created_at == sent.sent_at
        [no_time] = [
            m for m in (await repository.list_messages(MessageStatus.PENDING, 10)).items if m.content == "no time"
        ]
        assert no_time.created_at >= started[0]
        [failed] = (await repository.list_messages(MessageStatus.FAILED, 10)).items
        assert failed.last_error == "failed under the original service, which kept no reason"
        assert (failed.attempts, sent.attempts) == (1, 1)
        assert failed.sent_at is not None  # the original set sent_at on failed rows too: kept


async def test_pgtz_reads_the_originals_times_in_its_zone_on_a_server_in_another(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original wrote Istanbul wall time (its DSN's TimeZone); this server's zone is UTC."""
    before = build_original_database(fresh_postgres_url, timezone=None, pending=2, sent=1, failed=0)
    monkeypatch.setenv("PGTZ", "Europe/Istanbul")  # libpq's: the session's time zone
    async with open_postgres_pool(fresh_postgres_url) as pool:
        repository = PostgresMessageRepository(pool)
        await repository.migrate()
        [sent] = (await repository.list_messages(MessageStatus.SENT, 10)).items
    [original] = [row for row in before if row.status == "sent"]
    assert sent.sent_at == _aware(original.sent_at)
    assert sent.created_at == _aware(original.created_at)
