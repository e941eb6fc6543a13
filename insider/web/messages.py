"""The messages resource: list, get, enqueue (one or a batch), preview, cancel, retry and a message's history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, match_info_schema, querystring_schema, request_schema, response_schema
from marshmallow import Schema, ValidationError

from insider.config import Settings
from insider.domain import (
    DEFAULT_PRIORITY,
    Category,
    InvalidMessage,
    InvalidPhone,
    Message,
    MessageStatus,
    NewMessage,
    build_message,
    content_error,
    footer_error,
    measure,
    normalize_phone,
    text_as_sent,
)
from insider.ports import InvalidState, MessageNotFound, ReceiptStore
from insider.sending_hours import SendingHoursPolicy
from insider.web.idempotency import IDEMPOTENCY_DOC, store_once
from insider.web.providers import route_preview
from insider.web.responses import INVALID, UNAVAILABLE, error_response, event_json, message_json, stacked
from insider.web.schemas import (
    BatchSchema,
    EnqueueSchema,
    ErrorSchema,
    EventsSchema,
    ListQuerySchema,
    MessageIdSchema,
    MessageListSchema,
    MessageSchema,
    MessageUuidSchema,
    PageSchema,
    PreviewResultSchema,
    PreviewSchema,
)
from insider.web.services import services
from insider.web.validation import PATH, QUERY, VALIDATED

Handler = Callable[[web.Request], Awaitable[web.Response]]
Action = Callable[[web.Request, int], Awaitable[web.Response]]  # on the message of this id


@docs(
    tags=["messages"],
    summary="List messages, most recent first",
    description="Without `status`, every message the provider accepted (sent, delivered, undelivered), most "
    "recently sent first. With `status`, only that status: `sent` (accepted, no final receipt yet) by send time, "
    "the others by creation time, newest first. Keyset pagination: pass `nextCursor` back as `cursor`. `to` keeps "
    "the messages to one recipient (any form POST accepts; normalised to E.164); `category` those of one "
    "category (`transactional` or `commercial`).",
)
@querystring_schema(ListQuerySchema)
@response_schema(PageSchema, 200, description="One page")
@response_schema(ErrorSchema, 400, description="A cursor this service did not hand out")
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
async def list_messages(request: web.Request) -> web.Response:
    app = services(request)
    query = request[QUERY]
    to = query["to"]
    if to is not None:
        try:
            to = normalize_phone(to, app.settings.default_region)
        except InvalidPhone as exc:
            return error_response(422, "invalid input", {"to": [f"not a possible phone number: {exc}"]})
    status = MessageStatus(query["status"]) if query["status"] is not None else None
    category = Category(query["category"]) if query["category"] is not None else None
    page = await app.repository.list_messages(status, query["limit"], query["cursor"], to, category)
    return web.json_response({"data": [message_json(m) for m in page.items], "nextCursor": page.next_cursor})


def new_message(
    data: dict[str, Any], settings: Settings, now: datetime, sending_hours: SendingHoursPolicy | None = None
) -> NewMessage:
    """A checked message from one loaded EnqueueSchema body; InvalidMessage names the bad field.

    With ``sending_hours``, one due outside them is marked to wait (see SendingHoursPolicy.hold).
    """
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
        category=data.get("category", Category.TRANSACTIONAL),
        footer=settings.commercial_footer,
        respect_sending_hours=data.get("respectSendingHours", True),
        sending_hours=sending_hours,
    )


def _enqueue_route(
    summary: str, description: str, body: type[Schema], created: type[Schema], stored: str
) -> Callable[[Handler], Handler]:
    """The documentation and the body's check of a route that queues messages: what it takes, its
    201, and what else it may answer (alike for one message and a batch)."""
    return stacked(
        docs(tags=["messages"], summary=summary, description=description, parameters=[IDEMPOTENCY_DOC]),
        request_schema(body),
        response_schema(created, 201, description=stored),
        response_schema(ErrorSchema, 400, description="The body is not a JSON object, or a bad Idempotency-Key"),
        response_schema(ErrorSchema, 409, description="The Idempotency-Key was used with another body"),
        response_schema(ErrorSchema, 413, description="The body is too large"),
        response_schema(ErrorSchema, 415, description="The body is not application/json"),
        response_schema(**INVALID, code=422),
        response_schema(**UNAVAILABLE, code=503),
    )


@_enqueue_route(
    "Queue a message",
    "Stores one pending message. It goes out in the first batch after `sendAt` (or at once), higher `priority` "
    "first, and never after `validUntil` (then it is `expired`). Each item shows its `encoding` (GSM-7 or UCS-2) "
    "and `segments`.",
    EnqueueSchema,
    MessageSchema,
    "The stored message",
)
async def enqueue_message(request: web.Request) -> web.Response:
    app = services(request)
    try:
        message = new_message(request[VALIDATED], app.settings, app.clock.now(), app.sending_hours)
    except InvalidMessage as exc:
        return error_response(422, "invalid message", {exc.field: [str(exc).replace("recipient_phone", "to")]})
    return await store_once(request, app.repository, [message], lambda stored: message_json(stored[0]))


@_enqueue_route(
    "Queue up to 1,000 messages at once",
    "Each item is the body of POST /api/v1/messages. All are stored or none: a 422 names every bad item's field "
    "as `messages.<index>.<field>`. The body may be up to 4 MiB.",
    BatchSchema,
    MessageListSchema,
    "The stored messages, in the order given",
)
async def enqueue_batch(request: web.Request) -> web.Response:
    app = services(request)
    schema = EnqueueSchema()
    now = app.clock.now()
    problems: dict[str, list[str]] = {}
    messages: list[NewMessage] = []
    for index, item in enumerate(request[VALIDATED]["messages"]):
        prefix = f"messages.{index}."
        try:
            messages.append(new_message(schema.load(item), app.settings, now, app.sending_hours))
        except ValidationError as exc:
            errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            for name, found in errors.items():
                problems[prefix + str(name)] = [str(p) for p in found] if isinstance(found, list) else [str(found)]
        except InvalidMessage as exc:
            problems[prefix + exc.field] = [str(exc).replace("recipient_phone", "to")]
    if problems:
        bad = len({name.split(".")[1] for name in problems})
        total = len(request[VALIDATED]["messages"])
        return error_response(422, f"{bad} of {total} messages are invalid; none was stored", problems)
    return await store_once(
        request, app.repository, messages, lambda stored: {"data": [message_json(m) for m in stored]}
    )


@docs(
    tags=["messages"],
    summary="Characters, encoding and segments of a text, and the route a message would take",
    description="What the dashboard shows as one types, computed by the same code as the API. With `to` (and "
    "optionally `category` and `priority`), also the route a message would take: its providers in the order they "
    "would be tried, the first that can take it now, and the cost there (segments x price). A commercial message "
    "is measured as sent, with INSIDER_COMMERCIAL_FOOTER after a line break (`text`). Stores nothing.",
)
@request_schema(PreviewSchema)
@response_schema(PreviewResultSchema, 200, description="The text measured")
@response_schema(ErrorSchema, 400, description="The body is not a JSON object")
@response_schema(ErrorSchema, 413, description="The body is too large")
@response_schema(ErrorSchema, 415, description="The body is not application/json")
@response_schema(**INVALID, code=422)
async def preview_message(request: web.Request) -> web.Response:
    app = services(request)
    settings = app.settings
    body = request[VALIDATED]
    category = body.get("category", Category.TRANSACTIONAL)
    text = text_as_sent(body["content"], category, settings.commercial_footer)
    encoding, segments = measure(text)
    route = None
    if body.get("to") is not None:
        try:
            to = normalize_phone(body["to"], settings.default_region)
        except InvalidPhone:
            to = None  # the form is still being typed: no route, and no error for the text
        if to is not None:
            priority = body.get("priority", DEFAULT_PRIORITY)
            route = route_preview(app.dispatcher, to, category, priority, segments, app.clock.monotonic())
    return web.json_response(
        {
            "text": text,
            "characters": len(text),
            "encoding": encoding.value,
            "segments": segments,
            "maxLength": settings.content_max_length,
            "maxSegments": settings.max_segments,
            "error": content_error(body["content"], settings.content_max_length, settings.max_segments)
            or footer_error(
                body["content"],
                category,
                settings.commercial_footer,
                settings.content_max_length,
                settings.max_segments,
            ),
            "route": route,
        }
    )


async def _by_uuid(request: web.Request, then: Action) -> web.Response:
    """``then`` for the message with the UUID of the path (a row of the original Go service), or 404."""
    message = await services(request).repository.get_by_uuid(str(request[PATH]["uuid"]))
    if message is None:
        return error_response(404, "no message has that id")
    return await then(request, message.id)


async def _one(request: web.Request, message_id: int) -> web.Response:
    message = await services(request).repository.get(message_id)
    if message is None:
        return error_response(404, "no message has that id")
    return web.json_response(message_json(message))


async def _cancel(request: web.Request, message_id: int) -> web.Response:
    return await _moved(services(request).repository.cancel(message_id), _not_cancelled)


def _not_cancelled(refused: InvalidState) -> str:
    message = refused.message
    if message.status is MessageStatus.SENDING:
        return f"message {message.id} is already being sent"
    return f"message {message.id} is {message.status.value}: only a pending message can be cancelled"


async def _retry(request: web.Request, message_id: int) -> web.Response:
    return await _moved(services(request).repository.retry(message_id), str)


async def _moved(move: Awaitable[Message], why_not: Callable[[InvalidState], str]) -> web.Response:
    """The message a cancel or a retry moved; else 404, or 409 saying ``why_not``."""
    try:
        message = await move
    except MessageNotFound:
        return error_response(404, "no message has that id")
    except InvalidState as exc:
        return error_response(409, why_not(exc))
    return web.json_response(message_json(message))


def _keeps_history(repository: object) -> bool:
    """Whether ``repository`` keeps receipts and each message's history, as the SQL adapters do.

    The container hands out a MessageRepository, but an embedding program may override it
    with an adapter of its own that keeps neither.
    """
    return isinstance(repository, ReceiptStore) and callable(getattr(repository, "events", None))


async def _events(request: web.Request, message_id: int) -> web.Response:
    repository = services(request).repository
    if not _keeps_history(repository):  # an embedding program's own adapter
        return error_response(404, "this repository keeps no history")
    events = await repository.events(message_id)
    if not events and await repository.get(message_id) is None:
        return error_response(404, "no message has that id")
    return web.json_response({"data": [event_json(e) for e in events]})


def _one_message(
    action: Action,
    route: str,
    *,
    summary: str,
    description: str | None = None,
    answer: type[Schema] = MessageSchema,
    answered: str,
    conflict: str | None = None,
) -> tuple[Handler, Handler]:
    """The route ``route`` (``action`` on the message of the path's id), and its twin for a row known
    by the UUID the original Go service gave it, documented alike."""

    async def by_id(request: web.Request) -> web.Response:
        return await action(request, request[PATH]["id"])

    async def by_uuid(request: web.Request) -> web.Response:
        return await _by_uuid(request, action)

    def documented(handler: Handler, path: type[Schema], what: str, **about: str | None) -> Handler:
        document: Callable[[Handler], Handler] = stacked(
            docs(tags=["messages"], **{k: v for k, v in about.items() if v is not None}),
            match_info_schema(path),
            response_schema(answer, 200, description=answered),
            response_schema(ErrorSchema, 404, description=f"No message has that {what}"),
            *([response_schema(ErrorSchema, 409, description=conflict)] if conflict else []),
            response_schema(**UNAVAILABLE, code=503),
        )
        return document(handler)

    return (
        documented(by_id, MessageIdSchema, "id", summary=summary, description=description),
        documented(
            by_uuid,
            MessageUuidSchema,
            "UUID",
            summary=f"{summary}, by the UUID the original Go service gave it",
            description=f"As `{route}`, for a row known by its UUID (field `uuid`).",
        ),
    )


get_message, get_message_by_uuid = _one_message(
    _one, "GET /api/v1/messages/{id}", summary="One message, in any state", answered="The message"
)
cancel_message, cancel_message_by_uuid = _one_message(
    _cancel,
    "POST /api/v1/messages/{id}/cancel",
    summary="Cancel a pending message",
    description="A pending message (scheduled, waiting for its turn or for a retry) becomes `cancelled` and is "
    "never sent. 409 in any other state; a `sending` one is already being sent.",
    answered="The message, cancelled",
    conflict="The message is not pending",
)
retry_message, retry_message_by_uuid = _one_message(
    _retry,
    "POST /api/v1/messages/{id}/retry",
    summary="Send a failed message again",
    description="Puts a failed message back to pending with its attempts reset.",
    answered="The message, pending again",
    conflict="The message is not failed",
)
message_events, message_events_by_uuid = _one_message(
    _events,
    "GET /api/v1/messages/{id}/events",
    summary="A message's history",
    description="Every send attempt (time, outcome, HTTP status, duration, error, the provider's id) and every "
    "delivery receipt (its status as the provider wrote it, error code, time), oldest first. Kept for "
    "INSIDER_EVENTS_RETENTION.",
    answer=EventsSchema,
    answered="The history, oldest first",
)
