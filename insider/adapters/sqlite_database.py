"""SQLite for the repository: one connection on a worker thread of its own, its SQL functions, times as text."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import unquote, urlsplit

from insider.ports import RepositoryUnavailable

T = TypeVar("T")

# RETURNING came in 3.35; UPDATE ... FROM in 3.33.
MIN_SQLITE_VERSION: Final = (3, 35, 0)
DEFAULT_BUSY_TIMEOUT_S: Final = 5.0

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
            conn.create_function("insider_last_error", 3, _last_error, deterministic=True)
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


def _uuid4() -> str:
    return str(uuid.uuid4())


def _last_error(status: str | None, valid_until: str | None, last_error: str | None) -> str | None:
    """SQL ``insider_last_error(status, valid_until, last_error)``, as PostgreSQL's function of that
    name (a migration of its own) says it: for ``expired``, why, with validUntil (stored text) in
    UTC to the second and a Z, then the last failure, if there was one; else the failure as given."""
    if status != "expired":
        return last_error
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


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
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
