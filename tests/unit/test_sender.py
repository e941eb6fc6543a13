"""One batch (BatchSender.run_batch) on the in-memory adapters and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest

from insider.adapters.memory import InMemorySentCache, InMemorySmsClient, Request
from insider.clock import FakeClock
from insider.domain import Message, MessageStatus, Outcome, SendResult
from insider.ports import RepositoryUnavailable, SentEntry
from insider.providers.config import parse_providers
from insider.providers.dispatch import Dispatcher, runtime
from insider.providers.routing import Router
from insider.sender import MAX_CLAIM_ROUNDS, BatchSender, SenderOptions
from tests.conftest import eventually
from tests.unit.support import HeldProvider, ProbedRepository, accepted

PHONE = "+905551234567"
TURKISH = "ğüşıöçĞÜŞİÖÇ"


def turkish(length: int) -> str:
    return (TURKISH * (length // len(TURKISH) + 1))[:length]


def transient(request: Request) -> SendResult:
    return SendResult(Outcome.RETRY, status_code=503, error="HTTP 503")


@pytest.fixture
def make_sender(
    repo: ProbedRepository, sms: InMemorySmsClient, cache: InMemorySentCache, clock: FakeClock
) -> Callable[..., BatchSender]:
    """A sender on the shared fixtures; keywords are SenderOptions fields (and ``jitter``)."""

    def make(*, jitter: Callable[[], float] = lambda: 1.0, **options: float) -> BatchSender:
        return BatchSender(repo, sms, cache, clock, SenderOptions(**options), jitter=jitter)  # type: ignore[arg-type]

    return make


def add(repo: ProbedRepository, clock: FakeClock, *contents: str, phone: str = PHONE) -> list[Message]:
    """Pending messages created one second apart, each newer than every row added before."""
    start = clock.now() - timedelta(days=1) + timedelta(seconds=len(repo.rows))
    return [repo.add(phone, c, created_at=start + timedelta(seconds=i)) for i, c in enumerate(contents)]


async def row(repo: ProbedRepository, message: Message) -> Message:
    current = await repo.get(message.id)
    assert current is not None
    return current


# --- what is claimed and what is sent -----------------------------------------------------------


async def test_claims_the_oldest_first_by_created_at_then_id_and_at_most_a_batch(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    now = clock.now()
    repo.add(PHONE, "newest", created_at=now - timedelta(seconds=1))
    repo.add(PHONE, "oldest", created_at=now - timedelta(seconds=3))
    repo.add(PHONE, "tie-lower-id", created_at=now - timedelta(seconds=2))
    repo.add(PHONE, "tie-higher-id", created_at=now - timedelta(seconds=2))
    sender = make_sender(batch_size=2)

    first = await sender.run_batch()
    assert {r.content for r in sms.requests} == {"oldest", "tie-lower-id"}
    assert (first.claimed, first.sent) == (2, 2)

    await sender.run_batch()
    assert {r.content for r in sms.requests[2:]} == {"tie-higher-id", "newest"}

    empty = await sender.run_batch()
    assert (empty.claimed, len(sms.requests)) == (0, 4)


async def test_sends_phone_and_content_with_the_message_idempotency_key(
    repo: ProbedRepository, sms: InMemorySmsClient, make_sender: Callable[..., BatchSender]
) -> None:
    first = repo.add("+905551234567", "İyi günler, çağrı ŞÖÜ")
    second = repo.add("+14155550100", "Hello")

    await make_sender(batch_size=5).run_batch()

    sent = {r.idempotency_key: r for r in sms.requests}
    assert len(sent) == 2
    assert first.idempotency_key and first.idempotency_key != second.idempotency_key
    assert sent[first.idempotency_key] == Request("+905551234567", "İyi günler, çağrı ŞÖÜ", first.idempotency_key)
    assert sent[second.idempotency_key] == Request("+14155550100", "Hello", second.idempotency_key)


async def test_sent_messages_are_recorded_and_cached_in_one_call(
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    cache: InMemorySentCache,
    clock: FakeClock,
    make_sender: Callable[..., BatchSender],
) -> None:
    messages = add(repo, clock, "a", "b", "c")
    sms.responder = accepted
    await clock.advance(42)

    report = await make_sender(batch_size=3).run_batch()

    assert (report.claimed, report.sent, report.failed, report.retried) == (3, 3, 0, 0)
    sent_at = clock.now()
    for message in messages:
        current = await row(repo, message)
        assert current.status is MessageStatus.SENT
        assert current.sent_at == sent_at
        assert current.message_id == f"pm-{message.content}"
        assert current.attempts == 1
        assert current.last_error is None
        assert current.claim_token is None and current.lease_expires_at is None
    assert cache.calls == 1
    assert cache.entries == {f"pm-{m.content}": SentEntry(f"pm-{m.content}", sent_at, m.id) for m in messages}


@pytest.mark.parametrize("provider_message_id", [None, ""])
async def test_an_acceptance_without_message_id_is_sent_but_not_cached(
    provider_message_id: str | None,
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    cache: InMemorySentCache,
    make_sender: Callable[..., BatchSender],
) -> None:
    [message] = add(repo, FakeClock(), "a")
    sms.responder = lambda r: SendResult(Outcome.SENT, status_code=200, provider_message_id=provider_message_id)

    report = await make_sender().run_batch()

    current = await row(repo, message)
    assert report.sent == 1
    assert current.status is MessageStatus.SENT
    assert current.sent_at is not None
    assert current.message_id is None
    assert cache.entries == {}
    assert cache.calls == 0


# --- failures, retries and backoff --------------------------------------------------------------


async def test_a_transient_failure_goes_back_to_pending_until_its_backoff_has_passed(
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    cache: InMemorySentCache,
    clock: FakeClock,
    make_sender: Callable[..., BatchSender],
) -> None:
    [message] = add(repo, clock, "a")
    sms.responder = transient
    sender = make_sender(retry_backoff_s=30, max_attempts=5)

    report = await sender.run_batch()

    current = await row(repo, message)
    assert (report.retried, report.sent, report.failed) == (1, 0, 0)
    assert current.status is MessageStatus.PENDING
    assert current.next_attempt_at == clock.now() + timedelta(seconds=30)
    assert current.attempts == 1
    assert current.last_error == "HTTP 503"
    assert current.claim_token is None and current.sent_at is None
    assert cache.calls == 0

    sms.responder = accepted
    await clock.advance(29)
    await sender.run_batch()
    assert len(sms.requests) == 1  # not due yet
    await clock.advance(1)
    await sender.run_batch()
    assert len(sms.requests) == 2
    assert sms.requests[1].idempotency_key == message.idempotency_key
    current = await row(repo, message)
    assert (current.status, current.attempts) == (MessageStatus.SENT, 2)


async def test_gives_up_after_max_attempts(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    [message] = add(repo, clock, "a")
    sms.responder = transient
    sender = make_sender(max_attempts=3, retry_backoff_s=1, retry_backoff_max_s=1)

    for _ in range(3):
        await sender.run_batch()
        await clock.advance(1)
    report = await sender.run_batch()

    current = await row(repo, message)
    assert len(sms.requests) == 3
    assert report.claimed == 0
    assert current.status is MessageStatus.FAILED
    assert current.attempts == 3
    assert current.last_error is not None
    assert current.last_error.startswith("gave up after 3 attempts")
    assert "HTTP 503" in current.last_error


async def test_a_permanent_failure_fails_at_once(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    [message] = add(repo, clock, "a")
    sms.responder = lambda r: SendResult(Outcome.FAILED, status_code=400, error="HTTP 400: invalid number")
    sender = make_sender(max_attempts=5)

    report = await sender.run_batch()
    await clock.advance(3600)
    await sender.run_batch()

    current = await row(repo, message)
    assert report.failed == 1
    assert len(sms.requests) == 1
    assert current.status is MessageStatus.FAILED
    assert current.last_error == "HTTP 400: invalid number"
    assert current.next_attempt_at is None


@pytest.mark.parametrize("retry_after_s", [7.0, 5000.0])
async def test_retry_after_wins_over_the_backoff(
    retry_after_s: float,
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    clock: FakeClock,
    make_sender: Callable[..., BatchSender],
) -> None:
    [message] = add(repo, clock, "a")
    sms.responder = lambda r: SendResult(Outcome.RETRY, status_code=429, error="HTTP 429", retry_after_s=retry_after_s)

    await make_sender(retry_backoff_s=30, retry_backoff_max_s=3600).run_batch()

    current = await row(repo, message)
    assert current.status is MessageStatus.PENDING
    assert current.next_attempt_at == clock.now() + timedelta(seconds=retry_after_s)


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [
        (1.0, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]),  # the ceiling: doubles, then capped
        (0.0, [15, 30, 60, 120, 240, 480, 960, 1800, 1800]),  # half the ceiling
        (0.5, [22.5, 45, 90, 180, 360, 720, 1440, 2700, 2700]),
    ],
)
def test_backoff_doubles_per_attempt_with_equal_jitter_and_a_cap(
    jitter: float, expected: list[float], make_sender: Callable[..., BatchSender]
) -> None:
    sender = make_sender(retry_backoff_s=30, retry_backoff_max_s=3600, jitter=lambda: jitter)

    assert [sender.backoff_s(attempts, None) for attempts in range(1, 10)] == expected


def test_backoff_with_real_jitter_stays_within_half_and_full_ceiling(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    sender = BatchSender(repo, sms, None, clock, SenderOptions(retry_backoff_s=30, retry_backoff_max_s=3600))
    delays = [sender.backoff_s(3, None) for _ in range(500)]
    assert all(60 <= d <= 120 for d in delays)
    assert len(set(delays)) > 1  # there is jitter


def test_backoff_of_a_huge_attempt_count_is_the_cap(make_sender: Callable[..., BatchSender]) -> None:
    # Floats, as the settings give them: 30.0 * 2**4999 would overflow.
    sender = make_sender(retry_backoff_s=30.0, retry_backoff_max_s=3600.0)
    assert sender.backoff_s(5000, None) == 3600


async def test_backoff_doubles_through_the_queue(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    [message] = add(repo, clock, "a")
    sms.responder = transient
    sender = make_sender(retry_backoff_s=10, retry_backoff_max_s=1000, max_attempts=10)

    waits = []
    for _ in range(4):
        await sender.run_batch()
        current = await row(repo, message)
        assert current.next_attempt_at is not None
        wait = (current.next_attempt_at - clock.now()).total_seconds()
        waits.append(wait)
        await clock.advance(wait)
    assert waits == [10, 20, 40, 80]
    assert len(sms.requests) == 4


async def test_a_client_that_raises_counts_as_a_transient_failure(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    [message] = add(repo, clock, "a")

    def broken(request: Request) -> SendResult:
        raise RuntimeError("boom")

    sms.responder = broken
    report = await make_sender().run_batch()

    current = await row(repo, message)
    assert report.retried == 1
    assert current.status is MessageStatus.PENDING
    assert current.last_error == "RuntimeError: boom"


# --- invalid rows -------------------------------------------------------------------------------


async def test_invalid_rows_fail_without_being_sent_and_the_batch_tops_itself_up(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    too_long, at_limit = turkish(161), turkish(160)
    [long_row] = add(repo, clock, too_long)
    [bad_phone] = add(repo, clock, "Merhaba", phone="05551234567")
    [ok_turkish, ok_plain] = add(repo, clock, at_limit, "ok")

    report = await make_sender(batch_size=2, content_max_length=160).run_batch()

    assert sorted(r.content for r in sms.requests) == sorted([at_limit, "ok"])
    assert all(r.to == PHONE for r in sms.requests)
    assert (report.claimed, report.sent, report.failed) == (4, 2, 2)
    assert repo.claims == [[long_row.id, bad_phone.id], [ok_turkish.id, ok_plain.id]]

    long_now, phone_now = await row(repo, long_row), await row(repo, bad_phone)
    assert long_now.status is MessageStatus.FAILED
    assert long_now.last_error is not None and long_now.last_error.startswith("invalid: ")
    assert "161" in long_now.last_error
    assert phone_now.status is MessageStatus.FAILED
    assert phone_now.last_error is not None and "not a possible phone number" in phone_now.last_error
    assert (await row(repo, ok_turkish)).status is MessageStatus.SENT


async def test_a_row_with_a_nul_written_by_another_program_is_failed_not_sent(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    [nul] = add(repo, clock, "half\x00message")  # SQLite stores it; PostgreSQL could not

    report = await make_sender().run_batch()

    assert (report.failed, sms.requests) == (1, [])
    failed = await row(repo, nul)
    assert failed.status is MessageStatus.FAILED
    assert failed.last_error is not None and "NUL" in failed.last_error


async def test_a_table_full_of_invalid_rows_cannot_keep_one_batch_claiming(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    add(repo, clock, *["x"] * 30, phone="not-a-phone")
    add(repo, clock, "ok")

    report = await make_sender(batch_size=2).run_batch()

    assert len(repo.claims) == MAX_CLAIM_ROUNDS
    assert report.failed == 2 * MAX_CLAIM_ROUNDS
    assert sms.requests == []


async def test_a_message_waiting_for_its_backoff_does_not_hold_back_later_ones(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    add(repo, clock, "a", "b", "c")
    failed_once: set[str] = set()

    def first_a_fails(request: Request) -> SendResult:
        if request.content == "a" and "a" not in failed_once:
            failed_once.add("a")
            return transient(request)
        return accepted(request)

    sms.responder = first_a_fails
    sender = make_sender(batch_size=2, retry_backoff_s=30)

    await sender.run_batch()  # a (retry), b
    await sender.run_batch()  # c, though a is older
    assert [r.content for r in sms.requests] == ["a", "b", "c"]

    await clock.advance(30)
    await sender.run_batch()
    assert [r.content for r in sms.requests] == ["a", "b", "c", "a"]
    counts = await repo.counts()
    assert counts[MessageStatus.SENT] == 3


# --- concurrency and the shape of the writes ------------------------------------------------------


async def test_no_more_requests_in_flight_than_the_concurrency(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    add(repo, clock, *[f"m{i}" for i in range(10)])
    held = HeldProvider()
    sms.responder = held

    batch = asyncio.create_task(make_sender(batch_size=10, concurrency=3).run_batch())
    await eventually(lambda: held.in_flight == 3, what="3 requests in flight")
    await clock.settle()
    assert held.in_flight == 3
    assert len(sms.requests) == 3

    held.release.set()
    report = await batch
    assert report.sent == 10
    assert held.max_in_flight == 3


async def test_one_write_of_outcomes_per_batch_with_mixed_outcomes(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    answers = {
        "sent": SendResult(Outcome.SENT, status_code=202, provider_message_id="pm-1"),
        "no-id": SendResult(Outcome.SENT, status_code=202),
        "retry": SendResult(Outcome.RETRY, status_code=503, error="HTTP 503"),
        "failed": SendResult(Outcome.FAILED, status_code=400, error="HTTP 400"),
    }
    messages = add(repo, clock, *answers)
    [invalid] = add(repo, clock, "x", phone="nope")
    sms.responder = lambda r: answers[r.content]

    report = await make_sender(batch_size=5).run_batch()

    assert repo.resolve_calls == 1
    assert (report.claimed, report.sent, report.retried, report.failed) == (5, 2, 1, 2)
    statuses = {m.content: (await row(repo, m)).status for m in messages}
    assert statuses == {
        "sent": MessageStatus.SENT,
        "no-id": MessageStatus.SENT,
        "retry": MessageStatus.PENDING,
        "failed": MessageStatus.FAILED,
    }
    assert (await row(repo, invalid)).status is MessageStatus.FAILED


async def test_a_cache_failure_neither_undoes_nor_blocks_the_send(
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    cache: InMemorySentCache,
    clock: FakeClock,
    make_sender: Callable[..., BatchSender],
) -> None:
    messages = add(repo, clock, "a", "b")
    sms.responder = accepted
    cache.available = False

    report = await make_sender(batch_size=2).run_batch()

    assert report.sent == 2
    assert cache.calls == 1
    for message in messages:
        current = await row(repo, message)
        assert current.status is MessageStatus.SENT
        assert current.message_id == f"pm-{message.content}"


async def test_no_cache_at_all_is_fine(repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock) -> None:
    [message] = add(repo, clock, "a")
    report = await BatchSender(repo, sms, None, clock, SenderOptions()).run_batch()
    assert report.sent == 1
    assert (await row(repo, message)).status is MessageStatus.SENT


# --- the database going away --------------------------------------------------------------------


async def test_an_unavailable_repository_at_claim_is_raised(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    add(repo, clock, "a")
    repo.available = False

    with pytest.raises(RepositoryUnavailable):
        await make_sender().run_batch()
    assert sms.requests == []


async def test_outcomes_survive_a_database_blink_after_the_sends(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    [message] = add(repo, clock, "a")

    def accept_while_the_database_blinks(request: Request) -> SendResult:
        repo.available = False
        return accepted(request)

    sms.responder = accept_while_the_database_blinks
    batch = asyncio.create_task(make_sender().run_batch())
    await eventually(lambda: clock.sleepers == 1, what="the write to wait before trying again")
    assert repo.resolve_calls == 0

    repo.available = True
    await clock.advance(clock.next_wake() or 0)
    report = await batch

    assert report.sent == 1
    assert repo.resolve_calls == 1
    assert (await row(repo, message)).status is MessageStatus.SENT


async def test_outcomes_that_cannot_be_written_raise_after_the_retries(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    [message] = add(repo, clock, "a")

    def accept_and_lose_the_database(request: Request) -> SendResult:
        repo.available = False
        return accepted(request)

    sms.responder = accept_and_lose_the_database
    batch = asyncio.create_task(make_sender().run_batch())
    while not batch.done():
        await eventually(lambda: clock.sleepers == 1 or batch.done(), what="a retry or the end")
        if not batch.done():
            await clock.advance(clock.next_wake() or 0)
    with pytest.raises(RepositoryUnavailable):
        await batch
    # Still leased as sending: the lease expires and it is sent again with the same key.
    repo.available = True
    assert (await row(repo, message)).status is MessageStatus.SENDING


# --- stopping and cancellation ------------------------------------------------------------------


async def test_cancelling_a_batch_releases_the_message_in_flight_and_records_the_rest(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    quick, slow = add(repo, clock, "quick", "slow")
    held = HeldProvider()

    async def respond(request: Request) -> SendResult:
        return accepted(request) if request.content == "quick" else await held(request)

    sms.responder = respond
    batch = asyncio.create_task(make_sender(batch_size=2).run_batch())
    await eventually(lambda: held.in_flight == 1, what="the slow request in flight")

    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch

    assert held.cancelled == 1
    quick_now, slow_now = await row(repo, quick), await row(repo, slow)
    assert quick_now.status is MessageStatus.SENT  # its outcome was written despite the cancel
    assert slow_now.status is MessageStatus.PENDING
    assert slow_now.attempts == 0  # the interrupted attempt does not count
    assert slow_now.next_attempt_at is not None and slow_now.next_attempt_at <= clock.now()
    assert slow_now.claim_token is None and slow_now.idempotency_key == slow.idempotency_key

    held.release.set()
    await make_sender(batch_size=2).run_batch()
    retried = [r for r in sms.requests if r.content == "slow"]
    assert len(retried) == 2
    assert retried[0].idempotency_key == retried[1].idempotency_key == slow.idempotency_key
    assert (await row(repo, slow)).status is MessageStatus.SENT
    # The history shows the request the stop cut short (the provider may have it), then the send.
    history = await repo.events(slow.id)
    assert [(e.kind, e.outcome, e.attempt) for e in history] == [("attempt", "interrupted", 1), ("attempt", "sent", 1)]
    assert history[0].status_code is None and history[0].duration_ms is not None
    assert history[0].error is not None and "Idempotency-Key" in history[0].error
    assert [e.outcome for e in await repo.events(quick.id)] == ["sent"]


async def test_stopping_set_before_requests_start_sends_nothing_and_releases_everything(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    messages = add(repo, clock, "a", "b", "c")
    stopping = asyncio.Event()
    stopping.set()

    report = await make_sender(batch_size=3).run_batch(stopping)

    assert sms.requests == []
    assert (report.claimed, report.released, report.sent, report.retried) == (3, 3, 0, 0)
    for message in messages:
        current = await row(repo, message)
        assert current.status is MessageStatus.PENDING
        assert current.attempts == 0
        assert current.claim_token is None
    assert len(await repo.claim(10, 60)) == 3  # due again at once
    for message in messages:  # no request was made: nothing in their history
        assert await repo.events(message.id) == []


async def test_stopping_lets_requests_in_flight_finish_and_starts_no_more(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    first, *rest = add(repo, clock, "a", "b", "c")
    held = HeldProvider()
    sms.responder = held
    stopping = asyncio.Event()

    batch = asyncio.create_task(make_sender(batch_size=3, concurrency=1).run_batch(stopping))
    await eventually(lambda: held.in_flight == 1, what="the first request in flight")
    stopping.set()
    held.release.set()
    report = await batch

    assert [r.content for r in sms.requests] == ["a"]
    assert (report.sent, report.released) == (1, 2)
    assert (await row(repo, first)).status is MessageStatus.SENT
    for message in rest:
        current = await row(repo, message)
        assert (current.status, current.attempts) == (MessageStatus.PENDING, 0)


async def test_a_429_pauses_the_provider_and_the_batchs_other_messages_wait_without_an_attempt(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    first, second, third = add(repo, clock, "a", "b", "c")
    sms.responder = lambda request: SendResult(
        Outcome.RETRY, status_code=429, error="HTTP 429: slow down", retry_after_s=7.0, throttled=True
    )
    report = await make_sender(batch_size=3, concurrency=1).run_batch()

    assert len(sms.requests) == 1  # the provider asked to wait: nothing more went to it
    assert (report.claimed, report.retried, report.released) == (3, 1, 2)
    throttled = await row(repo, first)
    assert (throttled.status, throttled.attempts) == (MessageStatus.PENDING, 0)  # busy, not refusing: not counted
    assert throttled.next_attempt_at == clock.now() + timedelta(seconds=7)
    for message in (second, third):
        waiting = await row(repo, message)
        assert (waiting.status, waiting.attempts) == (MessageStatus.PENDING, 0)  # not an attempt
        assert waiting.last_error == "no provider can take it now: default (throttled)"
        assert waiting.next_attempt_at == clock.now() + timedelta(seconds=7)


async def test_a_batch_does_not_wait_for_a_providers_far_rate_turns_and_those_messages_come_back_due_then(
    repo: ProbedRepository, clock: FakeClock, cache: InMemorySentCache
) -> None:
    # alpha (rate 2: a turn each 0.5 s) takes +90; beta, with no rate, takes the rest.
    config = parse_providers(
        '[[providers]]\nname = "alpha"\nurl = "https://a.example"\nrate = 2\n'
        '[[providers]]\nname = "beta"\nurl = "https://b.example"\n'
        '[[routes]]\nmatch = { prefix = ["+90"] }\nproviders = ["alpha"]\n'
        '[[routes]]\nproviders = ["beta"]\n',
        "p.toml",
    )
    alpha, beta = InMemorySmsClient(), InMemorySmsClient()
    clients = {"alpha": alpha, "beta": beta}
    runtimes = [runtime(spec, clients[spec.name], clock) for spec in config.providers]
    route = Dispatcher(runtimes, Router(config.routes, config.providers), clock, rates=repo)
    rated = add(repo, clock, "a1", "a2", "a3", "a4", phone="+905301234001")
    other = add(repo, clock, "b1", phone="+15555550100")

    # No time passes: a batch that waited for alpha's later turns would never end here.
    report = await BatchSender(repo, route, cache, clock, SenderOptions(batch_size=5, concurrency=5)).run_batch()

    assert (report.claimed, report.sent, report.released) == (5, 2, 3)
    assert [r.content for r in alpha.requests] == ["a1"] and [r.content for r in beta.requests] == ["b1"]
    assert (await row(repo, other[0])).status is MessageStatus.SENT
    waiting = [await row(repo, m) for m in rated[1:]]
    assert all((m.status, m.attempts) == (MessageStatus.PENDING, 0) for m in waiting)  # not attempts
    assert sorted(m.next_attempt_at - clock.now() for m in waiting if m.next_attempt_at is not None) == [
        timedelta(seconds=0.5),
        timedelta(seconds=1.0),
        timedelta(seconds=1.5),
    ]
    assert {m.last_error for m in waiting} == {"no provider can take it now: alpha (at its rate)"}


async def test_a_provider_that_throttles_longer_than_the_attempts_allow_never_fails_the_message(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_sender: Callable[..., BatchSender]
) -> None:
    (message,) = add(repo, clock, "a")
    sms.responder = lambda request: SendResult(
        Outcome.RETRY, status_code=429, error="HTTP 429: slow down", throttled=True
    )
    sender = make_sender(batch_size=1, max_attempts=2)
    for _ in range(5):  # more throttled tries than INSIDER_MAX_ATTEMPTS
        report = await sender.run_batch()
        assert report.retried == 1
        waiting = await row(repo, message)
        assert (waiting.status, waiting.attempts) == (MessageStatus.PENDING, 0)
        assert waiting.next_attempt_at is not None
        await clock.advance((waiting.next_attempt_at - clock.now()).total_seconds())
    sms.responder = lambda request: accepted(request)
    assert (await sender.run_batch()).sent == 1
    events = await repo.events(message.id)
    assert [e.outcome for e in events] == ["throttled"] * 5 + ["sent"]  # each try is in the history
