"""marshmallow schemas of the suppression list: an entry, a page of them, and what the routes take."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from insider.suppressions import DEFAULT_REASON, DEFAULT_SCOPE, MAX_REASON_LENGTH, SCOPES
from insider.web.schemas import choice, storable

_TO = (
    "A phone number, in any form POST /api/v1/messages takes (international, or national with "
    "INSIDER_DEFAULT_REGION); kept in E.164"
)
_SCOPE = "all (no message at all but the confirmation of an opt-out or opt-in) or commercial (no commercial message)"


class SuppressBodySchema(Schema):
    class Meta:
        unknown = RAISE

    to = fields.String(
        required=True,
        metadata={"description": _TO, "example": "+905301234001", "minLength": 1, "maxLength": 64},
    )
    scope = choice(list(SCOPES), f"{_SCOPE}; default {DEFAULT_SCOPE.value}", load_default=DEFAULT_SCOPE.value)
    reason = fields.String(
        load_default=DEFAULT_REASON,
        validate=storable,
        metadata={
            "description": f"Why (shown as each suppressed message's suppressionReason): one line of text, not "
            f"blank, at most {MAX_REASON_LENGTH} characters; default {DEFAULT_REASON}",
            "example": "asked by phone",
            "minLength": 1,
            "maxLength": MAX_REASON_LENGTH,
        },
    )


class SuppressionSchema(Schema):
    to = fields.String(required=True, metadata={"description": "The number, in E.164"})
    scope = choice(list(SCOPES), _SCOPE, required=True)
    reason = fields.String(required=True, metadata={"description": "Why it is on the list"})
    source = fields.String(
        required=True,
        metadata={"description": "What put it there: api, import (the command line), inbound (a reply), ..."},
    )
    createdAt = fields.DateTime(
        required=True,
        metadata={"description": "When it was first put on the list (a POST for a number on it keeps it)"},
    )


class SuppressionPageSchema(Schema):
    data = fields.List(fields.Nested(SuppressionSchema), required=True)
    nextCursor = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "Pass it back as `cursor` for the next page; null on the last", "x-nullable": True},
    )


class SuppressionQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        load_default=50, validate=validate.Range(min=1, max=500), metadata={"description": "Page size, 1 to 500"}
    )
    cursor = fields.String(load_default=None, metadata={"description": "nextCursor of the previous page"})
    to = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Only this number's entry, in any form `to` takes on POST"},
    )


class SuppressionPathSchema(Schema):
    to = fields.String(
        required=True,
        metadata={"description": f"{_TO}; a leading + URL-encoded as %2B (a + as such is kept too)"},
    )
