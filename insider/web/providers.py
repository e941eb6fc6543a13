"""The providers resource: each one's state, an operator's switch on it, and the route a message would take."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, match_info_schema, response_schema

from insider.ports import Clock, ProviderTotals
from insider.providers.breaker import BreakerState
from insider.providers.dispatch import Dispatcher, ProviderRuntime
from insider.providers.switches import UnknownProvider
from insider.web.provider_schemas import ProviderListSchema, ProviderNameSchema, ProviderSchema
from insider.web.responses import UNAVAILABLE, error_response, stacked
from insider.web.schemas import ErrorSchema
from insider.web.services import Services, services
from insider.web.validation import PATH

# The path of one provider (its name as the providers file allows it).
PROVIDER_PATH = "/api/v1/providers/{name:[A-Za-z0-9_-]+}"


def _at(clock: Clock, in_s: float) -> str | None:
    """The wall-clock time ``in_s`` seconds from now (monotonic), or None when that is not in the future."""
    if in_s <= 0:
        return None
    return (clock.now() + timedelta(seconds=in_s)).isoformat()


def provider_json(p: ProviderRuntime, totals: ProviderTotals | None, clock: Clock) -> dict[str, Any]:
    """The API shape of a provider: its settings, the deployment's totals, and its state in this process."""
    tries = p.sent + p.failed
    breaker = p.breaker_state
    return {
        "name": p.name,
        "kind": p.spec.kind,
        "enabled": p.enabled,
        "breaker": breaker.value,
        "breakerRetryAt": _at(clock, p.breaker.retry_in_s) if p.breaker and breaker is BreakerState.OPEN else None,
        "rate": p.spec.rate,
        "concurrency": p.spec.concurrency,
        "price": p.spec.price,
        "sent": totals.sent if totals else 0,
        "failed": totals.failed if totals else 0,
        "segments": totals.segments if totals else 0,
        "cost": totals.cost if totals else 0.0,
        "concurrencyShare": p.in_flight.capacity,
        "inFlight": p.in_flight.held,
        "throttled": p.throttled,
        "throttledUntil": _at(clock, p.throttled_until - clock.monotonic()),
        "meanLatencyMs": round(p.latency_s_total / tries * 1000, 1) if tries else None,
        "recentErrors": [{"at": at.isoformat(), "error": error} for at, error in reversed(p.recent_errors)],
    }


async def provider_totals(app: Services) -> dict[str, ProviderTotals]:
    """Each provider's totals for the whole deployment, at most a few seconds old (raises RepositoryUnavailable)."""
    await app.counts.get()
    return {t.provider: t for t in app.counts.providers}


def available(p: ProviderRuntime, now: float) -> bool:
    """Whether ``p`` would take a message now, judged without taking a breaker's probe."""
    return p.enabled and now >= p.throttled_until and p.breaker_state is not BreakerState.OPEN


def route_preview(
    dispatcher: Dispatcher, to: str, category: str, priority: int, segments: int, now: float
) -> dict[str, Any] | None:
    """The route a message would take, its providers in order, the first that can take it now and the cost there."""
    route = dispatcher.router.route(to, category, priority)
    if route is None:
        return None
    if route.strategy == "weighted":  # a draw picks the first one: shown by weight, the likeliest first
        ranked = sorted(range(len(route.providers)), key=lambda i: (-route.weights[i], i))
        order = tuple(route.providers[i] for i in ranked)
    else:
        order = dispatcher.router.order(route)
    first = next((name for name in order if available(dispatcher.providers[name], now)), None)
    return {
        "name": route.name,
        "strategy": route.strategy,
        "providers": list(order),
        "provider": first,
        "cost": dispatcher.providers[first].cost(segments) if first is not None else None,
    }


@docs(
    tags=["providers"],
    summary="Every provider and its state",
    description="In the order of the providers file (or the one provider of INSIDER_WEBHOOK_URL, or the built-in "
    "simulated one). `enabled`, `sent`, `failed`, `segments` and `cost` hold for the whole deployment (the "
    "totals at most a few seconds old); `breaker`, `concurrencyShare`, `inFlight`, `throttled`, `throttledUntil`, "
    "`meanLatencyMs` and `recentErrors` are this process's.",
)
@response_schema(ProviderListSchema, 200, description="The providers")
@response_schema(**UNAVAILABLE, code=503)
async def list_providers(request: web.Request) -> web.Response:
    app = services(request)
    if app.switches is not None:
        await app.switches.read_once()  # at start-up, what the database says, not the defaults
    totals = await provider_totals(app)
    providers = app.dispatcher.providers.values()
    return web.json_response({"data": [provider_json(p, totals.get(p.name), app.clock) for p in providers]})


def _documented(summary: str, description: str, answered: str, *, switch: bool) -> Any:
    return stacked(
        docs(tags=["providers"], summary=summary, description=description),
        match_info_schema(ProviderNameSchema),
        response_schema(ProviderSchema, 200, description=answered),
        response_schema(ErrorSchema, 404, description="No provider has that name"),
        *(
            [response_schema(ErrorSchema, 409, description="The repository keeps no provider switches")]
            if switch
            else []
        ),
        response_schema(**UNAVAILABLE, code=503),
    )


@_documented("One provider and its state", "As an item of `GET /api/v1/providers`.", "The provider", switch=False)
async def get_provider(request: web.Request) -> web.Response:
    app = services(request)
    provider = app.dispatcher.providers.get(request[PATH]["name"])
    if provider is None:
        return _unknown(request[PATH]["name"])
    if app.switches is not None:
        await app.switches.read_once()
    totals = await provider_totals(app)
    return web.json_response(provider_json(provider, totals.get(provider.name), app.clock))


def _unknown(name: str) -> web.Response:
    return error_response(404, f"no provider is named {name!r}")


async def _switch(request: web.Request, enabled: bool) -> web.Response:
    app = services(request)
    name = request[PATH]["name"]
    if name not in app.dispatcher.providers:
        return _unknown(name)
    if app.switches is None:  # an embedding program's repository of its own
        return error_response(409, "this repository keeps no provider switches")
    try:
        await app.switches.switch(name, enabled)
    except UnknownProvider:
        return _unknown(name)
    totals = await provider_totals(app)
    return web.json_response(provider_json(app.dispatcher.providers[name], totals.get(name), app.clock))


@_documented(
    "Take a provider out of rotation",
    "For the whole deployment, kept across restarts: no message goes to it until it is enabled again (the other "
    "processes follow within 2 s). Messages go to their route's other providers, or wait. Idempotent.",
    "The provider, disabled",
    switch=True,
)
async def disable_provider(request: web.Request) -> web.Response:
    return await _switch(request, False)


@_documented(
    "Put a provider back into rotation",
    "Undoes a disable, for the whole deployment. Idempotent.",
    "The provider, enabled",
    switch=True,
)
async def enable_provider(request: web.Request) -> web.Response:
    return await _switch(request, True)
