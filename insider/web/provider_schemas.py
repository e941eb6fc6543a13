"""marshmallow schemas of the providers: their state, their totals, and the route a preview would take."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from insider.providers.breaker import BreakerState

BREAKER_STATES = [s.value for s in BreakerState]
STRATEGIES = ["failover", "weighted", "cheapest"]
# A provider's name as the providers file allows it.
NAME_PATTERN = "[A-Za-z0-9_-]+"


def _nullable(field: Any, description: str) -> Any:
    """A ``field`` always present, null allowed (and said so in the spec)."""
    return field(allow_none=True, required=True, metadata={"description": description, "x-nullable": True})


class ProviderNameSchema(Schema):
    name = fields.String(
        required=True, validate=validate.Regexp(f"^{NAME_PATTERN}$"), metadata={"description": "The provider's name"}
    )


class RecentErrorSchema(Schema):
    at = fields.DateTime(required=True)
    error = fields.String(required=True)


class ProviderSchema(Schema):
    name = fields.String(required=True)
    kind = fields.String(
        required=True, metadata={"description": "webhook, smpp, or simulator (the built-in simulated provider)"}
    )
    enabled = fields.Boolean(
        required=True, metadata={"description": "false: an operator took it out of rotation (whole deployment)"}
    )
    breaker = fields.String(
        required=True,
        validate=validate.OneOf(BREAKER_STATES),
        metadata={"enum": BREAKER_STATES, "description": "Its circuit breaker in this process (always closed without)"},
    )
    breakerRetryAt = _nullable(fields.DateTime, "When an open breaker lets a probe through")
    rate = _nullable(fields.Float, "Messages per second for the whole deployment; null: no limit of its own")
    concurrency = fields.Integer(required=True, metadata={"description": "Requests in flight at once, as configured"})
    concurrencyShare = fields.Integer(
        required=True, metadata={"description": "This process's share of it: its requests in flight at most"}
    )
    price = _nullable(fields.Float, "Per segment; null: unknown")
    sent = fields.Integer(required=True, metadata={"description": "Messages it accepted (whole deployment)"})
    failed = fields.Integer(required=True, metadata={"description": "Tries it did not accept (whole deployment)"})
    segments = fields.Integer(required=True, metadata={"description": "Segments of the messages it accepted"})
    cost = fields.Float(required=True, metadata={"description": "Cost of the messages it accepted"})
    inFlight = fields.Integer(required=True, metadata={"description": "Requests in flight now, in this process"})
    throttled = fields.Integer(
        required=True, metadata={"description": "Times it asked to slow down since this process started"}
    )
    throttledUntil = _nullable(fields.DateTime, "Until when it is left alone after asking to slow down")
    meanLatencyMs = _nullable(fields.Float, "Mean time of its requests in this process; null before the first")
    recentErrors = fields.List(
        fields.Nested(RecentErrorSchema),
        required=True,
        metadata={"description": "Its last errors in this process, newest first (at most 10)"},
    )


class ProviderListSchema(Schema):
    data = fields.List(fields.Nested(ProviderSchema), required=True, metadata={"description": "In the file's order"})


class ProviderTotalsSchema(Schema):
    name = fields.String(required=True)
    sent = fields.Integer(required=True, metadata={"description": "Messages it accepted"})
    failed = fields.Integer(required=True, metadata={"description": "Tries it did not accept"})
    segments = fields.Integer(required=True, metadata={"description": "Segments of the messages it accepted"})
    cost = fields.Float(required=True, metadata={"description": "Their cost: segments x its price"})


class PreviewRouteSchema(Schema):
    name = fields.String(required=True, metadata={"description": "The route's name"})
    strategy = fields.String(required=True, validate=validate.OneOf(STRATEGIES), metadata={"enum": STRATEGIES})
    providers = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Its providers in the order they would be tried (weighted: by weight)"},
    )
    provider = _nullable(fields.String, "The first of them that can take a message now; null: none can")
    cost = _nullable(fields.Float, "segments x that provider's price; null without a price")
