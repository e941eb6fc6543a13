"""The suppression list on every SQL adapter (SQLite and PostgreSQL): added or updated (never both),
taken off, read one at a time and a page at a time by keyset, imported all or none; what it does
to messages queued before, after and already sent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from insider.adapters.cursor import decode_suppression_cursor, encode_cursor, encode_suppression_cursor
from insider.adapters.memory import InMemorySmsClient
from insider.clock import SystemClock
from insider.domain import Category, MessageStatus, NewMessage, UnstorableText
from insider.ports import InvalidCursor, SuppressionList
from insider.sender import BatchSender, SenderOptions
from insider.suppressions import NewSuppression, Scope, Suppression, check_suppression
from tests.conftest import eventually
from tests.integration import test_message_features_contract as features
from tests.integration.test_message_features_contract import OTHER, PHONE, Backend

sqlite_backend = features.sqlite_backend
postgres_backend = features.postgres_backend
backend = features.backend


def entry(phone: str = PHONE, **more: object) -> NewSuppression:
    return check_suppression(phone, **more)  # type: ignore[arg-type]


async def put(repo: SuppressionList, phone: str = PHONE, **more: object) -> tuple[Suppression, bool]:
    """A number put on the list as a person would: checked first."""
    e = entry(phone, **more)
    return await repo.suppress(e.phone, e.scope, e.reason, e.source)


def number(i: int) -> str:
    return f"+9053012{i:05d}"


async def test_suppress_adds_then_updates_keeping_the_first_time(backend: Backend) -> None:
    repo = backend.repository
    assert isinstance(repo, SuppressionList)
    first, added = await put(repo, scope="commercial", reason="asked by phone", source="api")
    assert added is True
    assert (first.phone, first.scope, first.reason, first.source) == (PHONE, Scope.COMMERCIAL, "asked by phone", "api")
    assert abs((first.created_at - backend.now()).total_seconds()) < 60
    await backend.advance(5)
    again, added = await put(repo, scope="all", reason="STOP", source="inbound")
    assert added is False
    assert (again.scope, again.reason, again.source, again.created_at) == (
        Scope.ALL,
        "STOP",
        "inbound",
        first.created_at,
    )
    assert await repo.get_suppression(PHONE) == again
    assert await repo.get_suppression(OTHER) is None
    assert await repo.count_suppressions() == 1


async def test_unsuppress_says_whether_the_number_was_on_the_list(backend: Backend) -> None:
    repo = backend.repository
    await put(repo)
    assert await repo.unsuppress(PHONE) is True
    assert await repo.unsuppress(PHONE) is False
    assert await repo.get_suppression(PHONE) is None
    assert await repo.count_suppressions() == 0


async def test_concurrent_suppressions_of_one_number_add_it_once(backend: Backend) -> None:
    repo = backend.repository
    results = await asyncio.gather(*(put(repo, reason=f"r{i}") for i in range(8)))
    assert sorted(added for _, added in results) == [False] * 7 + [True]
    assert await repo.count_suppressions() == 1


async def test_pages_follow_the_list_most_recent_first_and_never_repeat(backend: Backend) -> None:
    repo = backend.repository
    for i in range(7):
        await put(repo, number(i))
        await backend.advance(1)
    await repo.suppress_many([entry(number(i), source="import") for i in range(7, 12)])  # one time for all five
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await repo.list_suppressions(3, cursor)
        pages += 1
        seen += [s.phone for s in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 4
    assert len(seen) == len(set(seen)) == 12
    assert seen[5:] == [number(i) for i in reversed(range(7))]  # older ones, newest first
    assert sorted(seen[:5]) == [number(i) for i in range(7, 12)]
    # A page after an entry taken off meanwhile goes on from where it was.
    first = await repo.list_suppressions(2)
    assert first.next_cursor is not None
    await repo.unsuppress(first.items[-1].phone)
    after = await repo.list_suppressions(2, first.next_cursor)
    assert [s.phone for s in after.items] == seen[2:4]


async def test_a_number_alone_and_cursors_of_other_listings(backend: Backend) -> None:
    repo = backend.repository
    await repo.suppress_many([entry(number(i)) for i in range(3)])
    alone = await repo.list_suppressions(50, None, number(1))
    assert [s.phone for s in alone.items] == [number(1)] and alone.next_cursor is None
    assert (await repo.list_suppressions(50, None, OTHER)).items == []
    with pytest.raises(InvalidCursor):
        await repo.list_suppressions(10, encode_cursor(MessageStatus.PENDING, datetime.now(UTC), 1))
    for forged in ("x", "e30", encode_suppression_cursor(datetime.now(UTC), "905301234001") + "A" * 600):
        with pytest.raises(InvalidCursor):
            await repo.list_suppressions(10, forged)
    key, phone = decode_suppression_cursor(encode_suppression_cursor(datetime(2026, 1, 1, tzinfo=UTC), PHONE))
    assert phone == PHONE and key.year == 2026


async def test_an_import_is_one_transaction_and_the_last_entry_of_a_number_wins(backend: Backend) -> None:
    repo = backend.repository
    await put(repo, number(0), reason="first")
    then = (backend.now() - timedelta(days=30)).replace(microsecond=0)
    result = await repo.suppress_many(
        [
            entry(number(0), scope="commercial", reason="again", source="import"),
            entry(number(1), source="import", created_at=then),
            entry(number(2), source="import", reason="one"),
            entry(number(2), source="import", reason="two"),
        ]
    )
    assert (result.added, result.updated) == (2, 1)
    kept = await repo.get_suppression(number(1))
    assert kept is not None and kept.created_at == then  # carried over from an export
    two = await repo.get_suppression(number(2))
    assert two is not None and two.reason == "two"
    zero = await repo.get_suppression(number(0))
    assert zero is not None and (zero.scope, zero.reason) == (Scope.COMMERCIAL, "again")
    # One bad entry: nothing of the import is stored.
    bad = NewSuppression(number(9), Scope.ALL, "has a NUL \x00", "import")
    with pytest.raises(UnstorableText):
        await repo.suppress_many([entry(number(8)), bad])
    assert await repo.get_suppression(number(8)) is None
    assert await repo.suppress_many([]) == type(result)(0, 0)
    with pytest.raises(ValueError):
        await repo.suppress(number(7), "marketing")
    assert await repo.get_suppression(number(7)) is None


async def test_a_big_import_in_one_go(backend: Backend) -> None:
    repo = backend.repository
    result = await repo.suppress_many([entry(number(i), source="import") for i in range(25_000)])
    assert (result.added, result.updated) == (25_000, 0)
    assert await repo.count_suppressions() == 25_000


async def test_the_list_holds_back_queued_and_new_messages_but_not_what_was_sent(backend: Backend) -> None:
    repo = backend.repository
    clock = backend.clock or SystemClock()
    sms = InMemorySmsClient()
    sender = BatchSender(repo, sms, None, clock, SenderOptions(batch_size=10))
    (sent,) = (await repo.enqueue_many([NewMessage.of(PHONE, "sent before", category=Category.COMMERCIAL)])).messages
    await sender.run_batch()
    delay_s = 3600.0 if backend.clock is not None else 2.0  # PostgreSQL runs on real time
    later = backend.now() + timedelta(seconds=delay_s)
    (scheduled, code) = (
        await repo.enqueue_many(
            [
                NewMessage.of(PHONE, "sale tomorrow", category=Category.COMMERCIAL, send_at=later),
                NewMessage.of(PHONE, "your code", category=Category.TRANSACTIONAL),
            ]
        )
    ).messages
    await put(repo, scope="commercial", reason="no ads")
    (new,) = (await repo.enqueue_many([NewMessage.of(PHONE, "flash sale", category=Category.COMMERCIAL)])).messages
    assert (new.status, new.suppression_reason) == (MessageStatus.SUPPRESSED, "no ads")
    await sender.run_batch()
    assert [r.content for r in sms.requests] == ["sent before", "your code"]
    still = await repo.get(scheduled.id)
    assert still is not None and still.status is MessageStatus.PENDING  # checked when its time comes
    await put(repo, scope="commercial", reason="opt-out")  # the reason as it is then
    await backend.advance(delay_s)

    async def ended_at_its_time() -> bool:
        await sender.run_batch()
        current = await repo.get(scheduled.id)
        return current is not None and current.status is not MessageStatus.PENDING

    await eventually(ended_at_its_time, timeout_s=10.0, what="the scheduled message's time")
    ended = await repo.get(scheduled.id)
    assert ended is not None and (ended.status, ended.suppression_reason) == (MessageStatus.SUPPRESSED, "opt-out")
    assert [r.content for r in sms.requests] == ["sent before", "your code"]
    for kept in (sent, code):
        stored = await repo.get(kept.id)
        assert stored is not None and stored.status is MessageStatus.SENT and stored.suppression_reason is None


async def test_taken_off_the_list_a_number_gets_its_queued_messages(backend: Backend) -> None:
    repo = backend.repository
    sms = InMemorySmsClient()
    sender = BatchSender(repo, sms, None, backend.clock or SystemClock(), SenderOptions(batch_size=10))
    (ended,) = (await repo.enqueue_many([NewMessage.of(PHONE, "held", category=Category.COMMERCIAL)])).messages
    await put(repo)
    (held,) = (await repo.enqueue_many([NewMessage.of(PHONE, "suppressed at once")])).messages
    assert held.status is MessageStatus.SUPPRESSED
    assert await repo.unsuppress(PHONE)
    (free,) = (await repo.enqueue_many([NewMessage.of(PHONE, "after opt-in")])).messages
    await sender.run_batch()
    assert sorted(r.content for r in sms.requests) == ["after opt-in", "held"]
    again = await repo.get(held.id)
    assert again is not None and again.status is MessageStatus.SUPPRESSED  # an ended message stays ended
    assert ended.id != free.id
