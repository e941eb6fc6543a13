"""What operators and their tools poll: liveness, readiness, Prometheus metrics, and the dashboard's page."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, response_schema

from insider import __version__
from insider.domain import MessageStatus
from insider.logs import get_logger
from insider.metrics import CONTENT_TYPE
from insider.ports import RepositoryUnavailable
from insider.web.guard import cross_site_allowed
from insider.web.schemas import HealthSchema, ReadySchema
from insider.web.services import services

log = get_logger("insider.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The dashboard loads nothing from elsewhere: no CDN, no inline script, works offline.
DASHBOARD_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@docs(
    tags=["operations"],
    summary="Liveness",
    description="200 while the process can serve requests, whatever the database does. Never needs the token.",
)
@response_schema(HealthSchema, 200, description="The process serves")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def _probe(what: str, ping: Callable[[], Awaitable[None]]) -> bool:
    try:
        await ping()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any failure means down; the reason goes to the log, not to the caller
        # At debug: a probe every few seconds during an outage would repeat the failed tick's one line.
        setting = "INSIDER_DATABASE_URL" if what == "database" else "INSIDER_REDIS_URL"
        log.debug("readiness check failed", check=what, setting=setting, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


@docs(
    tags=["operations"],
    summary="Readiness",
    description="200 when the database answers, its schema is applied and every long-lived child of the "
    "supervisor runs. The cache is reported too, but a cache that is down does not fail readiness (the database "
    "is the source of truth). 503 says what is down. Never needs the token.",
)
@response_schema(ReadySchema, 200, description="Ready: the database answers")
@response_schema(ReadySchema, 503, description="Not ready: `error` says what is down")
async def readyz(request: web.Request) -> web.Response:
    app = services(request)
    database_up, cache_up = await asyncio.gather(
        _probe("database", app.repository.ping), _probe("cache", app.cache.ping)
    )
    children = {c.name: c for c in app.supervisor.status().children}
    down = [c for c in children.values() if c.state != "running"]
    # Ready only once the schema is applied too: it is applied in the background at start-up, and
    # the children that need it start then.
    ready = database_up and app.supervisor.schema_ready and not down
    body: dict[str, Any] = {
        "status": "ready" if ready else "unavailable",
        "database": "up" if database_up else "down",
        "cache": "up" if cache_up else "down",
        "children": {name: c.state for name, c in children.items()},
    }
    if not database_up:
        body["error"] = "the database is down"
    elif not app.supervisor.schema_ready:
        body["error"] = "the database schema is being applied"
    elif down:
        body["error"] = "not running: " + "; ".join(
            f"{c.name} ({c.state}{f' after {c.last_error}' if c.last_error else ''})" for c in down
        )
    return web.json_response(body, status=200 if ready else 503)


@docs(
    tags=["operations"],
    summary="Prometheus metrics",
    description="The Prometheus text format. `insider_pending_messages` is at most a few seconds old; when the "
    "database is down it keeps its last value. Never needs the token.",
    produces=["text/plain"],
    responses={"200": {"description": "Every metric, in the Prometheus text format (version 0.0.4)"}},
)
async def metrics(request: web.Request) -> web.Response:
    app = services(request)
    by_status: dict[MessageStatus, int] | None
    try:
        by_status = await app.counts.get()
        pending: int | None = by_status.get(MessageStatus.PENDING, 0)
    except RepositoryUnavailable:  # a scrape still answers; the gauge keeps its last value
        pending, by_status = None, None
    waiting = app.counts.waiting if by_status is not None else None
    suppressions = app.counts.suppressions if by_status is not None else None
    app.metrics.set_state(
        running=app.supervisor.running, pending=pending, counts=by_status, waiting=waiting, suppressions=suppressions
    )
    costs = {t.provider: t.cost for t in app.counts.providers} if by_status is not None else {}
    for provider in app.dispatcher.providers.values():
        breaker = provider.breaker_state.value
        app.metrics.set_provider(
            provider.name, breaker=breaker, enabled=provider.enabled, cost=costs.get(provider.name)
        )
    return web.Response(body=app.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


@cross_site_allowed  # a link or bookmark from elsewhere opens it; its data comes through checked routes
async def dashboard(request: web.Request) -> web.FileResponse:
    """The operator's page: one static file, with its script and styles beside it."""
    return web.FileResponse(STATIC_DIR / "index.html", headers=DASHBOARD_HEADERS)
