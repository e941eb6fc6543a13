"""The message repository on PostgreSQL (psycopg 3, asyncio), with its schema migrations."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Final, LiteralString, TypeVar, cast

import orjson
import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from insider.adapters import sqlfiles
from insider.adapters.cursor import page_of, page_query
from insider.adapters.rows import (
    WAITING_PER_SEND,
    Row,
    claim_order,
    claim_query,
    message_from_row,
    outcome_row,
)
from insider.adapters.sql_repository import Flow, SqlMessageRepository
from insider.domain import (
    Message,
    MessageStatus,
    NewMessage,
    Resolution,
    SendOrder,
    slot_tolerance_s,
    storable_text,
)
from insider.history import MAX_EVENTS, Event
from insider.ports import (
    FileAlreadyLoaded,
    InvalidState,
    LoadedFile,
    MessageNotFound,
    Page,
    RepositoryUnavailable,
    SchemaUpgradeRefused,
    WaitingReport,
)
from insider.receipt_parsing import Receipt, ReceiptOutcome, ReceiptResult

Pool = AsyncConnectionPool[AsyncConnection[Any]]
T = TypeVar("T")
log = structlog.get_logger("insider.postgres")

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


_QUERIES: Final = sqlfiles.load_queries(_SQL_DIR)


def _q(name: str) -> LiteralString:
    """A named query; its text comes from the package's own files, never from input."""
    return _QUERIES[name]


# Built from the package's own SQL text and integers, never from input.
_CLAIM: Final[dict[SendOrder, LiteralString]] = {order: claim_query(_QUERIES, order) for order in SendOrder}
_COLUMNS: Final = "(recipient_phone, content, send_at, priority, valid_until, encoding, segments)"
_COPY: Final = "COPY messages " + _COLUMNS + " FROM STDIN"
_COPY_STAGED: Final = "COPY pg_temp.insider_file_load " + _COLUMNS + " FROM STDIN"


def _copy_row(m: NewMessage) -> tuple[Any, ...]:
    return (m.recipient_phone, m.content, m.send_at, m.priority, m.valid_until, m.encoding.value, m.segments)


_CREATE_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS insider_schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


# libpq's connect_timeout (whole seconds, at least 2) when the URL sets none: an address
# that drops packets must not hold a connection attempt for minutes.
CONNECT_TIMEOUT_S: Final = 5
# How long closing the pool waits for its workers.
CLOSE_TIMEOUT_S: Final = 0.5


def connection_options(
    url: str,
    *,
    statement_timeout_s: float = 30.0,
    keepalives_idle_s: float = 30.0,
    keepalives_interval_s: float = 10.0,
    keepalives_count: int = 3,
) -> dict[str, Any]:
    """libpq parameters for the pool's connections: a statement timeout, TCP keepalives, a
    connect timeout. What the URL itself sets (``?keepalives_idle=5``) wins."""
    given = conninfo_to_dict(url)
    wanted: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(keepalives_idle_s)),
        "keepalives_interval": max(1, math.ceil(keepalives_interval_s)),
        "keepalives_count": keepalives_count,
    }
    options = {key: value for key, value in wanted.items() if key not in given}
    if statement_timeout_s > 0:
        # The URL's own options go last: a -c given there overrides this one.
        ours = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
        options["options"] = f"{ours} {given['options']}" if given.get("options") else ours
    return options


# What a server that answered says when the URL itself is wrong (not merely a server that is
# down or starting): no such database or role, credentials refused.
_WRONG_URL_SIGNS: Final = ("does not exist", "authentication failed", "pg_hba.conf", "not permitted to log in")


async def wrong_url_reason(url: str, *, timeout_s: float = 1.0) -> str | None:
    """Why ``url`` can never work (a bad option, no such database or role, a refused password),
    or None when it works or the server is only unreachable now (down, starting, not resolvable:
    the service starts then, and waits for it). Never waits longer than ``timeout_s``.
    """
    try:
        async with asyncio.timeout(timeout_s):
            conn = await AsyncConnection.connect(url, connect_timeout=max(2, math.ceil(timeout_s)))
            await conn.close()
    except TimeoutError:
        return None
    except psycopg.ProgrammingError as exc:  # a URL psycopg cannot read
        return str(exc).strip()
    except psycopg.OperationalError as exc:
        text = " ".join(str(exc).split())
        if "invalid" in text and "connection option" in text:
            return text.removeprefix("connection is bad: ")
        if "FATAL:" in text and any(sign in text for sign in _WRONG_URL_SIGNS):
            return text[text.index("FATAL:") + len("FATAL:") :].strip()
        return None
    return None


@asynccontextmanager
async def open_postgres_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    timeout_s: float = 5.0,
    reconnect_timeout_s: float = 5.0,
    statement_timeout_s: float = 30.0,
    keepalives_idle_s: float = 30.0,
    keepalives_interval_s: float = 10.0,
    keepalives_count: int = 3,
) -> AsyncIterator[Pool]:
    """A connection pool for PostgresMessageRepository, closed on exit.

    The pool opens without waiting for a connection, so a service can start while the
    database is down; until it is back, calls fail after ``timeout_s`` with
    RepositoryUnavailable. Connections are autocommit and checked when taken, so a
    restarted server costs no failed call.

    A lost connection is retried with a doubling backoff for ``reconnect_timeout_s``,
    then given up; the next call then connects afresh at once. (With psycopg_pool's
    own default, 5 minutes, the service stayed idle after an outage for up to half
    as long as the outage had lasted, up to two minutes.)

    Connections render times in UTC, carry a statement timeout (the server cancels a
    statement running longer; migrations lift it) and TCP keepalives, so that neither a stuck statement nor
    a peer that vanished without a word can hold a call for good.
    """
    options = connection_options(
        url,
        statement_timeout_s=statement_timeout_s,
        keepalives_idle_s=keepalives_idle_s,
        keepalives_interval_s=keepalives_interval_s,
        keepalives_count=keepalives_count,
    )
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, **options},
        open=False,
        timeout=timeout_s,
        reconnect_timeout=reconnect_timeout_s,
        check=AsyncConnectionPool.check_connection,
        configure=_in_utc,
        name="insider",
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        # Bounded: a worker stuck connecting to a server that went away must not hold up a
        # shutdown (the stop's promise is INSIDER_SHUTDOWN_TIMEOUT plus a few seconds).
        await pool.close(timeout=CLOSE_TIMEOUT_S)


# The time zone the session started with, for the rest of the transaction.
_SESSION_ZONE: Final = "SELECT set_config('TimeZone', reset_val, true) FROM pg_settings WHERE name = 'TimeZone'"


async def _in_utc(conn: AsyncConnection[Any]) -> None:
    """Each connection renders times in UTC: every storable time (``domain.TIME_RANGE``) then
    reads back, where a server zone east of UTC would carry 9999-12-31T23:59:59Z past the
    year 9999 Python's datetime ends with. (Migrations read in the database's own zone.)"""
    await conn.execute("SET TimeZone = 'UTC'")


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _message(row: DictRow) -> Message:
    return message_from_row(row, _utc)


def _loaded_file(row: DictRow) -> LoadedFile:
    return LoadedFile(
        digest=row["digest"],
        name=row["name"],
        lines=row["lines"],
        stored=row["stored"],
        rejected=row["rejected"],
        loaded_at=_utc(row["loaded_at"]),
        loads=row["loads"],
    )


class PostgresFileLoad:
    """One file load (see :meth:`PostgresMessageRepository.file_load`)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    async def add(self, messages: Sequence[NewMessage]) -> None:
        async with self._conn.cursor() as cur, cur.copy(_COPY_STAGED) as copy:
            for m in messages:
                await copy.write_row(_copy_row(m))

    async def publish(self, record: LoadedFile, *, again: bool = False) -> LoadedFile:
        params = {k: getattr(record, k) for k in ("digest", "name", "lines", "stored", "rejected")}
        async with self._conn.transaction(), self._conn.cursor(row_factory=dict_row) as cur:
            # As a migration's: a million rows take longer than a statement may (the CLI waits).
            await cur.execute("SET LOCAL statement_timeout = 0")
            # The file's row first: a load of the same bytes running at the same time waits here.
            await cur.execute(_q("file_load_again" if again else "file_load_record"), params)
            stored = await cur.fetchone()
            if stored is None:
                await cur.execute(_q("file_load_get"), {"digest": record.digest})
                previous = await cur.fetchone()
                assert previous is not None  # rows of this table are never deleted
                raise FileAlreadyLoaded(_loaded_file(previous))
            await cur.execute(_q("file_load_publish"))
        return _loaded_file(stored)


def _refusal(migration: str, exc: psycopg.Error) -> str:
    """One line for a migration that failed on what the database holds: what, and how to fix it."""
    diag = exc.diag
    what = (diag.message_primary or str(exc)).strip()
    if exc.sqlstate == _UPGRADE_REFUSED:
        fix = (diag.message_hint or "").strip()
        return f"{what}; to fix: {fix}" if fix else what
    return f"migration {migration} failed: {what} (SQLSTATE {exc.sqlstate}); nothing was changed"


def _storable(text: str | None) -> str | None:
    """Text as PostgreSQL takes it (see ``domain.storable_text``)."""
    return storable_text(text) if text is not None else None


class PostgresMessageRepository(SqlMessageRepository):
    """The repository port on PostgreSQL, the source of truth in production.

    ``pool`` should hand out autocommit connections (``open_postgres_pool`` does): each
    method is one statement, committed when it returns. The repository does not close
    the pool.
    """

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self._pool = pool

    def _time(self, when: datetime) -> datetime:
        return when

    def _message(self, row: Row) -> Message:
        return message_from_row(row, _utc)

    async def _in_transaction(self, flow: Flow[T]) -> T:
        async with self._connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            try:
                name, params = next(flow)
                while True:
                    await cur.execute(_q(name), params)
                    rows: list[Row] = list(await cur.fetchall()) if cur.description is not None else []
                    name, params = flow.send(rows)
            except StopIteration as done:
                return cast(T, done.value)

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

    async def ping(self) -> None:
        await self._fetch(_q("ping"))

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

    async def loaded_file(self, digest: str) -> LoadedFile | None:
        rows = await self._fetch(_q("file_load_get"), {"digest": digest})
        return _loaded_file(rows[0]) if rows else None

    async def get(self, message_id: int) -> Message | None:
        await self.expire()  # a message past its validUntil reads as expired, not pending
        rows = await self._fetch(_q("get"), {"id": message_id})
        return _message(rows[0]) if rows else None

    async def get_by_uuid(self, message_uuid: str) -> Message | None:
        try:
            key = uuid.UUID(message_uuid)
        except ValueError:
            return None
        rows = await self._fetch(_q("get_by_uuid"), {"uuid": key})
        return _message(rows[0]) if rows else None

    async def list_messages(
        self, status: MessageStatus | None, limit: int, cursor: str | None = None, to: str | None = None
    ) -> Page:
        if status in (MessageStatus.PENDING, MessageStatus.EXPIRED):
            await self.expire()  # a message past its validUntil is listed as expired, not pending
        name, params = page_query(status, limit, cursor, to)
        # The sent queries skip rows without sent_at, so every listed row has its key.
        return page_of([_message(row) for row in await self._fetch(_q(name), params)], limit, status)

    async def claim(self, limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        if limit <= 0:
            return []
        rows = await self._fetch(_CLAIM[order], {"limit": limit, "lease_s": float(lease_s)})
        # UPDATE ... RETURNING gives no order.
        return sorted((_message(row) for row in rows), key=claim_order(order))

    async def resolve(self, resolutions: Sequence[Resolution]) -> Sequence[ReceiptOutcome]:
        if not resolutions:
            return []
        # orjson writes the dataclasses, their UUIDs and aware datetimes as the SQL reads them.
        outcomes = orjson.dumps([outcome_row(r) for r in resolutions]).decode()
        async with self._connection() as conn:
            cur = await conn.execute(_q("resolve"), {"outcomes": outcomes})
            arrived = [provider_id for (provider_id,) in await cur.fetchall()]
            if not arrived:
                return []
            # Receipts beat this write: apply them now, in the order they came, on the same connection.
            taken, _ = await self._apply(conn, [], [], arrived, len(arrived) * WAITING_PER_SEND)
            return taken

    async def apply_receipts(self, receipts: Sequence[Receipt], hints: Sequence[int | None]) -> list[ReceiptOutcome]:
        if not receipts:
            return []
        ids = list(dict.fromkeys(_storable(r.provider_message_id) for r in receipts))
        async with self._connection() as conn:
            taken, given = await self._apply(conn, receipts, hints, ids, None)
        return given + taken

    async def _apply(
        self,
        conn: AsyncConnection[Any],
        receipts: Sequence[Receipt],
        hints: Sequence[int | None],
        waiting_for: Sequence[str | None],
        limit: int | None,
    ) -> tuple[list[ReceiptOutcome], list[ReceiptOutcome]]:
        """Apply the receipts still waiting for the ids ``waiting_for`` (up to ``limit``), then ``receipts``.

        One statement (apply_receipts); the outcomes of the waiting ones taken, then of ``receipts``.
        """
        rows = [
            {
                "idx": i,
                "hint": hint,
                "provider_message_id": _storable(r.provider_message_id),
                "receipt_status": _storable(r.status),
                "delivery_status": r.delivery_status,
                "final_status": r.final_status.value if r.final_status is not None else None,
                "error_code": _storable(r.error_code),
                "done_at": r.done_at,
                "received_at": r.received_at,
                "dedupe_key": r.dedupe_key,
            }
            for i, (r, hint) in enumerate(zip(receipts, hints, strict=True))
        ]
        params = {"receipts": orjson.dumps(rows).decode(), "ids": list(waiting_for), "limit": limit}
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_q("apply_receipts"), params)
            result = await cur.fetchall()
        taken: list[ReceiptOutcome] = []
        given: list[ReceiptOutcome] = []
        for row in result:
            (taken if row["src"] == 0 else given).append(
                ReceiptOutcome(
                    ReceiptResult(row["result"]),
                    row["message_id"],
                    MessageStatus(row["status"]) if row["status"] is not None else None,
                    _utc(row["sent_at"]),
                    _utc(row["delivered_at"]),
                )
            )
        return taken, given

    async def apply_waiting(self, max_age_s: float, limit: int = 1000) -> WaitingReport:
        async with self._connection() as conn:
            cur = await conn.execute(_q("waiting_ids"), {"limit": limit})
            ids = [provider_id for (provider_id,) in await cur.fetchall()]
            applied, _ = await self._apply(conn, [], [], ids, limit) if ids else ([], [])
            async with conn.cursor(row_factory=dict_row) as cur:
                before = datetime.now(UTC) - timedelta(seconds=max_age_s)
                await cur.execute(_q("drop_waiting"), {"before": before, "limit": limit})
                dropped = [
                    Receipt(row["provider_message_id"], row["receipt_status"], row["received_at"].astimezone(UTC))
                    for row in await cur.fetchall()
                ]
        return WaitingReport(applied, dropped)

    async def events(self, message_id: int, limit: int = MAX_EVENTS) -> list[Event]:
        rows = await self._fetch(_q("events"), {"id": message_id, "limit": limit})
        return [
            Event(
                id=row["id"],
                message_id=row["message_id"],
                at=row["at"].astimezone(UTC),
                kind=row["kind"],
                outcome=row["outcome"],
                attempt=row["attempt"],
                status_code=row["status_code"],
                duration_ms=row["duration_ms"],
                error=row["error"],
                provider_message_id=row["provider_message_id"],
                receipt_status=row["receipt_status"],
                error_code=row["error_code"],
                done_at=_utc(row["done_at"]),
            )
            for row in rows
        ]

    async def prune_events(self, older_than_s: float, limit: int) -> int:
        before = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self._connection() as conn:
            cur = await conn.execute(_q("prune_events"), {"before": before, "limit": limit})
            return cur.rowcount

    async def retry(self, message_id: int) -> Message:
        rows = await self._fetch(_q("retry"), {"id": message_id})
        if rows:
            return _message(rows[0])
        current = await self.get(message_id)
        if current is None:
            raise MessageNotFound(message_id)
        raise InvalidState(current, "failed")

    async def cancel(self, message_id: int) -> Message:
        rows = await self._fetch(_q("cancel"), {"id": message_id})
        if rows:
            return _message(rows[0])
        current = await self.get(message_id)
        if current is None:
            raise MessageNotFound(message_id)
        raise InvalidState(current, "pending")

    async def expire(self) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(_q("expire"))
            return cur.rowcount

    async def segments_sent(self) -> int:
        rows = await self._fetch(_q("segments_sent"))
        return int(rows[0]["segments"])

    async def acquire_slot(self, name: str, interval_s: float) -> float:
        params = {"name": name, "interval_s": float(interval_s), "tolerance_s": slot_tolerance_s(interval_s)}
        for _ in range(_SLOT_ATTEMPTS):
            rows = await self._fetch(_q("acquire_slot"), params)
            taken, wait_s = rows[0]["taken"], rows[0]["wait_s"]
            if taken:
                return 0.0
            if wait_s is not None and wait_s > 0:
                return float(wait_s)
            # Another process took or created the slot while this statement ran; its
            # snapshot predates that, so ask again with a fresh one.
        # Contended every time: not taken, so a short wait is the truthful answer.
        return min(float(interval_s), 0.01)

    async def counts(self) -> dict[MessageStatus, int]:
        await self.expire()  # pending messages past their validUntil count as expired
        result = dict.fromkeys(MessageStatus, 0)
        for row in await self._fetch(_q("counts")):
            result[MessageStatus(row["status"])] = row["n"]
        return result
