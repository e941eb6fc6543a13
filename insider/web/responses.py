"""What the API answers with: its JSON errors, the shapes of a message, an event and the sender."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from insider.domain import Message
from insider.history import Event
from insider.supervisor import SenderStatus, SupervisorState, Transition
from insider.web.schemas import ErrorSchema

H = TypeVar("H", bound=Callable[..., Any])


def stacked(*decorators: Callable[[H], H]) -> Callable[[H], H]:
    """Several decorators as one, applied as if stacked above a function in this order (to
    document alike routes that answer alike with aiohttp-apispec's decorators)."""

    def decorate(handler: H) -> H:
        for decorator in reversed(decorators):
            handler = decorator(handler)
        return handler

    return decorate


# Two error answers many routes give, as their decorators document them.
UNAVAILABLE = {"schema": ErrorSchema, "description": "The database is unreachable"}
INVALID = {"schema": ErrorSchema, "description": "Invalid input; `fields` names each bad field"}


def error_response(status: int, error: str, fields: dict[str, list[str]] | None = None) -> web.Response:
    """The API's JSON error: ``{"error": ...}``, with ``fields`` naming each bad field when given."""
    body: dict[str, Any] = {"error": error}
    if fields:
        body["fields"] = fields
    return web.json_response(body, status=status)


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
        "category": m.category.value,
        "respectSendingHours": m.respect_sending_hours,
        "waitingUntil": _iso(m.waiting_until),
        "waitReason": m.wait_reason if m.waiting_until is not None else None,
        "suppressionReason": m.suppression_reason,
        "deliveredAt": _iso(m.delivered_at),
        "deliveryStatus": m.delivery_status,
        "deliveryError": m.delivery_error,
        "provider": m.provider,
        "cost": m.cost,
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
        body |= {
            "attempt": e.attempt,
            "statusCode": e.status_code,
            "durationMs": e.duration_ms,
            "error": e.error,
            "provider": e.provider,
        }
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
        "children": [
            {"name": c.name, "state": c.state, "restarts": c.restarts, "lastError": c.last_error}
            for c in status.children
        ],
    }


def transition_json(transition: Transition) -> dict[str, Any]:
    """The API shape of what a start or a stop did: this request's own transition."""
    if transition.command == "start":
        result = "started" if transition.changed else "already running"
    else:
        result = "stopped" if transition.changed else "already stopped"
    return {
        "running": transition.after is SupervisorState.RUNNING,
        "result": result,
        "previousState": transition.before.value,
        "state": transition.after.value,
    }
