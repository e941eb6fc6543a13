"""Consent on every SQL adapter (SQLite and PostgreSQL): a number on the suppression list is
marked `suppressed` by every way in and by the claim (consent withdrawn after queueing), never
sent, with the reason and a history entry; a confirmation reply is never held back; the
sender's gates put a message back to wait (not an attempt) or end it suppressed."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from insider.adapters.memory import InMemorySmsClient
from insider.clock import SystemClock
from insider.consent import CAP, SENDING_HOURS, Suppress, Verdict, Wait
from insider.domain import Category, Message, MessageStatus, NewMessage
from insider.ports import LoadedFile
from insider.sender import BatchSender, SenderOptions
from tests.integration import test_message_features_contract as features
from tests.integration.test_message_features_contract import LEASE_S, OTHER, PHONE, Backend

sqlite_backend = features.sqlite_backend
postgres_backend = features.postgres_backend
backend = features.backend

COMMERCIAL, TRANSACTIONAL = Category.COMMERCIAL, Category.TRANSACTIONAL


async def suppress(backend: Backend, phone: str, scope: str = "all", reason: str = "opt-out") -> None:
    """A row of the suppression list, as the suppressions API stores one."""
    if backend.sqlite_file is not None:
        with contextlib.closing(sqlite3.connect(backend.sqlite_file)) as lite, lite:
            lite.execute(
                "INSERT INTO insider_suppressions (phone, scope, reason, source, created_at)"
                " VALUES (?, ?, ?, 'test', ?)",
                (phone, scope, reason, backend.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
            )
        return
    assert backend.pool is not None
    async with backend.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO insider_suppressions (phone, scope, reason, source) VALUES (%s, %s, %s, 'test')",
            (phone, scope, reason),
        )


def new(content: str, category: Category = COMMERCIAL, to: str = PHONE, **more: object) -> NewMessage:
    return NewMessage.of(to, content, category=category, **more)  # type: ignore[arg-type]


async def test_every_way_in_marks_a_suppressed_number_at_once(backend: Backend) -> None:
    repo = backend.repository
    await suppress(backend, PHONE, "commercial")
    (sale, code, other) = (
        await repo.enqueue_many([new("sale"), new("code", TRANSACTIONAL), new("other", to=OTHER)])
    ).messages
    assert (sale.status, sale.suppression_reason) == (MessageStatus.SUPPRESSED, "opt-out")
    assert (code.status, code.suppression_reason) == (MessageStatus.PENDING, None)  # scope commercial only
    assert other.status is MessageStatus.PENDING
    assert await repo.load([new("bulk sale"), new("bulk code", TRANSACTIONAL)]) == 2
    async with repo.file_load() as load:
        await load.add([new("file sale"), new("file code", TRANSACTIONAL)])
        await load.publish(LoadedFile(uuid.uuid4().hex * 2, "f.csv", 3, 2, 0))
    suppressed = (await repo.list_messages(MessageStatus.SUPPRESSED, 10)).items
    assert sorted(m.content for m in suppressed) == ["bulk sale", "file sale", "sale"]
    assert {m.suppression_reason for m in suppressed} == {"opt-out"}
    counts = await repo.counts()
    assert counts[MessageStatus.SUPPRESSED] == 3 and counts[MessageStatus.PENDING] == 4


async def test_scope_all_suppresses_every_category_but_a_confirmation_reply(backend: Backend) -> None:
    repo = backend.repository
    await suppress(backend, PHONE, "all", "complaint")
    (code, reply) = (
        await repo.enqueue_many(
            [new("code", TRANSACTIONAL), new("You will get no more", TRANSACTIONAL, consent_reply=True)]
        )
    ).messages
    assert (code.status, code.suppression_reason) == (MessageStatus.SUPPRESSED, "complaint")
    assert (reply.status, reply.consent_reply) == (MessageStatus.PENDING, True)
    claimed = await repo.claim(10, LEASE_S)
    assert [m.id for m in claimed] == [reply.id] and claimed[0].status is MessageStatus.SENDING


async def test_a_suppression_after_queueing_ends_the_message_at_its_claim(backend: Backend) -> None:
    repo = backend.repository
    (sale, code) = (await repo.enqueue_many([new("sale"), new("code", TRANSACTIONAL)])).messages
    assert sale.status is MessageStatus.PENDING
    await suppress(backend, PHONE, "commercial")  # withdrawn after the sale was queued
    claimed = {m.id: m for m in await repo.claim(10, LEASE_S)}
    assert claimed[code.id].status is MessageStatus.SENDING
    gone = claimed[sale.id]
    assert (gone.status, gone.suppression_reason, gone.claim_token, gone.lease_expires_at) == (
        MessageStatus.SUPPRESSED,
        "opt-out",
        None,
        None,
    )
    assert gone.attempts == 0  # never an attempt
    stored = await repo.get(sale.id)
    assert stored is not None and stored.status is MessageStatus.SUPPRESSED
    [event] = await repo.events(sale.id)
    assert (event.outcome, event.error) == ("suppressed", "suppressed: opt-out")
    assert await repo.claim(10, LEASE_S) == []  # it never comes back


async def test_a_suppression_never_touches_what_was_sent(backend: Backend) -> None:
    repo = backend.repository
    (sale,) = (await repo.enqueue_many([new("sale")])).messages
    sms = InMemorySmsClient()
    await BatchSender(repo, sms, None, backend.clock or SystemClock(), SenderOptions()).run_batch()
    await suppress(backend, PHONE)
    stored = await repo.get(sale.id)
    assert stored is not None and stored.status is MessageStatus.SENT and stored.suppression_reason is None


class FixedGate:
    """A gate that answers what it was told, and records what it saw."""

    def __init__(self, verdicts: dict[str, Verdict]) -> None:
        self.verdicts = verdicts  # by content
        self.seen: list[list[str]] = []

    async def judge(self, messages: Sequence[Message], now: datetime) -> dict[int, Verdict]:
        self.seen.append([m.content for m in messages])
        return {m.id: self.verdicts[m.content] for m in messages if m.content in self.verdicts}


async def test_gates_hold_messages_back_in_order_without_counting_an_attempt(backend: Backend) -> None:
    repo = backend.repository
    clock = backend.clock or SystemClock()
    (night, over, fine) = (await repo.enqueue_many([new("night"), new("over"), new("fine")])).messages
    until = (backend.now() + timedelta(hours=5)).replace(microsecond=0)
    first = FixedGate({"night": Wait(until, SENDING_HOURS, "outside 08:00-21:00 in Europe/Istanbul")})
    second = FixedGate({"over": Suppress(CAP, "3 commercial messages in 24h already")})
    sms = InMemorySmsClient()
    sender = BatchSender(repo, sms, None, clock, SenderOptions(batch_size=10), gates=[first, second])
    report = await sender.run_batch()

    assert [r.content for r in sms.requests] == ["fine"]
    assert sorted(first.seen[0]) == ["fine", "night", "over"]
    assert sorted(second.seen[0]) == ["fine", "over"]  # what the first let through
    assert (report.sent, report.deferred, report.suppressed, report.retried) == (1, 1, 1, 0)
    waiting = await repo.get(night.id)
    assert waiting is not None
    assert (waiting.status, waiting.wait_reason, waiting.attempts) == (MessageStatus.PENDING, SENDING_HOURS, 0)
    assert waiting.waiting_until is not None and abs((waiting.waiting_until - until).total_seconds()) < 5
    [event] = await repo.events(night.id)
    assert (event.outcome, event.error) == ("deferred", "outside 08:00-21:00 in Europe/Istanbul")
    capped = await repo.get(over.id)
    assert capped is not None
    assert (capped.status, capped.suppression_reason, capped.attempts) == (MessageStatus.SUPPRESSED, CAP, 0)
    assert await repo.claim(10, LEASE_S) == []  # the waiting one is not due: the claim never reads it
    sent = await repo.get(fine.id)
    assert sent is not None and sent.status is MessageStatus.SENT and sent.wait_reason is None


async def test_a_message_known_to_wait_at_enqueue_shows_it_and_is_not_due(backend: Backend) -> None:
    repo = backend.repository
    until = (backend.now() + timedelta(hours=3)).replace(microsecond=0)
    waiting = dataclasses.replace(new("night"), wait_until=until, wait_reason=SENDING_HOURS)
    (stored,) = (await repo.enqueue_many([waiting])).messages
    assert (stored.status, stored.wait_reason, stored.waiting_until) == (MessageStatus.PENDING, SENDING_HOURS, until)
    assert await repo.claim(10, LEASE_S) == []


async def test_a_row_another_program_inserts_is_marked_on_postgresql_and_never_sent_on_either(backend: Backend) -> None:
    repo = backend.repository
    await suppress(backend, PHONE, "all")
    row_id = await backend.insert_like_go(PHONE, "from the Go service's clients")
    stored = await repo.get(row_id)
    assert stored is not None
    if backend.pool is not None:  # PostgreSQL: marked as it is inserted, whatever inserts it
        assert (stored.status, stored.suppression_reason) == (MessageStatus.SUPPRESSED, "opt-out")
    else:  # SQLite: insider's own inserts are marked; another program's row is ended by the claim
        assert stored.status is MessageStatus.PENDING
    claimed = await repo.claim(10, LEASE_S)
    assert all(m.status is MessageStatus.SUPPRESSED for m in claimed)
    final = await repo.get(row_id)
    assert final is not None and final.status is MessageStatus.SUPPRESSED
