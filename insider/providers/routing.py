"""Routes: which rule takes a message, and in which order its providers are tried.

A route matches a message by destination (E.164 prefixes, or regions found by
libphonenumber), category and priority; what a route leaves out matches anything. Of the
routes that match, the one with the longest matching prefix wins, then the first in the
file; a route without ``match`` takes what no other route takes. Its strategy orders its
providers for one send: ``failover`` as written, ``weighted`` one drawn by weight first,
``cheapest`` by price per segment (unknown prices last).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import phonenumbers

from insider.providers.config import ProviderSpec, RouteSpec


@dataclass(frozen=True, slots=True)
class Routed:
    """The route a message takes, and its providers in the order they are tried."""

    route: RouteSpec
    providers: tuple[str, ...]


def region_of(number: str) -> str | None:
    """The ISO country code of an E.164 number, or None when libphonenumber knows none."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(parsed)
    return region if region and region != "ZZ" else None


class Router:
    """Chooses a route for each message and orders its providers; ``rng`` draws the weighted ones."""

    def __init__(
        self, routes: Sequence[RouteSpec], providers: Sequence[ProviderSpec], *, rng: Callable[[], float] | None = None
    ) -> None:
        self.routes = tuple(routes)
        self._prices = {p.name: p.price for p in providers}
        self._rng = rng or random.random
        self._default = next((r for r in self.routes if r.is_default), None)
        # Only a default failover route (one provider, or the file's order): the same answer for every message.
        only = self.routes[0] if len(self.routes) == 1 else None
        self._always = (
            Routed(only, only.providers)
            if only is not None and only.is_default and only.strategy == "failover"
            else None
        )

    def route(self, to: str, category: str = "transactional", priority: int = 5) -> RouteSpec | None:
        """The route of a message to ``to`` (E.164), or None when no route takes it."""
        best: RouteSpec | None = None
        best_length = -1
        region: str | None = None
        region_known = False
        for route in self.routes:
            if route.is_default:
                continue
            if route.categories and category not in route.categories:
                continue
            if route.priorities and priority not in route.priorities:
                continue
            length = 0
            if route.prefixes:
                matching = [len(p) for p in route.prefixes if to.startswith(p)]
                if not matching:
                    continue
                length = max(matching)
            if route.regions:
                if not region_known:
                    region, region_known = region_of(to), True
                if region not in route.regions:
                    continue
            if length > best_length:  # the longest prefix wins; among equals, the first route
                best, best_length = route, length
        return best or self._default

    def order(self, route: RouteSpec) -> tuple[str, ...]:
        """The route's providers in the order one send tries them."""
        names = route.providers
        if route.strategy == "cheapest":
            unknown = float("inf")
            indexed = sorted(
                range(len(names)), key=lambda i: (p if (p := self._prices[names[i]]) is not None else unknown, i)
            )
            return tuple(names[i] for i in indexed)
        if route.strategy == "weighted":
            total = sum(route.weights)
            draw = self._rng() * total
            first = len(names) - 1
            for i, weight in enumerate(route.weights):
                if draw < weight:
                    first = i
                    break
                draw -= weight
            rest = sorted((i for i in range(len(names)) if i != first), key=lambda i: (-route.weights[i], i))
            return (names[first], *(names[i] for i in rest))
        return names

    def choose(self, to: str, category: str = "transactional", priority: int = 5) -> Routed | None:
        if self._always is not None:
            return self._always
        route = self.route(to, category, priority)
        return None if route is None else Routed(route, self.order(route))
