"""Test doubles shared by the unit tests."""

from __future__ import annotations

import asyncio
import enum
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from insider.adapters.memory import Request
from insider.adapters.rows import message_from_row
from insider.adapters.sqlite import SqliteDatabase, SqliteMessageRepository, format_timestamp, parse_timestamp
from insider.clock import FakeClock
from insider.domain import Message, MessageStatus, Outcome, Resolution, SendOrder, SendResult
from insider.ports import Clock, RepositoryUnavailable
from insider.receipt_parsing import ReceiptOutcome

T = TypeVar("T")


class ProbedDatabase(SqliteDatabase):
    """A private SQLite ``:memory:`` database that a test can make unreachable (``available = False``)."""

    def __init__(self) -> None:
        super().__init__(":memory:", threaded=False)
        self.available = True

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if not self.available:
            raise RepositoryUnavailable("the test made the database unavailable")
        return await super().run(work)


class ProbedRepository(SqliteMessageRepository):
    """The SQLite repository on its own ``:memory:`` database, with what unit tests look at and break.

    Every rule of the queue is the SQLite adapter's own SQL (no copy here): this only records
    the claims and resolves it was asked for, makes the database unreachable on demand, and
    inserts or lists rows directly, as another program writing to the table would. Migrated
    when made; ``close()`` drops the database.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._probed = ProbedDatabase()
        super().__init__(self._probed, clock or FakeClock())
        self.claims: list[list[int]] = []  # ids of each claim
        self.resolve_calls = 0
        _run_at_once(self.migrate())

    @property
    def available(self) -> bool:
        return self._probed.available

    @available.setter
    def available(self, value: bool) -> None:
        self._probed.available = value

    async def close(self) -> None:
        await self._probed.close()

    async def claim(self, limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        claimed = await super().claim(limit, lease_s, order)
        self.claims.append([m.id for m in claimed])
        return claimed

    async def resolve(self, resolutions: Sequence[Resolution]) -> Sequence[ReceiptOutcome]:
        if self.available:
            self.resolve_calls += 1
        return await super().resolve(resolutions)

    def add(
        self,
        recipient_phone: str,
        content: str,
        *,
        created_at: datetime | None = None,
        status: MessageStatus = MessageStatus.PENDING,
        **columns: object,
    ) -> Message:
        """Insert a row directly, as another program writing to the table would (times from the clock).

        ``columns`` sets any other column by name (``attempts=3``, ``next_attempt_at=...``);
        datetimes are stored in the schema's text form, enums by value.
        """
        when = created_at or self._clock.now()
        values: dict[str, object] = {
            "recipient_phone": recipient_phone,
            "content": content,
            "status": status,
            "created_at": when,
            "updated_at": when,
            "idempotency_key": str(uuid.uuid4()),
        } | columns
        names = list(values)
        if not all(name.isidentifier() for name in names):
            raise ValueError(f"not a column name: {names}")
        params = [_stored(v) for v in values.values()]
        statement = f"INSERT INTO messages ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) RETURNING *"

        def work(conn: sqlite3.Connection) -> Message:
            return message_from_row(conn.execute(statement, params).fetchone(), parse_timestamp)

        return self._probed.run_now(work)

    @property
    def rows(self) -> list[Message]:
        """Every message, in id order."""

        def work(conn: sqlite3.Connection) -> list[Message]:
            return [message_from_row(r, parse_timestamp) for r in conn.execute("SELECT * FROM messages ORDER BY id")]

        return self._probed.run_now(work)


def _stored(value: object) -> object:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _run_at_once(coroutine: object) -> None:
    """Run a coroutine of a ``threaded=False`` database, which never suspends, to its end."""
    assert asyncio.iscoroutine(coroutine)
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise AssertionError("the in-memory database suspended")


def accepted(request: Request) -> SendResult:
    return SendResult(Outcome.SENT, status_code=202, provider_message_id=f"pm-{request.content}")


class HeldProvider:
    """Answers only when the test sets ``release``; counts the requests in flight."""

    def __init__(self, answer: Callable[[Request], SendResult] = accepted) -> None:
        self.answer = answer
        self.release = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0

    async def __call__(self, request: Request) -> SendResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return self.answer(request)
