"""The message repository on PostgreSQL (psycopg 3, asyncio), with its schema migrations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final, LiteralString, TypeVar, cast

import orjson
import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row

from insider.adapters import sqlfiles
from insider.adapters.postgres_pool import Pool, open_postgres_pool, wrong_url_reason
from insider.adapters.rows import (
    WAITING_PER_SEND,
    Applied,
    Row,
    claim_query,
    outcome_row,
    receipt_outcomes,
    receipt_rows,
)
from insider.adapters.sql_repository import Flow, SqlMessageRepository, publish_file
from insider.domain import Message, NewMessage, Resolution, SendOrder, slot_tolerance_s
from insider.logs import get_logger
from insider.ports import LoadedFile, RepositoryUnavailable, SchemaUpgradeRefused
from insider.receipt_parsing import Receipt, ReceiptOutcome

# What embedders, tests and the command line import from here, the pool's helpers included.
__all__ = [
    "Pool",
    "PostgresFileLoad",
    "PostgresMessageRepository",
    "load_migrations",
    "open_postgres_pool",
    "wrong_url_reason",
]

T = TypeVar("T")
log = get_logger("insider.postgres")

# Taken for the whole migration transaction, so processes starting together migrate one
# at a time; the value is "insider" in ASCII, to be recognisable in pg_locks.
MIGRATION_LOCK_ID: Final = 0x696E7369646572

# What a migration says to the operator starts so (RAISE NOTICE 'insider: ...').
_NOTICE_PREFIX: Final = "insider: "

# The SQLSTATE a migration raises for what it cannot upgrade (see 0001_init.sql).
_UPGRADE_REFUSED: Final = "IN001"

# How many times acquire_slot re-runs when a concurrent taker changed the row under it.
_SLOT_ATTEMPTS: Final = 5

_SQL_DIR = resources.files("insider.adapters") / "sql"


def load_migrations() -> list[tuple[int, str, str]]:
    """The PostgreSQL migrations shipped with the package, as (version, file name, SQL), in order."""
    return sqlfiles.load_migrations(_SQL_DIR)


_QUERIES: Final = sqlfiles.with_category_listings(sqlfiles.load_queries(_SQL_DIR), "%(category)s")


def _q(name: str) -> LiteralString:
    """A named query; its text comes from the package's own files, never from input."""
    return _QUERIES[name]


# Built from the package's own SQL text and integers, never from input.
_CLAIM: Final[dict[SendOrder, LiteralString]] = {order: claim_query(_QUERIES, order) for order in SendOrder}
_COLUMNS: Final = (
    "(recipient_phone, content, send_at, priority, valid_until, encoding, segments, category,"
    " respect_sending_hours, consent_reply, next_attempt_at, wait_reason)"
)
_COPY: Final = "COPY messages " + _COLUMNS + " FROM STDIN"
_COPY_STAGED: Final = "COPY pg_temp.insider_file_load " + _COLUMNS + " FROM STDIN"


def _copy_row(m: NewMessage) -> tuple[Any, ...]:
    return (
        m.recipient_phone,
        m.content,
        m.send_at,
        m.priority,
        m.valid_until,
        m.encoding.value,
        m.segments,
        m.category.value,
        m.respect_sending_hours,
        m.consent_reply,
        m.wait_until,
        m.wait_reason if m.wait_until is not None else None,
    )


_CREATE_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS insider_schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# The time zone the session started with, for the rest of the transaction.
_SESSION_ZONE: Final = "SELECT set_config('TimeZone', reset_val, true) FROM pg_settings WHERE name = 'TimeZone'"


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _as_given(when: datetime) -> datetime:
    return when  # psycopg and orjson write aware datetimes as PostgreSQL reads them


async def _drive(cur: AsyncCursor[DictRow], flow: Flow[T]) -> T:
    """Run ``flow`` to its end on one cursor (see ``sql_repository.drive``)."""
    try:
        name, params = next(flow)
        while True:
            await cur.execute(_q(name), params)
            rows: list[Row] = list(await cur.fetchall()) if cur.description is not None else []
            name, params = flow.send(rows)
    except StopIteration as done:
        return cast(T, done.value)


class PostgresFileLoad:
    """One file load (see :meth:`PostgresMessageRepository.file_load`)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    async def add(self, messages: Sequence[NewMessage]) -> None:
        async with self._conn.cursor() as cur, cur.copy(_COPY_STAGED) as copy:
            for m in messages:
                await copy.write_row(_copy_row(m))

    async def publish(self, record: LoadedFile, *, again: bool = False) -> LoadedFile:
        async with self._conn.transaction(), self._conn.cursor(row_factory=dict_row) as cur:
            # As a migration's: a million rows take longer than a statement may (the CLI waits).
            await cur.execute("SET LOCAL statement_timeout = 0")
            return await _drive(cur, publish_file(record, again, {}, _utc))


def _refusal(migration: str, exc: psycopg.Error) -> str:
    """One line for a migration that failed on what the database holds: what, and how to fix it."""
    diag = exc.diag
    what = (diag.message_primary or str(exc)).strip()
    if exc.sqlstate == _UPGRADE_REFUSED:
        fix = (diag.message_hint or "").strip()
        return f"{what}; to fix: {fix}" if fix else what
    return f"migration {migration} failed: {what} (SQLSTATE {exc.sqlstate}); nothing was changed"


class PostgresMessageRepository(SqlMessageRepository):
    """The repository port on PostgreSQL, the source of truth in production.

    ``pool`` should hand out autocommit connections (``open_postgres_pool`` does): each
    method is one statement, committed when it returns, unless it says otherwise. The
    repository does not close the pool.
    """

    def __init__(self, pool: Pool, *, several_providers: bool = True) -> None:
        super().__init__(several_providers=several_providers)
        self._pool = pool

    # Plain functions, not methods: they run for every time of every row read.
    _time = staticmethod(_as_given)
    _timestamp = staticmethod(_utc)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        try:
            async with self._pool.connection() as conn:
                if not conn.autocommit:
                    # Without it, the pool would roll back what a method wrote.
                    await conn.set_autocommit(True)
                yield conn
        except psycopg.OperationalError as exc:  # also the pool's PoolTimeout, PoolClosed
            raise RepositoryUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
        except psycopg.InterfaceError as exc:  # a connection closed under us
            raise RepositoryUnavailable(f"PostgreSQL connection lost: {exc}") from exc
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:  # not migrated yet
            raise RepositoryUnavailable(f"PostgreSQL has no schema yet (migrations not applied): {exc}") from exc

    async def _fetch(self, query: LiteralString, params: Mapping[str, Any] | None = None) -> list[DictRow]:
        async with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    async def _rows(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        return list(await self._fetch(_q(name), params))

    async def _count(self, name: str, params: Mapping[str, Any]) -> int:
        async with self._connection() as conn:
            return (await conn.execute(_q(name), params)).rowcount

    async def _run(self, flow: Flow[T], *, atomic: bool) -> T:
        async with self._connection() as conn:
            if not atomic:
                async with conn.cursor(row_factory=dict_row) as cur:
                    return await _drive(cur, flow)
            async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                return await _drive(cur, flow)

    def _apply(
        self, receipts: Sequence[Receipt], hints: Sequence[int | None], ids: Sequence[str | None], limit: int | None
    ) -> Flow[Applied]:
        """One statement (apply_receipts in queries.sql)."""
        rows = yield (
            "apply_receipts",
            {
                "receipts": orjson.dumps(receipt_rows(receipts, hints, self._time)).decode(),
                "ids": list(ids),
                "limit": limit,
                "several": self._several_providers,
            },
        )
        return receipt_outcomes(rows, _utc)

    async def migrate(self) -> None:
        """Apply the pending migrations, in order, in one transaction.

        The transaction first takes an advisory lock, so processes starting together
        wait for each other and every migration is applied once.
        """
        migrations = load_migrations()
        notices: list[str] = []

        def heard(diag: psycopg.errors.Diagnostic) -> None:
            if diag.message_primary and diag.message_primary.startswith(_NOTICE_PREFIX):
                notices.append(diag.message_primary[len(_NOTICE_PREFIX) :])

        async with self._connection() as conn:
            conn.add_notice_handler(heard)
            try:
                await self._migrate(conn, migrations)
            finally:
                conn.remove_notice_handler(heard)
        for notice in notices:
            log.info(notice)

    async def _migrate(self, conn: AsyncConnection[Any], migrations: list[tuple[int, str, str]]) -> None:
        async with conn.transaction():
            # A migration (or waiting for another process's) may take longer than a statement may.
            await conn.execute("SET LOCAL statement_timeout = 0")
            # The zone the session started with (the database's, or PGTZ), not the pool's UTC:
            # the original Go service's times without a zone are read in it.
            await conn.execute(_SESSION_ZONE)
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            await conn.execute(_CREATE_MIGRATIONS_TABLE)
            cur = await conn.execute("SELECT version FROM insider_schema_migrations")
            applied = {version for (version,) in await cur.fetchall()}
            for version, name, text in migrations:
                if version in applied:
                    continue
                try:
                    # No parameters: the simple protocol runs the file's statements in turn.
                    await conn.execute(text)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise  # the database went away (or timed out): try again later
                except psycopg.Error as exc:
                    # The transaction rolls back: the database is left as it was.
                    raise SchemaUpgradeRefused(_refusal(name, exc)) from exc
                await conn.execute("INSERT INTO insider_schema_migrations (version) VALUES (%s)", (version,))

    async def load(self, messages: Sequence[NewMessage]) -> int:
        if not messages:
            return 0
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur, cur.copy(_COPY) as copy:
            for m in messages:
                await copy.write_row(_copy_row(m))
        return len(messages)

    @asynccontextmanager
    async def file_load(self) -> AsyncIterator[PostgresFileLoad]:
        """A file load on a connection of its own: its messages are copied into a temporary table
        as they come (short statements, no transaction held open), and moved into ``messages`` by
        one ``INSERT ... SELECT`` in the transaction that records the file. A process that dies
        takes the temporary table with its session: nothing of the load is left."""
        async with self._connection() as conn:
            await conn.execute(_q("file_load_drop"))  # one a load cut short left on this pooled connection
            await conn.execute(_q("file_load_stage"))
            try:
                yield PostgresFileLoad(conn)
            finally:
                if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    await conn.execute(_q("file_load_drop"))

    async def get_by_uuid(self, message_uuid: str) -> Message | None:
        try:
            key = uuid.UUID(message_uuid)
        except ValueError:
            return None
        rows = await self._rows("get_by_uuid", {"uuid": key})
        return self._message(rows[0]) if rows else None

    async def claim(self, limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        if limit <= 0:
            return []
        rows = await self._fetch(_CLAIM[order], {"limit": limit, "lease_s": float(lease_s)})
        return self._claimed([self._message(row) for row in rows], order)

    async def resolve(self, resolutions: Sequence[Resolution]) -> Sequence[ReceiptOutcome]:
        if not resolutions:
            return []
        # orjson writes the UUIDs and aware datetimes as the SQL reads them.
        outcomes = orjson.dumps([outcome_row(r, self._time) for r in resolutions]).decode()
        return await self._run(self._resolve(outcomes), atomic=False)

    def _resolve(self, outcomes: str) -> Flow[list[ReceiptOutcome]]:
        """The outcomes and their attempts in one statement; then the receipts that beat this write,
        in the order they came, on the same connection."""
        arrived = [row["message_id"] for row in (yield "resolve", {"outcomes": outcomes})]
        if not arrived:
            return []
        taken, _ = yield from self._apply([], [], arrived, len(arrived) * WAITING_PER_SEND)
        return taken

    async def acquire_slot(self, name: str, interval_s: float) -> float:
        params = {"name": name, "interval_s": float(interval_s), "tolerance_s": slot_tolerance_s(interval_s)}
        for _ in range(_SLOT_ATTEMPTS):
            rows = await self._rows("acquire_slot", params)
            taken, wait_s = rows[0]["taken"], rows[0]["wait_s"]
            if taken:
                return 0.0
            if wait_s is not None and wait_s > 0:
                return float(wait_s)
            # Another process took or created the slot while this statement ran; its
            # snapshot predates that, so ask again with a fresh one.
        # Contended every time: not taken, so a short wait is the truthful answer.
        return min(float(interval_s), 0.01)
