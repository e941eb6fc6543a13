"""What the deployment's processes share about each provider: switches, pauses, and concurrency shares.

Two "processes" here are two dispatchers with a ProviderSwitches each, on one SQLite database
and one fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from insider.adapters.memory import InMemorySmsClient
from insider.adapters.sqlite import SqliteMessageRepository, memory_repository
from insider.clock import FakeClock
from insider.domain import Outcome, SendResult
from insider.providers.config import parse_providers
from insider.providers.dispatch import Dispatcher, runtime
from insider.providers.routing import Router
from insider.providers.switches import (
    FOLLOW_EVERY_S,
    MEMBER_TTL_S,
    OWN_SHARE_AFTER_S,
    SETTLED_S,
    ProviderSwitches,
    my_share,
    share,
)

TO = "+905301234001"
FILE = """
[[providers]]
name = "alpha"
url = "https://a.example"
concurrency = 3
[[providers]]
name = "beta"
url = "https://b.example"
[[routes]]
providers = ["alpha", "beta"]
"""
SENT = SendResult(Outcome.SENT, status_code=202, provider_message_id="p-1")
THROTTLED = SendResult(Outcome.RETRY, status_code=429, error="HTTP 429", retry_after_s=30.0, throttled=True)


@dataclass
class Process:
    dispatcher: Dispatcher
    switches: ProviderSwitches
    alpha: InMemorySmsClient

    def capacity(self, name: str) -> int:
        return self.dispatcher.providers[name].in_flight.capacity

    def share_counted(self, name: str) -> bool:
        return self.dispatcher.providers[name].share_counted


def process(repository: SqliteMessageRepository, clock: FakeClock, member: str) -> Process:
    config = parse_providers(FILE, "p.toml")
    alpha, beta = InMemorySmsClient(responder=lambda r: SENT), InMemorySmsClient(responder=lambda r: SENT)
    clients = {"alpha": alpha, "beta": beta}
    runtimes = [runtime(spec, clients[spec.name], clock) for spec in config.providers]
    dispatcher = Dispatcher(runtimes, Router(config.routes, config.providers), clock)
    switches = ProviderSwitches(repository, dispatcher, clock)
    switches.member = member
    return Process(dispatcher, switches, alpha)


@pytest.fixture
async def repository(clock: FakeClock) -> AsyncIterator[SqliteMessageRepository]:
    async with memory_repository(clock) as repository:
        yield repository


@pytest.mark.parametrize(
    ("concurrency", "members", "shares"),
    [(3, 1, [3]), (3, 2, [2, 1]), (4, 2, [2, 2]), (1, 2, [1, 0]), (2, 3, [1, 1, 0]), (10, 3, [4, 3, 3])],
)
def test_the_shares_add_up_to_the_concurrency(concurrency: int, members: int, shares: list[int]) -> None:
    assert [share(concurrency, members, rank) for rank in range(members)] == shares


async def test_a_providers_concurrency_set_in_the_file_is_split_between_the_processes_alive(
    repository: SqliteMessageRepository, clock: FakeClock
) -> None:
    one, two = process(repository, clock, "m-1"), process(repository, clock, "m-2")
    await one.switches.follow_once()
    assert one.capacity("alpha") == 3  # alone so far
    await two.switches.follow_once()
    assert (one.capacity("alpha"), two.share_counted("alpha")) == (3, False)  # two waits to be counted

    async def follow_both() -> None:
        await clock.advance(FOLLOW_EVERY_S)
        await one.switches.follow_once()
        await two.switches.follow_once()

    await follow_both()
    assert (one.capacity("alpha"), two.share_counted("alpha")) == (3, False)  # two not settled yet
    await follow_both()  # two settled: one gives its share up...
    assert (one.capacity("alpha"), two.share_counted("alpha")) == (2, False)
    await follow_both()  # ...and then two takes it
    assert (one.capacity("alpha"), two.capacity("alpha")) == (2, 1)
    # beta's concurrency is not in the file: each process keeps its own.
    assert one.capacity("beta") == two.capacity("beta") == 8

    await repository.provider_member_gone("m-1")  # one stops, and says so
    await two.switches.follow_once()
    assert two.capacity("alpha") == 3


async def test_a_process_that_stops_saying_it_is_alive_leaves_its_share_to_the_others(
    repository: SqliteMessageRepository, clock: FakeClock
) -> None:
    one, two = process(repository, clock, "m-1"), process(repository, clock, "m-2")
    await one.switches.follow_once()
    await two.switches.follow_once()
    for _ in range(3):
        await clock.advance(FOLLOW_EVERY_S)
        await one.switches.follow_once()
        await two.switches.follow_once()
    assert two.capacity("alpha") == 1
    await clock.advance(MEMBER_TTL_S + 0.1)  # m-1 was killed: it says nothing more
    await two.switches.follow_once()
    assert two.capacity("alpha") == 3


async def test_a_send_before_this_process_is_counted_waits_for_its_share(
    repository: SqliteMessageRepository, clock: FakeClock
) -> None:
    other = process(repository, clock, "m-0")
    await other.switches.follow_once()  # another process is already sending
    one = process(repository, clock, "m-1")
    sending = asyncio.ensure_future(one.dispatcher.send(TO, "hi", "k1"))
    await clock.settle()
    assert not sending.done() and one.alpha.requests == []  # not counted yet: it may not take all three
    await one.switches.follow_once()
    await clock.settle()
    assert not sending.done()  # the other process has not given anything up yet
    for _ in range(3):
        await clock.advance(FOLLOW_EVERY_S)
        await other.switches.follow_once()
        await one.switches.follow_once()
    assert (await sending).provider == "alpha"
    assert (other.capacity("alpha"), one.capacity("alpha")) == (2, 1)


async def test_with_no_share_here_the_provider_is_passed_over_and_the_route_goes_on(
    repository: SqliteMessageRepository, clock: FakeClock
) -> None:
    one = process(repository, clock, "m-1")
    await one.switches.follow_once()
    one.dispatcher.providers["alpha"].in_flight.resize(0)  # three processes ahead of it hold alpha's three
    dispatched = await one.dispatcher.send(TO, "hi", "k1")
    assert dispatched.provider == "beta" and one.alpha.requests == []


async def test_a_pause_one_process_was_asked_for_holds_in_the_others_for_what_is_left_of_it(
    repository: SqliteMessageRepository, clock: FakeClock
) -> None:
    one, two = process(repository, clock, "m-1"), process(repository, clock, "m-2")
    await one.switches.follow_once()
    await two.switches.follow_once()
    one.alpha.responder = lambda r: THROTTLED
    assert (await one.dispatcher.send(TO, "hi", "k1")).provider == "beta"  # alpha asked for 30 s
    await one.switches.follow_once()  # told
    await clock.advance(10.0)
    await two.switches.follow_once()  # learnt: 20 s left

    dispatched = await two.dispatcher.send(TO, "hi", "k2")
    assert dispatched.provider == "beta" and two.alpha.requests == []  # two never asked alpha
    assert two.dispatcher.providers["alpha"].throttled_until == pytest.approx(clock.monotonic() + 20.0)
    await clock.advance(20.0)
    assert (await two.dispatcher.send(TO, "hi", "k3")).provider == "alpha"


async def test_the_switches_and_the_pauses_survive_in_the_database_for_a_process_started_later(
    repository: SqliteMessageRepository, clock: FakeClock
) -> None:
    one = process(repository, clock, "m-1")
    await one.switches.switch("beta", False)
    later = process(repository, clock, "m-2")
    await later.switches.follow_once()
    assert later.dispatcher.providers["beta"].enabled is False
    assert later.dispatcher.providers["alpha"].enabled is True


@pytest.mark.parametrize(
    ("members", "holding", "shares"),
    [
        ([("a", 0.0)], set(), {"a": 3}),  # alone: all of it at once
        ([("a", 100.0), ("b", 0.1)], {"a"}, {"a": 3, "b": None}),  # b just joined: not counted yet
        ([("a", 100.0), ("b", SETTLED_S)], {"a"}, {"a": 2, "b": None}),  # a gives b's share up first...
        ([("a", 100.0), ("b", OWN_SHARE_AFTER_S)], {"a"}, {"a": 2, "b": 1}),  # ...then b takes it
        ([("a", 0.1), ("b", 0.1)], set(), {"a": None, "b": None}),  # two that start at once wait to be counted
        ([("a", 0.1), ("b", 0.1)], {"a"}, {"a": 3, "b": None}),  # a was alone a moment ago: it keeps it all
        (
            [("a", 100.0), ("b", 100.0), ("c", 100.0), ("d", 100.0)],
            {"a", "b", "c", "d"},
            {"a": 1, "b": 1, "c": 1, "d": 0},
        ),
    ],
)
def test_a_process_that_joins_takes_its_share_only_once_the_others_gave_theirs_up(
    members: list[tuple[str, float]], holding: set[str], shares: dict[str, int | None]
) -> None:
    assert {me: my_share(3, me, members, holding=me in holding) for me, _ in members} == shares


async def test_nothing_goes_out_before_the_switches_are_read_so_a_provider_disabled_before_a_restart_stays_off(
    repository: SqliteMessageRepository, clock: FakeClock
) -> None:
    await repository.switch_provider("alpha", False)  # an operator's choice, before this process started
    restarted = process(repository, clock, "m-1")
    sending = asyncio.ensure_future(restarted.dispatcher.send(TO, "hi", "k1"))
    await clock.settle()
    assert not sending.done()  # the switches are not read yet: it waits for them
    await restarted.switches.follow_once()
    assert (await sending).provider == "beta" and restarted.alpha.requests == []
