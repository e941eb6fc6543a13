"""Routes and breakers: which route takes a message, the order of its providers, and a breaker's states."""

from __future__ import annotations

from collections import Counter
from itertools import cycle

from insider.clock import FakeClock
from insider.providers.breaker import BreakerState, CircuitBreaker
from insider.providers.config import Breaker, parse_providers
from insider.providers.routing import Router

PROVIDERS = """
[[providers]]
name = "alpha"
url = "https://a.example"
price = 0.02
[[providers]]
name = "beta"
url = "https://b.example"
price = 0.01
[[providers]]
name = "gamma"
url = "https://c.example"
"""


def route_name(router: Router, to: str, category: str = "transactional", priority: int = 5) -> str:
    route = router.route(to, category, priority)
    assert route is not None
    return route.name


def order(router: Router, to: str = "+905301234001") -> tuple[str, ...]:
    routed = router.choose(to)
    assert routed is not None
    return routed.providers


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


def router(routes: str, rng: float = 0.0) -> Router:
    config = parse_providers(PROVIDERS + routes, "p.toml")
    values = cycle([rng])
    return Router(config.routes, config.providers, rng=lambda: next(values))


def test_the_longest_prefix_wins_then_the_first_route_and_the_default_takes_the_rest() -> None:
    routes = router(
        """
[[routes]]
name = "turkey"
match = { prefix = ["+90"] }
providers = ["alpha"]
[[routes]]
name = "turkish mobiles"
match = { prefix = ["+905"] }
providers = ["beta"]
[[routes]]
name = "also turkey"
match = { prefix = ["+90"] }
providers = ["gamma"]
[[routes]]
name = "rest"
providers = ["gamma", "alpha"]
"""
    )
    assert route_name(routes, "+905301234001") == "turkish mobiles"
    assert route_name(routes, "+902121234567") == "turkey"
    assert route_name(routes, "+442071234567") == "rest"


def test_region_category_and_priority_narrow_a_route() -> None:
    routes = router(
        """
[[routes]]
name = "uk commercial"
match = { region = ["GB"], category = "commercial" }
providers = ["alpha"]
[[routes]]
name = "urgent"
match = { priority = [8, 9] }
providers = ["beta"]
"""
    )
    assert route_name(routes, "+442071234567", "commercial") == "uk commercial"
    assert route_name(routes, "+442071234567", "transactional") == "default"
    assert route_name(routes, "+15555550100", "commercial") == "default"  # no region known
    assert route_name(routes, "+905301234001", priority=9) == "urgent"
    assert route_name(routes, "+905301234001", priority=5) == "default"


def test_failover_keeps_the_order_cheapest_sorts_by_price_unknown_last() -> None:
    routes = router(
        """
[[routes]]
strategy = "cheapest"
providers = ["gamma", "alpha", "beta"]
"""
    )
    [route] = routes.routes
    assert routes.order(route) == ("beta", "alpha", "gamma")
    default = router("")
    assert default.order(default.routes[0]) == ("alpha", "beta", "gamma")


def test_weighted_draws_the_first_by_weight_and_the_rest_follow_by_weight() -> None:
    text = """
[[routes]]
strategy = "weighted"
providers = ["alpha", "beta", "gamma"]
weights = [80, 15, 5]
"""
    assert order(router(text, rng=0.0)) == ("alpha", "beta", "gamma")
    assert order(router(text, rng=0.85)) == ("beta", "alpha", "gamma")
    assert order(router(text, rng=0.99)) == ("gamma", "alpha", "beta")
    draws = Counter(order(router(text, rng=i / 1000))[0] for i in range(1000))
    assert draws == {"alpha": 800, "beta": 150, "gamma": 50}


async def test_a_breaker_opens_after_consecutive_failures_probes_after_the_cooldown_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(Breaker(failures=3, cooldown_s=30.0, probes=1), clock)
    for _ in range(2):
        assert breaker.allows()
        breaker.failed()
    breaker.succeeded()  # not consecutive any more
    for _ in range(3):
        assert breaker.allows()
        breaker.failed()
    assert state(breaker) is BreakerState.OPEN and not breaker.allows()
    assert breaker.retry_in_s == 30.0
    await clock.advance(29.9)
    assert not breaker.allows()
    await clock.advance(0.1)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allows()  # the probe
    assert not breaker.allows()  # only one at a time
    breaker.failed()  # the probe failed: open again for another cool-down
    assert state(breaker) is BreakerState.OPEN and breaker.opened == 2
    await clock.advance(30.0)
    assert breaker.allows()
    breaker.succeeded()
    assert state(breaker) is BreakerState.CLOSED and breaker.allows()


async def test_a_breaker_opens_on_a_failure_ratio_over_its_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(Breaker(failures=100, ratio=0.5, window_s=10.0, min_calls=10), clock)
    for i in range(9):
        breaker.failed() if i % 2 else breaker.succeeded()
    assert state(breaker) is BreakerState.CLOSED  # 4 of 9: too few calls, and under half
    breaker.failed()
    assert state(breaker) is BreakerState.OPEN  # 5 of 10
    await clock.advance(100.0)
    assert breaker.allows()
    breaker.succeeded()
    for i in range(10):
        await clock.advance(2.0)  # the window keeps only the last 10 s
        breaker.failed() if i % 3 == 0 else breaker.succeeded()
    assert state(breaker) is BreakerState.CLOSED


async def test_a_probe_released_without_a_verdict_lets_another_probe_go() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(Breaker(failures=1, cooldown_s=1.0), clock)
    breaker.failed()
    await clock.advance(1.0)
    assert breaker.allows() and not breaker.allows()
    breaker.released()  # throttled: says nothing about the provider's health
    assert breaker.allows()
