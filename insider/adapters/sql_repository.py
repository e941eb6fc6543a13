"""What both SQL repositories do alike, written once over the named queries each dialect runs."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar, cast

import orjson

from insider.adapters.cursor import (
    MAX_ID,
    decode_id_cursor,
    decode_suppression_cursor,
    encode_id_cursor,
    encode_suppression_cursor,
    page_of,
    page_query,
)
from insider.adapters.rows import (
    Applied,
    Row,
    Timestamp,
    claim_order,
    dropped_receipt,
    event_from_row,
    loaded_file_from_row,
    message_from_row,
    new_message_row,
    provider_ids,
    reply_from_row,
)
from insider.clock import SystemClock
from insider.consent import WAIT_REASONS
from insider.domain import (
    DEFAULT_PRIORITY,
    Category,
    Message,
    MessageStatus,
    NewMessage,
    SendOrder,
    ensure_storable,
)
from insider.history import MAX_EVENTS, Event
from insider.inbound import Inbound
from insider.ports import (
    Clock,
    Enqueued,
    FileAlreadyLoaded,
    IdempotencyConflict,
    IdempotencyKey,
    InvalidState,
    LoadedFile,
    MessageNotFound,
    Page,
    ProviderState,
    ProviderTotals,
    RecordedReply,
    ReplyPage,
    WaitingReport,
)
from insider.receipt_parsing import Receipt, ReceiptOutcome
from insider.suppressions import (
    DEFAULT_REASON,
    DEFAULT_SCOPE,
    NewSuppression,
    Scope,
    SuppressedMany,
    Suppression,
    SuppressionPage,
)

T = TypeVar("T")

# The listing of replies tags its cursors so.
_REPLIES: Final = "inbound"

# One statement of a flow: the name of a query in the dialect's queries.sql, and its parameters.
Statement = tuple[str, Mapping[str, Any]]
# Statements run in turn on one connection: the flow yields each and is sent its rows back, so
# the decisions between them are written once and each dialect runs them its own way.
Flow = Generator[Statement, list[Row], T]


def drive(flow: Flow[T], execute: Callable[[str, Mapping[str, Any]], list[Row]]) -> T:
    """Run ``flow`` to its end, each statement through ``execute``; what the flow returns."""
    try:
        statement = next(flow)
        while True:
            statement = flow.send(execute(*statement))
    except StopIteration as done:
        return cast(T, done.value)


# Entries of an import written per statement (all in one transaction).
SUPPRESSIONS_PER_STATEMENT: Final = 10_000


def _microseconds(seconds: float) -> int:
    return round(seconds * 1_000_000)


def json_text(value: object) -> str:
    """``value`` as compact JSON text, as both dialects read their JSON parameters."""
    return orjson.dumps(value).decode()


def publish_file(record: LoadedFile, again: bool, now: Mapping[str, Any], timestamp: Timestamp) -> Flow[LoadedFile]:
    """Record a loaded file, then move its staged messages into the queue (``FileLoad.publish``).

    The file's row first: a load of the same bytes running at the same time waits on it.
    """
    params = {k: getattr(record, k) for k in ("digest", "name", "lines", "stored", "rejected")} | dict(now)
    stored = yield ("file_load_again" if again else "file_load_record"), params
    if not stored:
        [previous] = yield "file_load_get", {"digest": record.digest}  # rows of this table are never deleted
        raise FileAlreadyLoaded(loaded_file_from_row(previous, timestamp))
    yield "file_load_publish", now
    return loaded_file_from_row(stored[0], timestamp)


# A frequency cap admits so many recipients per transaction at most: PostgreSQL holds a lock per
# recipient until the transaction ends, in a lock table every session shares (room for about
# max_locks_per_transaction x max_connections, 6,400 by default), and a batch may hold 10,000.
CAP_RECIPIENTS_PER_TRANSACTION = 500


def recipient_chunks(candidates: Sequence[tuple[int, str]], size: int) -> list[list[tuple[int, str]]]:
    """``candidates`` (id, recipient) in parts of at most ``size`` recipients, each recipient's
    candidates all in one part, every part in the candidates' order."""
    phones = list(dict.fromkeys(phone for _, phone in candidates))
    parts = []
    for start in range(0, len(phones), size):
        part = set(phones[start : start + size])
        parts.append([c for c in candidates if c[1] in part])
    return parts


def admit_in_order(
    candidates: Sequence[tuple[int, str]],
    admitted: Mapping[str, Sequence[datetime]],
    limit: int,
    window: timedelta,
    now: datetime,
) -> dict[int, datetime | None]:
    """The cap's decision (``CapStore.admit_capped``) once the admissions that count are read:
    each candidate in order is admitted (None) while its recipient has fewer than ``limit``,
    else gets the earliest time the count allows another: the (count - limit + 1)-th oldest
    admission of the window, plus the window."""
    held = {phone: sorted(times) for phone, times in admitted.items()}
    decided: dict[int, datetime | None] = {}
    for message_id, phone in candidates:
        times = held.setdefault(phone, [])
        if len(times) < limit:
            times.append(now)  # the latest: later candidates count it
            decided[message_id] = None
        else:
            decided[message_id] = times[len(times) - limit] + window
    return decided


class SqlMessageRepository(abc.ABC):
    """The half of the repository port that reads the same on SQLite and PostgreSQL.

    A dialect says how a time goes into a statement and comes back, how one of its named
    queries runs, how a flow of them runs on one connection, and how receipts are applied.
    Statements are given the adapter's clock as ``now``; SQLite's use it, PostgreSQL's use
    the server's ``now()``.
    """

    def __init__(self, clock: Clock | None = None, *, several_providers: bool = True) -> None:
        self._clock = clock or SystemClock()
        # One provider: an unnamed receipt meets the message with its id as it always did,
        # without asking whether several providers' messages have that id.
        self._several_providers = several_providers

    @abc.abstractmethod
    def _time(self, when: datetime, /) -> Any:
        """``when`` as the dialect's statements take a time."""

    @abc.abstractmethod
    def _timestamp(self, value: Any, /) -> datetime | None:
        """A time as the dialect gives it back, as an aware UTC datetime (None stays None)."""

    @abc.abstractmethod
    async def _rows(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """The rows of one named statement, run on its own (committed when it returns)."""

    @abc.abstractmethod
    async def _count(self, name: str, params: Mapping[str, Any]) -> int:
        """How many rows one named statement changed (committed when it returns)."""

    @abc.abstractmethod
    async def _run(self, flow: Flow[T], *, atomic: bool) -> T:
        """Run ``flow``'s statements in turn on one connection: ``atomic``, in one transaction
        (all or none); else each commits as it runs, where the dialect allows it."""

    @abc.abstractmethod
    def _apply(
        self, receipts: Sequence[Receipt], hints: Sequence[int | None], ids: Sequence[str | None], limit: int | None
    ) -> Flow[Applied]:
        """Apply the receipts still waiting for the provider ids ``ids`` (up to ``limit``,
        None: all), then ``receipts``; the outcomes of the waiting ones taken, then of ``receipts``.

        The rule (which receipt moves which message, in what order) is the dialect's SQL.
        """

    def _message(self, row: Row) -> Message:
        return message_from_row(row, self._timestamp)

    def _now(self) -> dict[str, Any]:
        """The time statements are given, read when they are about to run."""
        return {"now": self._time(self._clock.now())}

    @staticmethod
    def _claimed(messages: Sequence[Message], order: SendOrder) -> list[Message]:
        """Claimed rows in the order a batch starts their requests (UPDATE ... RETURNING gives none)."""
        return sorted(messages, key=claim_order(order))

    async def ping(self) -> None:
        await self._rows("ping")

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
        return await self._run(self._enqueue(messages, idempotency), atomic=True)

    def _enqueue(self, messages: Sequence[NewMessage], idempotency: IdempotencyKey | None) -> Flow[Enqueued]:
        """Store ``messages``; with a key, once: the key is taken first, in the same transaction.

        A concurrent request with the same key waits on it (PostgreSQL: its row; SQLite: the
        write lock) and then finds it taken.
        """
        now = self._now()  # inside the transaction: after waiting for the lock
        if idempotency is not None:
            key = {"key": idempotency.key, **now}
            yield "idempotency_drop_stale", key
            taken = yield "idempotency_take", key | {"request_hash": idempotency.request_hash, "status_code": 201}
            if not taken:  # by an earlier request: kept, for only stale keys are dropped, in this transaction
                [first] = yield "idempotency_get", key
                if first["request_hash"] != idempotency.request_hash:
                    raise IdempotencyConflict(idempotency.key)
                ids = [int(i) for i in orjson.loads(first["message_ids"])]
                by_id = {row["id"]: self._message(row) for row in (yield "get_many", {"ids": json_text(ids)})}
                return Enqueued([by_id[i] for i in ids if i in by_id], replayed=True)
        rows = yield "enqueue", {"messages": json_text([new_message_row(m, self._time) for m in messages]), **now}
        stored = sorted((self._message(row) for row in rows), key=lambda m: m.id)  # ids follow the input order
        if idempotency is not None:
            yield "idempotency_store", {"key": idempotency.key, "message_ids": json_text([m.id for m in stored])}
            yield "idempotency_clean", now
        return Enqueued(stored)

    async def admit_capped(
        self, candidates: Sequence[tuple[int, str]], limit: int, window_s: float
    ) -> dict[int, datetime | None]:
        decided: dict[int, datetime | None] = {}
        # A transaction per part: each takes its locks in one order and lets them all go at its
        # end, so parts never wait on each other crosswise either.
        for part in recipient_chunks(candidates, CAP_RECIPIENTS_PER_TRANSACTION):
            decided |= await self._run(self._admit_capped(part, limit, window_s), atomic=True)
        return decided

    def _admit_capped(
        self, candidates: Sequence[tuple[int, str]], limit: int, window_s: float
    ) -> Flow[dict[int, datetime | None]]:
        """One transaction: each recipient locked (PostgreSQL: an advisory lock per number, in one
        order; SQLite: the write lock), the time read once the locks are held, the admissions that
        count read (cap_admissions: the rule), the decision, and the admitted ones marked."""
        phones = json_text(sorted({phone for _, phone in candidates}))
        [locked] = yield "cap_lock", {"phones": phones, **self._now()}
        now = self._timestamp(locked["now"])
        assert now is not None
        window = timedelta(seconds=window_s)
        params = {"phones": phones, "ids": json_text([i for i, _ in candidates]), "since": self._time(now - window)}
        admitted: dict[str, list[datetime]] = {}
        for row in (yield "cap_admissions", params):
            at = self._timestamp(row["cap_admitted_at"])
            assert at is not None
            admitted.setdefault(row["recipient_phone"], []).append(at)
        decided = admit_in_order(candidates, admitted, limit, window, now)
        taken = [i for i, until in decided.items() if until is None]
        if taken:
            yield "cap_admit", {"ids": json_text(taken), "now": self._time(now)}
        return decided

    async def apply_receipts(self, receipts: Sequence[Receipt], hints: Sequence[int | None]) -> list[ReceiptOutcome]:
        if not receipts:
            return []
        taken, given = await self._run(self._apply(receipts, hints, provider_ids(receipts), None), atomic=False)
        return given + taken

    async def apply_waiting(self, max_age_s: float, limit: int = 1000) -> WaitingReport:
        return await self._run(self._apply_waiting(max_age_s, limit), atomic=False)

    def _apply_waiting(self, max_age_s: float, limit: int) -> Flow[WaitingReport]:
        ids = [row["provider_message_id"] for row in (yield "waiting_ids", {"limit": limit})]
        applied, _ = (yield from self._apply([], [], ids, limit)) if ids else ([], [])
        before = self._time(self._clock.now() - timedelta(seconds=max_age_s))
        dropped = yield "drop_waiting", {"before": before, "limit": limit}
        return WaitingReport(applied, [dropped_receipt(row, self._timestamp) for row in dropped])

    async def loaded_file(self, digest: str) -> LoadedFile | None:
        rows = await self._rows("file_load_get", {"digest": digest})
        return loaded_file_from_row(rows[0], self._timestamp) if rows else None

    async def get(self, message_id: int) -> Message | None:
        await self.expire()  # a message past its validUntil reads as expired, not pending
        rows = await self._rows("get", {"id": message_id})
        return self._message(rows[0]) if rows else None

    async def list_messages(
        self,
        status: MessageStatus | None,
        limit: int,
        cursor: str | None = None,
        to: str | None = None,
        category: Category | None = None,
    ) -> Page:
        if status in (MessageStatus.PENDING, MessageStatus.EXPIRED):
            await self.expire()  # a message past its validUntil is listed as expired, not pending
        name, params = page_query(status, limit, cursor, to, category)
        if "key" in params:
            params["key"] = self._time(params["key"])
        # The sent queries skip rows without sent_at, so every listed row has its key.
        return page_of([self._message(row) for row in await self._rows(name, params)], limit, status)

    async def events(self, message_id: int, limit: int = MAX_EVENTS) -> list[Event]:
        return [
            event_from_row(row, self._timestamp)
            for row in await self._rows("events", {"id": message_id, "limit": limit})
        ]

    async def prune_events(self, older_than_s: float, limit: int) -> int:
        before = self._time(self._clock.now() - timedelta(seconds=older_than_s))
        return await self._count("prune_events", {"before": before, "limit": limit})

    async def retry(self, message_id: int) -> Message:
        return await self._move(message_id, "retry", MessageStatus.FAILED)

    async def cancel(self, message_id: int) -> Message:
        return await self._move(message_id, "cancel", MessageStatus.PENDING)

    async def _move(self, message_id: int, name: str, wanted: MessageStatus) -> Message:
        """Run the statement that moves one message out of ``wanted``; say why when it did not."""
        rows = await self._rows(name, {"id": message_id, **self._now()})
        if rows:
            return self._message(rows[0])
        current = await self.get(message_id)
        if current is None:
            raise MessageNotFound(message_id)
        raise InvalidState(current, wanted.value)

    async def expire(self) -> int:
        return await self._count("expire", self._now())

    async def take_send(self, provider: str, rate: float, max_wait_s: float) -> float | None:
        interval_s = 1.0 / rate
        params = {
            "name": provider,
            "interval_s": interval_s,
            "max_wait_s": max_wait_s,
            # SQLite reckons in whole microseconds, on the adapter's clock; PostgreSQL, on the server's.
            "interval_us": _microseconds(interval_s),
            "max_wait_us": _microseconds(max_wait_s),
            "now_us": _microseconds(self._clock.now().timestamp()),
        }
        rows = await self._rows("take_send", params)
        return float(rows[0]["wait_s"]) if rows else None

    async def next_turn_in(self, provider: str) -> float:
        params = {"name": provider, "now_us": _microseconds(self._clock.now().timestamp())}
        rows = await self._rows("next_turn_in", params)
        return float(rows[0]["wait_s"]) if rows else 0.0

    async def provider_states(self) -> dict[str, ProviderState]:
        rows = await self._rows("provider_states", {"now_us": self._now_us()})
        return {
            row["name"]: ProviderState(
                bool(row["enabled"]), None if row["throttled_s"] is None else float(row["throttled_s"])
            )
            for row in rows
        }

    async def throttle_provider(self, provider: str, seconds: float) -> None:
        now_us = self._now_us()
        params = {"name": provider, "seconds": seconds, "until_us": now_us + _microseconds(seconds), "now_us": now_us}
        await self._count("throttle_provider", params | self._now())

    async def provider_members(self, member: str, ttl_s: float) -> list[tuple[str, float]]:
        await self._count("provider_member_seen", {"member": member, "now_us": self._now_us()})
        params = {"ttl_s": ttl_s, "ttl_us": _microseconds(ttl_s), "now_us": self._now_us()}
        return [(row["member"], float(row["age_s"])) for row in await self._rows("provider_members", params)]

    async def provider_member_gone(self, member: str) -> None:
        await self._count("provider_member_gone", {"member": member, "now_us": self._now_us()})

    def _now_us(self) -> int:
        return _microseconds(self._clock.now().timestamp())

    async def switch_provider(self, name: str, enabled: bool) -> None:
        await self._rows("switch_provider", {"name": name, "enabled": enabled, **self._now()})

    async def provider_totals(self) -> list[ProviderTotals]:
        return [
            ProviderTotals(
                row["provider"], int(row["sent"]), int(row["failed"]), int(row["segments"]), float(row["cost"])
            )
            for row in await self._rows("provider_totals_read")
        ]

    async def segments_sent(self) -> int:
        rows = await self._rows("segments_sent")
        return int(rows[0]["segments"])

    async def counts(self) -> dict[MessageStatus, int]:
        await self.expire()  # pending messages past their validUntil count as expired
        result = dict.fromkeys(MessageStatus, 0)
        for row in await self._rows("counts"):
            result[MessageStatus(row["status"])] = row["n"]
        return result

    async def category_counts(self) -> dict[Category, dict[MessageStatus, int]]:
        await self.expire()  # as counts: pending messages past their validUntil count as expired
        result = {category: dict.fromkeys(MessageStatus, 0) for category in Category}
        for row in await self._rows("category_counts"):
            result[Category(row["category"])][MessageStatus(row["status"])] = int(row["n"])
        return result

    async def waiting_counts(self) -> dict[str, int]:
        result = dict.fromkeys(WAIT_REASONS, 0)
        for row in await self._rows("waiting_counts"):
            result[str(row["wait_reason"])] = int(row["n"])
        return result

    def _suppression(self, row: Row) -> Suppression:
        created_at = self._timestamp(row["created_at"])
        assert created_at is not None  # NOT NULL
        return Suppression(row["phone"], Scope(row["scope"]), row["reason"], row["source"], created_at)

    def _suppression_row(self, entry: NewSuppression) -> dict[str, Any]:
        return {
            "phone": entry.phone,
            "scope": entry.scope.value,
            "reason": entry.reason,
            "source": entry.source,
            "created_at": self._time(entry.created_at) if entry.created_at is not None else None,
        }

    def _suppress(self, entries: Sequence[NewSuppression]) -> Flow[tuple[list[Suppression], int]]:
        """Add the numbers not on the list, then change the entries of those that were (the last of a
        number given twice wins); the entries as stored, in the order given, and how many were added.

        Each statement says which rows it wrote: a number taken off the list between the two by
        another writer is neither added nor changed, and is tried again.
        """
        last = {entry.phone: entry for entry in entries}  # in the order of each number's last entry
        stored: dict[str, Suppression] = {}
        added = 0
        todo = list(last.values())
        while todo:
            now = self._now()
            for start in range(0, len(todo), SUPPRESSIONS_PER_STATEMENT):
                part = todo[start : start + SUPPRESSIONS_PER_STATEMENT]
                rows = yield "suppression_add", {"entries": json_text([self._suppression_row(e) for e in part]), **now}
                added += len(rows)
                stored |= {row["phone"]: self._suppression(row) for row in rows}
                rest = [e for e in part if e.phone not in stored]
                if rest:
                    rows = yield "suppression_update", {"entries": json_text([self._suppression_row(e) for e in rest])}
                    stored |= {row["phone"]: self._suppression(row) for row in rows}
            todo = [e for e in todo if e.phone not in stored]
        return [stored[phone] for phone in last], added

    async def suppress(
        self, phone: str, scope: str = DEFAULT_SCOPE, reason: str = DEFAULT_REASON, source: str = "api"
    ) -> tuple[Suppression, bool]:
        entry = NewSuppression(phone, Scope(scope), reason, source)
        ensure_storable(phone=phone, reason=reason, source=source)
        [stored], added = await self._run(self._suppress([entry]), atomic=True)
        return stored, added == 1

    async def suppress_many(self, entries: Sequence[NewSuppression]) -> SuppressedMany:
        for entry in entries:
            ensure_storable(phone=entry.phone, reason=entry.reason, source=entry.source)
        if not entries:
            return SuppressedMany(0, 0)
        stored, added = await self._run(self._suppress(entries), atomic=True)
        return SuppressedMany(added, len(stored) - added)

    async def unsuppress(self, phone: str) -> bool:
        return bool(await self._rows("suppression_delete", {"phone": phone}))

    async def get_suppression(self, phone: str) -> Suppression | None:
        rows = await self._rows("suppression_get", {"phone": phone})
        return self._suppression(rows[0]) if rows else None

    async def list_suppressions(self, limit: int, cursor: str | None = None, to: str | None = None) -> SuppressionPage:
        name = "suppressions_page"
        params: dict[str, Any] = {"limit": limit + 1}
        if to is not None:
            name += "_to"
            params["to"] = to
        if cursor is not None:
            key, params["phone"] = decode_suppression_cursor(cursor)
            params["key"] = self._time(key)
            name += "_after"
        rows = [self._suppression(row) for row in await self._rows(name, params)]
        page = rows[:limit]
        if len(rows) <= limit or not page:
            return SuppressionPage(page, None)
        return SuppressionPage(page, encode_suppression_cursor(page[-1].created_at, page[-1].phone))

    async def count_suppressions(self) -> int:
        rows = await self._rows("suppression_count")
        return int(rows[0]["n"])

    async def record_inbound(
        self, inbound: Inbound, action: str | None, scope: str, confirmation: NewMessage | None
    ) -> RecordedReply:
        if confirmation is not None:
            ensure_storable(recipient_phone=confirmation.recipient_phone, content=confirmation.content)
            confirmation = dataclasses.replace(confirmation, consent_reply=True)  # past the suppression it records
        return await self._run(self._record_inbound(inbound, action, scope, confirmation), atomic=True)

    def _record_inbound(
        self, inbound: Inbound, action: str | None, scope: str, confirmation: NewMessage | None
    ) -> Flow[RecordedReply]:
        """The reply first (a provider's id seen before: that reply, nothing else), then the suppression
        list, then the confirmation, as enqueue stores it: one transaction."""
        now = self._now()
        reply = {
            "from_phone": inbound.from_phone,
            "to_phone": inbound.to_phone,
            "text": inbound.text,
            "provider": inbound.provider,
            "provider_message_id": inbound.provider_message_id,
            "action": action,
        }
        rows = yield "inbound_record", reply | now
        if not rows:
            [stored] = yield "inbound_stored", reply
            return RecordedReply(reply_from_row(stored, self._timestamp), replayed=True)
        phone = inbound.from_phone
        if action == "opt-out":  # on the list, as the suppressions API puts it there; never narrowed
            existing = yield "suppression_get", {"phone": phone}
            wider = Scope.ALL if existing and existing[0]["scope"] == Scope.ALL else Scope(scope)
            yield from self._suppress([NewSuppression(phone, wider, "opt-out", "inbound")])
        elif action == "opt-in":
            yield "suppression_delete", {"phone": phone}
        if confirmation is not None:
            yield from self._enqueue([confirmation], None)
        return RecordedReply(reply_from_row(rows[0], self._timestamp))

    async def list_inbound(self, limit: int, cursor: str | None = None, from_phone: str | None = None) -> ReplyPage:
        before = decode_id_cursor(cursor, _REPLIES) if cursor is not None else MAX_ID
        params: dict[str, Any] = {"before": before, "limit": limit + 1}
        if from_phone is not None:
            params["from_phone"] = from_phone
        rows = await self._rows("inbound_list_from" if from_phone is not None else "inbound_list", params)
        items = [reply_from_row(row, self._timestamp) for row in rows[:limit]]
        more = len(rows) > limit and items
        return ReplyPage(items, encode_id_cursor(_REPLIES, items[-1].id) if more else None)
