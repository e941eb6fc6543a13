"""The delivery-reports route: a provider's receipts in, as JSON or a form, checked against its own token."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp_apispec import docs, response_schema

from insider.receipt_parsing import InvalidReceipts, parse_receipts
from insider.web.guard import browser_checks_exempt
from insider.web.responses import INVALID, UNAVAILABLE, error_response
from insider.web.schemas import ErrorSchema, ReceiptsResultSchema
from insider.web.services import services
from insider.web.tokens import same_secret

# The receipts endpoint's own token (its body limit is the API's: 64 KiB, a few hundred receipts).
DLR_AUTH_HEADER = "x-ins-auth-key"
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


def named_provider(request: web.Request) -> str | None:
    """The provider the receipts come from, as ``?provider=<name>`` names it; None when not named."""
    name = request.query.get("provider")
    return name.strip() if name is not None else None


def _provider_problem(request: web.Request) -> str | None:
    """Why ``?provider=`` is not one of the deployment's providers, or None."""
    name = named_provider(request)
    known = services(request).receipts.providers
    if name is None or known is None or name in known:
        return None
    names = ", ".join(sorted(known))
    if not name:
        return f"must name a provider ({names}), or be left out"
    return f"no provider has that name: receipts come from one of {names}"


def receipts_refusal(request: web.Request) -> web.Response | None:
    """Why POST /api/v1/delivery-reports is refused on its head alone (receipts off, no or a wrong token, a body
    neither JSON nor a form, a provider not configured), or None; judged before its body is read."""
    return provider_post_refusal(
        request, "delivery receipts are off: set INSIDER_DLR_TOKEN to turn on POST /api/v1/delivery-reports"
    )


def provider_post_refusal(request: web.Request, off: str) -> web.Response | None:
    """Why a provider's POST (receipts, replies) is refused on its head alone: ``off`` (404) without
    INSIDER_DLR_TOKEN, no or a wrong token (401), a body neither JSON nor a form (415), a ``?provider=``
    not configured (422); or None."""
    dlr_token = services(request).settings.dlr_token
    if not dlr_token:
        return error_response(404, off)
    given = request.headers.get(DLR_AUTH_HEADER)
    if given is None:
        given = request.query.get("token")
    if not given or not same_secret(given, dlr_token):
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
    problem = _provider_problem(request)
    if problem is not None:
        return error_response(422, "unknown provider", {"provider": [problem]})
    return None


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
    "application/x-www-form-urlencoded form, with these names or Twilio's (MessageSid, MessageStatus, ErrorCode). "
    "Provider ids are unique only per provider: `?provider=<name>` says which provider sent the receipts, and then "
    "only that provider's message with the id is touched. Without it, a receipt goes to the message with its id; "
    "with several providers configured, only while one provider's messages alone have that id, and it is "
    "`ambiguous` (applied to none, not kept) when two providers' messages have it. A name that is not one of the "
    "providers is 422 (`fields.provider`).",
    parameters=[
        {
            "in": "query",
            "name": "provider",
            "type": "string",
            "required": False,
            "description": "The provider that sent these receipts (its name in the providers file; `webhook` for "
            "INSIDER_WEBHOOK_URL). Leave out for a provider that cannot add it.",
        },
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
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
@browser_checks_exempt  # a provider's server calls it, under whatever name it was given
async def delivery_reports(request: web.Request) -> web.Response:
    """The receipts; :func:`receipts_refusal` has passed them (a middleware, before the body was read)."""
    app = services(request)
    receipts, clock = app.receipts, app.clock
    try:
        raw = await request.read()
        body = json.loads(raw) if request.content_type == "application/json" else form_receipt(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return error_response(
            400, "the body is not valid JSON" if request.content_type != FORM else "the form is not valid"
        )
    try:
        parsed = parse_receipts(body, clock.now(), provider=named_provider(request))
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
