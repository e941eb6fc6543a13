"""marshmallow schemas of the original Go service's routes (GET /messages, /messages/start, /messages/stop)."""

from __future__ import annotations

from marshmallow import Schema, fields


class OriginalSentItemSchema(Schema):
    messageId = fields.String(required=True, metadata={"description": "The provider's id; empty when it gave none"})
    sentAt = fields.String(
        required=True,
        metadata={"description": "When it was sent: RFC 3339 in UTC, as Go writes a time", "format": "date-time"},
    )


class OriginalSentListSchema(Schema):
    success = fields.Boolean(required=True, metadata={"enum": [True]})
    data = fields.List(
        fields.Nested(OriginalSentItemSchema),
        required=True,
        allow_none=True,
        metadata={"description": "Sent messages, newest first; null when none was sent", "x-nullable": True},
    )


class OriginalOkSchema(Schema):
    success = fields.Boolean(required=True, metadata={"enum": [True]})
    data = fields.String(required=True, metadata={"enum": ["OK"]})


class OriginalErrorSchema(Schema):
    success = fields.Boolean(required=True, metadata={"enum": [False]})
    error = fields.String(required=True)
