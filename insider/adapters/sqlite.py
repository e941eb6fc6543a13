"""The message repository on SQLite (stdlib sqlite3 on one worker thread): the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from insider.adapters import sqlfiles
from insider.adapters.cursor import page_of, page_query
from insider.adapters.rows import (
    WAITING_PER_SEND,
    Row,
    claim_order,
    claim_query,
    message_from_row,
    new_message_row,
    outcome_row,
)
from insider.adapters.sql_repository import Flow, SqlMessageRepository, drive
from insider.domain import (
    Message,
    MessageStatus,
    NewMessage,
    Resolution,
    SendOrder,
    slot_tolerance_s,
)
from insider.history import MAX_EVENTS, Event
from insider.ports import (
    Clock,
    FileAlreadyLoaded,
    InvalidState,
    LoadedFile,
    MessageNotFound,
    Page,
    RepositoryUnavailable,
    WaitingReport,
)
from insider.receipt_parsing import Receipt, ReceiptOutcome, ReceiptResult

T = TypeVar("T")

# RETURNING came in 3.35; UPDATE ... FROM in 3.33.
MIN_SQLITE_VERSION: Final = (3, 35, 0)
DEFAULT_BUSY_TIMEOUT_S: Final = 5.0

_SQL_DIR = resources.files("insider.adapters") / "sql" / "sqlite"
# Primary result codes that mean "the database cannot be used now", not "the query is wrong".
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)
# Errors after which the connection is dropped and made again on the next call (the file
# may have been replaced or its disk remounted); waiting on a lock is not one of them.
_RECONNECT_CODES: Final = _UNAVAILABLE_CODES - {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

_CREATE_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS insider_schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)
"""


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL.

    A relative path is relative to the working directory; ``sqlite:///:memory:`` is a
    database that lives as long as its connection.
    """
    parts = urlsplit(url)
    bad = parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/") or len(parts.path) < 2
    if parts.scheme != "sqlite" or bad:
        raise ValueError("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return unquote(parts.path[1:])


def is_sqlite_url(url: str) -> bool:
    """Whether ``url`` names a SQLite database (else it is PostgreSQL)."""
    return urlsplit(url).scheme == "sqlite"


def format_timestamp(when: datetime) -> str:
    """A time as stored: UTC, fixed width, microseconds, so text order is time order."""
    if when.tzinfo is None:  # times in this codebase are aware UTC; a naive one is taken to be UTC
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str | None) -> datetime | None:
    """A stored time as an aware UTC datetime; a naive one (written by hand) is read as UTC."""
    if text is None:
        return None
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


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


_QUERIES: Final = sqlfiles.load_queries(_SQL_DIR)


def _q(name: str) -> str:
    return _QUERIES[name]


_CLAIM: Final = {order: claim_query(_QUERIES, order) for order in SendOrder}


class SqliteDatabase:
    """One SQLite connection, used only from one worker thread of its own.

    Every call runs on that thread in turn, so the event loop never blocks on the disk
    and the connection is never shared between threads. The connection is made on first
    use (and again after a disk error), so a service starts even when the file cannot be
    opened yet; until it can, calls raise RepositoryUnavailable. Open with
    :func:`open_sqlite`, which also closes it.

    ``threaded=False`` runs every call at once on the calling thread instead, for an
    in-memory database (see :func:`memory_repository`): it never waits on a disk, and each
    call then completes without yielding to the event loop, so a FakeClock drives a
    supervisor on it deterministically. Use such a database from one thread at a time.
    """

    def __init__(self, path: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, threaded: bool = True) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insider-sqlite") if threaded else None
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    @property
    def location(self) -> str:
        """The file, as an absolute path (or ``:memory:``)."""
        return self.path if self.path == ":memory:" else str(Path(self.path).resolve())

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` on the database's thread; errors that mean the database
        cannot be used become RepositoryUnavailable."""
        if self._executor is None:
            return self.run_now(work)
        if self._closed:
            raise RepositoryUnavailable("the SQLite database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, work)

    def run_now(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` at once on the calling thread (a ``threaded=False`` database only).

        For setting up rows synchronously in tests, as another program writing to the table would.
        """
        if self._executor is not None:
            raise RuntimeError("run_now is for a database opened with threaded=False; use run")
        if self._closed:
            raise RepositoryUnavailable("the SQLite database is closed")
        return self._call(work)

    async def close(self) -> None:
        """Close the connection, after any call still running; later calls raise RepositoryUnavailable."""
        if self._closed:
            return
        self._closed = True
        if self._executor is None:
            self._disconnect()
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        finally:
            self._executor.shutdown(wait=False)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connect())
        except sqlite3.Error as exc:
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if code not in _UNAVAILABLE_CODES:
                raise
            # An in-memory database is its connection: dropping it would lose every row.
            if code in _RECONNECT_CODES and self.path != ":memory:":
                self._disconnect()
            raise RepositoryUnavailable(f"SQLite database {self.path} is unavailable: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old: insider needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer (or use PostgreSQL)"
            )
        # isolation_level=None: no implicit transactions; one statement is one transaction
        # unless a method opens one with BEGIN IMMEDIATE.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            # The worker thread is the only user; a threaded=False database is the caller's to keep to one thread.
            check_same_thread=self._executor is not None,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.create_function("insider_uuid4", 0, _uuid4)
            conn.create_function("insider_expired_reason", 2, _expired_reason, deterministic=True)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            # WAL: readers do not wait for the writer, and another process (the enqueue
            # command, a second service) can use the same file meanwhile.
            self._switch_to_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")  # a recorded send survives a power cut
        except BaseException:
            conn.close()
            raise
        self._connection = conn
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode = WAL``, retried while another connection holds the file.

        SQLite does not call the busy handler for a journal-mode change, so on a fresh
        file opened by several connections at once the switch can fail at once with
        "database is locked"; it is retried here for up to the busy timeout (this runs
        on the database's own thread, so the short sleeps block nothing else).
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _disconnect(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            conn.close()


def _microseconds(seconds: float) -> int:
    """Seconds as whole microseconds, rounded as a timedelta rounds them."""
    return timedelta(seconds=seconds) // timedelta(microseconds=1)


def _uuid4() -> str:
    return str(uuid.uuid4())


def _expired_reason(valid_until: str | None, last_error: str | None) -> str | None:
    """SQL ``insider_expired_reason(valid_until, last_error)``: why a message past its validUntil
    became expired, as PostgreSQL's function of that name (a migration of its own) words it: the time
    (stored text) in UTC to the second with a Z, then the last failure, if there was one."""
    if valid_until is None:
        return None  # as SQL's || with NULL
    reason = f"expired: not sent before validUntil {valid_until[:19]}Z"
    return reason if last_error is None else f"{reason} (last error: {last_error})"


@asynccontextmanager
async def open_sqlite(url: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> AsyncIterator[SqliteDatabase]:
    """The SQLite database of a ``sqlite:///`` URL, closed on exit.

    Nothing is opened until the first call, so this never fails for a file that cannot
    be opened; the calls do, with RepositoryUnavailable.
    """
    database = SqliteDatabase(sqlite_path(url), busy_timeout_s=busy_timeout_s)
    try:
        yield database
    finally:
        await database.close()


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


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction holding the write lock from its first statement (BEGIN IMMEDIATE).

    Reading first and writing later in a deferred transaction could fail with
    SQLITE_BUSY when another process wrote in between; taking the lock up front makes
    other writers wait their turn (up to the busy timeout) instead.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _message(row: sqlite3.Row) -> Message:
    return message_from_row(row, parse_timestamp)


def _loaded_file(row: sqlite3.Row) -> LoadedFile:
    return LoadedFile(
        digest=row["digest"],
        name=row["name"],
        lines=row["lines"],
        stored=row["stored"],
        rejected=row["rejected"],
        loaded_at=parse_timestamp(row["loaded_at"]),
        loads=row["loads"],
    )


class SqliteFileLoad:
    """One file load (see :meth:`SqliteMessageRepository.file_load`)."""

    def __init__(self, database: SqliteDatabase, clock: Clock) -> None:
        self._db = database
        self._clock = clock
        # Its own staging table: loads running at once in one process share the connection.
        self._table = f"insider_file_load_{uuid.uuid4().hex[:16]}"

    def sql(self, name: str) -> str:
        """A named query on this load's staging table."""
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
        now = format_timestamp(self._clock.now())
        params = {k: getattr(record, k) for k in ("digest", "name", "lines", "stored", "rejected")} | {"now": now}

        def work(conn: sqlite3.Connection) -> LoadedFile:
            with _write_transaction(conn):
                stored = conn.execute(_q("file_load_again" if again else "file_load_record"), params).fetchone()
                if stored is None:
                    previous = conn.execute(_q("file_load_get"), {"digest": record.digest}).fetchone()
                    raise FileAlreadyLoaded(_loaded_file(previous))
                conn.execute(self.sql("file_load_publish"), {"now": now})
            return _loaded_file(stored)

        return await self._run(work)


class SqliteMessageRepository(SqlMessageRepository):
    """The repository port on SQLite: one file, no server; for first runs, demos and small deployments.

    It behaves like the PostgreSQL repository: the same order, leases, retries and
    pagination. Each method is one statement (or, for migrations and the rate slot, one
    transaction holding the write lock), so several processes on one file stay
    correct, only slower. Times come from ``clock`` (the system's by default).
    The repository does not close the database.
    """

    def __init__(self, database: SqliteDatabase, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self._db = database

    @property
    def database(self) -> SqliteDatabase:
        """The database it runs on (to run SQL of one's own, as another program would)."""
        return self._db

    def _now(self) -> datetime:
        return self._clock.now()

    def _time(self, when: datetime) -> str:
        return format_timestamp(when)

    def _message(self, row: Row) -> Message:
        return message_from_row(row, parse_timestamp)

    async def _in_transaction(self, flow: Flow[T]) -> T:
        def work(conn: sqlite3.Connection) -> T:
            with _write_transaction(conn):
                return drive(flow, lambda name, params: conn.execute(_q(name), params).fetchall())

        return await self._db.run(work)

    async def _fetch(self, query: str, params: Mapping[str, Any] | None = None) -> list[sqlite3.Row]:
        def work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(query, params or {}).fetchall()

        return await self._db.run(work)

    async def migrate(self) -> None:
        """Apply the pending migrations, in order, in one transaction holding the write lock.

        Processes starting together wait for each other there, so every migration is
        applied once.
        """
        migrations = load_migrations()
        applied_at = format_timestamp(self._now())

        def work(conn: sqlite3.Connection) -> None:
            with _write_transaction(conn):
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

    async def ping(self) -> None:
        await self._fetch(_q("ping"))

    async def load(self, messages: Sequence[NewMessage]) -> int:
        if not messages:
            return 0
        stamp = format_timestamp(self._now())

        def work(conn: sqlite3.Connection) -> int:
            with _write_transaction(conn):
                conn.executemany(_q("load"), [new_message_row(m, format_timestamp) | {"now": stamp} for m in messages])
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

    async def loaded_file(self, digest: str) -> LoadedFile | None:
        rows = await self._fetch(_q("file_load_get"), {"digest": digest})
        return _loaded_file(rows[0]) if rows else None

    async def get(self, message_id: int) -> Message | None:
        await self.expire()  # a message past its validUntil reads as expired, not pending
        rows = await self._fetch(_q("get"), {"id": message_id})
        return _message(rows[0]) if rows else None

    async def get_by_uuid(self, message_uuid: str) -> Message | None:
        """None: only the original Go service's rows have a UUID, and it ran on PostgreSQL."""
        await self.ping()
        return None

    async def list_messages(
        self, status: MessageStatus | None, limit: int, cursor: str | None = None, to: str | None = None
    ) -> Page:
        if status in (MessageStatus.PENDING, MessageStatus.EXPIRED):
            await self.expire()  # a message past its validUntil is listed as expired, not pending
        name, params = page_query(status, limit, cursor, to)
        if "key" in params:  # times are stored as fixed-width UTC text
            params["key"] = format_timestamp(params["key"])
        # The sent queries skip rows without sent_at, so every listed row has its key.
        return page_of([_message(row) for row in await self._fetch(_q(name), params)], limit, status)

    async def claim(self, limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        if limit <= 0:
            return []
        now = self._now()
        params = {
            "now": format_timestamp(now),
            "lease_expires_at": format_timestamp(now + timedelta(seconds=lease_s)),
            "limit": limit,
        }

        def work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            # The expiry sweep and the claim in one write transaction (SQLite has no
            # data-modifying CTE to make them one statement).
            with _write_transaction(conn):
                expired = conn.execute(_q("expire"), {"now": params["now"]}).fetchall()
                return expired + conn.execute(_CLAIM[order], params).fetchall()

        rows = await self._db.run(work)
        # UPDATE ... RETURNING gives no order.
        return sorted((_message(row) for row in rows), key=claim_order(order))

    async def resolve(self, resolutions: Sequence[Resolution]) -> Sequence[ReceiptOutcome]:
        if not resolutions:
            return []
        now = self._now()
        rows = [outcome_row(r) for r in resolutions]
        values = [
            {
                "id": o.id,
                "claim_token": str(o.claim_token) if o.claim_token is not None else None,
                "status": o.status,
                "sent_at": format_timestamp(o.sent_at) if o.sent_at is not None else None,
                "message_id": o.message_id,
                "last_error": o.last_error,
                "next_attempt_at": (
                    format_timestamp(now + timedelta(seconds=o.retry_in_s)) if o.retry_in_s is not None else None
                ),
                "uncount": o.uncount,
                "retry_in_s": o.retry_in_s,
                "segments": o.segments,
                "encoding": o.encoding,
            }
            for o in rows
        ]
        attempts = {
            o.id: {
                "id": o.id,
                "at": format_timestamp(o.at),
                "outcome": o.outcome,
                "attempt": o.attempt,
                "status_code": o.status_code,
                "duration_ms": o.duration_ms,
                "error": o.error,
            }
            for o in rows
            if o.at is not None and o.outcome is not None
        }
        params = {"resolutions": json.dumps(values, ensure_ascii=False), "now": format_timestamp(now)}

        def work(conn: sqlite3.Connection) -> list[ReceiptOutcome]:
            # One transaction: the outcomes, their attempts in the history, and the receipts
            # that were waiting for the provider ids just recorded.
            with _write_transaction(conn):
                written = conn.execute(_q("resolve"), params).fetchall()
                # The provider's id as the row now holds it (the sent attempt's), as on PostgreSQL.
                conn.executemany(
                    _q("attempt_event"),
                    [
                        attempts[row["id"]] | {"message_id": row["message_id"]}
                        for row in written
                        if row["id"] in attempts
                    ],
                )
                arrived = [
                    row["message_id"]
                    for row in written
                    if row["status"] == MessageStatus.SENT.value and row["message_id"] is not None
                ]
                if not arrived:
                    return []
                taken, _ = _apply(conn, [], [], arrived, len(arrived) * WAITING_PER_SEND, now)
                return taken

        return await self._db.run(work)

    async def apply_receipts(self, receipts: Sequence[Receipt], hints: Sequence[int | None]) -> list[ReceiptOutcome]:
        if not receipts:
            return []
        now = self._now()
        ids = list(dict.fromkeys(r.provider_message_id for r in receipts))

        def work(conn: sqlite3.Connection) -> list[ReceiptOutcome]:
            with _write_transaction(conn):
                taken, given = _apply(conn, receipts, hints, ids, None, now)
            return given + taken

        return await self._db.run(work)

    async def apply_waiting(self, max_age_s: float, limit: int = 1000) -> WaitingReport:
        now = self._now()
        before = format_timestamp(now - timedelta(seconds=max_age_s))

        def work(conn: sqlite3.Connection) -> WaitingReport:
            with _write_transaction(conn):
                ids = [row["provider_message_id"] for row in conn.execute(_q("waiting_ids"), {"limit": limit})]
                applied, _ = _apply(conn, [], [], ids, limit, now) if ids else ([], [])
                dropped = conn.execute(_q("drop_waiting"), {"before": before, "limit": limit}).fetchall()
            return WaitingReport(applied, [_dropped(row) for row in dropped])

        return await self._db.run(work)

    async def events(self, message_id: int, limit: int = MAX_EVENTS) -> list[Event]:
        return [_event(row) for row in await self._fetch(_q("events"), {"id": message_id, "limit": limit})]

    async def prune_events(self, older_than_s: float, limit: int) -> int:
        before = format_timestamp(self._now() - timedelta(seconds=older_than_s))

        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(_q("prune_events"), {"before": before, "limit": limit}).rowcount

        return await self._db.run(work)

    async def retry(self, message_id: int) -> Message:
        rows = await self._fetch(_q("retry"), {"id": message_id, "now": format_timestamp(self._now())})
        if rows:
            return _message(rows[0])
        current = await self.get(message_id)
        if current is None:
            raise MessageNotFound(message_id)
        raise InvalidState(current, "failed")

    async def cancel(self, message_id: int) -> Message:
        rows = await self._fetch(_q("cancel"), {"id": message_id, "now": format_timestamp(self._now())})
        if rows:
            return _message(rows[0])
        current = await self.get(message_id)
        if current is None:
            raise MessageNotFound(message_id)
        raise InvalidState(current, "pending")

    async def expire(self) -> int:
        return len(await self._fetch(_q("expire"), {"now": format_timestamp(self._now())}))

    async def segments_sent(self) -> int:
        rows = await self._fetch(_q("segments_sent"))
        return int(rows[0]["segments"])

    async def acquire_slot(self, name: str, interval_s: float) -> float:
        """Take the slot in one transaction holding the write lock (the rule: acquire_slot in queries.sql)."""
        params = {
            "name": name,
            "interval_us": _microseconds(interval_s),
            "tolerance_us": _microseconds(slot_tolerance_s(interval_s)),
        }

        def work(conn: sqlite3.Connection) -> float:
            with _write_transaction(conn):
                # Read once the lock is held: waiting for it must not make "now" stale.
                params["now"] = format_timestamp(self._now())
                if conn.execute(_q("acquire_slot"), params).fetchall():
                    return 0.0
                return float(conn.execute(_q("slot_wait"), params).fetchone()["wait_s"])

        return await self._db.run(work)

    async def counts(self) -> dict[MessageStatus, int]:
        await self.expire()  # pending messages past their validUntil count as expired
        result = dict.fromkeys(MessageStatus, 0)
        for row in await self._fetch(_q("counts")):
            result[MessageStatus(row["status"])] = row["n"]
        return result


def _apply(
    conn: sqlite3.Connection,
    receipts: Sequence[Receipt],
    hints: Sequence[int | None],
    waiting_for: Sequence[str],
    limit: int | None,
    now: datetime,
) -> tuple[list[ReceiptOutcome], list[ReceiptOutcome]]:
    """Apply the receipts still waiting for the ids ``waiting_for`` (up to ``limit``), then ``receipts``.

    The rules are receipts_plan's (queries.sql); this runs it and the writes it planned,
    inside the caller's write transaction. The outcomes of the waiting ones taken, then of ``receipts``.
    """
    values = [
        {
            "hint": hint,
            "provider_message_id": r.provider_message_id,
            "receipt_status": r.status,
            "delivery_status": r.delivery_status,
            "final_status": r.final_status.value if r.final_status is not None else None,
            "error_code": r.error_code,
            "done_at": format_timestamp(r.done_at) if r.done_at is not None else None,
            "received_at": format_timestamp(r.received_at),
            "dedupe_key": r.dedupe_key,
        }
        for r, hint in zip(receipts, hints, strict=True)
    ]
    conn.execute(_q("receipts_table"))
    params = {
        "receipts": json.dumps(values, ensure_ascii=False),
        "ids": json.dumps(list(waiting_for), ensure_ascii=False),
        "limit": -1 if limit is None else limit,
    }
    if conn.execute(_q("receipts_plan"), params).rowcount == 0:
        return [], []
    conn.execute(_q("receipts_take"))
    conn.execute(_q("receipts_log"))
    conn.execute(_q("receipts_move"), {"now": format_timestamp(now)})
    conn.execute(_q("receipts_wait"))
    rows = conn.execute(_q("receipts_results")).fetchall()
    # Emptied for the next application (on a failure, the transaction's rollback empties it).
    conn.execute(_q("receipts_done"))
    taken: list[ReceiptOutcome] = []
    given: list[ReceiptOutcome] = []
    for row in rows:
        (taken if row["src"] == 0 else given).append(
            ReceiptOutcome(
                ReceiptResult(row["result"]),
                row["message_id"],
                MessageStatus(row["status"]) if row["status"] is not None else None,
                parse_timestamp(row["sent_at"]),
                parse_timestamp(row["delivered_at"]),
            )
        )
    return taken, given


def _dropped(row: sqlite3.Row) -> Receipt:
    received_at = parse_timestamp(row["received_at"])
    assert received_at is not None
    return Receipt(row["provider_message_id"], row["receipt_status"], received_at)


def _event(row: sqlite3.Row) -> Event:
    at = parse_timestamp(row["at"])
    assert at is not None
    return Event(
        id=row["id"],
        message_id=row["message_id"],
        at=at,
        kind=row["kind"],
        outcome=row["outcome"],
        attempt=row["attempt"],
        status_code=row["status_code"],
        duration_ms=row["duration_ms"],
        error=row["error"],
        provider_message_id=row["provider_message_id"],
        receipt_status=row["receipt_status"],
        error_code=row["error_code"],
        done_at=parse_timestamp(row["done_at"]),
    )
