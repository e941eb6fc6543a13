"""What both SQL repositories do alike, written once over the named queries each dialect runs."""

from __future__ import annotations

import abc
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import orjson

from insider.adapters.rows import Row, new_message_row
from insider.clock import SystemClock
from insider.domain import DEFAULT_PRIORITY, Message, NewMessage, ensure_storable
from insider.ports import Clock, Enqueued, IdempotencyConflict, IdempotencyKey

T = TypeVar("T")

# One statement of a flow: the name of a query in the dialect's queries.sql, and its parameters.
Statement = tuple[str, Mapping[str, Any]]
# Statements to run in turn in one transaction: the flow yields each and is sent its rows back,
# so the decisions between them are written once and each dialect runs them on its connection.
Flow = Generator[Statement, list[Row], T]


def drive(flow: Flow[T], execute: Callable[[str, Mapping[str, Any]], list[Row]]) -> T:
    """Run ``flow`` to its end, each statement through ``execute``; what the flow returns."""
    try:
        statement = next(flow)
        while True:
            statement = flow.send(execute(*statement))
    except StopIteration as done:
        return cast(T, done.value)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


class SqlMessageRepository(abc.ABC):
    """The half of the repository port that reads the same on SQLite and PostgreSQL.

    A dialect says how a time goes into a statement, how a row comes back as a Message, and
    how a flow runs in one transaction. Statements take the adapter's clock as ``:now``
    where the dialect's SQL asks for it (SQLite); PostgreSQL's use the server's ``now()``.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()

    @abc.abstractmethod
    def _time(self, when: datetime) -> Any:
        """``when`` as the dialect's statements take a time."""

    @abc.abstractmethod
    def _message(self, row: Row) -> Message:
        """The Message of a row of ``messages``."""

    @abc.abstractmethod
    async def _in_transaction(self, flow: Flow[T]) -> T:
        """Run ``flow`` in one transaction that holds what it writes until it commits."""

    def _now_params(self) -> dict[str, Any]:
        """The time statements are given, read when the statement is about to run."""
        return {"now": self._time(self._clock.now())}

    async def enqueue(
        self,
        recipient_phone: str,
        content: str,
        *,
        send_at: datetime | None = None,
        priority: int = DEFAULT_PRIORITY,
        valid_until: datetime | None = None,
    ) -> Message:
        new = NewMessage.of(recipient_phone, content, send_at=send_at, priority=priority, valid_until=valid_until)
        return (await self.enqueue_many([new])).messages[0]

    async def enqueue_many(self, messages: Sequence[NewMessage], idempotency: IdempotencyKey | None = None) -> Enqueued:
        if not messages:
            return Enqueued([])
        for m in messages:
            ensure_storable(recipient_phone=m.recipient_phone, content=m.content)
        return await self._in_transaction(self._enqueue(messages, idempotency))

    def _enqueue(self, messages: Sequence[NewMessage], idempotency: IdempotencyKey | None) -> Flow[Enqueued]:
        """Store ``messages``; with a key, once: the key is taken first, in the same transaction.

        A concurrent request with the same key waits on it (PostgreSQL: its row; SQLite: the
        write lock) and then finds it taken.
        """
        now = self._now_params()  # inside the transaction: after waiting for the lock
        if idempotency is not None:
            key = {"key": idempotency.key, **now}
            yield "idempotency_drop_stale", key
            taken = yield "idempotency_take", key | {"request_hash": idempotency.request_hash, "status_code": 201}
            if not taken:  # by an earlier request: kept, for only stale keys are dropped, in this transaction
                [first] = yield "idempotency_get", key
                if first["request_hash"] != idempotency.request_hash:
                    raise IdempotencyConflict(idempotency.key)
                ids = [int(i) for i in orjson.loads(first["message_ids"])]
                by_id = {row["id"]: self._message(row) for row in (yield "get_many", {"ids": _json(ids)})}
                return Enqueued([by_id[i] for i in ids if i in by_id], replayed=True)
        rows = yield "enqueue", {"messages": _json([new_message_row(m, self._time) for m in messages]), **now}
        stored = sorted((self._message(row) for row in rows), key=lambda m: m.id)  # ids follow the input order
        if idempotency is not None:
            yield "idempotency_store", {"key": idempotency.key, "message_ids": _json([m.id for m in stored])}
            yield "idempotency_clean", now
        return Enqueued(stored)
