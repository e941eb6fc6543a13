"""ReceiptWriter on SQLite :memory: and a fake clock: one write for concurrent requests, the upkeep, outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from insider.adapters.memory import InMemorySentCache
from insider.clock import FakeClock
from insider.domain import Attempt, Message, MessageStatus, Resolution
from insider.metrics import Metrics
from insider.ports import RepositoryUnavailable, SentEntry
from insider.receipt_parsing import Receipt, ReceiptOutcome, ReceiptResult
from insider.receipt_upkeep import PRUNE_BATCH, WAITING_EVERY_S, ReceiptUpkeep
from insider.receipt_writer import ReceiptWriter
from tests.conftest import eventually
from tests.unit.support import ProbedRepository

PHONE = "+905301234001"


class CountingRepository(ProbedRepository):
    """Counts the receipt writes, and keeps the hints each was given."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.writes: list[int] = []
        self.hints: list[list[int | None]] = []

    async def apply_receipts(self, receipts: Sequence[Receipt], hints: Sequence[int | None]) -> list[ReceiptOutcome]:
        self.writes.append(len(receipts))
        self.hints.append(list(hints))
        await asyncio.sleep(0)  # as a real database would: other requests arrive meanwhile
        return await super().apply_receipts(receipts, hints)


Start = Callable[[ReceiptWriter], Awaitable[ReceiptWriter]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Runs a writer's lanes in tasks the test owns, until its end."""
    async with contextlib.AsyncExitStack() as stack:

        async def run(writer: ReceiptWriter) -> ReceiptWriter:
            return await stack.enter_async_context(writer.running())

        yield run


@pytest.fixture
async def counting(clock: FakeClock) -> AsyncIterator[CountingRepository]:
    repository = CountingRepository(clock)
    yield repository
    await repository.close()


async def sent(repository: ProbedRepository, clock: FakeClock, n: int) -> list[Message]:
    for i in range(n):
        await repository.enqueue(PHONE, f"m{i}")
    claimed = await repository.claim(n, 30.0)
    await repository.resolve(
        [
            Resolution(m.id, m.claim_token, MessageStatus.SENT, sent_at=clock.now(), message_id=f"p-{m.id}")
            for m in claimed
        ]
    )
    return claimed


async def test_concurrent_requests_share_one_write(
    counting: CountingRepository, clock: FakeClock, start: Start
) -> None:
    messages = await sent(counting, clock, 30)
    receipts = await start(ReceiptWriter(counting, None, clock))

    results = await asyncio.gather(
        *(receipts.submit([Receipt(f"p-{m.id}", "delivered", clock.now())]) for m in messages)
    )

    assert [r[0].result for r in results] == [ReceiptResult.APPLIED] * 30
    assert [r[0].message_id for r in results] == [m.id for m in messages]  # each request gets its own outcome
    assert len(counting.writes) < 30 and sum(counting.writes) == 30  # a lone first write, then the rest together


class GatedRepository(ProbedRepository):
    """Holds every receipt write until released, and records what each one held."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.writes: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gates: list[asyncio.Event] = []

    async def apply_receipts(self, receipts: Sequence[Receipt], hints: Sequence[int | None]) -> list[ReceiptOutcome]:
        self.writes.append([r.provider_message_id for r in receipts])
        gate = asyncio.Event()
        self.gates.append(gate)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await gate.wait()
            return await super().apply_receipts(receipts, hints)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def gated(clock: FakeClock) -> AsyncIterator[GatedRepository]:
    repository = GatedRepository(clock)
    yield repository
    await repository.close()


async def test_the_next_batch_is_written_while_one_is_in_the_database(
    gated: GatedRepository, clock: FakeClock, start: Start
) -> None:
    # One writer left the database idle while requests were answered, and the service idle
    # while the database wrote: a burst moved in lockstep (docs/performance.md).
    first_message, *others = await sent(gated, clock, 5)
    receipts = await start(ReceiptWriter(gated, None, clock))
    first = asyncio.ensure_future(receipts.submit([Receipt(f"p-{first_message.id}", "delivered", clock.now())]))
    await eventually(lambda: gated.in_flight == 1, what="the first write in the database")
    rest = [asyncio.ensure_future(receipts.submit([Receipt(f"p-{m.id}", "delivered", clock.now())])) for m in others]
    await eventually(lambda: gated.in_flight == 2, what="two writes in the database")

    assert gated.writes == [[f"p-{first_message.id}"], [f"p-{m.id}" for m in others]]  # the four together, at once
    for gate in gated.gates:
        gate.set()
    results = await asyncio.gather(first, *rest)

    assert [r[0].result for r in results] == [ReceiptResult.APPLIED] * 5
    assert gated.most_in_flight == 2


async def test_never_more_than_two_writes_at_once(gated: GatedRepository, clock: FakeClock, start: Start) -> None:
    messages = await sent(gated, clock, 12)
    receipts = await start(ReceiptWriter(gated, None, clock))
    submit = []
    for m in messages:  # one at a time, each while the writes are held
        submit.append(asyncio.ensure_future(receipts.submit([Receipt(f"p-{m.id}", "delivered", clock.now())])))
        await eventually(lambda: gated.in_flight == min(2, len(submit)), what="the writes held")
    assert len(gated.writes) == 2

    while not all(f.done() for f in submit):
        for gate in gated.gates:
            gate.set()
        await asyncio.sleep(0)

    assert gated.most_in_flight == 2
    assert sorted(i for w in gated.writes for i in w) == sorted(f"p-{m.id}" for m in messages)
    assert all(f.result()[0].result is ReceiptResult.APPLIED for f in submit)


async def test_a_receipt_for_an_id_being_written_waits_for_that_write(
    gated: GatedRepository, clock: FakeClock, start: Start
) -> None:
    # The same message's receipts are applied in the order they came: never in two writes at once.
    first_message, other = await sent(gated, clock, 2)
    receipts = await start(ReceiptWriter(gated, None, clock))
    first = asyncio.ensure_future(receipts.submit([Receipt(f"p-{first_message.id}", "undelivered", clock.now())]))
    await eventually(lambda: len(gated.writes) == 1, what="the first write")
    later = asyncio.ensure_future(receipts.submit([Receipt(f"p-{first_message.id}", "delivered", clock.now())]))
    unrelated = asyncio.ensure_future(receipts.submit([Receipt(f"p-{other.id}", "delivered", clock.now())]))
    await eventually(lambda: len(gated.writes) == 2, what="the second write")

    assert gated.writes == [[f"p-{first_message.id}"], [f"p-{other.id}"]]  # the later one for it waits
    gated.gates[1].set()
    assert (await unrelated)[0].result is ReceiptResult.APPLIED
    assert not later.done()
    gated.gates[0].set()
    await eventually(lambda: len(gated.writes) == 3, what="the held receipt's write")
    gated.gates[2].set()

    assert (await first)[0].result is ReceiptResult.APPLIED
    assert (await later)[0].result is ReceiptResult.RECORDED  # after the first: a final status never moves back
    message = await gated.get(first_message.id)
    assert message is not None and message.status is MessageStatus.UNDELIVERED


async def test_finishing_writes_what_is_queued_then_the_lanes_end(gated: GatedRepository, clock: FakeClock) -> None:
    one, two = await sent(gated, clock, 2)
    receipts = ReceiptWriter(gated, None, clock)
    lanes = contextlib.AsyncExitStack()
    await lanes.enter_async_context(receipts.running())
    first = asyncio.ensure_future(receipts.submit([Receipt(f"p-{one.id}", "delivered", clock.now())]))
    await eventually(lambda: gated.in_flight == 1, what="the first write in the database")
    second = asyncio.ensure_future(receipts.submit([Receipt(f"p-{two.id}", "delivered", clock.now())]))
    await eventually(lambda: gated.in_flight == 2, what="two writes in the database")

    closing = asyncio.ensure_future(lanes.aclose())
    await clock.settle()
    with pytest.raises(RepositoryUnavailable, match="shutting down"):  # asked to finish: nothing new is taken
        await receipts.submit([Receipt(f"p-{one.id}", "undelivered", clock.now())])
    gated.gates[0].set()
    await eventually(first.done, what="the first request's answer")
    await clock.settle()
    assert not closing.done()  # the second write is still in the database
    gated.gates[1].set()
    await closing

    assert second.done() and second.result()[0].result is ReceiptResult.APPLIED


async def test_a_request_with_no_lane_running_is_refused_at_once(
    counting: CountingRepository, clock: FakeClock
) -> None:
    receipts = ReceiptWriter(counting, None, clock)
    with pytest.raises(RepositoryUnavailable, match="not being written"):
        await receipts.submit([Receipt("p-1", "delivered", clock.now())])
    assert counting.writes == []


async def test_the_cache_gives_the_hint_and_metrics_count_deliveries(
    counting: CountingRepository, clock: FakeClock, start: Start
) -> None:
    [message] = await sent(counting, clock, 1)
    cache = InMemorySentCache(clock=clock)
    await cache.remember([SentEntry(f"p-{message.id}", clock.now(), message.id)])
    metrics = Metrics()
    receipts = await start(ReceiptWriter(counting, cache, clock, observer=metrics))
    await clock.advance(4)

    [outcome] = await receipts.submit([Receipt(f"p-{message.id}", "DELIVRD", clock.now())])

    assert outcome.result is ReceiptResult.APPLIED and cache.lookups == 1
    text = metrics.exposition().decode()
    assert "insider_messages_delivered_total 1.0" in text
    assert 'insider_delivery_seconds_bucket{le="5.0"} 1.0' in text


async def test_a_cache_that_fails_is_skipped_for_a_while(
    counting: CountingRepository, clock: FakeClock, start: Start
) -> None:
    messages = await sent(counting, clock, 3)
    cache = InMemorySentCache(clock=clock)
    cache.available = False
    receipts = await start(ReceiptWriter(counting, cache, clock))

    with capture_logs() as logs:
        first = await receipts.submit([Receipt(f"p-{messages[0].id}", "delivered", clock.now())])
        second = await receipts.submit([Receipt(f"p-{messages[1].id}", "delivered", clock.now())])
    cache.available = True
    await clock.advance(6)
    third = await receipts.submit([Receipt(f"p-{messages[2].id}", "delivered", clock.now())])

    assert [r[0].result for r in (first, second, third)] == [ReceiptResult.APPLIED] * 3
    assert sum(1 for e in logs if "cache lookup failed" in e["event"]) == 1
    assert cache.lookups == 2  # the failed one, then the one after the pause


async def test_a_database_outage_fails_the_request_and_the_next_one_works(
    counting: CountingRepository, clock: FakeClock, start: Start
) -> None:
    [message] = await sent(counting, clock, 1)
    receipts = await start(ReceiptWriter(counting, None, clock))
    counting.available = False

    with pytest.raises(RepositoryUnavailable):
        await receipts.submit([Receipt(f"p-{message.id}", "delivered", clock.now())])
    counting.available = True

    [outcome] = await receipts.submit([Receipt(f"p-{message.id}", "delivered", clock.now())])
    assert outcome.result is ReceiptResult.APPLIED


async def test_the_upkeep_drops_receipts_a_day_old_with_a_log_line_and_prunes_old_events(
    repo: ProbedRepository, clock: FakeClock, start: Start
) -> None:
    receipts = await start(ReceiptWriter(repo, None, clock))
    upkeep = ReceiptUpkeep(repo, clock, retention_s=30 * 86400.0)
    await receipts.submit([Receipt("p-never", "delivered", clock.now() - timedelta(hours=23, minutes=59, seconds=58))])
    old = clock.now() - timedelta(days=31)
    for i in range(PRUNE_BATCH + 5):
        repo.add(PHONE, f"m{i}")
    claimed = await repo.claim(PRUNE_BATCH + 5, 30.0)
    await repo.resolve(
        [Resolution(m.id, m.claim_token, MessageStatus.FAILED, attempt=Attempt(old, "failed", 1)) for m in claimed]
    )

    with capture_logs() as logs:
        loops = [asyncio.create_task(upkeep.run_waiting()), asyncio.create_task(upkeep.run_retention())]
        await clock.advance(0)
        assert await repo.events(claimed[0].id) == []  # pruned at once, in batches
        assert not [e for e in logs if e["event"].startswith("receipt dropped")]  # not a day old yet
        await clock.advance(WAITING_EVERY_S)  # now it is, and still no message has its id
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    dropped = [e for e in logs if e["event"].startswith("receipt dropped")]
    assert [(e["provider_message_id"], e["log_level"]) for e in dropped] == [("p-never", "warning")]
    assert any(e["event"] == "events past retention deleted" and e["count"] == PRUNE_BATCH + 5 for e in logs)


async def test_the_upkeep_survives_a_database_outage_with_one_log_line(
    repo: ProbedRepository, clock: FakeClock
) -> None:
    upkeep = ReceiptUpkeep(repo, clock)
    repo.available = False
    with capture_logs() as logs:
        loop = asyncio.create_task(upkeep.run_waiting())
        for _ in range(5):
            await clock.advance(WAITING_EVERY_S)
        repo.available = True
        await clock.advance(WAITING_EVERY_S)
        assert not loop.done()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert sum(1 for e in logs if e["event"].startswith("receipt upkeep skipped")) == 1


class PoisonedRepository(CountingRepository):
    """A write holding a receipt for ``p-poison`` fails (as a receipt the database cannot store would)."""

    async def apply_receipts(self, receipts: Sequence[Receipt], hints: Sequence[int | None]) -> list[ReceiptOutcome]:
        if any(r.provider_message_id == "p-poison" for r in receipts):
            self.writes.append(len(receipts))
            raise ValueError("cannot store that one")
        return await super().apply_receipts(receipts, hints)


async def test_a_receipt_that_cannot_be_written_fails_alone(clock: FakeClock, start: Start) -> None:
    repository = PoisonedRepository(clock)
    try:
        messages = await sent(repository, clock, 9)
        receipts = await start(ReceiptWriter(repository, None, clock))
        posts = [[Receipt(f"p-{m.id}", "delivered", clock.now())] for m in messages]
        posts.insert(5, [Receipt("p-poison", "delivered", clock.now())])

        with capture_logs() as logs:
            results = await asyncio.gather(*(receipts.submit(post) for post in posts), return_exceptions=True)

        assert [type(r).__name__ if isinstance(r, BaseException) else r[0].result for r in results] == (
            [ReceiptResult.APPLIED] * 5 + [ReceiptResult.FAILED] + [ReceiptResult.APPLIED] * 4
        )
        assert repository.writes[0] == 10  # all ten in one write, then its halves apart, down to the bad receipt
        assert [
            (e["event"], e["log_level"], e["provider_message_id"]) for e in logs if "not written" in e["event"]
        ] == [("receipt not written", "error", "p-poison")]
        for message in messages:
            got = await repository.get(message.id)
            assert got is not None and got.status is MessageStatus.DELIVERED
    finally:
        await repository.close()


async def test_a_receipt_that_cannot_be_written_fails_alone_within_its_own_request(
    clock: FakeClock, start: Start
) -> None:
    # A provider posts many receipts in one request: the one that cannot be stored is answered
    # for itself, and the others of its request are applied (a 500 would have the provider post
    # them all again, for ever).
    repository = PoisonedRepository(clock)
    try:
        one, two = await sent(repository, clock, 2)
        receipts = await start(ReceiptWriter(repository, None, clock))
        post = [
            Receipt(f"p-{one.id}", "delivered", clock.now()),
            Receipt("p-poison", "delivered", clock.now()),
            Receipt(f"p-{two.id}", "undelivered", clock.now()),
        ]

        outcomes = await receipts.submit(post)

        assert [o.result for o in outcomes] == [ReceiptResult.APPLIED, ReceiptResult.FAILED, ReceiptResult.APPLIED]
        assert [o.message_id for o in outcomes] == [one.id, None, two.id]
        got = [await repository.get(m.id) for m in (one, two)]
        assert [m.status for m in got if m is not None] == [MessageStatus.DELIVERED, MessageStatus.UNDELIVERED]
    finally:
        await repository.close()


async def test_a_database_outage_still_fails_every_request_of_the_write(
    counting: CountingRepository, clock: FakeClock, start: Start
) -> None:
    messages = await sent(counting, clock, 4)
    receipts = await start(ReceiptWriter(counting, None, clock))
    counting.available = False

    results = await asyncio.gather(
        *(receipts.submit([Receipt(f"p-{m.id}", "delivered", clock.now())]) for m in messages), return_exceptions=True
    )

    assert all(isinstance(r, RepositoryUnavailable) for r in results)
    assert counting.writes == [4]  # one write, not written again apart: the database is down for all


@pytest.mark.parametrize("cached_id", [2**63, 10**20, 0, -3])
async def test_a_cached_id_that_cannot_be_ours_is_no_hint_and_fails_no_other_receipt(
    counting: CountingRepository, clock: FakeClock, cached_id: int, start: Start
) -> None:
    messages = await sent(counting, clock, 4)
    cache = InMemorySentCache(clock=clock)
    await cache.remember([SentEntry(f"p-{m.id}", clock.now(), m.id) for m in messages])
    await cache.remember([SentEntry(f"p-{messages[1].id}", clock.now(), cached_id)])  # a poisoned entry
    receipts = await start(ReceiptWriter(counting, cache, clock))

    results = await asyncio.gather(
        *(receipts.submit([Receipt(f"p-{m.id}", "delivered", clock.now())]) for m in messages)
    )

    assert [(r[0].result, r[0].message_id) for r in results] == [(ReceiptResult.APPLIED, m.id) for m in messages]
    # One write; the poisoned id was no hint (the database's index found that message), the others were.
    assert counting.hints == [[messages[0].id, None, messages[2].id, messages[3].id]]
