"""Issue 12: insider as a drop-in for the original Go service, run as a subprocess.

Its database built from its own statements, its .env names only, its routes, and a provider
that answers like webhook.site did for it (200, a text body, the id in ``x-request-id``).
Also: a migration killed with SIGKILL halfway leaves the table as it was, and what cannot be
upgraded stops start-up with one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psycopg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.acceptance.conftest import Service, free_port, service_env
from tests.conftest import eventually
from tests.original_service import build_original_database, column_types, original_insert

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@dataclass
class WebhookSite:
    """Answers like webhook.site's default: 200, a text body, a fresh id in ``x-request-id``."""

    server: TestServer
    received: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/8f7ec198-e362-41fd-b796-874dc89d9d30"))


@pytest.fixture
async def webhook_site() -> AsyncIterator[WebhookSite]:
    app = web.Application()
    state = WebhookSite(server=TestServer(app))

    async def hook(request: web.Request) -> web.Response:
        state.received.append(await request.json())
        request_id = str(uuid.uuid4())
        state.request_ids.append(request_id)
        return web.Response(
            text="This URL has no default content configured.",
            content_type="text/plain",
            headers={"x-request-id": request_id},
        )

    app.router.add_route("*", "/{token}", hook)
    await state.server.start_server()
    try:
        yield state
    finally:
        await state.server.close()


def original_env_file(directory: Path, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The original's .env (its names only) pointing at ``database_url`` and ``redis_url``."""
    db, redis = urlsplit(database_url), urlsplit(redis_url)
    names = {
        "APP_NAME": "Insider Auto Message Sender",
        "APP_VERSION": "1.0.0",
        "SERVER_HOST": "127.0.0.1",
        "SERVER_PORT": str(free_port()),
        "DB_HOST": db.hostname or "127.0.0.1",
        "DB_PORT": str(db.port or 5432),
        "DB_USER": db.username or "root",
        "DB_PASSWORD": db.password or "insider",  # trust authentication ignores it
        "DB_NAME": db.path.lstrip("/"),
        "DB_SSLMODE": "disable",
        "REDIS_HOST": redis.hostname or "127.0.0.1",
        "REDIS_PORT": str(redis.port or 6379),
        "REDIS_DB": redis.path.lstrip("/") or "0",
        "REDIS_PASSWORD": "",
    } | extra
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in names.items()), encoding="utf-8")
    return names


def run_original_service(directory: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m insider`` in ``directory`` with no INSIDER_* setting but the log format."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "insider", *args],
            cwd=directory,
            env=service_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_the_original_env_database_and_routes_work_as_before(
    fresh_postgres_url: str, redis_url: str, redis_prefix: str, webhook_site: WebhookSite, tmp_path: Path
) -> None:
    before = build_original_database(fresh_postgres_url, pending=8, sent=2, failed=1)
    list_key = f"{redis_prefix}:sent:messages"
    names = original_env_file(
        tmp_path, fresh_postgres_url, redis_url, SMS_HOST=webhook_site.url, TICKER_PERIOD="300ms", REDIS_KEY=list_key
    )
    process = run_original_service(tmp_path, tmp_path / "service.log")
    service = Service(process, f"http://127.0.0.1:{names['SERVER_PORT']}", tmp_path / "service.log")
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with aiohttp.ClientSession() as session:
            await service.wait_answering(session, "/messages")
            pending = sorted(row.content for row in before if row.status == "pending")
            await eventually(lambda: len(webhook_site.received) == len(pending), timeout_s=30, what="the pending rows")
            # The original's INSERT, after the upgrade: sent too.
            with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
                conn.execute(original_insert(9, 9))
            await eventually(lambda: len(webhook_site.received) == len(pending) + 1, timeout_s=30, what="the new row")
            assert sorted(body["content"] for body in webhook_site.received) == sorted([*pending, "Message content 9"])

            summary = service.log()
            assert "Original  settings read from the Go service's names: INSIDER_DATABASE_URL from DB_HOST" in summary
            assert (
                "INSIDER_WEBHOOK_URL from SMS_HOST" in summary and "INSIDER_SEND_INTERVAL from TICKER_PERIOD" in summary
            )

            async def all_listed() -> bool:
                async with session.get(service.base_url + "/messages") as response:
                    return len((await response.json())["data"] or []) == 2 + len(pending) + 1

            await eventually(all_listed, timeout_s=10, what="every sent message in GET /messages")
            async with session.get(service.base_url + "/messages/") as response:
                assert response.status == 200
                body = await response.json()
            assert body["success"] is True
            sent_ats = [item["sentAt"] for item in body["data"]]
            assert sent_ats == sorted(sent_ats, reverse=True)  # newest first
            # The two the original sent, oldest of all, at 12:00:00 and 12:00:01 in Istanbul (UTC+3),
            # with no id: the original kept those in Redis only.
            assert body["data"][-2:] == [
                {"messageId": "", "sentAt": "2026-03-02T09:00:01Z"},
                {"messageId": "", "sentAt": "2026-03-02T09:00:00Z"},
            ]
            # Those insider sent carry webhook.site's x-request-id as their message id, each its own,
            # cached under insider:sent:<id> and pushed to the original's list.
            ids = [item["messageId"] for item in body["data"][: len(pending) + 1]]
            assert sorted(ids) == sorted(webhook_site.request_ids)
            for request_id in ids:
                assert await redis.hget(f"insider:sent:{request_id}", "messageId") == request_id
            pushed = await redis.lrange(list_key, 0, -1)
            assert sorted(json.loads(entry)["messageId"] for entry in pushed) == sorted(ids)

            async with session.get(service.base_url + "/messages/start") as response:
                assert response.status == 500
                assert await response.json() == {"success": False, "error": "auto sending is already running"}
            async with session.get(service.base_url + "/messages/stop") as response:
                assert (response.status, await response.json()) == (200, {"success": True, "data": "OK"})
            async with session.get(service.base_url + "/messages/stop") as response:
                assert response.status == 500
                assert await response.json() == {"success": False, "error": "auto sending is not running"}
            async with session.get(service.base_url + "/swagger/doc.json") as response:
                assert "/messages/start" in (await response.json())["paths"]
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=20)
        keys = [list_key, *(f"insider:sent:{request_id}" for request_id in webhook_site.request_ids)]
        await redis.delete(*keys)
        await redis.aclose()
    assert process.returncode == 0
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        statuses: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM messages GROUP BY status").fetchall()
        )
    assert statuses == {"sent": 2 + len(pending) + 1, "failed": 1}


def _waiting_for_lock_on(conn: psycopg.Connection, table: str) -> bool:
    """Whether a backend other than ``conn``'s waits for a lock on ``table``."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = to_regclass(%s) AND pid <> pg_backend_pid()",
        (table,),
    ).fetchone()
    return bool(row and row[0])


async def test_a_migration_killed_halfway_leaves_the_table_as_it_was_and_the_next_start_completes(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    before = build_original_database(fresh_postgres_url, pending=10, sent=2, failed=1)
    types = column_types(fresh_postgres_url)
    original_env_file(tmp_path, fresh_postgres_url, "redis://127.0.0.1:6379/0")
    (tmp_path / ".env").write_text(
        "\n".join(line for line in (tmp_path / ".env").read_text().splitlines() if not line.startswith("REDIS_")),
        encoding="utf-8",
    )
    with psycopg.connect(fresh_postgres_url, autocommit=True) as holder:
        # The table insider records its migrations in, as an earlier start would have left it,
        # locked against writes: the migration upgrades `messages`, then waits to record it.
        holder.execute(
            "CREATE TABLE insider_schema_migrations (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE insider_schema_migrations IN EXCLUSIVE MODE")
        process = run_original_service(tmp_path, tmp_path / "migrate.log", "migrate")
        with psycopg.connect(fresh_postgres_url, autocommit=True) as watcher:
            await eventually(
                lambda: _waiting_for_lock_on(watcher, "insider_schema_migrations"),
                timeout_s=30,
                what="the migration to wait for its record, messages already altered",
            )
            # Halfway: the migration holds `messages` (altered, uncommitted) exclusively.
            [(mode,)] = watcher.execute(
                "SELECT string_agg(mode, ',') FROM pg_locks WHERE relation = to_regclass('messages') AND granted "
                "AND pid <> pg_backend_pid()"
            ).fetchall()
            assert "AccessExclusiveLock" in mode
            process.kill()
            process.wait(timeout=10)
        holder.execute("ROLLBACK")

    assert column_types(fresh_postgres_url) == types  # id uuid, status message_status, TIMESTAMP
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM insider_schema_migrations").fetchone() == (0,)
        rows = conn.execute("SELECT id::text, status::text FROM messages ORDER BY id").fetchall()
    assert sorted(rows) == sorted((row.uuid, row.status) for row in before)

    again = run_original_service(tmp_path, tmp_path / "migrate-again.log", "migrate")
    assert again.wait(timeout=60) == 0, (tmp_path / "migrate-again.log").read_text()
    assert column_types(fresh_postgres_url)["id"] == "bigint"
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        rows = conn.execute("SELECT uuid::text, status FROM messages").fetchall()
    assert sorted(rows) == sorted((row.uuid, row.status) for row in before)


async def test_a_table_that_cannot_be_upgraded_stops_start_up_with_one_line(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    build_original_database(fresh_postgres_url, pending=3, sent=0, failed=0)
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE messages ALTER COLUMN recipient_phone DROP NOT NULL")
        conn.execute("INSERT INTO messages (recipient_phone, content) VALUES (NULL, 'to nobody')")
    types = column_types(fresh_postgres_url)
    original_env_file(tmp_path, fresh_postgres_url, "redis://127.0.0.1:6379/0")

    process = run_original_service(tmp_path, tmp_path / "serve.log")
    assert process.wait(timeout=60) == 3
    output = (tmp_path / "serve.log").read_text()
    errors = [line for line in output.splitlines() if line.startswith("insider: error:")]
    assert errors == [
        'insider: error: cannot upgrade the database: 1 row(s) of "messages" have no recipient_phone (NULL); '
        "to fix: give them a recipient_phone or delete them (SELECT * FROM messages WHERE recipient_phone IS NULL), "
        "then start again"
    ]
    assert "Traceback" not in output
    assert column_types(fresh_postgres_url) == types


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("TICKER_PERIOD", "5", "insider: error: TICKER_PERIOD: expected a Go duration such as 2m, 30s, 1m30s or 300ms"),
        ("DB_PORT", "postgres", "insider: error: DB_PORT: expected a whole number, got 'postgres'"),
    ],
)
def test_a_bad_value_of_the_originals_names_is_one_line_and_exit_2(
    tmp_path: Path, name: str, value: str, said: str
) -> None:
    (tmp_path / ".env").write_text(f"DB_PASSWORD=hunter2-secret\n{name}={value}\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "insider"], cwd=tmp_path, env=service_env(), capture_output=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(said), lines
    assert b"hunter2" not in done.stderr + done.stdout
