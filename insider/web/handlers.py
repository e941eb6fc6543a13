"""Thin handlers: parse, call one service method, shape the response."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from aiohttp_apispec import docs, match_info_schema, querystring_schema, request_schema, response_schema
from marshmallow import ValidationError

from insider import __version__
from insider.config import Settings
from insider.domain import (
    DEFAULT_PRIORITY,
    InvalidMessage,
    InvalidPhone,
    Message,
    MessageStatus,
    NewMessage,
    build_message,
    content_error,
    measure,
    normalize_phone,
)
from insider.history import Event
from insider.metrics import CONTENT_TYPE, CountsCache, Metrics
from insider.original import SENT_LIST_MAX, sent_item
from insider.ports import (
    Clock,
    IdempotencyConflict,
    IdempotencyKey,
    InvalidState,
    MessageNotFound,
    MessageRepository,
    ReceiptStore,
    RepositoryUnavailable,
    SentCache,
)
from insider.receipt_parsing import InvalidReceipts, parse_receipts
from insider.receipt_writer import ReceiptWriter
from insider.supervisor import SenderStatus, Supervisor
from insider.web.guard import browser_checks_exempt, cross_site_allowed
from insider.web.schemas import (
    BatchSchema,
    EnqueueSchema,
    ErrorSchema,
    EventsSchema,
    HealthSchema,
    ListQuerySchema,
    MessageIdSchema,
    MessageListSchema,
    MessageSchema,
    MessageUuidSchema,
    OriginalErrorSchema,
    OriginalOkSchema,
    OriginalSentListSchema,
    PageSchema,
    PreviewResultSchema,
    PreviewSchema,
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
    receipts: ReceiptWriter
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
        "sendAt": _iso(m.send_at),
        "priority": m.priority,
        "validUntil": _iso(m.valid_until),
        "encoding": m.encoding.value,
        "segments": m.segments,
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
    "the others by creation time, newest first. Keyset pagination: pass `nextCursor` back as `cursor`. `to` keeps "
    "the messages to one recipient (any form POST accepts; normalised to E.164).",
)
@querystring_schema(ListQuerySchema)
@response_schema(PageSchema, 200, description="One page")
@response_schema(ErrorSchema, 400, description="A cursor this service did not hand out")
@response_schema(**_INVALID, code=422)
@response_schema(**_UNAVAILABLE, code=503)
async def list_messages(request: web.Request) -> web.Response:
    app = services(request)
    query = request["querystring"]
    to = query["to"]
    if to is not None:
        try:
            to = normalize_phone(to, app.settings.default_region)
        except InvalidPhone as exc:
            return error_response(422, "invalid input", {"to": [f"not a possible phone number: {exc}"]})
    status = MessageStatus(query["status"]) if query["status"] is not None else None
    page = await app.repository.list_messages(status, query["limit"], query["cursor"], to)
    return web.json_response({"data": [message_json(m) for m in page.items], "nextCursor": page.next_cursor})


def new_message(data: dict[str, Any], settings: Settings, now: datetime) -> NewMessage:
    """A checked message from one loaded EnqueueSchema body; InvalidMessage names the bad field."""
    return build_message(
        data["to"],
        data["content"],
        send_at=data.get("sendAt"),
        priority=data.get("priority", DEFAULT_PRIORITY),
        valid_until=data.get("validUntil"),
        now=now,
        max_length=settings.content_max_length,
        region=settings.default_region,
        max_segments=settings.max_segments,
    )


# Printable ASCII without spaces at the ends, as clients make them (UUIDs, ULIDs, ...).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")


async def _idempotency(request: web.Request) -> IdempotencyKey | web.Response | None:
    """The request's Idempotency-Key with a digest of what it asks, None without one, or a 400."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        return error_response(
            400,
            "invalid Idempotency-Key",
            {"Idempotency-Key": ["1 to 255 printable ASCII characters, no spaces at the ends"]},
        )
    body = json.loads(await request.text())
    canonical = json.dumps([request.path, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return IdempotencyKey(key, hashlib.sha256(canonical.encode()).hexdigest())


async def _store(
    request: web.Request, repository: MessageRepository, messages: list[NewMessage]
) -> tuple[list[Message], bool] | web.Response:
    idempotency = await _idempotency(request)
    if isinstance(idempotency, web.Response):
        return idempotency
    try:
        enqueued = await repository.enqueue_many(messages, idempotency)
    except IdempotencyConflict:
        return error_response(
            409,
            "this Idempotency-Key was used with another request body in the last 24 hours",
            {"Idempotency-Key": ["already used with another body"]},
        )
    return enqueued.messages, enqueued.replayed


_IDEMPOTENCY_DOC = {
    "in": "header",
    "name": "Idempotency-Key",
    "type": "string",
    "required": False,
    "maxLength": 255,
    "description": "Retry-safe enqueue: the same key with the same body within 24 hours answers the same "
    "messages again (same status code, header Idempotent-Replayed: true) and queues nothing; another body: 409",
}


@docs(
    tags=["messages"],
    summary="Queue a message",
    description="Stores one pending message. It goes out in the first batch after `sendAt` (or at once), "
    "higher `priority` first, and never after `validUntil` (then it is `expired`). Each item shows its "
    "`encoding` (GSM-7 or UCS-2) and `segments`.",
    parameters=[_IDEMPOTENCY_DOC],
)
@request_schema(EnqueueSchema)
@response_schema(MessageSchema, 201, description="The stored message")
@response_schema(ErrorSchema, 400, description="The body is not a JSON object, or a bad Idempotency-Key")
@response_schema(ErrorSchema, 409, description="The Idempotency-Key was used with another body")
@response_schema(ErrorSchema, 413, description="The body is too large")
@response_schema(ErrorSchema, 415, description="The body is not application/json")
@response_schema(**_INVALID, code=422)
@response_schema(**_UNAVAILABLE, code=503)
async def enqueue_message(request: web.Request) -> web.Response:
    app = services(request)
    try:
        message = new_message(request["data"], app.settings, app.clock.now())
    except InvalidMessage as exc:
        return error_response(422, "invalid message", {exc.field: [str(exc).replace("recipient_phone", "to")]})
    stored = await _store(request, app.repository, [message])
    if isinstance(stored, web.Response):
        return stored
    messages, replayed = stored
    response = web.json_response(message_json(messages[0]), status=201)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@docs(
    tags=["messages"],
    summary="Queue up to 1,000 messages at once",
    description="Each item is the body of POST /api/v1/messages. All are stored or none: a 422 names every bad "
    "item's field as `messages.<index>.<field>`. The body may be up to 4 MiB.",
    parameters=[_IDEMPOTENCY_DOC],
)
@request_schema(BatchSchema)
@response_schema(MessageListSchema, 201, description="The stored messages, in the order given")
@response_schema(ErrorSchema, 400, description="The body is not a JSON object, or a bad Idempotency-Key")
@response_schema(ErrorSchema, 409, description="The Idempotency-Key was used with another body")
@response_schema(ErrorSchema, 413, description="The body is too large")
@response_schema(ErrorSchema, 415, description="The body is not application/json")
@response_schema(**_INVALID, code=422)
@response_schema(**_UNAVAILABLE, code=503)
async def enqueue_batch(request: web.Request) -> web.Response:
    app = services(request)
    schema = EnqueueSchema()
    now = app.clock.now()
    problems: dict[str, list[str]] = {}
    messages: list[NewMessage] = []
    for index, item in enumerate(request["data"]["messages"]):
        prefix = f"messages.{index}."
        try:
            messages.append(new_message(schema.load(item), app.settings, now))
        except ValidationError as exc:
            errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            for name, found in errors.items():
                problems[prefix + str(name)] = [str(p) for p in found] if isinstance(found, list) else [str(found)]
        except InvalidMessage as exc:
            problems[prefix + exc.field] = [str(exc).replace("recipient_phone", "to")]
    if problems:
        bad = len({name.split(".")[1] for name in problems})
        total = len(request["data"]["messages"])
        return error_response(422, f"{bad} of {total} messages are invalid; none was stored", problems)
    stored = await _store(request, app.repository, messages)
    if isinstance(stored, web.Response):
        return stored
    stored_messages, replayed = stored
    response = web.json_response({"data": [message_json(m) for m in stored_messages]}, status=201)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@docs(
    tags=["messages"],
    summary="Characters, encoding and segments of a text",
    description="What the dashboard shows as one types, computed by the same code as the API. Stores nothing.",
)
@request_schema(PreviewSchema)
@response_schema(PreviewResultSchema, 200, description="The text measured")
@response_schema(ErrorSchema, 400, description="The body is not a JSON object")
@response_schema(ErrorSchema, 413, description="The body is too large")
@response_schema(ErrorSchema, 415, description="The body is not application/json")
@response_schema(**_INVALID, code=422)
async def preview_message(request: web.Request) -> web.Response:
    settings = services(request).settings
    content = request["data"]["content"]
    encoding, segments = measure(content)
    return web.json_response(
        {
            "characters": len(content),
            "encoding": encoding.value,
            "segments": segments,
            "maxLength": settings.content_max_length,
            "maxSegments": settings.max_segments,
            "error": content_error(content, settings.content_max_length, settings.max_segments),
        }
    )


@docs(
    tags=["messages"],
    summary="Cancel a pending message",
    description="A pending message (scheduled, waiting for its turn or for a retry) becomes `cancelled` and is "
    "never sent. 409 in any other state; a `sending` one is already being sent.",
)
@match_info_schema(MessageIdSchema)
@response_schema(MessageSchema, 200, description="The message, cancelled")
@response_schema(ErrorSchema, 404, description="No message has that id")
@response_schema(ErrorSchema, 409, description="The message is not pending")
@response_schema(**_UNAVAILABLE, code=503)
async def cancel_message(request: web.Request) -> web.Response:
    return await _cancel(request, request["match_info"]["id"])


@docs(
    tags=["messages"],
    summary="Cancel a pending message, by the UUID the original Go service gave it",
    description="As `POST /api/v1/messages/{id}/cancel`, for a row known by its UUID (field `uuid`).",
)
@match_info_schema(MessageUuidSchema)
@response_schema(MessageSchema, 200, description="The message, cancelled")
@response_schema(ErrorSchema, 404, description="No message has that UUID")
@response_schema(ErrorSchema, 409, description="The message is not pending")
@response_schema(**_UNAVAILABLE, code=503)
async def cancel_message_by_uuid(request: web.Request) -> web.Response:
    return await _by_uuid(request, _cancel)


async def _by_uuid(request: web.Request, then: Callable[[web.Request, int], Awaitable[web.Response]]) -> web.Response:
    """``then`` for the message with the UUID of the path (a row of the original Go service), or 404."""
    message = await services(request).repository.get_by_uuid(str(request["match_info"]["uuid"]))
    if message is None:
        return error_response(404, "no message has that id")
    return await then(request, message.id)


async def _one(request: web.Request, message_id: int) -> web.Response:
    message = await services(request).repository.get(message_id)
    if message is None:
        return error_response(404, "no message has that id")
    return web.json_response(message_json(message))


async def _cancel(request: web.Request, message_id: int) -> web.Response:
    try:
        message = await services(request).repository.cancel(message_id)
    except MessageNotFound:
        return error_response(404, "no message has that id")
    except InvalidState as exc:
        if exc.message.status is MessageStatus.SENDING:
            return error_response(409, f"message {exc.message.id} is already being sent")
        status = exc.message.status.value
        return error_response(409, f"message {exc.message.id} is {status}: only a pending message can be cancelled")
    return web.json_response(message_json(message))


@docs(tags=["messages"], summary="One message, in any state")
@match_info_schema(MessageIdSchema)
@response_schema(MessageSchema, 200, description="The message")
@response_schema(ErrorSchema, 404, description="No message has that id")
@response_schema(**_UNAVAILABLE, code=503)
async def get_message(request: web.Request) -> web.Response:
    return await _one(request, request["match_info"]["id"])


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
    return await _by_uuid(request, _one)


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
    return await _by_uuid(request, _retry)


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
    return await _by_uuid(request, _events)


def keeps_history(repository: object) -> bool:
    """Whether ``repository`` keeps receipts and each message's history, as the SQL adapters do.

    The container hands out a MessageRepository, but an embedding program may override it
    with an adapter of its own that keeps neither.
    """
    return isinstance(repository, ReceiptStore) and callable(getattr(repository, "events", None))


async def _events(request: web.Request, message_id: int) -> web.Response:
    repository = services(request).repository
    if not keeps_history(repository):  # an embedding program's own adapter
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
    if not given or not same_secret(given, settings.dlr_token):
        refused = error_response(
            401,
            f"this endpoint needs the INSIDER_DLR_TOKEN: header {DLR_AUTH_HEADER} or ?token="
            if not given
            else "the token is not valid",
        )
        # A 401 names how to authenticate (RFC 9110): an API key, in a header or the query.
        refused.headers["WWW-Authenticate"] = f'ApiKey header="{DLR_AUTH_HEADER}", query="token"'
        return refused
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
            "segmentsSent": app.counts.segments_sent,
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
    by_status: dict[MessageStatus, int] | None
    try:
        by_status = await app.counts.get()
        pending: int | None = by_status.get(MessageStatus.PENDING, 0)
    except RepositoryUnavailable:  # a scrape still answers; the gauge keeps its last value
        pending, by_status = None, None
    app.metrics.set_state(running=app.supervisor.running, pending=pending, counts=by_status)
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
