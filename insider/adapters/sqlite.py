"""The message repository on SQLite (stdlib sqlite3 on one worker thread): the embedded default."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Final, TypeVar

from insider.adapters import sqlfiles
from insider.adapters.rows import (
    WAITING_PER_SEND,
    Applied,
    Row,
    claim_query,
    new_message_row,
    outcome_row,
    receipt_outcomes,
    receipt_rows,
)
from insider.adapters.sql_repository import Flow, SqlMessageRepository, drive, json_text, publish_file
from insider.adapters.sqlite_database import (
    DEFAULT_BUSY_TIMEOUT_S,
    MIN_SQLITE_VERSION,
    SqliteDatabase,
    format_timestamp,
    is_sqlite_url,
    open_sqlite,
    parse_timestamp,
    sqlite_path,
    write_transaction,
)
from insider.domain import Message, MessageStatus, NewMessage, Resolution, SendOrder, slot_tolerance_s
from insider.ports import Clock, LoadedFile, RepositoryUnavailable
from insider.receipt_parsing import Receipt, ReceiptOutcome

# What embedders, tests and the command line import from here, the database's helpers included.
__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "MIN_SQLITE_VERSION",
    "SqliteDatabase",
    "SqliteFileLoad",
    "SqliteMessageRepository",
    "format_timestamp",
    "is_sqlite_url",
    "load_migrations",
    "memory_repository",
    "open_sqlite",
    "parse_timestamp",
    "split_statements",
    "sqlite_path",
]

T = TypeVar("T")

_SQL_DIR = resources.files("insider.adapters") / "sql" / "sqlite"
# The columns of one attempt in the history, as attempt_event takes them.
_EVENT_FIELDS: Final = (
    "id",
    "at",
    "outcome",
    "attempt",
    "status_code",
    "duration_ms",
    "error",
    "message_id",
    "provider",
)
# A provider's try that counts as failed in its totals (as PostgreSQL's resolve counts them).
_FAILED_TRIES: Final = ("retry", "failed", "expired", "failover")

_CREATE_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS insider_schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)
"""


def load_migrations() -> list[tuple[int, str, str]]:
    """The SQLite migrations shipped with the package, as (version, file name, SQL), in order."""
    return sqlfiles.load_migrations(_SQL_DIR)


def split_statements(script: str) -> Iterator[str]:
    """The statements of a SQL script, one at a time (sqlite3 runs one per ``execute``).

    ``executescript`` would do it, but it commits first: the migration must run inside
    the transaction that holds the write lock.
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    rest = [line for line in pending.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    if rest:
        raise ValueError(f"unterminated SQL statement: {' '.join(rest)[:80]!r}")


_QUERIES: Final = sqlfiles.with_category_listings(sqlfiles.load_queries(_SQL_DIR), ":category")


def _q(name: str) -> str:
    return _QUERIES[name]


_CLAIM: Final = {order: claim_query(_QUERIES, order) for order in SendOrder}


def _statements(conn: sqlite3.Connection) -> Callable[[str, Mapping[str, Any]], list[Row]]:
    """How a flow's named statements run on ``conn`` (see ``sql_repository.drive``)."""
    return lambda name, params: conn.execute(_q(name), params).fetchall()


def _microseconds(seconds: float) -> int:
    """Seconds as whole microseconds, rounded as a timedelta rounds them."""
    return timedelta(seconds=seconds) // timedelta(microseconds=1)


@asynccontextmanager
async def memory_repository(clock: Clock | None = None) -> AsyncIterator[SqliteMessageRepository]:
    """A migrated repository on a private SQLite ``:memory:`` database, closed (and gone) on exit.

    For tests and for embedding without a database file: the same SQL, hence the same queue
    rules, as a file or PostgreSQL. Times come from ``clock`` (a FakeClock in tests, so
    schedules, leases and backoff run on fake time). Statements run on the calling thread
    (``threaded=False``): an in-memory database never waits on a disk.

    For example ``async with memory_repository(FakeClock()) as repository: ...``.
    """
    database = SqliteDatabase(":memory:", threaded=False)
    try:
        repository = SqliteMessageRepository(database, clock)
        await repository.migrate()
        yield repository
    finally:
        await database.close()


class SqliteFileLoad:
    """One file load (see :meth:`SqliteMessageRepository.file_load`)."""

    def __init__(self, database: SqliteDatabase, clock: Clock) -> None:
        self._db = database
        self._clock = clock
        # Its own staging table: loads running at once in one process share the connection.
        self._table = f"insider_file_load_{uuid.uuid4().hex[:16]}"

    def sql(self, name: str) -> str:
        """A named query, on this load's staging table where it names one."""
        return _q(name).replace("__STAGE__", self._table)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            try:
                return work(conn)
            except sqlite3.OperationalError as exc:
                if self._table in str(exc):  # no such table: the connection was lost and made again
                    raise RepositoryUnavailable(f"the file load was cut off from the database: {exc}") from exc
                raise

        return await self._db.run(run)

    async def add(self, messages: Sequence[NewMessage]) -> None:
        rows = [new_message_row(m, format_timestamp) for m in messages]

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN")  # one transaction of the temporary database: no lock on the file
            try:
                conn.executemany(self.sql("file_load_add"), rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._run(work)

    async def publish(self, record: LoadedFile, *, again: bool = False) -> LoadedFile:
        now = {"now": format_timestamp(self._clock.now())}

        def work(conn: sqlite3.Connection) -> LoadedFile:
            with write_transaction(conn):
                flow = publish_file(record, again, now, parse_timestamp)
                return drive(flow, lambda name, params: conn.execute(self.sql(name), params).fetchall())

        return await self._run(work)


class SqliteMessageRepository(SqlMessageRepository):
    """The repository port on SQLite: one file, no server; for first runs, demos and small deployments.

    It behaves like the PostgreSQL repository: the same order, leases, retries and
    pagination. Each method is one statement, or one transaction holding the write lock
    (SQLite has no data-modifying CTE to make one statement of several), so several
    processes on one file stay correct, only slower. Times come from ``clock`` (the
    system's by default). The repository does not close the database.
    """

    def __init__(self, database: SqliteDatabase, clock: Clock | None = None, *, several_providers: bool = True) -> None:
        super().__init__(clock, several_providers=several_providers)
        self._db = database

    @property
    def database(self) -> SqliteDatabase:
        """The database it runs on (to run SQL of one's own, as another program would)."""
        return self._db

    # Plain functions, not methods: they run for every time of every row read.
    _time = staticmethod(format_timestamp)
    _timestamp = staticmethod(parse_timestamp)

    async def _rows(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        def work(conn: sqlite3.Connection) -> list[Row]:
            return conn.execute(_q(name), params or {}).fetchall()

        return await self._db.run(work)

    async def _count(self, name: str, params: Mapping[str, Any]) -> int:
        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(_q(name), params)
            cursor.fetchall()  # a statement that returns rows has counted them once they are read
            return cursor.rowcount

        return await self._db.run(work)

    async def _run(self, flow: Flow[T], *, atomic: bool) -> T:
        """Every flow in one write transaction, ``atomic`` or not: SQLite takes one writer at a time,
        and the receipts' scratch table is the connection's until the flow ends."""

        def work(conn: sqlite3.Connection) -> T:
            with write_transaction(conn):
                return drive(flow, _statements(conn))

        return await self._db.run(work)

    def _apply(
        self, receipts: Sequence[Receipt], hints: Sequence[int | None], ids: Sequence[str | None], limit: int | None
    ) -> Flow[Applied]:
        """What each receipt does is decided in one statement (receipts_plan in queries.sql), into
        the connection's scratch table; the next statements write it and read the outcomes back."""
        yield "receipts_table", {}
        planned = yield (
            "receipts_plan",
            {
                "receipts": json_text(receipt_rows(receipts, hints, self._time)),
                "ids": json_text(list(ids)),
                "limit": -1 if limit is None else limit,
                "several": self._several_providers,
            },
        )
        if not planned:
            return [], []
        yield "receipts_take", {}
        yield "receipts_log", {}
        yield "receipts_move", self._now()
        yield "receipts_wait", {}
        rows = yield "receipts_results", {}
        yield "receipts_done", {}  # emptied for the next (on a failure, the transaction's rollback empties it)
        return receipt_outcomes(rows, parse_timestamp)

    async def migrate(self) -> None:
        """Apply the pending migrations, in order, in one transaction holding the write lock.

        Processes starting together wait for each other there, so every migration is
        applied once.
        """
        migrations = load_migrations()
        applied_at = format_timestamp(self._clock.now())

        def work(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.execute(_CREATE_MIGRATIONS_TABLE)
                applied = {row[0] for row in conn.execute("SELECT version FROM insider_schema_migrations")}
                for version, _name, text in migrations:
                    if version in applied:
                        continue
                    for statement in split_statements(text):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO insider_schema_migrations (version, applied_at) VALUES (?, ?)",
                        (version, applied_at),
                    )

        await self._db.run(work)

    async def load(self, messages: Sequence[NewMessage]) -> int:
        if not messages:
            return 0
        rows = [new_message_row(m, format_timestamp) | self._now() for m in messages]

        def work(conn: sqlite3.Connection) -> int:
            with write_transaction(conn):
                conn.executemany(_q("load"), rows)
            return len(messages)

        return await self._db.run(work)

    @asynccontextmanager
    async def file_load(self) -> AsyncIterator[SqliteFileLoad]:
        """A file load: its messages wait in a temporary table of this connection (which takes no
        lock on the database file, so other processes write on meanwhile), and move into
        ``messages`` in the one transaction that records the file. A process that dies takes
        the temporary table with it: nothing of the load is left."""
        load = SqliteFileLoad(self._db, self._clock)
        await self._db.run(lambda conn: conn.execute(load.sql("file_load_stage")))
        try:
            yield load
        finally:
            with contextlib.suppress(RepositoryUnavailable):  # a connection made again has none
                await self._db.run(lambda conn: conn.execute(load.sql("file_load_drop")))

    async def get_by_uuid(self, message_uuid: str) -> Message | None:
        """None: only the original Go service's rows have a UUID, and it ran on PostgreSQL."""
        await self.ping()
        return None

    async def claim(self, limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        if limit <= 0:
            return []
        now = self._clock.now()
        params = {
            "now": self._time(now),
            "lease_expires_at": self._time(now + timedelta(seconds=lease_s)),
            "limit": limit,
        }

        def work(conn: sqlite3.Connection) -> list[Row]:
            # The expiry sweep and the claim in one write transaction.
            with write_transaction(conn):
                rows = conn.execute(_q("expire"), params).fetchall() + conn.execute(_CLAIM[order], params).fetchall()
                conn.executemany(
                    _q("suppressed_event"),
                    [
                        {
                            "id": r["id"],
                            "now": params["now"],
                            "attempts": r["attempts"],
                            "reason": r["suppression_reason"],
                        }
                        for r in rows
                        if r["status"] == MessageStatus.SUPPRESSED.value
                    ],
                )
                return rows

        return self._claimed([self._message(row) for row in await self._db.run(work)], order)

    async def resolve(self, resolutions: Sequence[Resolution]) -> Sequence[ReceiptOutcome]:
        if not resolutions:
            return []
        now = self._clock.now()
        outcomes = [outcome_row(r, self._time) | {"next_attempt_at": self._retry_at(now, r)} for r in resolutions]
        by_id = {o["id"]: o for o in outcomes}
        params = {"resolutions": json_text(outcomes), "now": self._time(now)}

        def work(conn: sqlite3.Connection) -> list[ReceiptOutcome]:
            # One transaction: the outcomes, their attempts in the history (the tries of other
            # providers first), the providers' totals, and the receipts that were waiting for the
            # provider ids just recorded.
            with write_transaction(conn):
                written = conn.execute(_q("resolve"), params).fetchall()
                tries: list[dict[str, Any]] = []
                for row in written:
                    o = by_id[row["id"]]
                    tries += [e | {"id": row["id"], "message_id": None} for e in o["earlier"]]
                    if o["at"] is not None and o["outcome"] is not None:
                        # The provider's id as the row now holds it (the sent attempt's), as on PostgreSQL.
                        tries.append(o | {"message_id": row["message_id"], "provider": o["attempt_provider"]})
                conn.executemany(_q("attempt_event"), [{k: t[k] for k in _EVENT_FIELDS} for t in tries])
                conn.executemany(_q("provider_totals"), _provider_totals(written, by_id, tries))
                arrived = [
                    row["message_id"]
                    for row in written
                    if row["status"] == MessageStatus.SENT.value and row["message_id"] is not None
                ]
                if not arrived:
                    return []
                flow = self._apply([], [], arrived, len(arrived) * WAITING_PER_SEND)
                taken, _ = drive(flow, _statements(conn))
                return taken

        return await self._db.run(work)

    def _retry_at(self, now: datetime, resolution: Resolution) -> str | None:
        """When a message going back to pending is due again (PostgreSQL reckons it in SQL)."""
        if resolution.retry_in_s is None:
            return None
        return self._time(now + timedelta(seconds=resolution.retry_in_s))

    async def acquire_slot(self, name: str, interval_s: float) -> float:
        """Take the slot in one transaction holding the write lock (the rule: acquire_slot in queries.sql)."""
        params = {
            "name": name,
            "interval_us": _microseconds(interval_s),
            "tolerance_us": _microseconds(slot_tolerance_s(interval_s)),
        }

        def work(conn: sqlite3.Connection) -> float:
            with write_transaction(conn):
                # Read once the lock is held: waiting for it must not make "now" stale.
                params["now"] = self._time(self._clock.now())
                if conn.execute(_q("acquire_slot"), params).fetchall():
                    return 0.0
                return float(conn.execute(_q("slot_wait"), params).fetchone()["wait_s"])

        return await self._db.run(work)


def _provider_totals(
    written: Sequence[sqlite3.Row], by_id: Mapping[int, dict[str, Any]], tries: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What one batch adds to each provider's totals, in provider order."""
    totals: dict[str, dict[str, Any]] = {}

    def of(provider: str) -> dict[str, Any]:
        return totals.setdefault(provider, {"provider": provider, "sent": 0, "failed": 0, "segments": 0, "cost": 0.0})

    for row in written:
        o = by_id[row["id"]]
        if o["provider"] is not None and row["status"] == MessageStatus.SENT.value:
            total = of(o["provider"])
            total["sent"] += 1
            total["segments"] += row["segments"] or 1
            total["cost"] += o["cost"] or 0.0
    for tried in tries:
        if tried["provider"] is not None and tried["outcome"] in _FAILED_TRIES:
            of(tried["provider"])["failed"] += 1
    return [totals[name] for name in sorted(totals)]
