"""The sender as a resource: start and stop automatic sending, its state, and the counts beside it."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, response_schema

from insider.consent import WAIT_REASONS
from insider.domain import Category, MessageStatus
from insider.web.responses import UNAVAILABLE, sender_json, transition_json
from insider.web.schemas import ErrorSchema, RunningSchema, SenderSchema, StatsSchema
from insider.web.services import Services, services


@docs(
    tags=["sender"],
    summary="Start automatic sending",
    description="Idempotent. The first batch goes at once, unless the last batch of the deployment was less "
    "than one interval ago. GET is kept for the original service's clients.",
)
@response_schema(RunningSchema, 200, description="Sending runs; `result` says whether this request started it")
@response_schema(ErrorSchema, 503, description="The service is shutting down: sending cannot start")
async def start_sending(request: web.Request) -> web.Response:
    return web.json_response(transition_json(await services(request).supervisor.start()))


@docs(
    tags=["sender"],
    summary="Stop automatic sending",
    description="Idempotent. No new request starts; a request in flight is abandoned and its message goes "
    "back to pending with the same idempotency key. GET is kept for the original service's clients.",
)
@response_schema(RunningSchema, 200, description="Sending is stopped; `result` says whether this request stopped it")
async def stop_sending(request: web.Request) -> web.Response:
    return web.json_response(transition_json(await services(request).supervisor.stop()))


@docs(tags=["sender"], summary="What the sender is doing")
@response_schema(SenderSchema, 200, description="The sender's state")
async def sender_status(request: web.Request) -> web.Response:
    return web.json_response(sender_json(services(request).supervisor.status()))


@docs(
    tags=["sender"],
    summary="Messages per status and the sender's state",
    description="What the dashboard shows. The counts are at most a few seconds old: however many clients poll, "
    "the database is asked once per couple of seconds. `providers` sums, per provider, the messages it accepted, "
    "their segments and cost, and the tries it did not accept. `categories` counts the messages of each category "
    "(`transactional`, `commercial`) per status, with their total. `waiting` counts the pending messages held back "
    "by consent, per reason: `sending-hours` (outside the recipient's sending hours), `cap` (a frequency cap).",
)
@response_schema(StatsSchema, 200, description="Counts and the sender's state")
@response_schema(**UNAVAILABLE, code=503)
async def stats(request: web.Request) -> web.Response:
    app = services(request)
    by_status = await app.counts.get()
    delivered, undelivered = by_status.get(MessageStatus.DELIVERED, 0), by_status.get(MessageStatus.UNDELIVERED, 0)
    return web.json_response(
        {
            "counts": {s.value: by_status.get(s, 0) for s in MessageStatus},
            "total": sum(by_status.values()),
            # Of the messages with a final receipt, the share delivered; null before the first.
            "deliveryRate": round(delivered / (delivered + undelivered), 4) if delivered + undelivered else None,
            "segmentsSent": app.counts.segments_sent,
            "providers": _provider_totals(app),
            "categories": _category_counts(app),
            "waiting": {reason: app.counts.waiting.get(reason, 0) for reason in WAIT_REASONS},
            "sender": sender_json(app.supervisor.status()),
        }
    )


def _category_counts(app: Services) -> dict[str, dict[str, Any]]:
    """Each category's messages per status and their total, read with the counts (zeros when not kept)."""
    shown = {}
    for category in Category:
        counts = app.counts.categories.get(category, {})
        by_status = {s.value: counts.get(s, 0) for s in MessageStatus}
        shown[category.value] = {"counts": by_status, "total": sum(by_status.values())}
    return shown


def _provider_totals(app: Services) -> list[dict[str, Any]]:
    """Each configured provider's totals, read with the counts (zeros for one that has none yet)."""
    totals = {t.provider: t for t in app.counts.providers}
    shown = []
    for name in app.dispatcher.providers:
        t = totals.get(name)
        shown.append(
            {
                "name": name,
                "sent": t.sent if t else 0,
                "failed": t.failed if t else 0,
                "segments": t.segments if t else 0,
                "cost": t.cost if t else 0.0,
            }
        )
    return shown
