"""Thin handlers: parse, call one service method, shape the response."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, match_info_schema, querystring_schema, request_schema, response_schema
from dependency_injector.wiring import Provide, inject

from insider.config import Settings
from insider.container import Container
from insider.domain import Message, MessageStatus, validation_error
from insider.ports import InvalidState, MessageNotFound, MessageRepository
from insider.supervisor import Supervisor
from insider.web.schemas import (
    EnqueueSchema,
    ErrorSchema,
    ListQuerySchema,
    MessageIdSchema,
    MessageSchema,
    PageSchema,
    RunningSchema,
    SenderSchema,
)

_UNAVAILABLE = {"schema": ErrorSchema, "description": "The database is unreachable"}
_INVALID = {"schema": ErrorSchema, "description": "Invalid input; `fields` names each bad field"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_json(m: Message) -> dict[str, Any]:
    """The API shape of a message."""
    return {
        "id": m.id,
        "recipientPhone": m.recipient_phone,
        "content": m.content,
        "status": m.status.value,
        "messageId": m.message_id,
        "sentAt": _iso(m.sent_at),
        "createdAt": _iso(m.created_at),
        "attempts": m.attempts,
        "lastError": m.last_error,
        "nextAttemptAt": _iso(m.next_attempt_at),
    }


def error_response(status: int, error: str, fields: dict[str, list[str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if fields:
        body["fields"] = fields
    return web.json_response(body, status=status)


@docs(
    tags=["messages"],
    summary="List messages, most recent first",
    description="Sent messages by default, most recently sent first. Keyset pagination: pass `nextCursor` "
    "back as `cursor`. Other statuses are ordered by creation time, newest first.",
)
@querystring_schema(ListQuerySchema)
@response_schema(PageSchema, 200, description="One page")
@response_schema(ErrorSchema, 400, description="A cursor this service did not hand out")
@response_schema(**_INVALID, code=422)
@response_schema(**_UNAVAILABLE, code=503)
@inject
async def list_messages(
    request: web.Request, repository: MessageRepository = Provide[Container.repository]
) -> web.Response:
    query = request["querystring"]
    page = await repository.list_messages(MessageStatus(query["status"]), query["limit"], query["cursor"])
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
@inject
async def enqueue_message(
    request: web.Request,
    repository: MessageRepository = Provide[Container.repository],
    settings: Settings = Provide[Container.settings],
) -> web.Response:
    data = request["data"]
    reason = validation_error(data["to"], data["content"], settings.content_max_length)
    if reason is not None:
        field = "to" if reason.startswith("recipient_phone") else "content"
        return error_response(422, "invalid message", {field: [reason.replace("recipient_phone", "to")]})
    message = await repository.enqueue(data["to"], data["content"])
    return web.json_response(message_json(message), status=201)


@docs(tags=["messages"], summary="One message, in any state")
@match_info_schema(MessageIdSchema)
@response_schema(MessageSchema, 200, description="The message")
@response_schema(ErrorSchema, 404, description="No message has that id")
@response_schema(**_UNAVAILABLE, code=503)
@inject
async def get_message(
    request: web.Request, repository: MessageRepository = Provide[Container.repository]
) -> web.Response:
    message = await repository.get(request["match_info"]["id"])
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
@inject
async def retry_message(
    request: web.Request, repository: MessageRepository = Provide[Container.repository]
) -> web.Response:
    try:
        message = await repository.retry(request["match_info"]["id"])
    except MessageNotFound:
        return error_response(404, "no message has that id")
    except InvalidState as exc:
        return error_response(409, str(exc))
    return web.json_response(message_json(message))


@docs(
    tags=["sender"],
    summary="Start automatic sending",
    description="Idempotent. The first batch goes at once, unless the last batch of the deployment was less "
    "than one interval ago. GET is kept for the original service's clients.",
)
@response_schema(RunningSchema, 200, description="Sending runs")
@inject
async def start_sending(request: web.Request, supervisor: Supervisor = Provide[Container.supervisor]) -> web.Response:
    return web.json_response({"running": await supervisor.start()})


@docs(
    tags=["sender"],
    summary="Stop automatic sending",
    description="Idempotent. No new request starts; a request in flight is abandoned and its message goes "
    "back to pending with the same idempotency key. GET is kept for the original service's clients.",
)
@response_schema(RunningSchema, 200, description="Sending stopped")
@inject
async def stop_sending(request: web.Request, supervisor: Supervisor = Provide[Container.supervisor]) -> web.Response:
    return web.json_response({"running": await supervisor.stop()})


@docs(tags=["sender"], summary="What the sender is doing")
@response_schema(SenderSchema, 200, description="The sender's state")
@inject
async def sender_status(request: web.Request, supervisor: Supervisor = Provide[Container.supervisor]) -> web.Response:
    status = supervisor.status()
    return web.json_response(
        {
            "running": status.running,
            "batchSize": status.batch_size,
            "intervalSeconds": status.interval_s,
            "lastTickAt": _iso(status.last_tick_at),
            "nextTickAt": _iso(status.next_tick_at),
        }
    )
