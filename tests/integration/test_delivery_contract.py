"""The ReceiptStore contract (receipts, waiting receipts, history, retention) on SQLite and PostgreSQL.

SQLite runs on a FakeClock; PostgreSQL on real time. Times that matter (a receipt's
arrival, an attempt's start) are given by the caller, so both run the same checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository
from insider.adapters.rows import WAITING_PER_SEND
from insider.adapters.sqlite import SqliteMessageRepository, open_sqlite
from insider.clock import FakeClock
from insider.domain import Attempt, Message, MessageStatus, Resolution
from insider.receipt_parsing import WAITING_MAX_AGE_S, Receipt, ReceiptOutcome, ReceiptResult

PHONE = "+905301234001"

Repository = SqliteMessageRepository | PostgresMessageRepository


@dataclass
class Backend:
    repository: Repository
    clock: FakeClock | None = None
    sqlite_file: Path | None = None
    pool: Pool | None = None

    def now(self) -> datetime:
        return self.clock.now() if self.clock is not None else datetime.now(UTC)

    async def execute(self, statement: str, params: tuple[Any, ...]) -> None:
        """A write by another program (or a racing process), straight to the database."""
        if self.sqlite_file is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_file)) as lite, lite:
                lite.execute(statement.replace("%s", "?"), params)
            return
        assert self.pool is not None
        async with self.pool.connection() as conn:
            await conn.execute(statement, params)


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    clock = FakeClock()
    async with open_sqlite(f"sqlite:///{tmp_path / 'insider.db'}") as database:
        repository = SqliteMessageRepository(database, clock)
        await repository.migrate()
        yield Backend(repository, clock, sqlite_file=tmp_path / "insider.db")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sqlite":
        sqlite: Backend = request.getfixturevalue("sqlite_backend")
        return sqlite
    return Backend(request.getfixturevalue("pg_repository"), pool=request.getfixturevalue("pg_pool"))


async def sent_message(
    backend: Backend, provider_id: str, *, content: str = "hello", expect: MessageStatus = MessageStatus.SENT
) -> Message:
    """A message sent through claim and resolve, with its attempt in the history."""
    repository = backend.repository
    message = await repository.enqueue(PHONE, content)
    [claimed] = await repository.claim(1, 30.0)
    assert claimed.id == message.id
    now = backend.now()
    await repository.resolve(
        [
            Resolution(
                claimed.id,
                claimed.claim_token,
                MessageStatus.SENT,
                sent_at=now,
                message_id=provider_id,
                attempt=Attempt(now, "sent", claimed.attempts, 202, 12.5, provider_message_id=provider_id),
            )
        ]
    )
    got = await repository.get(message.id)
    assert got is not None and got.status is expect
    return got


def receipt(backend: Backend, provider_id: str, status: str, **kwargs: object) -> Receipt:
    received_at = kwargs.pop("received_at", None) or backend.now()
    assert isinstance(received_at, datetime)
    return Receipt(provider_id, status, received_at, **kwargs)  # type: ignore[arg-type]


async def apply(backend: Backend, *receipts: Receipt, hints: list[int | None] | None = None) -> list[ReceiptResult]:
    outcomes = await backend.repository.apply_receipts(receipts, hints or [None] * len(receipts))
    return [o.result for o in outcomes]


async def fetch(backend: Backend, message_id: int) -> Message:
    message = await backend.repository.get(message_id)
    assert message is not None
    return message


async def test_a_delivered_receipt_moves_a_sent_message_to_delivered(backend: Backend) -> None:
    message = await sent_message(backend, "p-1")
    done_at = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)

    outcomes = await backend.repository.apply_receipts([receipt(backend, "p-1", "DELIVRD", done_at=done_at)], [None])

    [outcome] = outcomes
    assert outcome.result is ReceiptResult.APPLIED
    assert (outcome.message_id, outcome.status) == (message.id, MessageStatus.DELIVERED)
    assert outcome.sent_at == message.sent_at and outcome.delivered_at == done_at
    got = await fetch(backend, message.id)
    assert got.status is MessageStatus.DELIVERED
    assert (got.delivered_at, got.delivery_status, got.delivery_error) == (done_at, "delivered", None)
    assert (got.message_id, got.sent_at) == (message.message_id, message.sent_at)


@pytest.mark.parametrize(
    ("status", "delivery_status"),
    [("undelivered", "undelivered"), ("UNDELIV", "undelivered"), ("failed", "undelivered"), ("Expired", "expired"),
     ("REJECTD", "rejected"), ("rejected", "rejected"), ("DELETED", "undelivered")],
)  # fmt: skip
async def test_a_failed_delivery_moves_it_to_undelivered_with_the_reason(
    backend: Backend, status: str, delivery_status: str
) -> None:
    message = await sent_message(backend, "p-1")

    assert await apply(backend, receipt(backend, "p-1", status, error_code="34")) == [ReceiptResult.APPLIED]

    got = await fetch(backend, message.id)
    assert got.status is MessageStatus.UNDELIVERED
    assert (got.delivery_status, got.delivery_error) == (delivery_status, "34")
    assert got.delivered_at is not None  # when the outcome was known


async def test_the_same_receipt_twice_changes_nothing(backend: Backend) -> None:
    message = await sent_message(backend, "p-1")
    first = receipt(backend, "p-1", "delivered")
    assert await apply(backend, first) == [ReceiptResult.APPLIED]
    after_first = await fetch(backend, message.id)
    events_after_first = await backend.repository.events(message.id)

    # Again later, in another case, and twice within one batch.
    again = receipt(backend, "p-1", "DELIVERED", received_at=backend.now() + timedelta(seconds=5))
    assert await apply(backend, again, again) == [ReceiptResult.DUPLICATE, ReceiptResult.DUPLICATE]

    assert await fetch(backend, message.id) == after_first
    assert await backend.repository.events(message.id) == events_after_first


async def test_a_duplicate_within_one_batch_is_applied_once(backend: Backend) -> None:
    message = await sent_message(backend, "p-1")
    one = receipt(backend, "p-1", "delivered")

    assert await apply(backend, one, one) == [ReceiptResult.APPLIED, ReceiptResult.DUPLICATE]

    assert [e.kind for e in await backend.repository.events(message.id)] == ["attempt", "receipt"]


async def test_a_final_status_never_moves_back_and_a_contrary_receipt_is_kept_as_an_event(backend: Backend) -> None:
    message = await sent_message(backend, "p-1")
    assert await apply(backend, receipt(backend, "p-1", "delivered")) == [ReceiptResult.APPLIED]
    delivered = await fetch(backend, message.id)

    later = backend.now() + timedelta(seconds=1)
    results = await apply(
        backend, receipt(backend, "p-1", "undelivered", error_code="1", received_at=later),
        receipt(backend, "p-1", "ENROUTE", received_at=later),
    )  # fmt: skip

    assert results == [ReceiptResult.RECORDED, ReceiptResult.RECORDED]
    assert await fetch(backend, message.id) == delivered
    receipts = [e for e in await backend.repository.events(message.id) if e.kind == "receipt"]
    assert [(e.receipt_status, e.outcome) for e in receipts] == [
        ("delivered", "delivered"),
        ("undelivered", "undelivered"),
        ("ENROUTE", None),
    ]


async def test_the_first_final_receipt_of_a_batch_wins(backend: Backend) -> None:
    message = await sent_message(backend, "p-1")

    results = await apply(backend, receipt(backend, "p-1", "REJECTD"), receipt(backend, "p-1", "DELIVRD"))

    assert results == [ReceiptResult.APPLIED, ReceiptResult.RECORDED]
    assert (await fetch(backend, message.id)).delivery_status == "rejected"


@pytest.mark.parametrize("status", ["ENROUTE", "ACCEPTD", "UNKNOWN", "sent", "queued", "something-new"])
async def test_a_status_that_is_not_final_is_kept_as_an_event_and_changes_nothing(
    backend: Backend, status: str
) -> None:
    message = await sent_message(backend, "p-1")

    assert await apply(backend, receipt(backend, "p-1", status)) == [ReceiptResult.RECORDED]

    assert await fetch(backend, message.id) == message
    last = (await backend.repository.events(message.id))[-1]
    assert (last.kind, last.receipt_status, last.outcome) == ("receipt", status, None)


async def test_a_late_sent_outcome_does_not_undo_a_delivery(backend: Backend) -> None:
    repository = backend.repository
    message = await repository.enqueue(PHONE, "x")
    [claimed] = await repository.claim(1, 30.0)
    sent = Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=backend.now(), message_id="p-1")
    await repository.resolve([sent])
    await apply(backend, receipt(backend, "p-1", "delivered"))

    await repository.resolve([sent])  # the same outcome written again (a retried final write)

    assert (await fetch(backend, message.id)).status is MessageStatus.DELIVERED


async def test_a_receipt_before_the_outcome_waits_and_is_applied_when_the_outcome_is_written(
    backend: Backend,
) -> None:
    repository = backend.repository
    message = await repository.enqueue(PHONE, "fast network")
    [claimed] = await repository.claim(1, 30.0)
    started = backend.now() - timedelta(seconds=1)  # the request went out before the receipt came

    early = receipt(backend, "p-early", "DELIVRD")
    assert await apply(backend, early) == [ReceiptResult.WAITING]
    assert await apply(backend, early) == [ReceiptResult.WAITING]  # a retry of it: still 200, still one
    assert (await fetch(backend, message.id)).status is MessageStatus.SENDING

    now = backend.now()
    applied = await repository.resolve(
        [
            Resolution(
                claimed.id,
                claimed.claim_token,
                MessageStatus.SENT,
                sent_at=now,
                message_id="p-early",
                attempt=Attempt(started, "sent", 1, 202, 3.0, provider_message_id="p-early"),
            )
        ]
    )

    assert [(o.result, o.message_id, o.status) for o in applied] == [
        (ReceiptResult.APPLIED, message.id, MessageStatus.DELIVERED)
    ]
    got = await fetch(backend, message.id)
    assert (got.status, got.message_id, got.delivery_status) == (MessageStatus.DELIVERED, "p-early", "delivered")
    assert [e.kind for e in await repository.events(message.id)] == ["attempt", "receipt"]
    # Taken out of the waiting table: nothing left to apply or drop.
    report = await repository.apply_waiting(WAITING_MAX_AGE_S)
    assert (report.applied, report.dropped) == ([], [])


async def test_a_waiting_receipt_is_applied_by_the_periodic_pass_when_its_message_appears(backend: Backend) -> None:
    early = receipt(backend, "p-1", "undeliv", error_code="5")
    assert await apply(backend, early) == [ReceiptResult.WAITING]
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)
    assert (report.applied, report.dropped) == ([], [])  # no message has the id yet: it keeps waiting

    # The message got the id in a write that raced the receipt's, so that neither saw the other.
    message = await sent_message(backend, "p-other")
    await backend.execute("UPDATE messages SET message_id = %s WHERE id = %s", ("p-1", message.id))
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)

    assert [(o.result, o.message_id, o.status) for o in report.applied] == [
        (ReceiptResult.APPLIED, message.id, MessageStatus.UNDELIVERED)
    ]
    got = await fetch(backend, message.id)
    assert (got.status, got.delivery_error) == (MessageStatus.UNDELIVERED, "5")
    assert (await backend.repository.apply_waiting(WAITING_MAX_AGE_S)).applied == []


async def claimed_message(backend: Backend, content: str = "in flight") -> Message:
    """A message claimed for sending: its send's outcome is not written yet."""
    message = await backend.repository.enqueue(PHONE, content)
    [claimed] = await backend.repository.claim(1, 30.0)
    assert claimed.id == message.id
    return claimed


async def record_sent(backend: Backend, claimed: Message, provider_id: str) -> Sequence[ReceiptOutcome]:
    """The send's outcome written: what the resolve applied of the receipts that waited for it."""
    now = backend.now()
    return await backend.repository.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=now, message_id=provider_id)]
    )


async def receipt_history(backend: Backend, message_id: int) -> list[str | None]:
    return [e.receipt_status for e in await backend.repository.events(message_id) if e.kind == "receipt"]


# Each message's receipts take effect in the order they arrived, wherever they waited.


@pytest.mark.parametrize("step_s", [0.0, -5.0], ids=["same-instant", "clock-stepped-back"])
async def test_waiting_receipts_are_applied_in_the_order_they_arrived_when_the_send_is_recorded(
    backend: Backend, step_s: float
) -> None:
    # The order of arrival, not the time each was stamped with: two may share a microsecond,
    # and a clock may step back between them.
    claimed = await claimed_message(backend)
    t0 = backend.now()
    arrivals = [
        receipt(backend, "p-1", "ENROUTE", received_at=t0),
        receipt(backend, "p-1", "UNDELIV", error_code="1", received_at=t0 + timedelta(seconds=step_s)),
        receipt(backend, "p-1", "DELIVRD", received_at=t0 + timedelta(seconds=2 * step_s)),
    ]
    for arrival in arrivals:
        assert await apply(backend, arrival) == [ReceiptResult.WAITING]

    applied = await record_sent(backend, claimed, "p-1")

    assert [o.result for o in applied] == [ReceiptResult.RECORDED, ReceiptResult.APPLIED, ReceiptResult.RECORDED]
    got = await fetch(backend, claimed.id)
    assert (got.status, got.delivery_error) == (MessageStatus.UNDELIVERED, "1")
    history = await receipt_history(backend, claimed.id)
    assert sorted(history, key=str) == sorted(["ENROUTE", "UNDELIV", "DELIVRD"], key=str)
    if step_s == 0.0:  # the same instant: the history keeps the order of arrival
        assert history == ["ENROUTE", "UNDELIV", "DELIVRD"]


async def test_a_newer_receipt_never_overtakes_one_that_waits(backend: Backend) -> None:
    early = receipt(backend, "p-1", "UNDELIV", error_code="7")
    assert await apply(backend, early) == [ReceiptResult.WAITING]
    # The message got the id in a write that raced the receipt's, so that neither saw the
    # other: the early receipt still waits (for the periodic pass) when a newer one arrives.
    message = await sent_message(backend, "p-other")
    await backend.execute("UPDATE messages SET message_id = %s WHERE id = %s", ("p-1", message.id))

    later = receipt(backend, "p-1", "DELIVRD", received_at=early.received_at)
    outcomes = await backend.repository.apply_receipts([later], [message.id])

    # The waiting one first, in the same write: the newer one is only kept in the history.
    assert [(o.result, o.message_id, o.status) for o in outcomes] == [
        (ReceiptResult.RECORDED, message.id, None),
        (ReceiptResult.APPLIED, message.id, MessageStatus.UNDELIVERED),
    ]
    got = await fetch(backend, message.id)
    assert (got.status, got.delivery_status, got.delivery_error) == (MessageStatus.UNDELIVERED, "undelivered", "7")
    assert await receipt_history(backend, message.id) == ["UNDELIV", "DELIVRD"]
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)
    assert (report.applied, report.dropped) == ([], [])  # nothing left waiting


async def test_receipts_beyond_what_the_resolve_takes_are_still_applied_before_a_newer_one(backend: Backend) -> None:
    # A resolve applies a bounded number of waiting receipts per send; the rest wait, and a
    # receipt that arrives after must not overtake them.
    claimed = await claimed_message(backend)
    t0 = backend.now()
    for i in range(WAITING_PER_SEND):
        assert await apply(backend, receipt(backend, "p-1", f"ENROUTE-{i}", received_at=t0)) == [ReceiptResult.WAITING]
    assert await apply(backend, receipt(backend, "p-1", "DELIVRD", received_at=t0)) == [ReceiptResult.WAITING]
    applied = await record_sent(backend, claimed, "p-1")
    assert [o.result for o in applied] == [ReceiptResult.RECORDED] * WAITING_PER_SEND
    assert (await fetch(backend, claimed.id)).status is MessageStatus.SENT

    results = await apply(backend, receipt(backend, "p-1", "UNDELIV", received_at=t0))

    assert results == [ReceiptResult.RECORDED, ReceiptResult.APPLIED]
    assert (await fetch(backend, claimed.id)).status is MessageStatus.DELIVERED
    assert (await receipt_history(backend, claimed.id))[-2:] == ["DELIVRD", "UNDELIV"]


@pytest.mark.parametrize("step_s", [0.0, -5.0], ids=["same-instant", "clock-stepped-back"])
async def test_the_periodic_pass_applies_waiting_receipts_in_the_order_they_arrived(
    backend: Backend, step_s: float
) -> None:
    t0 = backend.now()
    for i, status in enumerate(["REJECTD", "DELIVRD", "UNDELIV"]):
        arrival = receipt(backend, "p-1", status, received_at=t0 + timedelta(seconds=i * step_s))
        assert await apply(backend, arrival) == [ReceiptResult.WAITING]
    other = receipt(backend, "p-2", "DELIVRD", received_at=t0 - timedelta(seconds=60))
    assert await apply(backend, other) == [ReceiptResult.WAITING]
    first = await sent_message(backend, "p-first")
    second = await sent_message(backend, "p-second")
    await backend.execute("UPDATE messages SET message_id = %s WHERE id = %s", ("p-1", first.id))
    await backend.execute("UPDATE messages SET message_id = %s WHERE id = %s", ("p-2", second.id))

    one = await backend.repository.apply_waiting(WAITING_MAX_AGE_S, limit=2)  # a pass cut short
    rest = await backend.repository.apply_waiting(WAITING_MAX_AGE_S, limit=2)

    # Oldest first, whatever their stamps: p-1's first two, then its last and p-2's.
    assert [(o.message_id, o.result) for o in one.applied] == [
        (first.id, ReceiptResult.APPLIED),
        (first.id, ReceiptResult.RECORDED),
    ]
    assert sorted((o.message_id, o.result) for o in rest.applied) == [
        (first.id, ReceiptResult.RECORDED),
        (second.id, ReceiptResult.APPLIED),
    ]
    got = await fetch(backend, first.id)
    assert (got.status, got.delivery_status) == (MessageStatus.UNDELIVERED, "rejected")
    assert (await fetch(backend, second.id)).status is MessageStatus.DELIVERED
    if step_s == 0.0:
        assert await receipt_history(backend, first.id) == ["REJECTD", "DELIVRD", "UNDELIV"]


async def test_a_waiting_receipt_older_than_a_day_is_dropped(backend: Backend) -> None:
    old = receipt(backend, "p-gone", "delivered", received_at=backend.now() - timedelta(hours=25))
    fresh = receipt(backend, "p-soon", "delivered")
    assert await apply(backend, old, fresh) == [ReceiptResult.WAITING, ReceiptResult.WAITING]

    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)

    assert [(r.provider_message_id, r.status) for r in report.dropped] == [("p-gone", "delivered")]
    await sent_message(backend, "p-soon", expect=MessageStatus.DELIVERED)  # the fresh one still waited
    await sent_message(backend, "p-gone", expect=MessageStatus.SENT)  # too late: it was dropped
    assert (await backend.repository.apply_waiting(WAITING_MAX_AGE_S)).applied == []


async def test_the_cache_hint_is_used_when_right_and_ignored_when_wrong(backend: Backend) -> None:
    first = await sent_message(backend, "p-1")
    second = await sent_message(backend, "p-2")

    right = await apply(backend, receipt(backend, "p-1", "delivered"), hints=[first.id])
    wrong = await apply(backend, receipt(backend, "p-2", "delivered"), hints=[first.id])  # a stale cache entry
    unknown = await apply(backend, receipt(backend, "p-3", "delivered"), hints=[second.id])

    assert (right, wrong, unknown) == ([ReceiptResult.APPLIED], [ReceiptResult.APPLIED], [ReceiptResult.WAITING])
    assert (await fetch(backend, second.id)).status is MessageStatus.DELIVERED


async def test_a_burst_of_receipts_in_one_batch(backend: Backend) -> None:
    messages = [await sent_message(backend, f"p-{i}") for i in range(40)]
    batch = [receipt(backend, f"p-{i}", "delivered" if i % 4 else "undelivered") for i in range(40)]
    batch += [receipt(backend, f"p-unknown-{i}", "delivered") for i in range(10)]

    results = await apply(backend, *batch)

    assert results == [ReceiptResult.APPLIED] * 40 + [ReceiptResult.WAITING] * 10
    counts = await backend.repository.counts()
    assert (counts[MessageStatus.DELIVERED], counts[MessageStatus.UNDELIVERED], counts[MessageStatus.SENT]) == (
        30, 10, 0
    )  # fmt: skip
    assert {(await fetch(backend, m.id)).status for m in messages} == {
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERED,
    }


async def test_a_burst_of_single_receipts_through_the_writers_keeps_each_messages_order(backend: Backend) -> None:
    # Requests of one receipt each, as a provider posts them, through the two writers: every
    # message keeps the state of its first receipt, the contrary one is kept as an event, and
    # two writes in the database at once never deadlock. (tests/unit/test_receipt_writer.py holds
    # the writes to show that a receipt for an id being written waits for that write.)
    from insider.clock import SystemClock
    from insider.receipt_writer import ReceiptWriter

    messages = [await sent_message(backend, f"p-{i}") for i in range(60)]
    writers = ReceiptWriter(backend.repository, None, backend.clock or SystemClock())
    first = ["undelivered" if i % 3 == 0 else "delivered" for i in range(60)]
    contrary = {"delivered": "undelivered", "undelivered": "delivered"}
    posts: list[list[Receipt]] = []
    for i in range(60):  # each message's first receipt, its contrary one at once after, and some twice
        posts += [[receipt(backend, f"p-{i}", first[i])], [receipt(backend, f"p-{i}", contrary[first[i]])]]
        if i % 5 == 0:
            posts.append([receipt(backend, f"p-{i}", first[i])])

    pending: list[asyncio.Future[list[ReceiptOutcome]]] = []
    async with writers.running():
        for post in posts:  # one request at a time, the writes already under way
            pending.append(asyncio.ensure_future(writers.submit(post)))
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*pending)

    expected: list[ReceiptResult] = []
    for i in range(60):
        expected += [ReceiptResult.APPLIED, ReceiptResult.RECORDED]  # a final status never moves back
        if i % 5 == 0:
            expected.append(ReceiptResult.DUPLICATE)
    assert [o[0].result for o in outcomes] == expected
    for i, message in enumerate(messages):
        assert (await fetch(backend, message.id)).status.value == first[i]
    history = await backend.repository.events(messages[0].id)
    assert [(e.kind, e.outcome) for e in history] == [
        ("attempt", "sent"),
        ("receipt", "undelivered"),
        ("receipt", "delivered"),
    ]


async def test_the_history_has_every_attempt_and_receipt_oldest_first(backend: Backend) -> None:
    repository = backend.repository
    message = await repository.enqueue(PHONE, "retried")
    t0 = backend.now()
    [first] = await repository.claim(1, 30.0)
    await repository.resolve(
        [
            Resolution(
                first.id,
                first.claim_token,
                MessageStatus.PENDING,
                last_error="HTTP 503: busy",
                retry_in_s=0.0,
                attempt=Attempt(t0, "retry", 1, 503, 40.0, error="HTTP 503: busy"),
            )
        ]
    )
    [second] = await repository.claim(1, 30.0)
    t1 = t0 + timedelta(seconds=1)
    await repository.resolve(
        [
            Resolution(
                second.id,
                second.claim_token,
                MessageStatus.SENT,
                sent_at=t1,
                message_id="p-9",
                attempt=Attempt(t1, "sent", 2, 202, 25.0, provider_message_id="p-9"),
            )
        ]
    )
    await apply(backend, receipt(backend, "p-9", "delivered", received_at=t1 + timedelta(seconds=2)))

    events = await repository.events(message.id)

    assert [(e.kind, e.outcome, e.attempt, e.status_code, e.provider_message_id) for e in events] == [
        ("attempt", "retry", 1, 503, None),
        ("attempt", "sent", 2, 202, "p-9"),
        ("receipt", "delivered", None, None, "p-9"),
    ]
    assert [e.at for e in events] == [t0, t1, t1 + timedelta(seconds=2)]
    assert (events[0].duration_ms, events[0].error) == (40.0, "HTTP 503: busy")
    assert await repository.events(message.id + 100) == []


async def test_old_events_are_deleted_in_small_batches(backend: Backend) -> None:
    repository = backend.repository
    old = backend.now() - timedelta(days=40)
    for i in range(5):
        await repository.enqueue(PHONE, f"m{i}")
    claimed = await repository.claim(5, 30.0)
    await repository.resolve(
        [
            Resolution(m.id, m.claim_token, MessageStatus.FAILED, last_error="x", attempt=Attempt(old, "failed", 1))
            for m in claimed[:3]
        ]
        + [
            Resolution(m.id, m.claim_token, MessageStatus.FAILED, attempt=Attempt(backend.now(), "failed", 1))
            for m in claimed[3:]
        ]
    )
    thirty_days = 30 * 86400.0

    assert await repository.prune_events(thirty_days, 2) == 2
    assert await repository.prune_events(thirty_days, 2) == 1
    assert await repository.prune_events(thirty_days, 2) == 0
    assert [len(await repository.events(m.id)) for m in claimed] == [0, 0, 0, 1, 1]


async def test_the_default_listing_shows_everything_accepted_and_filters_narrow_it(backend: Backend) -> None:
    repository = backend.repository
    a = await sent_message(backend, "p-a")
    b = await sent_message(backend, "p-b")
    c = await sent_message(backend, "p-c")
    await repository.enqueue(PHONE, "still pending")
    await apply(backend, receipt(backend, "p-a", "delivered"), receipt(backend, "p-b", "undelivered"))

    everything = await repository.list_messages(None, 10)
    first = await repository.list_messages(None, 2)
    assert first.next_cursor is not None
    rest = await repository.list_messages(None, 2, first.next_cursor)

    assert {m.id for m in everything.items} == {a.id, b.id, c.id}
    assert [m.id for m in first.items + rest.items] == [m.id for m in everything.items]
    assert [m.id for m in (await repository.list_messages(MessageStatus.DELIVERED, 10)).items] == [a.id]
    assert [m.id for m in (await repository.list_messages(MessageStatus.UNDELIVERED, 10)).items] == [b.id]
    assert [m.id for m in (await repository.list_messages(MessageStatus.SENT, 10)).items] == [c.id]


async def test_the_history_returns_the_first_events_up_to_a_limit(backend: Backend) -> None:
    message = await sent_message(backend, "p-1")
    statuses = [f"ENROUTE-{i}" for i in range(5)]  # a provider that keeps reporting
    await apply(backend, *(receipt(backend, "p-1", s, received_at=backend.now() + timedelta(seconds=i + 1))
                           for i, s in enumerate(statuses)))  # fmt: skip

    first = await backend.repository.events(message.id, limit=3)

    assert [(e.kind, e.receipt_status) for e in first] == [
        ("attempt", None),
        ("receipt", "ENROUTE-0"),
        ("receipt", "ENROUTE-1"),
    ]
    assert len(await backend.repository.events(message.id)) == 6


# Issue 13's fields and rules together with issue 14's (the two were built apart).


async def test_a_delivered_message_keeps_its_priority_and_segments_and_counts_its_segments(backend: Backend) -> None:
    repository = backend.repository
    message = await repository.enqueue(PHONE, "a" * 161, priority=9)  # GSM-7, 2 segments
    [claimed] = await repository.claim(1, 30.0)
    now = backend.now()
    await repository.resolve(
        [
            Resolution(
                claimed.id,
                claimed.claim_token,
                MessageStatus.SENT,
                sent_at=now,
                message_id="p-long",
                attempt=Attempt(now, "sent", claimed.attempts, 202, 3.0, provider_message_id="p-long"),
            )
        ]
    )
    assert await apply(backend, receipt(backend, "p-long", "delivered")) == [ReceiptResult.APPLIED]
    got = await fetch(backend, message.id)
    assert (got.status, got.priority, got.segments, got.delivery_status) == (
        MessageStatus.DELIVERED,
        9,
        2,
        "delivered",
    )
    # segmentsSent counts what the provider accepted, whatever its receipt said after.
    assert await repository.segments_sent() == 2


async def test_the_default_listing_of_one_recipient_holds_sent_delivered_and_undelivered(backend: Backend) -> None:
    repository = backend.repository
    mine = [await sent_message(backend, f"p-mine-{i}") for i in range(3)]
    assert await apply(backend, receipt(backend, "p-mine-0", "delivered"), receipt(backend, "p-mine-1", "UNDELIV")) == [
        ReceiptResult.APPLIED,
        ReceiptResult.APPLIED,
    ]
    other = await repository.enqueue("+905301234099", "theirs")
    [claimed] = await repository.claim(1, 30.0)
    assert claimed.id == other.id
    await repository.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.SENT, sent_at=backend.now(), message_id="p-x")]
    )

    first = await repository.list_messages(None, 2, to=PHONE)
    second = await repository.list_messages(None, 2, first.next_cursor, to=PHONE)
    listed = first.items + second.items
    assert {m.id for m in listed} == {m.id for m in mine} and len(listed) == 3
    assert {m.status for m in listed} == {MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.UNDELIVERED}
    assert second.next_cursor is None
    assert [m.id for m in (await repository.list_messages(None, 10, to="+905301234099")).items] == [other.id]
    assert [m.id for m in (await repository.list_messages(MessageStatus.SENT, 10, to=PHONE)).items] == [mine[2].id]


async def test_a_late_sent_never_overwrites_a_cancel_nor_writes_an_attempt(backend: Backend) -> None:
    repository = backend.repository
    message = await repository.enqueue(PHONE, "x")
    [claimed] = await repository.claim(1, 30.0)
    await repository.resolve(
        [Resolution(claimed.id, claimed.claim_token, MessageStatus.PENDING, retry_in_s=0.0, uncount_attempt=True)]
    )
    await repository.cancel(message.id)
    now = backend.now()
    await repository.resolve(
        [
            Resolution(
                claimed.id,
                claimed.claim_token,
                MessageStatus.SENT,
                sent_at=now,
                message_id="p-late",
                attempt=Attempt(now, "sent", claimed.attempts, 202, 1.0, provider_message_id="p-late"),
            )
        ]
    )
    got = await fetch(backend, message.id)
    assert (got.status, got.message_id) == (MessageStatus.CANCELLED, None)
    assert await repository.events(message.id) == []
