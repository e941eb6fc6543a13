"""Sending hours on every SQL adapter (SQLite on a fake clock, PostgreSQL on real time): a message
marked at enqueue (one, a bulk load, a file) is stored waiting and not due; a claimed one outside
its hours is put back by the gate, not claimed again before its time, and sent after it, with one
``deferred`` event; the waiting are counted per reason through an index."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from insider.adapters.memory import InMemorySmsClient
from insider.clock import FakeClock
from insider.consent import SENDING_HOURS
from insider.domain import Category, MessageStatus, NewMessage, build_message
from insider.ports import LoadedFile, WaitingCounter
from insider.sender import BatchSender, SenderOptions
from insider.sending_hours import SendingHoursGate, SendingHoursPolicy, parse_sending_hours
from tests.conftest import eventually
from tests.integration import test_message_features_contract as features
from tests.integration.test_message_features_contract import LEASE_S, Backend

sqlite_backend = features.sqlite_backend
postgres_backend = features.postgres_backend
backend = features.backend

TURKEY = "+905301234001"
NEW_YORK = "+12125550123"
WAIT_S = 2.0  # the gate's wait: real seconds on PostgreSQL, whose claim reads the database's clock


def policy_for(window: str, *categories: str) -> SendingHoursPolicy:
    hours = parse_sending_hours(window)
    assert hours is not None
    return SendingHoursPolicy(hours, categories or ("commercial",), "UTC")


async def test_a_claimed_message_outside_its_hours_waits_then_goes(backend: Backend) -> None:
    repo = backend.repository
    # The sender's clock stands WAIT_S before 08:00 in Istanbul (05:00 UTC). On SQLite the
    # repository shares it; on PostgreSQL only the gate reads it, and the wait it decides
    # (WAIT_S) is counted from the database's clock.
    opening = datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    if backend.clock is not None:
        clock = backend.clock
        await clock.advance((opening - clock.now()).total_seconds() - WAIT_S)
    else:
        clock = FakeClock(opening - timedelta(seconds=WAIT_S))
    (message,) = (await repo.enqueue_many([NewMessage.of(TURKEY, "Sale", category=Category.COMMERCIAL)])).messages
    sms = InMemorySmsClient()
    gate = SendingHoursGate(policy_for("08:00-21:00"))
    sender = BatchSender(repo, sms, None, clock, SenderOptions(batch_size=10), gates=[gate])

    report = await sender.run_batch()
    assert (report.claimed, report.deferred, report.sent) == (1, 1, 0)
    held = await repo.get(message.id)
    assert held is not None
    assert (held.status, held.wait_reason, held.attempts) == (MessageStatus.PENDING, SENDING_HOURS, 0)
    assert held.waiting_until is not None
    if backend.clock is not None:
        assert held.waiting_until == opening
    again = await sender.run_batch()  # at once: not due, so not even claimed
    assert (again.claimed, sms.requests) == (0, [])

    await clock.advance(WAIT_S)

    async def sent() -> bool:
        await sender.run_batch()
        return bool(sms.requests)

    await eventually(sent, timeout_s=WAIT_S + 10, what="the message to go once its hours open")
    assert [r.content for r in sms.requests] == ["Sale"]
    done = await repo.get(message.id)
    assert done is not None and (done.status, done.attempts, done.wait_reason) == (MessageStatus.SENT, 1, None)
    outcomes = [e.outcome for e in await repo.events(message.id)]
    assert outcomes == ["deferred", "sent"]  # one deferral: no event piled up while it waited
    [deferred] = [e for e in await repo.events(message.id) if e.outcome == "deferred"]
    assert deferred.error is not None and "08:00-21:00: 07:59 in Europe/Istanbul" in deferred.error


async def test_messages_marked_at_enqueue_wait_by_every_way_in(backend: Backend) -> None:
    repo = backend.repository
    now = backend.now()
    # A window that New York's clock reaches in two hours: it is outside now, whatever the time.
    hour = now.astimezone(ZoneInfo("America/New_York")).hour
    policy = policy_for(f"{(hour + 2) % 24:02d}:00-{(hour + 4) % 24:02d}:00")
    until = policy.decide(NEW_YORK, now).until
    assert until is not None and until > now

    def marked(content: str, category: Category = Category.COMMERCIAL) -> NewMessage:
        return build_message(
            NEW_YORK,
            content,
            send_at=None,
            priority=5,
            valid_until=None,
            now=now,
            max_length=160,
            category=category,
            sending_hours=policy,
        )

    one, code = (await repo.enqueue_many([marked("one"), marked("code", Category.TRANSACTIONAL)])).messages
    assert (one.status, one.wait_reason, one.waiting_until) == (MessageStatus.PENDING, SENDING_HOURS, until)
    assert (code.wait_reason, code.waiting_until) == (None, None)  # transactional: no hours by default
    assert await repo.load([marked("bulk")]) == 1
    async with repo.file_load() as load:
        await load.add([marked("file")])
        await load.publish(LoadedFile(uuid.uuid4().hex * 2, "f.csv", 2, 1, 0))
    waiting = [m for m in (await repo.list_messages(MessageStatus.PENDING, 10)).items if m.wait_reason]
    assert sorted(m.content for m in waiting) == ["bulk", "file", "one"]
    assert {m.waiting_until for m in waiting} == {until}

    assert [m.content for m in await repo.claim(10, LEASE_S)] == ["code"]  # the others are not due
    assert await repo.claim(10, LEASE_S) == []
    for m in waiting:
        assert await repo.events(m.id) == []
    assert isinstance(repo, WaitingCounter)
    assert await repo.waiting_counts() == {"sending-hours": 3, "cap": 0}


@pytest.mark.postgres
async def test_postgresql_counts_the_waiting_through_their_index(postgres_backend: Backend) -> None:
    """Without the partial index, counting the few waiting messages would read every pending row."""
    from insider.adapters.postgres import _QUERIES as queries  # the package's own named queries

    assert postgres_backend.pool is not None
    async with postgres_backend.pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        cur = await conn.execute("EXPLAIN " + queries["waiting_counts"])
        plan = "\n".join(str(row[0]) for row in await cur.fetchall())
    assert "messages_waiting_idx" in plan, plan
