"""A message through its route's providers: failover only when certainly not accepted, breakers, throttling."""

from __future__ import annotations

import asyncio

import pytest

from insider.adapters.memory import InMemorySmsClient, Request
from insider.adapters.sqlite import memory_repository
from insider.clock import FakeClock
from insider.domain import Outcome, SendResult
from insider.ports import SmsClient
from insider.providers.breaker import BreakerState
from insider.providers.config import parse_providers
from insider.providers.dispatch import THROTTLE_S, Dispatcher, runtime
from insider.providers.routing import Router

TO = "+905301234001"
FILE = """
[[providers]]
name = "alpha"
url = "https://a.example"
breaker_failures = 2
breaker_cooldown = "30s"
[[providers]]
name = "beta"
url = "https://b.example"
[[routes]]
providers = ["alpha", "beta"]
"""


def answer(result: SendResult) -> InMemorySmsClient:
    return InMemorySmsClient(responder=lambda request: result)


SENT = SendResult(Outcome.SENT, status_code=202, provider_message_id="p-1")
REFUSED = SendResult(Outcome.RETRY, error="connection error: refused")
UNAVAILABLE = SendResult(Outcome.RETRY, status_code=503, error="HTTP 503: down")
TIMEOUT = SendResult(Outcome.RETRY, error="outcome unknown: timeout after 10s", ambiguous=True)
THROTTLED = SendResult(Outcome.RETRY, status_code=429, error="HTTP 429: slow down", throttled=True)
BAD_NUMBER = SendResult(Outcome.FAILED, status_code=400, error="HTTP 400: bad number")


def dispatcher(clock: FakeClock, alpha: InMemorySmsClient, beta: InMemorySmsClient, text: str = FILE) -> Dispatcher:
    config = parse_providers(text, "p.toml")
    clients = {"alpha": alpha, "beta": beta}
    runtimes = [runtime(spec, clients[spec.name], clock) for spec in config.providers]
    return Dispatcher(runtimes, Router(config.routes, config.providers), clock)


def breaker_of(route: Dispatcher, name: str) -> BreakerState:
    return route.providers[name].breaker_state


@pytest.mark.parametrize("first", [REFUSED, UNAVAILABLE, BAD_NUMBER, THROTTLED])
async def test_a_message_moves_on_only_when_certainly_not_accepted(clock: FakeClock, first: SendResult) -> None:
    alpha, beta = answer(first), answer(SENT)
    dispatched = await dispatcher(clock, alpha, beta).send(TO, "hi", "key-1")

    assert (dispatched.result.outcome, dispatched.provider) == (Outcome.SENT, "beta")
    assert [(t.provider, t.result.outcome) for t in dispatched.tries] == [
        ("alpha", first.outcome),
        ("beta", Outcome.SENT),
    ]
    assert [r.idempotency_key for r in alpha.requests + beta.requests] == ["key-1", "key-1"]


async def test_an_ambiguous_outcome_stays_with_its_provider_and_goes_again_there(clock: FakeClock) -> None:
    alpha, beta = answer(TIMEOUT), answer(SENT)
    route = dispatcher(clock, alpha, beta)

    first = await route.send(TO, "hi", "key-1")
    assert (first.result.outcome, first.result.ambiguous, first.provider) == (Outcome.RETRY, True, "alpha")
    assert beta.requests == []  # never to another provider: alpha may have it

    alpha.responder = lambda request: SENT
    again = await route.send(TO, "hi", "key-1", pinned="alpha")
    assert (again.result.outcome, again.provider) == (Outcome.SENT, "alpha")
    assert beta.requests == []


async def test_a_route_with_failover_on_ambiguous_moves_on_and_marks_a_possible_duplicate(clock: FakeClock) -> None:
    text = FILE.replace('providers = ["alpha", "beta"]', 'providers = ["alpha", "beta"]\nfailover_on_ambiguous = true')
    alpha, beta = answer(TIMEOUT), answer(SENT)
    dispatched = await dispatcher(clock, alpha, beta, text).send(TO, "hi", "key-1", pinned="alpha")

    assert (dispatched.result.outcome, dispatched.provider) == (Outcome.SENT, "beta")
    assert [(t.provider, t.possible_duplicate) for t in dispatched.tries] == [("alpha", True), ("beta", False)]


async def test_the_breaker_opens_traffic_moves_and_after_the_cooldown_a_probe_closes_it(clock: FakeClock) -> None:
    alpha, beta = answer(UNAVAILABLE), answer(SENT)
    route = dispatcher(clock, alpha, beta)
    for i in range(2):
        assert (await route.send(TO, "hi", f"k{i}")).provider == "beta"
    assert breaker_of(route, "alpha") is BreakerState.OPEN

    for i in range(5):  # open: alpha is not even asked
        dispatched = await route.send(TO, "hi", f"open-{i}")
        assert [t.provider for t in dispatched.tries] == ["beta"]
    assert len(alpha.requests) == 2

    await clock.advance(30.0)
    alpha.responder = lambda request: SENT
    assert (await route.send(TO, "hi", "probe")).provider == "alpha"  # the probe went, and succeeded
    assert breaker_of(route, "alpha") is BreakerState.CLOSED


async def test_a_throttling_provider_is_left_alone_for_a_while_and_the_others_are_not_slowed(clock: FakeClock) -> None:
    alpha, beta = answer(THROTTLED), answer(SENT)
    route = dispatcher(clock, alpha, beta)

    assert (await route.send(TO, "hi", "k1")).provider == "beta"
    assert breaker_of(route, "alpha") is BreakerState.CLOSED  # busy is not down
    assert [t.provider for t in (await route.send(TO, "hi", "k2")).tries] == ["beta"]
    await clock.advance(THROTTLE_S)
    alpha.responder = lambda request: SENT
    assert (await route.send(TO, "hi", "k3")).provider == "alpha"


class Turns:
    """Deployment-wide rates as the database gives them: each send of a provider waits one interval more."""

    def __init__(self) -> None:
        self.next_s: dict[str, float] = {}

    async def take_send(self, provider: str, rate: float, max_wait_s: float) -> float | None:
        wait_s = self.next_s.get(provider, 0.0)
        if wait_s > max_wait_s:
            return None
        self.next_s[provider] = wait_s + 1.0 / rate
        return wait_s

    async def next_turn_in(self, provider: str) -> float:
        return self.next_s.get(provider, 0.0)


class Held:
    """A provider whose answers wait until released: a request in flight while others wait their turn."""

    def __init__(self, result: SendResult) -> None:
        self.result = result
        self.keys: list[str] = []
        self.release = asyncio.Event()

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        self.keys.append(idempotency_key)
        await self.release.wait()
        return self.result


async def test_a_message_waiting_for_its_rate_turn_does_not_go_to_a_provider_that_throttled_meanwhile(
    clock: FakeClock,
) -> None:
    config = parse_providers(FILE.replace('url = "https://a.example"', 'url = "https://a.example"\nrate = 5'), "p.toml")
    alpha, beta = Held(THROTTLED), answer(SENT)
    clients: dict[str, SmsClient] = {"alpha": alpha, "beta": beta}
    runtimes = [runtime(spec, clients[spec.name], clock) for spec in config.providers]
    route = Dispatcher(runtimes, Router(config.routes, config.providers), clock, rates=Turns())

    first = asyncio.create_task(route.send(TO, "hi", "k1"))
    await clock.settle()
    assert alpha.keys == ["k1"]  # in flight at alpha
    second = asyncio.create_task(route.send(TO, "hi", "k2"))  # its turn at alpha comes 0.2 s later
    await clock.settle()
    assert clock.sleepers == 1  # it took its turn and waits for it
    alpha.release.set()  # alpha answers k1 with a 429: it is paused
    assert (await first).provider == "beta"
    await clock.advance(0.2)
    dispatched = await second

    assert alpha.keys == ["k1"]  # k2 did not go on to collect a second 429 from a known pause
    assert [t.provider for t in dispatched.tries] == ["beta"] and dispatched.provider == "beta"


async def test_with_every_provider_unavailable_the_message_is_not_attempted_and_says_when_to_come_back(
    clock: FakeClock,
) -> None:
    alpha, beta = (
        answer(THROTTLED),
        answer(SendResult(Outcome.RETRY, status_code=429, retry_after_s=7.0, throttled=True)),
    )
    route = dispatcher(clock, alpha, beta)
    await route.send(TO, "hi", "k1")
    route.providers["beta"].enabled = False

    dispatched = await route.send(TO, "hi", "k2")
    assert dispatched.not_attempted and dispatched.tries == ()
    assert dispatched.result.outcome is Outcome.RETRY
    assert dispatched.result.error == "no provider can take it now: alpha (throttled), beta (disabled)"
    assert dispatched.result.retry_after_s == pytest.approx(THROTTLE_S)  # alpha's pause; beta waits for an operator


async def test_every_provider_refusing_for_good_fails_the_message(clock: FakeClock) -> None:
    dispatched = await dispatcher(clock, answer(BAD_NUMBER), answer(BAD_NUMBER)).send(TO, "hi", "k")
    assert (dispatched.result.outcome, dispatched.provider, len(dispatched.tries)) == (Outcome.FAILED, None, 2)


async def test_a_providers_concurrency_bounds_its_requests_in_flight(clock: FakeClock) -> None:
    release = asyncio.Event()
    in_flight = most = 0

    async def held(request: Request) -> SendResult:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await release.wait()
        in_flight -= 1
        return SENT

    text = FILE.replace('url = "https://a.example"', 'url = "https://a.example"\nconcurrency = 3')
    route = dispatcher(clock, InMemorySmsClient(responder=held), answer(SENT), text)
    sends = [asyncio.ensure_future(route.send(TO, "hi", f"k{i}")) for i in range(10)]
    await clock.settle()
    assert in_flight == 3
    release.set()
    await asyncio.gather(*sends)
    assert most == 3


# --- rates: the deployment's turns, kept in the database (SQLite here, on the fake clock) -------

RATED = FILE.replace('url = "https://a.example"', 'url = "https://a.example"\nrate = 5\ntimeout = "2s"')


async def test_a_near_turn_is_waited_for_and_a_far_one_sends_the_message_back_due_then_one_turn_apart(
    clock: FakeClock,
) -> None:
    async with memory_repository(clock) as rates:
        alpha, beta = answer(SENT), answer(SENT)
        config = parse_providers(RATED, "p.toml")
        runtimes = [runtime(spec, {"alpha": alpha, "beta": beta}[spec.name], clock) for spec in config.providers]
        route = Dispatcher(runtimes, Router(config.routes, config.providers), clock, rates=rates)

        assert (await route.send(TO, "hi", "k1")).provider == "alpha"  # its turn is now
        second = asyncio.ensure_future(route.send(TO, "hi", "k2"))  # its turn is 0.2 s away: it waits in the batch
        await clock.settle()
        assert not second.done() and len(alpha.requests) == 1

        # The next free turn, 0.4 s away, is beyond RATE_HOLD_S: back to pending, due at its turn,
        # each one turn after the one before (they would otherwise all come back for the same turn).
        dues = []
        for key in ("k3", "k4", "k5"):
            dispatched = await route.send(TO, "hi", key)
            assert dispatched.not_attempted and dispatched.tries == ()
            assert dispatched.result.error == "no provider can take it now: alpha (at its rate)"
            assert dispatched.result.retry_after_s is not None
            dues.append(dispatched.result.retry_after_s)
        assert dues == pytest.approx([0.4, 0.6, 0.8])
        assert beta.requests == []  # within alpha's timeout: no failover

        await clock.advance(0.2)
        assert (await second).provider == "alpha"
        await clock.advance(0.2)
        assert (await route.send(TO, "hi", "k3")).provider == "alpha"  # its turn came: it goes at once
        assert len(alpha.requests) == 3


async def test_a_turn_further_away_than_the_providers_timeout_goes_to_the_routes_next_provider(
    clock: FakeClock,
) -> None:
    async with memory_repository(clock) as rates:
        alpha, beta = answer(SENT), answer(SENT)
        config = parse_providers(RATED.replace("rate = 5", "rate = 0.25"), "p.toml")  # one turn each 4 s
        runtimes = [runtime(spec, {"alpha": alpha, "beta": beta}[spec.name], clock) for spec in config.providers]
        route = Dispatcher(runtimes, Router(config.routes, config.providers), clock, rates=rates)

        assert (await route.send(TO, "hi", "k1")).provider == "alpha"
        dispatched = await route.send(TO, "hi", "k2")  # alpha's next turn is 4 s away, past its 2 s timeout
        assert dispatched.provider == "beta" and [t.provider for t in dispatched.tries] == ["beta"]
        assert len(alpha.requests) == 1


async def test_sends_waiting_for_a_slot_when_the_provider_begins_throttling_do_not_go_to_it(clock: FakeClock) -> None:
    release = asyncio.Event()

    async def throttling(request: Request) -> SendResult:
        await release.wait()
        return THROTTLED

    text = FILE.replace('url = "https://a.example"', 'url = "https://a.example"\nconcurrency = 1')
    alpha = InMemorySmsClient(responder=throttling)
    beta = answer(SENT)
    route = dispatcher(clock, alpha, beta, text)
    sends = [asyncio.ensure_future(route.send(TO, "hi", f"k{i}")) for i in range(3)]
    await clock.settle()  # the first is at alpha, the others wait for its one slot
    release.set()
    done = await asyncio.gather(*sends)

    assert [r.idempotency_key for r in alpha.requests] == ["k0"]  # nothing more went to it while it throttles
    assert [d.provider for d in done] == ["beta"] * 3
    assert [[t.provider for t in d.tries] for d in done] == [["alpha", "beta"], ["beta"], ["beta"]]


async def test_a_message_an_ambiguous_try_left_with_a_provider_waits_for_it_even_when_it_is_switched_off(
    clock: FakeClock,
) -> None:
    alpha, beta = answer(SENT), answer(SENT)
    route = dispatcher(clock, alpha, beta)
    route.providers["alpha"].enabled = False  # an operator took it out of rotation after the timeout

    dispatched = await route.send(TO, "hi", "k1", pinned="alpha")
    assert dispatched.not_attempted and beta.requests == []  # beta might send it a second time
    assert dispatched.result.error == "no provider can take it now: alpha (disabled)"
    route.providers["alpha"].enabled = True
    assert (await route.send(TO, "hi", "k1", pinned="alpha")).provider == "alpha"
