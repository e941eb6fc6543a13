"""The replies resource: what a provider forwards (JSON or Twilio's form), with the receipts' token, and its listing."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, querystring_schema, response_schema

from insider.domain import InvalidPhone, normalize_phone
from insider.inbound import MAX_INBOUND_TEXT, InvalidInbound, Reply, form_inbound, parse_inbound
from insider.web.guard import browser_checks_exempt
from insider.web.inbound_schemas import ReplyPageSchema, ReplyQuerySchema, ReplySchema
from insider.web.paths import INBOUND_PATH
from insider.web.receipts import DLR_AUTH_HEADER, FORM, named_provider, provider_post_refusal
from insider.web.responses import INVALID, UNAVAILABLE, error_response
from insider.web.schemas import ErrorSchema
from insider.web.services import services
from insider.web.validation import QUERY


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def reply_json(reply: Reply) -> dict[str, Any]:
    """The API shape of a stored reply."""
    return {
        "id": reply.id,
        "from": reply.from_phone,
        "to": reply.to_phone,
        "text": reply.text,
        "action": reply.action,
        "receivedAt": _iso(reply.received_at),
        "provider": reply.provider,
        "messageId": reply.provider_message_id,
    }


def inbound_refusal(request: web.Request) -> web.Response | None:
    """Why POST /api/v1/inbound is refused on its head alone, as the receipts' endpoint is; judged before
    its body is read."""
    return provider_post_refusal(request, f"replies are off: set INSIDER_DLR_TOKEN to turn on POST {INBOUND_PATH}")


@docs(
    tags=["inbound"],
    summary="A reply from the provider (an inbound message)",
    description="What a provider forwards when someone replies: JSON `{from, to?, text, messageId?}`, or an "
    "application/x-www-form-urlencoded form with these names or Twilio's (`From`, `To`, `Body`, `MessageSid`); "
    "other fields are ignored. `from` is a phone number (E.164, or a national form in INSIDER_DEFAULT_REGION), "
    f"`text` at most {MAX_INBOUND_TEXT} characters (empty: a picture alone). The reply is stored; a reply that "
    "is an opt-out keyword alone (INSIDER_OPT_OUT_KEYWORDS: STOP, İPTAL, ... in any case, the Turkish i's alike) "
    "puts its sender on the suppression list (scope INSIDER_OPT_OUT_SCOPE, reason `opt-out`, source `inbound`), "
    "an opt-in keyword (START, BAŞLA, ...) takes it off, and the confirmation (INSIDER_OPT_OUT_REPLY, "
    "INSIDER_OPT_IN_REPLY) is queued as a transactional message; all in one transaction. Answered in JSON, the "
    "form too. The same `messageId` again from the same provider is answered 200 with the reply stored first, "
    "and nothing is done again. Authenticated by INSIDER_DLR_TOKEN, as the `x-ins-auth-key` header or the "
    "`token` query parameter (not by the API token); off (404) when INSIDER_DLR_TOKEN is empty. "
    "`?provider=<name>` says which provider forwards it (422 if no provider has that name).",
    consumes=["application/json", FORM],
    parameters=[
        {
            "in": "query",
            "name": "provider",
            "type": "string",
            "required": False,
            "description": "The provider that forwards the reply (its name in the providers file)",
        },
        {"in": "body", "name": "body", "required": True, "schema": {"$ref": "#/definitions/Inbound"}},
    ],
)
@response_schema(ReplySchema, 201, description="Stored (and its keyword acted on)")
@response_schema(ReplySchema, 200, description="Stored before with the same provider and messageId; nothing done")
@response_schema(ErrorSchema, 400, description="The body is not valid JSON, not an object, or not a valid form")
@response_schema(ErrorSchema, 401, description=f"No token, or not INSIDER_DLR_TOKEN ({DLR_AUTH_HEADER} or ?token=)")
@response_schema(ErrorSchema, 404, description="Replies are off: INSIDER_DLR_TOKEN is not set")
@response_schema(ErrorSchema, 413, description="The body is larger than 64 KiB")
@response_schema(ErrorSchema, 415, description="The body is neither application/json nor a form")
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
@browser_checks_exempt  # a provider's server calls it, under whatever name it was given
async def receive_inbound(request: web.Request) -> web.Response:
    """One reply; :func:`inbound_refusal` has passed it (a middleware, before the body was read)."""
    app = services(request)
    body: Any
    try:
        if request.content_type == FORM:
            form = await request.post()  # aiohttp's own form parsing, of the body read_body has read
            body = form_inbound({name: value for name, value in form.items() if isinstance(value, str)})
        else:
            body = json.loads(await request.read())
    except (ValueError, LookupError, RecursionError):  # UnicodeDecodeError is a ValueError; LookupError: a charset
        return error_response(
            400, "the form is not valid" if request.content_type == FORM else "the body is not valid JSON"
        )
    try:
        inbound = parse_inbound(body, app.settings.default_region, provider=named_provider(request))
    except InvalidInbound as exc:
        if "_schema" in exc.fields:
            return error_response(400, "the body must be a JSON object", exc.fields)
        return error_response(422, "invalid reply", exc.fields)
    if app.replies is None:
        return error_response(503, "replies cannot be stored: the repository keeps none")
    recorded = await app.replies.receive(inbound)
    return web.json_response(reply_json(recorded.reply), status=200 if recorded.replayed else 201)


@docs(
    tags=["inbound"],
    summary="List replies, newest first",
    description="The replies received (POST /api/v1/inbound, SMPP providers), newest first, with what their "
    "keyword did (`action`). Keyset pagination: pass `nextCursor` back as `cursor`. `from` keeps one sender's "
    "(any form a phone number is taken in; normalised to E.164).",
)
@querystring_schema(ReplyQuerySchema)
@response_schema(ReplyPageSchema, 200, description="One page")
@response_schema(ErrorSchema, 400, description="A cursor this service did not hand out")
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
async def list_inbound(request: web.Request) -> web.Response:
    app = services(request)
    query = request[QUERY]
    sender = query["from_"]
    if sender is not None:
        try:
            sender = normalize_phone(sender, app.settings.default_region)
        except InvalidPhone as exc:
            return error_response(422, "invalid input", {"from": [f"not a possible phone number: {exc}"]})
    if app.replies is None:
        return web.json_response({"data": [], "nextCursor": None})
    page = await app.replies.list(query["limit"], query["cursor"], sender)
    return web.json_response({"data": [reply_json(r) for r in page.items], "nextCursor": page.next_cursor})
