"""``memory_repository``: the SQLite repository on a private :memory: database, for tests and embedding."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from insider import BatchSender, SenderOptions, Supervisor
from insider.adapters.memory import InMemorySmsClient
from insider.adapters.sqlite import memory_repository
from insider.clock import FakeClock
from insider.domain import MessageStatus, Resolution
from insider.ports import RepositoryUnavailable
from tests.unit.support import ProbedRepository


async def test_the_readme_embedding_example_sends_on_a_memory_repository() -> None:
    clock = FakeClock()  # the README passes a SystemClock; this one lets the test drive time
    sms = InMemorySmsClient()
    async with memory_repository(clock) as repository:
        message = await repository.enqueue("+15555550100", "Hello from my program")
        sender = BatchSender(repository, sms, None, clock, SenderOptions(batch_size=10))
        async with Supervisor(sender, repository, interval_s=1.0, clock=clock) as supervisor:
            await supervisor.start()
            await clock.settle()
            assert [r.content for r in sms.requests] == ["Hello from my program"]
            sent = await repository.get(message.id)
            assert sent is not None and sent.status is MessageStatus.SENT
            assert sent.sent_at == clock.now()  # the repository's "now" is the clock's


async def test_each_memory_repository_is_a_database_of_its_own_and_gone_on_exit() -> None:
    async with memory_repository() as first, memory_repository() as second:
        await first.enqueue("+15555550100", "only in the first")
        assert (await first.counts())[MessageStatus.PENDING] == 1
        assert (await second.counts())[MessageStatus.PENDING] == 0
    with pytest.raises(RepositoryUnavailable):
        await first.counts()


async def test_leases_and_retries_run_on_the_injected_clock() -> None:
    clock = FakeClock()
    async with memory_repository(clock) as repository:
        message = await repository.enqueue("+15555550100", "x")
        [claimed] = await repository.claim(1, lease_s=30)
        assert claimed.lease_expires_at == clock.now() + timedelta(seconds=30)
        assert await repository.claim(1, lease_s=30) == []

        await clock.advance(30)

        [again] = await repository.claim(1, lease_s=30)
        assert (again.id, again.attempts, again.idempotency_key) == (message.id, 2, message.idempotency_key)


async def test_the_probed_repository_inserts_any_column_as_another_program_would(clock: FakeClock) -> None:
    repository = ProbedRepository(clock)
    try:
        later = clock.now() + timedelta(minutes=5)
        waiting = repository.add(
            "+15555550100", "retry later", attempts=2, next_attempt_at=later, last_error="HTTP 503"
        )
        failed = repository.add("+15555550101", "given up", status=MessageStatus.FAILED)

        assert (waiting.attempts, waiting.next_attempt_at, waiting.last_error) == (2, later, "HTTP 503")
        assert failed.status is MessageStatus.FAILED
        assert repository.rows == [waiting, failed]
        assert await repository.claim(5, lease_s=30) == []  # neither is due
        repository.available = False
        with pytest.raises(RepositoryUnavailable):
            await repository.claim(5, lease_s=30)
        assert repository.claims == [[]]
    finally:
        await repository.close()


async def test_every_time_the_sqlite_repository_writes_comes_from_its_clock() -> None:
    clock = FakeClock(datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC))  # far from the real now
    async with memory_repository(clock) as repository:
        message = await repository.enqueue("+15555550100", "x")
        assert message.created_at == clock.now()

        await clock.advance(10)
        [claimed] = await repository.claim(1, lease_s=30)
        assert claimed.lease_expires_at == clock.now() + timedelta(seconds=30)

        await clock.advance(5)
        await repository.resolve([Resolution(message.id, claimed.claim_token, MessageStatus.PENDING, retry_in_s=60)])
        waiting = await repository.get(message.id)
        assert waiting is not None and waiting.next_attempt_at == clock.now() + timedelta(seconds=60)
        await clock.advance(59)
        assert await repository.claim(1, lease_s=30) == []  # due in one second of fake time
        await clock.advance(1)
        assert [m.id for m in await repository.claim(1, lease_s=30)] == [message.id]

        assert await repository.acquire_slot("batch", 120) == 0.0
        assert 0 < await repository.acquire_slot("batch", 120) <= 120
        await clock.advance(120)
        assert await repository.acquire_slot("batch", 120) == 0.0

        def stamps(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT updated_at FROM messages UNION ALL SELECT applied_at FROM insider_schema_migrations"
            )
            return [row[0] for row in rows]

        assert all(stamp.startswith("2031-05-04") for stamp in await repository.database.run(stamps))


async def test_the_slot_keeps_its_grid_to_the_microsecond_and_restarts_from_now_when_late() -> None:
    clock = FakeClock(datetime(2031, 5, 4, 12, 0, 0, 123_456, tzinfo=UTC))
    async with memory_repository(clock) as repository:
        assert await repository.acquire_slot("batch", 0.25) == 0.0  # new: taken at once
        await clock.advance(0.1)
        assert await repository.acquire_slot("batch", 0.25) == pytest.approx(0.15)
        await clock.advance(0.16)  # 10 ms late, within the tolerance (5% of 0.25 s): counts as sent when due
        assert await repository.acquire_slot("batch", 0.25) == 0.0
        await clock.advance(0.24)  # on the grid: due 0.5 s after the first
        assert await repository.acquire_slot("batch", 0.25) == 0.0
        await clock.advance(3600)  # late: the grid restarts from now, no catch-up burst
        assert await repository.acquire_slot("batch", 0.25) == 0.0
        assert await repository.acquire_slot("batch", 0.25) == pytest.approx(0.25)
        # Restarted with a longer interval: due one current interval after the last batch.
        assert await repository.acquire_slot("batch", 60) == pytest.approx(60)

        def last_at(conn: sqlite3.Connection) -> str:
            return str(conn.execute("SELECT last_at FROM insider_slots WHERE name = 'batch'").fetchone()[0])

        assert await repository.database.run(last_at) == "2031-05-04T13:00:00.623456Z"
