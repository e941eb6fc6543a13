"""marshmallow schemas of replies (inbound messages): a stored reply, a page of them, the listing's query, the body."""

from __future__ import annotations

from typing import Any, Final

from marshmallow import RAISE, Schema, fields, validate

from insider.inbound import MAX_INBOUND_TEXT, MAX_PROVIDER_ID
from insider.keywords import Action

ACTIONS = [a.value for a in Action]


def _nullable(field: Any, description: str, **options: Any) -> Any:
    """A ``field`` always present, null allowed (and said so in the spec)."""
    metadata = {"description": description, "x-nullable": True, **options.pop("metadata", {})}
    return field(allow_none=True, required=True, metadata=metadata, **options)


class ReplySchema(Schema):
    id = fields.Integer(required=True, metadata={"description": "The reply's id here"})
    from_ = fields.String(data_key="from", required=True, metadata={"description": "The sender, in E.164"})
    to = _nullable(fields.String, "Our number it was sent to (E.164, a short code or a sender name), if known")
    text = fields.String(required=True, metadata={"description": "The reply as received"})
    action = _nullable(
        fields.String,
        "What its keyword did: `opt-out` (sender suppressed), `opt-in` (suppression lifted); null: no keyword",
        metadata={"enum": [*ACTIONS, None]},
    )
    receivedAt = fields.DateTime(required=True, metadata={"description": "When it was stored"})
    provider = _nullable(fields.String, "The provider that forwarded it (`?provider=`, or the SMPP provider)")
    messageId = _nullable(fields.String, "The provider's id of the reply (Twilio's MessageSid), if it gave one")


class ReplyPageSchema(Schema):
    data = fields.List(fields.Nested(ReplySchema), required=True, metadata={"description": "Newest first"})
    nextCursor = _nullable(fields.String, "Pass as cursor for the next page; null on the last")


class ReplyQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        load_default=50, validate=validate.Range(min=1, max=500), metadata={"description": "Page size, 1 to 500"}
    )
    cursor = fields.String(load_default=None, metadata={"description": "nextCursor of the previous page"})
    from_ = fields.String(
        data_key="from",
        load_default=None,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Only the replies of this sender, in any form a phone number is taken"},
    )


# The body, as Swagger shows it (the handler reads JSON or a form itself, to take Twilio's field names).
INBOUND_DEFINITION: Final = {
    "type": "object",
    "required": ["from", "text"],
    "properties": {
        "from": {
            "type": "string",
            "description": "The sender: E.164, or a national form in INSIDER_DEFAULT_REGION",
            "example": "+905301234567",
        },
        "to": {
            "type": "string",
            "description": "Our number it was sent to: E.164, a short code or a sender name",
            "example": "+908501234567",
            "x-nullable": True,
        },
        "text": {
            "type": "string",
            "maxLength": MAX_INBOUND_TEXT,
            "description": "The reply; a keyword alone (STOP, İPTAL, START, ...) opts its sender out or in",
            "example": "STOP",
        },
        "messageId": {
            "type": "string",
            "maxLength": MAX_PROVIDER_ID,
            "description": "The provider's id of the reply: the same id again (from the same provider) is not "
            "acted on twice",
            "x-nullable": True,
        },
    },
}
