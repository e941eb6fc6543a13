"""The supervisor: its schedule on a fake clock, start/stop, the deployment-wide slot, and failures."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from insider.adapters.memory import InMemorySentCache, InMemorySmsClient, Request
from insider.clock import FakeClock
from insider.domain import Message, MessageStatus, Outcome, SendOrder, SendResult
from insider.ports import SchemaUpgradeRefused
from insider.sender import RECORD_BUDGET_S, BatchSender, SenderOptions
from insider.supervisor import (
    DRAIN_PIPELINE,
    IDLE_POLL_S,
    STOP_MARGIN_S,
    Supervisor,
    SupervisorClosed,
    SupervisorState,
    Transition,
)
from tests.conftest import eventually
from tests.unit.support import HeldProvider, ProbedRepository, accepted

PHONE = "+905551234567"
IDLE, RUNNING = SupervisorState.IDLE, SupervisorState.RUNNING
INTERVAL_S = 10.0
BATCH = 2

MakeSupervisor = Callable[..., Supervisor]


@pytest.fixture
async def make_supervisor(
    repo: ProbedRepository, sms: InMemorySmsClient, cache: InMemorySentCache, clock: FakeClock
) -> AsyncIterator[MakeSupervisor]:
    """Supervisors on the shared fixtures (batch of 2 every 10 s unless told); all stopped at the end."""
    made: list[Supervisor] = []

    def make(
        *, interval_s: float = INTERVAL_S, client: InMemorySmsClient | None = None, **options: float
    ) -> Supervisor:
        opts = SenderOptions(**{"batch_size": BATCH, **options})  # type: ignore[arg-type]
        sender = BatchSender(repo, client or sms, cache, clock, opts, jitter=lambda: 1.0)
        supervisor = Supervisor(sender, repo, interval_s=interval_s, clock=clock)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        await supervisor.close()


def add(repo: ProbedRepository, clock: FakeClock, count: int) -> list[Message]:
    """``count`` valid pending messages, each newer than every row added before."""
    start = clock.now() - timedelta(days=1) + timedelta(seconds=len(repo.rows))
    first = len(repo.rows)
    return [repo.add(PHONE, f"m{first + i}", created_at=start + timedelta(seconds=i)) for i in range(count)]


def record_times(sms: InMemorySmsClient, clock: FakeClock) -> list[float]:
    """Make ``sms`` accept everything and return the list of the times its requests came in."""
    times: list[float] = []

    def respond(request: Request) -> SendResult:
        times.append(clock.monotonic())
        return SendResult(Outcome.SENT, status_code=202, provider_message_id=f"pm-{request.content}")

    sms.responder = respond
    return times


async def one_request_in_flight(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> tuple[Message, HeldProvider, Supervisor]:
    """A running supervisor whose only message is out at the provider, held there."""
    [message] = add(repo, clock, 1)
    held = HeldProvider()
    sms.responder = held
    supervisor = make_supervisor()
    await supervisor.start()
    await eventually(lambda: held.in_flight == 1, what="the request in flight")
    return message, held, supervisor


async def step_to(clock: FakeClock, until: float, step: float = 0.5) -> None:
    while clock.monotonic() < until:
        await clock.advance(min(step, until - clock.monotonic()))


# --- the schedule -------------------------------------------------------------------------------


async def test_first_batch_at_once_then_one_per_interval_on_the_grid(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 20)
    times = record_times(sms, clock)
    supervisor = make_supervisor()

    assert (await supervisor.start()).after is SupervisorState.RUNNING
    await clock.settle()
    assert times == [0.0, 0.0]

    await step_to(clock, 9.5)
    assert len(times) == 2
    await step_to(clock, 45)
    assert times == [t for k in range(5) for t in (k * INTERVAL_S, k * INTERVAL_S)]
    assert supervisor.ticks == 5


async def test_messages_added_while_running_go_out_in_later_batches(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    times = record_times(sms, clock)
    supervisor = make_supervisor()
    await supervisor.start()
    await clock.settle()
    assert times == []  # the first tick found nothing

    add(repo, clock, 3)
    await clock.advance(9)
    assert times == []
    await clock.advance(1)
    assert times == [10.0, 10.0]
    await clock.advance(10)
    assert times == [10.0, 10.0, 20.0]
    assert (await repo.counts())[MessageStatus.SENT] == 3


async def test_an_overrunning_batch_delays_the_next_without_overlap_or_catch_up(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 20)
    held = HeldProvider()
    sms.responder = held
    supervisor = make_supervisor(concurrency=8)
    await supervisor.start()
    await eventually(lambda: held.in_flight == BATCH, what="the first batch in flight")

    await step_to(clock, 25)  # two and a half intervals with the first batch still out
    assert len(sms.requests) == BATCH
    assert supervisor.ticks == 1

    held.release.set()
    await clock.settle()
    assert len(sms.requests) == 2 * BATCH  # the delayed batch goes as soon as the first ends
    assert supervisor.ticks == 2

    await step_to(clock, 34.5)  # no burst for the batches missed at 10 and 20
    assert len(sms.requests) == 2 * BATCH
    await step_to(clock, 35)
    assert len(sms.requests) == 3 * BATCH
    assert held.max_in_flight == BATCH  # never two batches at once


# --- start and stop -----------------------------------------------------------------------------


async def test_start_and_stop_are_idempotent(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 10)
    supervisor = make_supervisor()
    assert await supervisor.stop() == Transition("stop", IDLE, IDLE)  # never started

    assert await supervisor.start() == Transition("start", IDLE, RUNNING)
    assert await supervisor.start() == Transition("start", RUNNING, RUNNING)
    await clock.settle()
    assert supervisor.running
    assert supervisor.ticks == 1
    assert len(sms.requests) == BATCH

    assert await supervisor.stop() == Transition("stop", RUNNING, IDLE)
    assert await supervisor.stop() == Transition("stop", IDLE, IDLE)
    assert supervisor.status().running is False
    await clock.advance(100)
    assert len(sms.requests) == BATCH


async def test_stop_cancels_a_request_in_flight_and_puts_its_message_back(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    message, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)

    assert (await supervisor.stop()).changed

    assert held.cancelled == 1
    current = await repo.get(message.id)
    assert current is not None
    assert current.status is MessageStatus.PENDING
    assert current.attempts == 0
    assert current.idempotency_key == message.idempotency_key


async def test_stop_with_grace_lets_a_request_in_flight_finish_and_be_recorded(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    message, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)

    stopping = asyncio.create_task(supervisor.stop(grace_s=30))
    await clock.settle()
    assert not stopping.done()

    held.release.set()
    assert (await stopping).after is SupervisorState.IDLE
    assert not supervisor.running
    assert held.cancelled == 0
    current = await repo.get(message.id)
    assert current is not None
    assert (current.status, current.message_id) == (MessageStatus.SENT, f"pm-{message.content}")


async def test_stop_with_grace_cancels_what_is_still_in_flight_when_the_grace_is_over(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    message, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)

    stopping = asyncio.create_task(supervisor.stop(grace_s=30))
    await clock.advance(29)
    assert not stopping.done()
    await clock.advance(1)  # the grace runs on the injected clock
    await eventually(stopping.done, what="stop() to return")

    assert held.cancelled == 1
    current = await repo.get(message.id)
    assert current is not None
    assert (current.status, current.attempts) == (MessageStatus.PENDING, 0)


async def test_stop_with_grace_does_not_wait_when_no_batch_is_running(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 1)
    supervisor = make_supervisor()
    await supervisor.start()
    await clock.settle()  # the first batch is done; the loop waits for the next tick

    stopping = asyncio.create_task(supervisor.stop(grace_s=30))
    await clock.settle()
    assert stopping.done()
    assert not supervisor.running


async def test_cancelling_stop_itself_is_not_swallowed_and_still_stops_the_sender(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    message, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)

    stopping = asyncio.create_task(supervisor.stop(grace_s=30))
    await clock.settle()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping

    # The stop is a message to the supervisor: cancelling the wait for its answer does not undo it.
    assert not supervisor.running
    await clock.advance(30)
    await eventually(lambda: supervisor.state is SupervisorState.IDLE, what="the sender task to end")
    assert held.cancelled == 1
    current = await repo.get(message.id)
    assert current is not None
    assert current.status is MessageStatus.PENDING


async def test_start_during_a_stop_waits_for_it_and_then_runs(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    _, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)

    stopping = asyncio.create_task(supervisor.stop(grace_s=30))
    await clock.settle()
    starting = asyncio.create_task(supervisor.start())
    await clock.settle()
    assert not starting.done()

    held.release.set()
    assert await stopping == Transition("stop", RUNNING, IDLE)
    assert await starting == Transition("start", IDLE, RUNNING)
    assert supervisor.running  # start() did not report a task that was about to end


async def test_stop_then_start_does_not_send_again_before_one_interval_after_the_last_batch(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 10)
    times = record_times(sms, clock)
    supervisor = make_supervisor()
    await supervisor.start()
    await clock.advance(3)

    await supervisor.stop()
    await supervisor.start()
    await clock.settle()
    assert times == [0.0, 0.0]
    await step_to(clock, 9.5, step=0.25)
    assert times == [0.0, 0.0]
    await step_to(clock, 10)
    assert times == [0.0, 0.0, 10.0, 10.0]


async def test_toggling_start_and_stop_within_one_interval_sends_at_most_one_batch(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 50)
    supervisor = make_supervisor()

    for _ in range(20):  # t = 0, 0.5, ... 9.5
        await supervisor.start()
        await clock.settle()
        await supervisor.stop()
        assert not supervisor.running
        await clock.advance(0.5)

    assert len(sms.requests) == BATCH


async def test_the_async_context_manager_stops_the_sender_on_the_way_out(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    supervisor = make_supervisor()
    async with supervisor as entered:
        assert entered is supervisor
        await supervisor.start()
        await clock.settle()
        assert supervisor.running
    assert supervisor.status().running is False
    assert clock.sleepers == 0

    assert supervisor.state is SupervisorState.CLOSED  # the way out closes it for good

    other = make_supervisor()
    with pytest.raises(RuntimeError, match="boom"):
        async with other:
            await other.start()
            raise RuntimeError("boom")
    assert not other.running


# --- status -------------------------------------------------------------------------------------


async def test_status_reports_the_schedule(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 5)
    supervisor = make_supervisor()
    before = supervisor.status()
    assert (before.running, before.batch_size, before.interval_s) == (False, BATCH, INTERVAL_S)
    assert (before.last_tick_at, before.next_tick_at, before.last_batch) == (None, None, None)

    start = clock.now()
    await supervisor.start()
    await clock.settle()
    status = supervisor.status()
    assert status.running is True
    assert status.last_tick_at == start
    assert status.next_tick_at == start + timedelta(seconds=INTERVAL_S)
    assert status.last_batch is not None and status.last_batch.sent == BATCH

    await clock.advance(4)  # now + the 6 s that remain
    assert supervisor.status().next_tick_at == start + timedelta(seconds=INTERVAL_S)
    await clock.advance(6)
    status = supervisor.status()
    assert status.last_tick_at == start + timedelta(seconds=INTERVAL_S)
    assert status.next_tick_at == start + timedelta(seconds=2 * INTERVAL_S)

    await supervisor.stop()
    after = supervisor.status()
    assert after.running is False
    assert after.next_tick_at is None
    assert after.last_tick_at == start + timedelta(seconds=INTERVAL_S)


# --- the deployment-wide slot -------------------------------------------------------------------


async def test_two_supervisors_on_one_database_share_one_rate(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 100)
    first_sms, second_sms = InMemorySmsClient(), InMemorySmsClient()
    first_times, second_times = record_times(first_sms, clock), record_times(second_sms, clock)
    first = make_supervisor(client=first_sms)
    second = make_supervisor(client=second_sms)

    await first.start()
    await clock.advance(1)
    await second.start()  # on a grid of its own, one second later
    while clock.monotonic() < 61:
        if clock.monotonic() == 25:
            await first.stop()  # the other one takes over the slot
        await clock.advance(0.5)
        sent = len(first_times) + len(second_times)
        # batch k at k x interval: never more than that many batches so far
        assert sent <= BATCH * (math.floor(clock.monotonic() / INTERVAL_S) + 1), clock.monotonic()

    assert sorted(first_times + second_times) == [t for k in range(7) for t in (k * INTERVAL_S,) * BATCH]
    assert second_times and all(t > 25 for t in second_times)
    keys = [r.idempotency_key for r in first_sms.requests + second_sms.requests]
    assert len(keys) == len(set(keys)) == 7 * BATCH  # never the same message twice


async def test_two_supervisors_started_together_send_one_batch_per_interval(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 100)
    clients = [InMemorySmsClient(), InMemorySmsClient()]
    supervisors = [make_supervisor(client=c) for c in clients]

    for supervisor in supervisors:
        await supervisor.start()
    await step_to(clock, 45)

    requests = [r for c in clients for r in c.requests]
    assert len(requests) == 5 * BATCH
    assert len({r.idempotency_key for r in requests}) == len(requests)


# --- failures -----------------------------------------------------------------------------------


async def test_an_unavailable_repository_during_a_tick_does_not_end_the_loop(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 10)
    times = record_times(sms, clock)
    supervisor = make_supervisor()
    await supervisor.start()
    await clock.settle()
    assert len(times) == BATCH

    repo.available = False
    await step_to(clock, 22)
    assert supervisor.running
    assert len(times) == BATCH

    repo.available = True
    await step_to(clock, 30)
    assert supervisor.running
    # back within the retry delay, then on the schedule again
    assert len(times) == 2 * BATCH
    assert 22 <= times[BATCH] <= 22 + 5
    await step_to(clock, times[BATCH] + INTERVAL_S)
    assert len(times) == 3 * BATCH


async def test_an_unavailable_repository_at_the_first_tick_does_not_end_the_loop(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 4)
    repo.available = False
    supervisor = make_supervisor()
    await supervisor.start()
    await clock.advance(3)
    assert supervisor.running and sms.requests == []

    repo.available = True
    await clock.advance(INTERVAL_S)
    assert len(sms.requests) == BATCH


async def test_an_unexpected_error_in_a_batch_does_not_end_the_loop(
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    clock: FakeClock,
    make_supervisor: MakeSupervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add(repo, clock, 10)
    claim = repo.claim
    calls = 0

    async def claim_with_a_bug_once(limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await claim(limit, lease_s, order)

    monkeypatch.setattr(repo, "claim", claim_with_a_bug_once)
    supervisor = make_supervisor()
    await supervisor.start()
    await clock.settle()
    assert supervisor.running
    assert sms.requests == []

    await clock.advance(INTERVAL_S)
    assert supervisor.running
    assert len(sms.requests) == BATCH


# --- drain mode and manual batches --------------------------------------------------------------


async def test_interval_zero_drains_back_to_back_then_polls(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 7)
    supervisor = make_supervisor(interval_s=0)
    await supervisor.start()

    await eventually(lambda: len(sms.requests) == 7, what="the queue to drain")
    await clock.settle()
    assert clock.monotonic() == 0  # no waiting between batches
    assert sum(len(ids) for ids in repo.claims) == 7
    # Each batch of the pipeline found the queue empty once, and waits to ask again.
    assert repo.claims[-DRAIN_PIPELINE:] == [[]] * DRAIN_PIPELINE
    assert clock.next_wake() == IDLE_POLL_S

    add(repo, clock, 1)
    await clock.advance(IDLE_POLL_S - 0.5)
    assert len(sms.requests) == 7
    await clock.advance(0.5)
    assert len(sms.requests) == 8
    assert supervisor.running


async def test_drain_mode_asks_again_when_a_message_put_back_is_due_not_a_whole_poll_later(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    # The provider asks to be left alone 0.3 s (a 429 with Retry-After): the message goes back
    # to pending, due then; the schedule asks again at 0.3 s, not after IDLE_POLL_S.
    answers = iter([SendResult(Outcome.RETRY, status_code=429, error="HTTP 429", retry_after_s=0.3, throttled=True)])
    sms.responder = lambda request: next(answers, None) or accepted(request)
    add(repo, clock, 1)
    supervisor = make_supervisor(interval_s=0)
    await supervisor.start()
    await eventually(lambda: len(sms.requests) == 1, what="the first, throttled try")
    await clock.settle()
    assert clock.next_wake() == pytest.approx(0.3)
    await clock.advance(0.3)
    await eventually(lambda: len(sms.requests) == 2, what="the try at its time")
    assert clock.monotonic() == pytest.approx(0.3)
    assert supervisor.running


async def test_drain_mode_overlaps_batches_within_one_concurrency_bound(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    held = HeldProvider()
    sms.responder = held
    add(repo, clock, 10)
    supervisor = make_supervisor(interval_s=0, batch_size=3, concurrency=2)
    await supervisor.start()
    # While the first batch's requests are held, the next batch has already been claimed:
    # the provider never waits for a batch's outcomes to be recorded before the next.
    await eventually(lambda: len(repo.claims) == DRAIN_PIPELINE, what="overlapping claims")
    await clock.settle()
    assert [len(ids) for ids in repo.claims] == [3] * DRAIN_PIPELINE
    assert held.in_flight == 2  # one bound for every batch of the pipeline
    held.release.set()
    await eventually(lambda: len(sms.requests) == 10, what="the queue to drain")
    assert held.max_in_flight == 2
    assert len({r.idempotency_key for r in sms.requests}) == 10  # none sent twice


async def test_run_once_sends_a_batch_outside_the_schedule(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 6)
    supervisor = make_supervisor()

    report = await supervisor.run_once()  # never started
    assert report.sent == BATCH

    await supervisor.start()
    await clock.settle()
    await supervisor.stop()
    report = await supervisor.run_once()  # after a stop: the stop must not release this batch
    assert (report.sent, report.released) == (BATCH, 0)
    assert len(sms.requests) == 3 * BATCH


async def test_run_once_waits_for_a_running_batch(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 6)
    held = HeldProvider()
    sms.responder = held
    supervisor = make_supervisor(concurrency=8)
    await supervisor.start()
    await eventually(lambda: held.in_flight == BATCH, what="the first batch in flight")

    once = asyncio.create_task(supervisor.run_once())
    await clock.settle()
    assert not once.done()
    assert len(sms.requests) == BATCH

    held.release.set()
    report = await once
    assert report.sent == BATCH
    assert held.max_in_flight == BATCH


async def test_a_database_it_cannot_upgrade_stops_sending_with_one_error_not_one_per_tick(
    make_supervisor: MakeSupervisor, repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    """A database that was down at start-up and turns out to hold what cannot be upgraded."""
    refusals = 0

    async def refuse() -> None:
        nonlocal refusals
        refusals += 1
        raise SchemaUpgradeRefused('1 row(s) of "messages" have no content (NULL); to fix: ...')

    repo.migrate = refuse  # type: ignore[method-assign]
    add(repo, clock, 2)
    supervisor = make_supervisor()
    with capture_logs() as logs:
        await supervisor.start()
        await eventually(lambda: not supervisor.running, what="the sender to stop")
        await clock.advance(10 * INTERVAL_S)
    assert refusals == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["sending stopped: cannot upgrade the database"]
    assert sms.requests == []


# --- the actor: commands in order, states, closed ----------------------------------------------


async def test_stop_start_stop_in_quick_succession_during_a_batch_ends_stopped_each_caller_answered_its_own(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 5)
    held = HeldProvider()
    sms.responder = held
    supervisor = make_supervisor()
    await supervisor.start()
    await eventually(lambda: held.in_flight == BATCH, what="a batch in flight")

    # Sent in this order, before any is answered, while the batch is out at the provider.
    calls = [
        asyncio.create_task(supervisor.stop(grace_s=30)),
        asyncio.create_task(supervisor.start()),
        asyncio.create_task(supervisor.stop()),
    ]
    await clock.settle()
    held.release.set()
    assert [t.after for t in await asyncio.gather(*calls)] == [IDLE, RUNNING, IDLE]

    assert supervisor.state is SupervisorState.IDLE and not supervisor.running
    sent_so_far = len(sms.requests)
    await step_to(clock, 100)
    assert len(sms.requests) == sent_so_far  # nothing runs on: the last request was a stop


async def test_the_state_goes_idle_running_stopping_idle_closed(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    _, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)
    states = [supervisor.status().state]

    stopping = asyncio.create_task(supervisor.stop(grace_s=30))
    await clock.settle()
    states.append(supervisor.status().state)
    assert supervisor.status().running is False
    held.release.set()
    await stopping
    states.append(supervisor.status().state)
    await supervisor.close()
    states.append(supervisor.status().state)
    assert states == [SupervisorState.RUNNING, SupervisorState.STOPPING, SupervisorState.IDLE, SupervisorState.CLOSED]


async def test_after_close_start_and_run_once_are_refused_and_nothing_is_left_running(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 5)
    supervisor = make_supervisor()
    await supervisor.start()
    await clock.settle()
    await supervisor.close()

    with pytest.raises(SupervisorClosed, match="closed"):
        await supervisor.start()
    with pytest.raises(SupervisorClosed):
        await supervisor.run_once()
    assert not (await supervisor.stop()).changed  # stopping a closed supervisor is harmless
    await supervisor.close()  # and so is closing it again
    assert clock.sleepers == 0  # the sender loop is gone
    sent = len(sms.requests)
    await step_to(clock, 50)
    assert len(sms.requests) == sent


async def test_a_start_queued_behind_a_close_is_refused(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    _, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)
    closing = asyncio.create_task(supervisor.close(grace_s=30))
    starting = asyncio.create_task(supervisor.start())
    await clock.settle()
    held.release.set()
    await closing
    with pytest.raises(SupervisorClosed):
        await starting
    assert supervisor.state is SupervisorState.CLOSED


async def test_the_sender_task_belongs_to_the_supervisor_not_to_the_caller(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 1)
    seen: list[asyncio.Task[object] | None] = []

    def respond(request: Request) -> SendResult:
        seen.append(asyncio.current_task())
        return SendResult(Outcome.SENT, status_code=202, provider_message_id="pm")

    sms.responder = respond
    supervisor = make_supervisor()
    caller = asyncio.create_task(supervisor.start())
    await caller
    await clock.settle()
    assert len(seen) == 1 and seen[0] is not caller
    caller_done = caller.done()
    assert caller_done and supervisor.running  # the caller ended; the sender it asked for runs on


async def test_prepare_never_runs_two_migrations_at_once(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    running = 0
    most = 0
    calls = 0
    migrate = repo.migrate

    async def slow_migrate() -> None:
        nonlocal running, most, calls
        calls += 1
        running += 1
        most = max(most, running)
        try:
            await gate.wait()
            await migrate()
        finally:
            running -= 1

    monkeypatch.setattr(repo, "migrate", slow_migrate)
    supervisor = make_supervisor()
    waiting = [asyncio.create_task(supervisor.prepare()) for _ in range(3)]
    await supervisor.prepare_when_reachable()
    await supervisor.start()  # the sender applies it before its first batch too
    await clock.settle()
    gate.set()
    await asyncio.gather(*waiting)
    await clock.settle()
    assert (most, calls) == (1, 1)


async def test_the_schema_is_applied_once_the_database_answers_by_the_supervisor_and_ends_with_it(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations = 0
    migrate = repo.migrate

    async def counted() -> None:
        nonlocal migrations
        await migrate()
        migrations += 1

    monkeypatch.setattr(repo, "migrate", counted)
    repo.available = False
    supervisor = make_supervisor()
    await supervisor.prepare_when_reachable()  # returns at once; the retries are the supervisor's
    await clock.advance(5)
    assert migrations == 0
    repo.available = True
    await clock.advance(1)
    assert migrations == 1
    await clock.advance(10)
    assert migrations == 1  # applied once, then no more tries

    other = make_supervisor()
    repo.available = False
    await other.prepare_when_reachable()
    await clock.advance(2)
    await other.close()  # its retries end with it
    assert clock.sleepers == 0


# --- deadlines ------------------------------------------------------------------------------------


async def test_a_stop_returns_within_its_bound_when_the_database_hangs_on_the_final_write(
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    clock: FakeClock,
    make_supervisor: MakeSupervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)
    never = asyncio.Event()

    async def hanging_resolve(resolutions: object) -> None:
        await never.wait()  # a database that never answers (half-dead connection)

    monkeypatch.setattr(repo, "resolve", hanging_resolve)
    stopping = asyncio.create_task(supervisor.stop())
    await clock.advance(RECORD_BUDGET_S - 0.5)
    assert not stopping.done()
    await clock.advance(0.5)
    await eventually(stopping.done, what="stop() to give up on the database")
    assert (await stopping).after is SupervisorState.IDLE
    assert held.cancelled == 1
    # Not recorded: the claim's lease releases it.
    current = await repo.get(message.id)
    assert current is not None and current.status is MessageStatus.SENDING
    assert STOP_MARGIN_S >= RECORD_BUDGET_S


async def test_a_graceful_stop_is_bounded_by_its_grace_plus_the_margin_when_the_database_hangs(
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    clock: FakeClock,
    make_supervisor: MakeSupervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, held, supervisor = await one_request_in_flight(repo, sms, clock, make_supervisor)
    never = asyncio.Event()

    async def hanging_resolve(resolutions: object) -> None:
        await never.wait()

    monkeypatch.setattr(repo, "resolve", hanging_resolve)
    stopping = asyncio.create_task(supervisor.stop(grace_s=10))
    held.release.set()  # the send ends; its outcome write hangs
    await clock.advance(10 + RECORD_BUDGET_S - 0.5)
    assert not stopping.done()
    await clock.advance(0.5)
    await eventually(stopping.done, what="stop() to end within grace + margin")


# --- the slot and the current settings ------------------------------------------------------------


async def test_a_restart_with_a_shorter_interval_obeys_the_new_interval(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 10)
    times = record_times(sms, clock)
    slow = make_supervisor(interval_s=120)
    await slow.start()
    await clock.settle()
    assert times == [0.0, 0.0]
    await clock.advance(1)
    await slow.close()

    fast = make_supervisor(interval_s=10)  # the restart, with INSIDER_SEND_INTERVAL=10s
    await fast.start()
    await clock.settle()
    status = fast.status()
    assert status.next_tick_at == clock.now() + timedelta(seconds=9)
    assert status.wait_reason is not None and "rate slot" in status.wait_reason
    assert "previous run's batch at 2026-01-01T00:00:00Z" in status.wait_reason
    await step_to(clock, 9.5)
    assert len(times) == 2
    await step_to(clock, 10)
    assert times == [0.0, 0.0, 10.0, 10.0]  # one new interval after the last batch, not 120 s


async def test_status_says_why_the_next_batch_waits(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 10)
    supervisor = make_supervisor()
    assert supervisor.status().wait_reason is None  # stopped
    await supervisor.start()
    await clock.settle()
    status = supervisor.status()
    assert status.wait_reason is not None and status.wait_reason.startswith("rate: one batch every 10s")

    repo.available = False
    await clock.advance(INTERVAL_S)
    status = supervisor.status()
    assert status.wait_reason is not None and status.wait_reason.startswith("database unavailable")
    assert status.next_tick_at == clock.now() + timedelta(seconds=5)


async def test_one_log_line_per_failed_tick_and_one_when_the_database_is_back(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 10)
    supervisor = make_supervisor()
    with capture_logs() as logs:
        await supervisor.start()
        await clock.settle()
        repo.available = False
        await step_to(clock, 25)  # ticks at 10, 15, 20, 25 fail
        repo.available = True
        await step_to(clock, 30)
    failed = [entry for entry in logs if entry["event"] == "tick failed: database unavailable"]
    back = [entry for entry in logs if entry["event"] == "database answers again; sending resumes"]
    assert len(failed) == 4
    assert len(back) == 1


# --- the lease follows from the sender's own options ----------------------------------------------


def test_the_lease_follows_from_batch_concurrency_and_timeout() -> None:
    assert SenderOptions(batch_size=500, concurrency=8, send_timeout_s=10).claim_lease_s == 63 * 10 + 30
    assert SenderOptions(batch_size=2, concurrency=8, send_timeout_s=10).claim_lease_s == 10 + 30
    assert SenderOptions(batch_size=2, concurrency=1, send_timeout_s=3).lease_s_for(2) == 4 * 3 + 30
    assert SenderOptions(lease_s=5).claim_lease_s == 5  # an explicit lease wins


async def test_claims_carry_the_derived_lease_and_drain_mode_doubles_the_batch(
    repo: ProbedRepository, clock: FakeClock, make_supervisor: MakeSupervisor
) -> None:
    add(repo, clock, 1)
    scheduled = make_supervisor(batch_size=20, concurrency=4, send_timeout_s=10.0)
    await scheduled.run_once()
    draining = make_supervisor(interval_s=0, batch_size=20, concurrency=4, send_timeout_s=10.0)
    assert draining.status().batch_size == 20
    add(repo, clock, 1)
    leases: list[float] = []
    claim = repo.claim

    async def recording(limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        leases.append(lease_s)
        return await claim(limit, lease_s, order)

    repo.claim = recording  # type: ignore[method-assign]
    await scheduled.run_once()
    await draining.run_once()
    assert leases == [5 * 10 + 30, 10 * 10 + 30]


def test_core_modules_import_nothing_from_the_settings_module() -> None:
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "insider"
    for name in ("supervisor", "sender", "domain", "ports", "clock"):
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "insider.config" not in imported, f"insider/{name}.py imports insider.config"
    from insider import ports

    assert hasattr(ports, "Observer")
