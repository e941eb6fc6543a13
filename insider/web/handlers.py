"""Thin handlers: parse, call one service method, shape the response."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from aiohttp_apispec import docs, match_info_schema, querystring_schema, request_schema, response_schema

from insider import __version__
from insider.config import Settings
from insider.delivery import DeliveryReceipts
from insider.domain import Message, MessageStatus, validation_error
from insider.metrics import CONTENT_TYPE, CountsCache, Metrics
from insider.original import SENT_LIST_MAX, sent_item
from insider.ports import (
    Clock,
    DeliveryRepository,
    InvalidState,
    MessageNotFound,
    MessageRepository,
    RepositoryUnavailable,
    SentCache,
)
from insider.receipts import Event, InvalidReceipts, parse_receipts
from insider.supervisor import SenderStatus, Supervisor
from insider.web.guard import browser_checks_exempt, cross_site_allowed
from insider.web.schemas import (
    EnqueueSchema,
    ErrorSchema,
    EventsSchema,
    HealthSchema,
    ListQuerySchema,
    MessageIdSchema,
    MessageSchema,
    MessageUuidSchema,
    OriginalErrorSchema,
    OriginalOkSchema,
    OriginalSentListSchema,
    PageSchema,
    ReadySchema,
    ReceiptsResultSchema,
    RunningSchema,
    SenderSchema,
    StatsSchema,
)

log = structlog.get_logger("insider.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The dashboard loads nothing from elsewhere: no CDN, no inline script, works offline.
DASHBOARD_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# The receipts endpoint's own token (its body limit is the API's: 64 KiB, a few hundred receipts).
DLR_AUTH_HEADER = "x-ins-auth-key"
DLR_SECURITY_SCHEME = "dlrToken"
DLR_QUERY_SECURITY_SCHEME = "dlrTokenQuery"
FORM = "application/x-www-form-urlencoded"
# Twilio's status callback is a form: its fields, as ours.
_FORM_FIELDS = {"MessageSid": "messageId", "MessageStatus": "status", "ErrorCode": "errorCode"}


def form_receipt(raw: bytes) -> dict[str, str]:
    """One receipt from a form body: our field names, or Twilio's (MessageSid, MessageStatus, ErrorCode)."""
    fields = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw)))
    receipt = {name: value for name, value in fields.items() if name in ("messageId", "status", "errorCode", "doneAt")}
    for theirs, ours in _FORM_FIELDS.items():
        if theirs in fields and ours not in receipt:
            receipt[ours] = fields[theirs]
    if receipt.get("errorCode") == "":
        del receipt["errorCode"]
    return receipt


_UNAVAILABLE = {"schema": ErrorSchema, "description": "The database is unreachable"}
_INVALID = {"schema": ErrorSchema, "description": "Invalid input; `fields` names each bad field"}


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers use: the objects of this app's own container, once its resources are open."""

    settings: Settings
    repository: MessageRepository
    cache: SentCache
    counts: CountsCache
    metrics: Metrics
    supervisor: Supervisor
    receipts: DeliveryReceipts
    clock: Clock


class AppServices:
    """Holds an app's Services while its lifespan runs.

    Each app reaches its own objects through ``request.app[SERVICES]``: nothing is patched
    process-wide, so two apps over two containers in one process never see each other's.
    The app is frozen before its lifespan opens the resources, so they are set here, in a
    holder put under the key when the app is made.
    """

    def __init__(self) -> None:
        self._services: Services | None = None

    def open(self, services: Services) -> None:
        self._services = services

    def close(self) -> None:
        self._services = None

    def get(self) -> Services:
        """The app's services; a JSON 503 while the app is not (or no longer) running."""
        if self._services is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "the service is not running"}', content_type="application/json"
            )
        return self._services


SERVICES = web.AppKey("services", AppServices)


def services(request: web.Request) -> Services:
    """The objects of the app that received ``request``."""
    return request.app[SERVICES].get()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_json(m: Message) -> dict[str, Any]:
    """The API shape of a message."""
    return {
        "id": m.id,
        "uuid": m.uuid,
        "recipientPhone": m.recipient_phone,
        "content": m.content,
        "status": m.status.value,
        "messageId": m.message_id,
        "sentAt": _iso(m.sent_at),
        "createdAt": _iso(m.created_at),
        "attempts": m.attempts,
        "lastError": m.last_error,
        "nextAttemptAt": _iso(m.next_attempt_at),
        "deliveredAt": _iso(m.delivered_at),
        "deliveryStatus": m.delivery_status,
        "deliveryError": m.delivery_error,
    }


def event_json(e: Event) -> dict[str, Any]:
    """The API shape of one history entry."""
    body: dict[str, Any] = {
        "at": _iso(e.at),
        "kind": e.kind,
        "outcome": e.outcome,
        "providerMessageId": e.provider_message_id,
    }
    if e.kind == "attempt":
        body |= {"attempt": e.attempt, "statusCode": e.status_code, "durationMs": e.duration_ms, "error": e.error}
    else:
        body |= {"status": e.receipt_status, "errorCode": e.error_code, "doneAt": _iso(e.done_at)}
    return body


def sender_json(status: SenderStatus) -> dict[str, Any]:
    """The API shape of the sender's state."""
    return {
        "running": status.running,
        "batchSize": status.batch_size,
        "intervalSeconds": status.interval_s,
        "lastTickAt": _iso(status.last_tick_at),
        "nextTickAt": _iso(status.next_tick_at),
        "state": status.state.value,
        "waitReason": status.wait_reason,
    }


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of digests: neither the content nor the length of the token leaks.

    Bytes, not str: compare_digest refuses str outside ASCII, which a client may well send.
    """
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest(),
        hashlib.sha256(expected.encode("utf-8")).digest(),
    )


def error_response(status: int, error: str, fields: dict[str, list[str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if fields:
        body["fields"] = fields
    return web.json_response(body, status=status)


@docs(
    tags=["messages"],
    summary="List messages, most recent first",
    description="Without `status`, every message the provider accepted (sent, delivered, undelivered), most "
    "recently sent first. With `status`, only that status: `sent` (accepted, no final receipt yet) by send time, "
    "the others by creation time, newest first. Keyset pagination: pass `nextCursor` back as `cursor`.",
)
@querystring_schema(ListQuerySchema)
@response_schema(PageSchema, 200, description="One page")
@response_schema(ErrorSchema, 400, description="A cursor this service did not hand out")
@response_schema(**_INVALID, code=422)
@response_schema(**_UNAVAILABLE, code=503)
async def list_messages(request: web.Request) -> web.Response:
    query = request["querystring"]
    status = MessageStatus(query["status"]) if query["status"] is not None else None
    page = await services(request).repository.list_messages(status, query["limit"], query["cursor"])
    return web.json_response({"data": [message_json(m) for m in page.items], "nextCursor": page.next_cursor})


@docs(
    tags=["messages"],
    summary="Queue a message",
    description="Stores one pending message; it goes out in a later batch, oldest first.",
)
@request_schema(EnqueueSchema)
@response_schema(MessageSchema, 201, description="The stored message")
@response_schema(ErrorSchema, 400, description="The body is not a JSON object")
@response_schema(ErrorSchema, 413, description="The body is too large")
@response_schema(ErrorSchema, 415, description="The body is not application/json")
@response_schema(**_INVALID, code=422)
@response_schema(**_UNAVAILABLE, code=503)
async def enqueue_message(request: web.Request) -> web.Response:
    app = services(request)
    data = request["data"]
    reason = validation_error(data["to"], data["content"], app.settings.content_max_length)
    if reason is not None:
        field = "to" if reason.startswith("recipient_phone") else "content"
        return error_response(422, "invalid message", {field: [reason.replace("recipient_phone", "to")]})
    message = await app.repository.enqueue(data["to"], data["content"])
    return web.json_response(message_json(message), status=201)


@docs(tags=["messages"], summary="One message, in any state")
@match_info_schema(MessageIdSchema)
@response_schema(MessageSchema, 200, description="The message")
@response_schema(ErrorSchema, 404, description="No message has that id")
@response_schema(**_UNAVAILABLE, code=503)
async def get_message(request: web.Request) -> web.Response:
    message = await services(request).repository.get(request["match_info"]["id"])
    if message is None:
        return error_response(404, "no message has that id")
    return web.json_response(message_json(message))


@docs(
    tags=["messages"],
    summary="One message, by the UUID the original Go service gave it",
    description="Rows of the original service's table keep their UUID through the upgrade (field `uuid`).",
)
@match_info_schema(MessageUuidSchema)
@response_schema(MessageSchema, 200, description="The message")
@response_schema(ErrorSchema, 404, description="No message has that UUID")
@response_schema(**_UNAVAILABLE, code=503)
async def get_message_by_uuid(request: web.Request) -> web.Response:
    message = await services(request).repository.get_by_uuid(str(request["match_info"]["uuid"]))
    if message is None:
        return error_response(404, "no message has that id")
    return web.json_response(message_json(message))


@docs(
    tags=["messages"],
    summary="Send a failed message again",
    description="Puts a failed message back to pending with its attempts reset.",
)
@match_info_schema(MessageIdSchema)
@response_schema(MessageSchema, 200, description="The message, pending again")
@response_schema(ErrorSchema, 404, description="No message has that id")
@response_schema(ErrorSchema, 409, description="The message is not failed")
@response_schema(**_UNAVAILABLE, code=503)
async def retry_message(request: web.Request) -> web.Response:
    return await _retry(request, request["match_info"]["id"])


@docs(
    tags=["messages"],
    summary="Send a failed message again, by the UUID the original Go service gave it",
    description="As `POST /api/v1/messages/{id}/retry`, for a row known by its UUID (field `uuid`).",
)
@match_info_schema(MessageUuidSchema)
@response_schema(MessageSchema, 200, description="The message, pending again")
@response_schema(ErrorSchema, 404, description="No message has that UUID")
@response_schema(ErrorSchema, 409, description="The message is not failed")
@response_schema(**_UNAVAILABLE, code=503)
async def retry_message_by_uuid(request: web.Request) -> web.Response:
    message = await services(request).repository.get_by_uuid(str(request["match_info"]["uuid"]))
    if message is None:
        return error_response(404, "no message has that id")
    return await _retry(request, message.id)


async def _retry(request: web.Request, message_id: int) -> web.Response:
    try:
        message = await services(request).repository.retry(message_id)
    except MessageNotFound:
        return error_response(404, "no message has that id")
    except InvalidState as exc:
        return error_response(409, str(exc))
    return web.json_response(message_json(message))


@docs(
    tags=["messages"],
    summary="A message's history",
    description="Every send attempt (time, outcome, HTTP status, duration, error, the provider's id) and every "
    "delivery receipt (its status as the provider wrote it, error code, time), oldest first. Kept for "
    "INSIDER_EVENTS_RETENTION.",
)
@match_info_schema(MessageIdSchema)
@response_schema(EventsSchema, 200, description="The history, oldest first")
@response_schema(ErrorSchema, 404, description="No message has that id")
@response_schema(**_UNAVAILABLE, code=503)
async def message_events(request: web.Request) -> web.Response:
    return await _events(request, request["match_info"]["id"])


@docs(
    tags=["messages"],
    summary="A message's history, by the UUID the original Go service gave it",
    description="As `GET /api/v1/messages/{id}/events`, for a row known by its UUID (field `uuid`).",
)
@match_info_schema(MessageUuidSchema)
@response_schema(EventsSchema, 200, description="The history, oldest first")
@response_schema(ErrorSchema, 404, description="No message has that UUID")
@response_schema(**_UNAVAILABLE, code=503)
async def message_events_by_uuid(request: web.Request) -> web.Response:
    message = await services(request).repository.get_by_uuid(str(request["match_info"]["uuid"]))
    if message is None:
        return error_response(404, "no message has that id")
    return await _events(request, message.id)


async def _events(request: web.Request, message_id: int) -> web.Response:
    repository = services(request).repository
    if not isinstance(repository, DeliveryRepository):  # an embedding program's own adapter
        return error_response(404, "this repository keeps no history")
    events = await repository.events(message_id)
    if not events and await repository.get(message_id) is None:
        return error_response(404, "no message has that id")
    return web.json_response({"data": [event_json(e) for e in events]})


@docs(
    tags=["delivery"],
    summary="Delivery receipts from the provider",
    description="One receipt `{messageId, status, errorCode?, doneAt?}` or a JSON array of them (within the "
    "API's 64 KiB body limit). `status` is `delivered`, `undelivered`, `expired` or `rejected` in any case, or a "
    "provider's form "
    "(SMPP `DELIVRD`, `UNDELIV`, `REJECTD`, ...; see README, Delivery receipts); any other status is kept in the "
    "message's history and changes nothing. Authenticated by INSIDER_DLR_TOKEN, as the `x-ins-auth-key` header or "
    "the `token` query parameter (not by the API token); off (404) when INSIDER_DLR_TOKEN is empty. The same "
    "receipt twice changes nothing; one for an id not recorded yet waits up to a day for it. A body with any "
    "invalid receipt is refused whole (422, `fields` named `<index>.<field>`). One receipt may also come as an "
    "application/x-www-form-urlencoded form, with these names or Twilio's (MessageSid, MessageStatus, ErrorCode).",
    parameters=[
        {
            "in": "body",
            "name": "body",
            "required": True,
            "schema": {
                "type": "array",
                "items": {"$ref": "#/definitions/Receipt"},
                "description": "Receipts (a single receipt object is taken too)",
            },
        },
    ],
)
@response_schema(ReceiptsResultSchema, 200, description="Every receipt taken; `results` says what each did")
@response_schema(ErrorSchema, 400, description="The body is not valid JSON")
@response_schema(ErrorSchema, 401, description="No token, or not INSIDER_DLR_TOKEN")
@response_schema(ErrorSchema, 404, description="Receipts are off: INSIDER_DLR_TOKEN is not set")
@response_schema(ErrorSchema, 413, description="The body is larger than 64 KiB")
@response_schema(ErrorSchema, 415, description="The body is not application/json")
@response_schema(**_INVALID, code=422)
@response_schema(**_UNAVAILABLE, code=503)
@browser_checks_exempt  # a provider's server calls it, under whatever name it was given
async def delivery_reports(request: web.Request) -> web.Response:
    app = services(request)
    settings, receipts, clock = app.settings, app.receipts, app.clock
    if not settings.dlr_token:
        return error_response(
            404, "delivery receipts are off: set INSIDER_DLR_TOKEN to turn on POST /api/v1/delivery-reports"
        )
    given = request.headers.get(DLR_AUTH_HEADER)
    if given is None:
        given = request.query.get("token")
    if not given:
        return error_response(401, f"this endpoint needs the INSIDER_DLR_TOKEN: header {DLR_AUTH_HEADER} or ?token=")
    if not same_secret(given, settings.dlr_token):
        return error_response(401, "the token is not valid")
    if request.content_type not in ("application/json", FORM):
        return error_response(415, f"the body must be application/json (or {FORM}, as Twilio posts it)")
    try:
        raw = await request.read()
        body = json.loads(raw) if request.content_type == "application/json" else form_receipt(raw)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"the body is larger than {request.client_max_size} bytes")
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return error_response(
            400, "the body is not valid JSON" if request.content_type != FORM else "the form is not valid"
        )
    try:
        parsed = parse_receipts(body, clock.now())
    except InvalidReceipts as exc:
        return error_response(422, "invalid receipt", exc.fields)
    outcomes = await receipts.submit(parsed)
    return web.json_response(
        {
            "received": len(parsed),
            "results": [
                {"messageId": r.provider_message_id, "result": o.result.value}
                for r, o in zip(parsed, outcomes, strict=True)
            ],
        }
    )


@docs(
    tags=["sender"],
    summary="Start automatic sending",
    description="Idempotent. The first batch goes at once, unless the last batch of the deployment was less "
    "than one interval ago. GET is kept for the original service's clients.",
)
@response_schema(RunningSchema, 200, description="Sending runs")
@response_schema(ErrorSchema, 503, description="The service is shutting down: sending cannot start")
async def start_sending(request: web.Request) -> web.Response:
    return web.json_response({"running": await services(request).supervisor.start()})


@docs(
    tags=["sender"],
    summary="Stop automatic sending",
    description="Idempotent. No new request starts; a request in flight is abandoned and its message goes "
    "back to pending with the same idempotency key. GET is kept for the original service's clients.",
)
@response_schema(RunningSchema, 200, description="Sending stopped")
async def stop_sending(request: web.Request) -> web.Response:
    return web.json_response({"running": await services(request).supervisor.stop()})


@docs(tags=["sender"], summary="What the sender is doing")
@response_schema(SenderSchema, 200, description="The sender's state")
async def sender_status(request: web.Request) -> web.Response:
    return web.json_response(sender_json(services(request).supervisor.status()))


@docs(
    tags=["sender"],
    summary="Messages per status and the sender's state",
    description="What the dashboard shows. The counts are at most a few seconds old: however many clients poll, "
    "the database is asked once per couple of seconds.",
)
@response_schema(StatsSchema, 200, description="Counts and the sender's state")
@response_schema(**_UNAVAILABLE, code=503)
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
            "sender": sender_json(app.supervisor.status()),
        }
    )


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
    description="200 when the database answers. The cache is reported too, but a cache that is down does not "
    "fail readiness (the database is the source of truth). 503 says what is down. Never needs the token.",
)
@response_schema(ReadySchema, 200, description="Ready: the database answers")
@response_schema(ReadySchema, 503, description="Not ready: `error` says what is down")
async def readyz(request: web.Request) -> web.Response:
    app = services(request)
    database_up, cache_up = await asyncio.gather(
        _probe("database", app.repository.ping), _probe("cache", app.cache.ping)
    )
    # Ready only once the schema is applied too: it is applied in the background at start-up.
    ready = database_up and app.supervisor.schema_ready
    body: dict[str, Any] = {
        "status": "ready" if ready else "unavailable",
        "database": "up" if database_up else "down",
        "cache": "up" if cache_up else "down",
    }
    if not database_up:
        body["error"] = "the database is down"
    elif not ready:
        body["error"] = "the database schema is being applied"
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
    try:
        pending: int | None = (await app.counts.get()).get(MessageStatus.PENDING, 0)
    except RepositoryUnavailable:  # a scrape still answers; the gauge keeps its last value
        pending = None
    app.metrics.set_state(running=app.supervisor.running, pending=pending)
    return web.Response(body=app.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


@cross_site_allowed  # a link or bookmark from elsewhere opens it; its data comes through checked routes
async def dashboard(request: web.Request) -> web.FileResponse:
    """The operator's page: one static file, with its script and styles beside it."""
    return web.FileResponse(STATIC_DIR / "index.html", headers=DASHBOARD_HEADERS)


# --- The original Go service's routes, answered as it answered them -------------------------------

# Start and stop of the original's routes answer whether they changed anything, so two at
# once must not both see "stopped": one per app at a time.
ORIGINAL_COMMANDS = web.AppKey("original_commands", asyncio.Lock)
_ORIGINAL_FAILURE = {"schema": OriginalErrorSchema}


def original_error(status: int, error: str) -> web.Response:
    """The original's failure envelope: ``{"success": false, "error": ...}``."""
    return web.json_response({"success": False, "error": error}, status=status)


def _original_ok(data: Any) -> web.Response:
    return web.json_response({"success": True, "data": data})


@docs(
    tags=["original service"],
    summary="Sent messages, as the original Go service listed them",
    description='`{"success": true, "data": [{"messageId", "sentAt"}, ...]}`, newest first, from the '
    f"database (at most {SENT_LIST_MAX:,}); `data` is null when nothing was sent. Also at `/messages/`. "
    "insider's own list is `GET /api/v1/messages`.",
)
@response_schema(OriginalSentListSchema, 200, description="Sent messages, newest first")
@response_schema(**_ORIGINAL_FAILURE, code=500, description="The database is unavailable")
async def original_list(request: web.Request) -> web.Response:
    try:
        # Everything the provider accepted: a delivered message was sent too.
        page = await services(request).repository.list_messages(None, SENT_LIST_MAX)
    except RepositoryUnavailable:  # the original answered every failure with a 500
        return original_error(500, "the database is unavailable; try again shortly")
    items = [sent_item(m.message_id, m.sent_at) for m in page.items if m.sent_at is not None]
    return _original_ok(items or None)


@docs(
    tags=["original service"],
    summary="Start automatic sending, as the original Go service did",
    description='200 `{"success": true, "data": "OK"}` when it starts; 500 '
    '`{"success": false, "error": "auto sending is already running"}` when it runs already. '
    "insider's own, idempotent start is `POST /api/v1/messages/start`.",
)
@response_schema(OriginalOkSchema, 200, description="Sending started")
@response_schema(**_ORIGINAL_FAILURE, code=500, description="Sending runs already")
async def original_start(request: web.Request) -> web.Response:
    supervisor = services(request).supervisor
    async with request.app[ORIGINAL_COMMANDS]:
        if supervisor.running:
            return original_error(500, "auto sending is already running")
        await supervisor.start()
    return _original_ok("OK")


@docs(
    tags=["original service"],
    summary="Stop automatic sending, as the original Go service did",
    description='200 `{"success": true, "data": "OK"}` when it stops; 500 '
    '`{"success": false, "error": "auto sending is not running"}` when it is stopped already. '
    "insider's own, idempotent stop is `POST /api/v1/messages/stop`.",
)
@response_schema(OriginalOkSchema, 200, description="Sending stopped")
@response_schema(**_ORIGINAL_FAILURE, code=500, description="Sending is stopped already")
async def original_stop(request: web.Request) -> web.Response:
    supervisor = services(request).supervisor
    async with request.app[ORIGINAL_COMMANDS]:
        if not supervisor.running:
            return original_error(500, "auto sending is not running")
        await supervisor.stop()
    return _original_ok("OK")


async def swagger_spec(request: web.Request) -> web.Response:
    """The spec again at the original's address, /swagger/doc.json."""
    return web.json_response(request.app["swagger_dict"])
