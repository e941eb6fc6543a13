"""marshmallow schemas: request validation and the Swagger spec."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from insider.domain import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    TIME_RANGE,
    Category,
    Encoding,
    MessageStatus,
    parse_rfc3339,
    unstorable_text,
)
from insider.receipt_parsing import ReceiptResult
from insider.web.provider_schemas import PreviewRouteSchema, ProviderTotalsSchema

STATUSES = [s.value for s in MessageStatus]
DELIVERY_STATUSES = ["delivered", "undelivered", "expired", "rejected"]
RECEIPT_RESULTS = [r.value for r in ReceiptResult]
CATEGORIES = [c.value for c in Category]


def storable(text: str) -> None:
    """Text a database can store (the domain's rule): no NUL characters, no unpaired surrogates."""
    problem = unstorable_text(text)
    if problem is not None:
        raise ValidationError(problem)


def choice(values: list[str], description: str | None = None, **options: Any) -> fields.String:
    """A string field that takes one of ``values``, and says so in the spec (``enum``)."""
    metadata: dict[str, Any] = {"enum": values, **options.pop("metadata", {})}
    if description is not None:
        metadata["description"] = description
    if options.get("allow_none"):
        metadata["x-nullable"] = True
    return fields.String(validate=validate.OneOf(values), metadata=metadata, **options)


class StrictInteger(fields.Integer):
    """An integer in JSON: no strings, no booleans, no fractions."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("must be a whole number")
        result: int = super()._deserialize(value, attr, data, **kwargs)
        return result


class StrictBoolean(fields.Boolean):
    """true or false in JSON: no strings, no numbers."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


RFC3339 = f"RFC 3339 date-time with an offset (2026-12-01T09:00:00+03:00 or ...Z), {TIME_RANGE}"


class RFC3339DateTime(fields.AwareDateTime):
    """An RFC 3339 date-time, read by the domain's own parser (the rule of ``enqueue`` and files too):
    a date, a ``T`` (or a space), a time and an offset, nothing looser, within the storable range."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            return parse_rfc3339(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class EnqueueSchema(Schema):
    class Meta:
        unknown = RAISE

    to = fields.String(
        required=True,
        metadata={
            "description": "Recipient: a possible phone number, international (+905301234001, +90 530 123 40 01) "
            "or, with INSIDER_DEFAULT_REGION set, national (0530 123 40 01); stored in E.164",
            "example": "+905301234001",
            "minLength": 1,
            "maxLength": 64,
        },
    )
    content = fields.String(
        required=True,
        validate=storable,
        metadata={
            "description": "Text, not blank, at most INSIDER_CONTENT_MAX_LENGTH characters (Unicode code points)",
            "example": "Hello",
            "minLength": 1,
            "pattern": r"\S",
        },
    )
    sendAt = RFC3339DateTime(
        load_default=None,
        allow_none=True,
        format="iso",
        metadata={
            "description": f"Not sent before this time ({RFC3339}); goes in the first batch after it. "
            "Absent, null or past: due at once",
            "x-nullable": True,
        },
    )
    priority = StrictInteger(
        load_default=DEFAULT_PRIORITY,
        validate=validate.Range(min=MIN_PRIORITY, max=MAX_PRIORITY),
        metadata={"description": "0 to 9, higher first among due messages (default 5)", "example": 5},
    )
    validUntil = RFC3339DateTime(
        load_default=None,
        allow_none=True,
        format="iso",
        metadata={
            "description": f"Not sent after this time ({RFC3339}): then `expired`. In the future, and after sendAt",
            "x-nullable": True,
        },
    )
    category = choice(
        CATEGORIES,
        "transactional (the default: codes, order updates) or commercial (marketing); routes match it",
        load_default=Category.TRANSACTIONAL.value,
    )
    respectSendingHours = StrictBoolean(
        load_default=True,
        metadata={
            "description": "Keep the recipient's sending hours (INSIDER_SENDING_HOURS, for the categories "
            "INSIDER_SENDING_HOURS_FOR names): a message due outside them waits, shown by waitingUntil and "
            "waitReason. false (a message that must go at any hour) only for a transactional message: a 422 "
            "naming this field for a commercial one. Default true",
            "example": True,
        },
    )


class BatchSchema(Schema):
    class Meta:
        unknown = RAISE

    messages = fields.List(
        fields.Dict(),
        required=True,
        validate=validate.Length(min=1, max=1000),
        metadata={
            "description": "1 to 1,000 messages, each as the body of POST /api/v1/messages; all stored or none",
            "items": {"$ref": "#/definitions/Enqueue"},
        },
    )


class PreviewSchema(Schema):
    class Meta:
        unknown = RAISE

    content = fields.String(required=True, validate=storable, metadata={"description": "The text to measure"})
    to = fields.String(
        metadata={"description": "The recipient, in any form POST /api/v1/messages takes: the route is shown for it"}
    )
    category = choice(CATEGORIES, "What the message is for (routes match it); default transactional")
    priority = StrictInteger(
        validate=validate.Range(MIN_PRIORITY, MAX_PRIORITY),
        metadata={"description": f"{MIN_PRIORITY} to {MAX_PRIORITY} (routes match it); default {DEFAULT_PRIORITY}"},
    )


class PreviewResultSchema(Schema):
    text = fields.String(
        required=True,
        metadata={
            "description": "The text as sent: a commercial message's content, a line break and "
            "INSIDER_COMMERCIAL_FOOTER (when set); any other's content. What the other fields measure"
        },
    )
    characters = fields.Integer(required=True, metadata={"description": "Unicode code points"})
    encoding = choice([e.value for e in Encoding], required=True)
    segments = fields.Integer(required=True, metadata={"description": "SMS segments the text takes"})
    maxLength = fields.Integer(required=True, metadata={"description": "INSIDER_CONTENT_MAX_LENGTH"})
    maxSegments = fields.Integer(required=True, metadata={"description": "INSIDER_MAX_SEGMENTS (0: no limit)"})
    error = fields.String(
        allow_none=True, required=True, metadata={"description": "Why it would be refused, or null", "x-nullable": True}
    )
    route = fields.Nested(
        PreviewRouteSchema,
        allow_none=True,
        required=True,
        metadata={
            "description": "The route a message to `to` would take; null without `to`, when `to` is not a phone "
            "number, or when no route takes it",
            "x-nullable": True,
        },
    )


class ListQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        load_default=50, validate=validate.Range(min=1, max=500), metadata={"description": "Page size, 1 to 500"}
    )
    cursor = fields.String(load_default=None, metadata={"description": "nextCursor of the previous page"})
    status = choice(
        STATUSES,
        "Only messages in this status; without it, every message the provider accepted (sent, delivered, undelivered)",
        load_default=None,
    )
    to = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Only the messages to this recipient, in any form `to` accepts on POST"},
    )
    category = choice(CATEGORIES, "Only the messages of this category", load_default=None)


class MessageIdSchema(Schema):
    id = fields.Integer(
        required=True, validate=validate.Range(min=1, max=2**63 - 1), metadata={"description": "The message's id"}
    )


class MessageUuidSchema(Schema):
    uuid = fields.UUID(required=True, metadata={"description": "The UUID of a row of the original Go service"})


class MessageSchema(Schema):
    id = fields.Integer(required=True)
    uuid = fields.String(
        allow_none=True,
        required=True,
        metadata={
            "description": "The UUID the original Go service gave the row (also on rows added since); "
            "null on rows queued by insider before it kept one, and on SQLite",
            "x-nullable": True,
        },
    )
    recipientPhone = fields.String(required=True)
    content = fields.String(required=True)
    status = choice(STATUSES, required=True)
    messageId = fields.String(
        allow_none=True, required=True, metadata={"description": "The provider's id, once sent", "x-nullable": True}
    )
    sentAt = fields.DateTime(allow_none=True, required=True, metadata={"x-nullable": True})
    createdAt = fields.DateTime(required=True)
    attempts = fields.Integer(required=True)
    lastError = fields.String(allow_none=True, required=True, metadata={"x-nullable": True})
    nextAttemptAt = fields.DateTime(allow_none=True, required=True, metadata={"x-nullable": True})
    sendAt = fields.DateTime(
        allow_none=True, required=True, metadata={"description": "Not sent before", "x-nullable": True}
    )
    priority = fields.Integer(required=True, metadata={"description": "0 to 9, higher first"})
    validUntil = fields.DateTime(
        allow_none=True, required=True, metadata={"description": "Expires, never sent, after", "x-nullable": True}
    )
    encoding = choice([e.value for e in Encoding], required=True)
    segments = fields.Integer(required=True, metadata={"description": "SMS segments of the content"})
    category = choice(CATEGORIES, "transactional or commercial", required=True)
    respectSendingHours = fields.Boolean(
        required=True,
        metadata={"description": "False: a transactional message that may go outside the sending hours"},
    )
    waitingUntil = fields.DateTime(
        allow_none=True,
        required=True,
        metadata={
            "description": "A pending message held back (see waitReason): when it may go; null otherwise",
            "x-nullable": True,
        },
    )
    waitReason = choice(
        ["sending-hours", "cap"],
        "Why a pending message waits until waitingUntil: the recipient's sending hours, or the frequency cap",
        allow_none=True,
        required=True,
    )
    suppressionReason = fields.String(
        allow_none=True,
        required=True,
        metadata={
            "description": "A suppressed message: why it was never sent (the suppression's reason, such as "
            "opt-out, or cap)",
            "x-nullable": True,
        },
    )
    deliveredAt = fields.DateTime(
        allow_none=True,
        required=True,
        metadata={"description": "When the final receipt says it was delivered (or failed)", "x-nullable": True},
    )
    deliveryStatus = choice(DELIVERY_STATUSES, "What the final receipt said", allow_none=True, required=True)
    deliveryError = fields.String(
        allow_none=True, required=True, metadata={"description": "The provider's error code", "x-nullable": True}
    )
    provider = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "The name of the provider that accepted it; null before", "x-nullable": True},
    )
    cost = fields.Float(
        allow_none=True,
        required=True,
        metadata={
            "description": "segments x that provider's price per segment; null without a price",
            "x-nullable": True,
        },
    )


class EventSchema(Schema):
    at = fields.DateTime(required=True, metadata={"description": "When the attempt started or the receipt came"})
    kind = choice(["attempt", "receipt"], required=True)
    outcome = fields.String(
        allow_none=True,
        required=True,
        metadata={
            "description": "attempt: sent, retry, failed, invalid, expired (its retry would pass validUntil), "
            "throttled, interrupted, failover; deferred (held back by sending hours or a cap: not an attempt; "
            "error says why) or suppressed (never sent: error says why); "
            "receipt: delivered, undelivered, expired, rejected, or null for a status that is not final",
            "x-nullable": True,
        },
    )
    providerMessageId = fields.String(allow_none=True, required=True, metadata={"x-nullable": True})
    attempt = fields.Integer(allow_none=True, metadata={"description": "attempt: its number", "x-nullable": True})
    statusCode = fields.Integer(
        allow_none=True, metadata={"description": "attempt: the HTTP status", "x-nullable": True}
    )
    durationMs = fields.Float(
        allow_none=True, metadata={"description": "attempt: how long it took", "x-nullable": True}
    )
    error = fields.String(allow_none=True, metadata={"description": "attempt: what went wrong", "x-nullable": True})
    provider = fields.String(
        allow_none=True, metadata={"description": "attempt: the provider it went to", "x-nullable": True}
    )
    status = fields.String(allow_none=True, metadata={"description": "receipt: the status as sent", "x-nullable": True})
    errorCode = fields.String(allow_none=True, metadata={"description": "receipt: the error code", "x-nullable": True})
    doneAt = fields.DateTime(allow_none=True, metadata={"description": "receipt: when it happened", "x-nullable": True})


class EventsSchema(Schema):
    data = fields.List(fields.Nested(EventSchema), required=True, metadata={"description": "Oldest first"})


class ReceiptResultSchema(Schema):
    messageId = fields.String(required=True)
    result = choice(
        RECEIPT_RESULTS,
        "applied: the message is now delivered or undelivered; recorded: kept in its history, status unchanged; "
        "duplicate: had before, nothing changed; waiting: no message has that id yet (kept up to a day); "
        "ambiguous: no provider named, and messages of several providers have that id (applied to none, not kept)",
        required=True,
    )


class ReceiptsResultSchema(Schema):
    received = fields.Integer(required=True)
    results = fields.List(fields.Nested(ReceiptResultSchema), required=True, metadata={"description": "In order"})


# The receipt body, as Swagger shows it (the handler checks it itself, to name `<index>.<field>`).
RECEIPT_DEFINITION = {
    "type": "object",
    "required": ["messageId", "status"],
    "properties": {
        "messageId": {
            "type": "string",
            "description": "The provider's id: the messageId of its 202",
            "example": "3f1c0e4e-8d7e-4a8a-9a35-2f3c8f5b2a10",
        },
        "status": {
            "type": "string",
            "description": "delivered, undelivered, expired, rejected, or a provider's form (DELIVRD, UNDELIV, ...)",
            "example": "delivered",
        },
        "errorCode": {"type": "string", "description": "The provider's error code, if any", "x-nullable": True},
        "doneAt": {
            "type": "string",
            "format": "date-time",
            "description": f"When it was delivered (or failed); ISO 8601 (no offset: UTC), {TIME_RANGE}",
            "x-nullable": True,
        },
    },
}


class MessageListSchema(Schema):
    data = fields.List(fields.Nested(MessageSchema), required=True)


class PageSchema(Schema):
    data = fields.List(fields.Nested(MessageSchema), required=True)
    nextCursor = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "Pass as cursor for the next page; null on the last", "x-nullable": True},
    )


_STATES = ["idle", "running", "stopping", "closed"]
_CHILD_STATES = ["running", "restarting", "stopped", "abandoned"]


class RunningSchema(Schema):
    """What a start or a stop did: whether sending runs now, and the transition this request caused."""

    running = fields.Boolean(required=True)
    result = choice(
        ["started", "already running", "stopped", "already stopped"],
        "What this request did: of many concurrent starts of a stopped sender, exactly one answers `started`",
        required=True,
    )
    previousState = choice(_STATES, "Before it", required=True)
    state = choice(_STATES, "After it", required=True)


class ChildSchema(Schema):
    """A long-lived task of the supervision tree (receipt writers, upkeep, ...)."""

    name = fields.String(required=True)
    state = choice(
        _CHILD_STATES,
        "`restarting`: it crashed and starts again after a backoff; `abandoned`: it ignored its cancellation at "
        "shutdown",
        required=True,
    )
    restarts = fields.Integer(required=True, metadata={"description": "How often it crashed and was started again"})
    lastError = fields.String(allow_none=True, required=True, metadata={"x-nullable": True})


class SenderSchema(Schema):
    running = fields.Boolean(required=True)
    batchSize = fields.Integer(required=True)
    intervalSeconds = fields.Float(required=True)
    lastTickAt = fields.DateTime(allow_none=True, required=True, metadata={"x-nullable": True})
    nextTickAt = fields.DateTime(allow_none=True, required=True, metadata={"x-nullable": True})
    state = choice(_STATES, required=True)
    waitReason = fields.String(
        allow_none=True,
        required=True,
        metadata={
            "x-nullable": True,
            "description": "Why the next batch goes at nextTickAt: the rate, the deployment's slot (another "
            "process's or the previous run's batch), the database; null when stopped",
        },
    )
    children = fields.List(
        fields.Nested(ChildSchema),
        required=True,
        metadata={"description": "The supervisor's long-lived children and their health"},
    )


class CountsSchema(Schema):
    pending = fields.Integer(required=True)
    sending = fields.Integer(required=True)
    sent = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    expired = fields.Integer(required=True)
    cancelled = fields.Integer(required=True)
    delivered = fields.Integer(required=True)
    undelivered = fields.Integer(required=True)
    suppressed = fields.Integer(
        required=True, metadata={"description": "Never sent: the number is suppressed for the category, or over a cap"}
    )


class CategoryCountsSchema(Schema):
    counts = fields.Nested(CountsSchema, required=True, metadata={"description": "Its messages per status"})
    total = fields.Integer(required=True)


class CategoriesSchema(Schema):
    transactional = fields.Nested(CategoryCountsSchema, required=True)
    commercial = fields.Nested(CategoryCountsSchema, required=True)


class WaitingSchema(Schema):
    sending_hours = fields.Integer(
        data_key="sending-hours", required=True, metadata={"description": "Outside the recipient's sending hours"}
    )
    cap = fields.Integer(required=True, metadata={"description": "Held back by a frequency cap"})


class StatsSchema(Schema):
    counts = fields.Nested(
        CountsSchema, required=True, metadata={"description": "Messages per status, at most a few seconds old"}
    )
    total = fields.Integer(required=True)
    deliveryRate = fields.Float(
        allow_none=True,
        required=True,
        metadata={
            "description": "delivered / (delivered + undelivered); null before the first final receipt",
            "x-nullable": True,
        },
    )
    segmentsSent = fields.Integer(required=True, metadata={"description": "SMS segments of every sent message"})
    providers = fields.List(
        fields.Nested(ProviderTotalsSchema),
        required=True,
        metadata={"description": "Each provider's totals (whole deployment), in the order of the providers file"},
    )
    categories = fields.Nested(
        CategoriesSchema,
        required=True,
        metadata={"description": "Each category's messages per status and their total, read with the counts"},
    )
    waiting = fields.Nested(
        WaitingSchema,
        required=True,
        metadata={"description": "Pending messages held back (their waitReason), per reason, read with the counts"},
    )
    sender = fields.Nested(SenderSchema, required=True)


class HealthSchema(Schema):
    status = choice(["ok"], required=True)
    version = fields.String(required=True)


class ReadySchema(Schema):
    status = choice(["ready", "unavailable"], required=True)
    database = choice(["up", "down"], "Readiness follows it", required=True)
    cache = choice(["up", "down"], "Reported only: a cache that is down does not fail readiness", required=True)
    children = fields.Dict(
        keys=fields.String(),
        values=choice(_CHILD_STATES),
        required=True,
        metadata={
            "description": "Each long-lived child of the supervisor (receipt writers, upkeep, ...) and its state; "
            "readiness needs each one `running` (a crashed one is `restarting` until its backoff ends)"
        },
    )
    error = fields.String(metadata={"description": "What is down, when not ready"})


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "What went wrong, in one sentence"})
    fields_ = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Per-field problems, for invalid input"},
    )
    host = fields.String(metadata={"description": "The Host header the service does not answer to (a 421)"})
