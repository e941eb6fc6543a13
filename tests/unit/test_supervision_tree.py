"""The supervision tree: every long-lived task is the supervisor's child, closed with its own deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from insider.adapters.memory import InMemorySmsClient, Request
from insider.children import RESTART_BACKOFF_S
from insider.clock import FakeClock
from insider.domain import SendResult
from insider.sender import BatchSender, SenderOptions
from insider.supervisor import STOP_MARGIN_S, Child, Supervisor, SupervisorState
from tests.conftest import eventually
from tests.unit.support import ProbedRepository

PHONE = "+905551234567"


class Stubborn:
    """A child that ignores cancellation until the test lets it go (``release``, also done by the fixture)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancellations = 0
        self.started = 0

    async def __call__(self) -> None:
        self.started += 1
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancellations += 1  # swallowed on purpose: the bug the deadline guards against


Make = Callable[..., Supervisor]


@pytest.fixture
def stubborn() -> Iterator[Stubborn]:
    """A stubborn child, let go at the end of the test whatever happened (else the loop would wait for it)."""
    child = Stubborn()
    yield child
    child.release.set()


@pytest.fixture
async def make(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, stubborn: Stubborn
) -> AsyncIterator[Make]:
    made: list[Supervisor] = []

    def build(*, children: tuple[Child, ...] = (), interval_s: float = 10.0) -> Supervisor:
        sender = BatchSender(repo, sms, None, clock, SenderOptions(batch_size=2))
        supervisor = Supervisor(sender, repo, interval_s=interval_s, clock=clock, children=children)
        made.append(supervisor)
        return supervisor

    yield build
    stubborn.release.set()
    for supervisor in made:
        await supervisor.close()


async def finishes_within(clock: FakeClock, work: Coroutine[Any, Any, Any], *, bound_s: float) -> Any:
    """Run ``work`` while the fake clock moves; it must end by ``bound_s`` seconds and not before half of it."""
    task = asyncio.ensure_future(work)
    while not task.done() and clock.monotonic() < bound_s:
        await clock.advance(0.25)
    await eventually(task.done, what=f"the call to end within {bound_s}s of fake time")
    return task.result()


async def test_a_stubborn_child_cannot_hold_close_past_its_own_deadline(
    make: Make, clock: FakeClock, stubborn: Stubborn
) -> None:
    supervisor = make(children=(Child("stubborn", stubborn, close_timeout_s=2.0),))
    await supervisor.start()
    await clock.settle()
    assert stubborn.started == 1

    with capture_logs() as logs:
        transition = await finishes_within(clock, supervisor.close(grace_s=5.0), bound_s=5.0 + STOP_MARGIN_S)
    assert transition.after is SupervisorState.CLOSED
    assert clock.monotonic() <= 2.0 + 0.25  # its own deadline, not the sender's grace
    assert stubborn.cancellations >= 1
    assert supervisor.abandoned == ["stubborn"]
    assert [c.state for c in supervisor.status().children] == ["abandoned"]
    assert any(e["event"].startswith("a child of the supervisor did not end") for e in logs)


async def test_a_child_asked_to_finish_ends_on_its_own_within_its_deadline(make: Make, clock: FakeClock) -> None:
    finished = asyncio.Event()
    cancelled = False

    async def drains() -> None:
        nonlocal cancelled
        try:
            await finished.wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    supervisor = make(children=(Child("drains", drains, close_timeout_s=3.0, finish=finished.set),))
    await supervisor.start()
    await clock.settle()
    await supervisor.close()
    assert not cancelled  # it ended on its own once asked
    assert [c.state for c in supervisor.status().children] == ["stopped"]


async def test_a_crashing_child_is_restarted_with_backoff_and_its_health_is_shown(make: Make, clock: FakeClock) -> None:
    runs = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"crash {runs}")
        healthy.set()
        await asyncio.Event().wait()

    supervisor = make(children=(Child("flaky", flaky),))
    with capture_logs() as logs:
        await supervisor.start()
        await clock.settle()
        assert runs == 1
        [child] = supervisor.status().children
        assert (child.state, child.restarts, child.last_error) == ("restarting", 1, "RuntimeError: crash 1")

        await clock.advance(RESTART_BACKOFF_S)  # 0.5 s, then 1 s, then 2 s
        assert runs == 2
        await clock.advance(2 * RESTART_BACKOFF_S - 0.25)
        assert runs == 2
        await clock.advance(0.25)
        assert runs == 3
        await clock.advance(4 * RESTART_BACKOFF_S)
        assert runs == 4 and healthy.is_set()
    [child] = supervisor.status().children
    assert (child.state, child.restarts) == ("running", 3)
    crashes = [e for e in logs if e["event"] == "a child of the supervisor crashed; it is started again"]
    assert [e["restart_in_s"] for e in crashes] == [0.5, 1.0, 2.0]
    assert all(e["child"] == "flaky" for e in crashes)


async def test_children_that_need_the_schema_start_once_it_is_applied(
    make: Make, repo: ProbedRepository, clock: FakeClock
) -> None:
    started: list[str] = []

    def child(name: str, needs_schema: bool) -> Child:
        async def run() -> None:
            started.append(name)
            await asyncio.Event().wait()

        return Child(name, run, needs_schema=needs_schema)

    repo.available = False
    supervisor = make(children=(child("database", True), child("free", False)))
    await supervisor.prepare_when_reachable()
    await clock.settle()
    assert started == ["free"]
    repo.available = True
    await clock.advance(1.0)
    assert started == ["free", "database"]


async def test_twenty_concurrent_starts_of_a_stopped_sender_give_exactly_one_that_started(
    make: Make, clock: FakeClock
) -> None:
    supervisor = make()
    starts = await asyncio.gather(*(supervisor.start() for _ in range(20)))
    assert sum(t.changed for t in starts) == 1
    assert {(t.before, t.after) for t in starts if not t.changed} == {(SupervisorState.RUNNING,) * 2}
    stops = await asyncio.gather(*(supervisor.stop() for _ in range(20)))
    assert sum(t.changed for t in stops) == 1
    assert supervisor.state is SupervisorState.IDLE


async def test_a_batch_that_ignores_its_cancellation_cannot_hold_a_stop_past_its_bound(
    make: Make, repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock, stubborn: Stubborn
) -> None:
    repo.add(PHONE, "held")
    in_flight = asyncio.Event()

    async def never_answers(request: Request) -> SendResult:
        in_flight.set()
        await stubborn()
        raise AssertionError("released only at the end of the test")

    sms.responder = never_answers
    supervisor = make()
    await supervisor.start()
    await eventually(in_flight.is_set, what="the request in flight")

    transition = await finishes_within(clock, supervisor.stop(grace_s=2.0), bound_s=2.0 + STOP_MARGIN_S)
    assert transition.changed and clock.monotonic() <= 2.0 + STOP_MARGIN_S
    assert supervisor.abandoned == ["batch"]


async def test_after_close_no_task_of_the_supervisor_is_left(make: Make, clock: FakeClock) -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    before = set(asyncio.all_tasks())
    supervisor = make(children=(Child("forever", forever), Child("other", forever)), interval_s=0)
    await supervisor.start()
    await supervisor.prepare_when_reachable()
    report = asyncio.ensure_future(supervisor.run_once())
    await clock.settle()
    await supervisor.close()
    await asyncio.wait({report})
    left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert left == []
    assert clock.sleepers == 0
