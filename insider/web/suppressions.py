"""The suppressions resource: the numbers not to send to, listed, added (or changed), read and taken off."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, match_info_schema, querystring_schema, request_schema, response_schema

from insider.domain import InvalidMessage, InvalidPhone, normalize_phone
from insider.suppressions import Suppression, check_suppression
from insider.web.responses import INVALID, UNAVAILABLE, error_response
from insider.web.schemas import ErrorSchema
from insider.web.services import services
from insider.web.suppression_schemas import (
    SuppressBodySchema,
    SuppressionPageSchema,
    SuppressionPathSchema,
    SuppressionQuerySchema,
    SuppressionSchema,
)
from insider.web.validation import PATH, QUERY, VALIDATED

SUPPRESSIONS_PATH = "/api/v1/suppressions"
SUPPRESSION_PATH = SUPPRESSIONS_PATH + "/{to}"
_NOT_LISTED = "that number is not on the suppression list"


def suppression_json(s: Suppression) -> dict[str, Any]:
    """The API shape of an entry of the suppression list."""
    return {
        "to": s.phone,
        "scope": s.scope.value,
        "reason": s.reason,
        "source": s.source,
        "createdAt": s.created_at.isoformat(),
    }


def _phone(request: web.Request, given: str) -> str:
    """``given`` in E.164, or a JSON 422 naming ``to``."""
    try:
        return normalize_phone(given, services(request).settings.default_region)
    except InvalidPhone as exc:
        raise web.HTTPUnprocessableEntity(
            text=error_response(422, "invalid input", {"to": [f"not a possible phone number: {exc}"]}).text,
            content_type="application/json",
        ) from None


@docs(
    tags=["suppressions"],
    summary="The suppression list, most recently added first",
    description="Numbers not to send to. Keyset pagination: pass `nextCursor` back as `cursor`. `to` keeps one "
    "number's entry (any form POST accepts; normalised to E.164).",
)
@querystring_schema(SuppressionQuerySchema)
@response_schema(SuppressionPageSchema, 200, description="One page")
@response_schema(ErrorSchema, 400, description="A cursor this service did not hand out")
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
async def list_suppressions(request: web.Request) -> web.Response:
    query = request[QUERY]
    to = _phone(request, query["to"]) if query["to"] is not None else None
    page = await services(request).repository.list_suppressions(query["limit"], query["cursor"], to)
    return web.json_response({"data": [suppression_json(s) for s in page.items], "nextCursor": page.next_cursor})


@docs(
    tags=["suppressions"],
    summary="Suppress a number (or change its entry)",
    description="Puts the number on the suppression list: no message of the scope's categories goes to it from "
    "now on. A message queued or scheduled before ends `suppressed` with this reason when its time comes; one "
    "queued after is stored `suppressed` at once; a message already sent is left as it is. A number already on "
    "the list gets this scope and reason (200); its `createdAt` stays.",
)
@request_schema(SuppressBodySchema)
@response_schema(SuppressionSchema, 201, description="The number was put on the list")
@response_schema(SuppressionSchema, 200, description="The number was on the list: its entry, changed")
@response_schema(ErrorSchema, 400, description="The body is not a JSON object")
@response_schema(ErrorSchema, 413, description="The body is too large")
@response_schema(ErrorSchema, 415, description="The body is not application/json")
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
async def suppress(request: web.Request) -> web.Response:
    app = services(request)
    body = request[VALIDATED]
    try:
        entry = check_suppression(
            body["to"],
            scope=body["scope"],
            reason=body["reason"],
            source="api",
            region=app.settings.default_region,
        )
    except InvalidMessage as exc:
        return error_response(422, "invalid input", {exc.field: [str(exc)]})
    stored, added = await app.repository.suppress(entry.phone, entry.scope, entry.reason, entry.source)
    return web.json_response(suppression_json(stored), status=201 if added else 200)


@docs(tags=["suppressions"], summary="One number's entry on the suppression list")
@match_info_schema(SuppressionPathSchema)
@response_schema(SuppressionSchema, 200, description="The entry")
@response_schema(ErrorSchema, 404, description="The number is not on the list")
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
async def get_suppression(request: web.Request) -> web.Response:
    found = await services(request).repository.get_suppression(_phone(request, request[PATH]["to"]))
    if found is None:
        return error_response(404, _NOT_LISTED)
    return web.json_response(suppression_json(found))


@docs(
    tags=["suppressions"],
    summary="Take a number off the suppression list",
    description="Its messages queued from now on, and those queued before whose time has not come, go again. A "
    "message that already ended `suppressed` stays so. 404 when the number is not on the list.",
    responses={"204": {"description": "Taken off the list"}},
)
@match_info_schema(SuppressionPathSchema)
@response_schema(ErrorSchema, 404, description="The number is not on the list")
@response_schema(**INVALID, code=422)
@response_schema(**UNAVAILABLE, code=503)
async def unsuppress(request: web.Request) -> web.Response:
    if not await services(request).repository.unsuppress(_phone(request, request[PATH]["to"])):
        return error_response(404, _NOT_LISTED)
    return web.Response(status=204)
