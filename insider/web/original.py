"""The original Go service's routes (/messages, its start and stop, its spec's address), answered as it answered."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apispec import docs, response_schema

from insider.original import SENT_LIST_MAX, sent_item
from insider.ports import RepositoryUnavailable
from insider.web.schemas import OriginalErrorSchema, OriginalOkSchema, OriginalSentListSchema
from insider.web.services import services

_ORIGINAL_FAILURE = {"schema": OriginalErrorSchema}


def original_error(status: int, error: str) -> web.Response:
    """The original's failure envelope: ``{"success": false, "error": ...}``."""
    return web.json_response({"success": False, "error": error}, status=status)


def _original_ok(data: Any) -> web.Response:
    return web.json_response({"success": True, "data": data})


@docs(
    tags=["original service"],
    summary="Sent messages, as the original Go service listed them",
    description='`{"success": true, "data": [{"messageId", "sentAt"}, ...]}`, newest first, from the '
    f"database (at most {SENT_LIST_MAX:,}); `data` is null when nothing was sent. Also at `/messages/`. "
    "insider's own list is `GET /api/v1/messages`.",
)
@response_schema(OriginalSentListSchema, 200, description="Sent messages, newest first")
@response_schema(**_ORIGINAL_FAILURE, code=500, description="The database is unavailable")
async def original_list(request: web.Request) -> web.Response:
    try:
        # Everything the provider accepted: a delivered message was sent too.
        page = await services(request).repository.list_messages(None, SENT_LIST_MAX)
    except RepositoryUnavailable:  # the original answered every failure with a 500
        return original_error(500, "the database is unavailable; try again shortly")
    items = [sent_item(m.message_id, m.sent_at) for m in page.items if m.sent_at is not None]
    return _original_ok(items or None)


@docs(
    tags=["original service"],
    summary="Start automatic sending, as the original Go service did",
    description='200 `{"success": true, "data": "OK"}` when it starts; 500 '
    '`{"success": false, "error": "auto sending is already running"}` when it runs already. '
    "insider's own, idempotent start is `POST /api/v1/messages/start`.",
)
@response_schema(OriginalOkSchema, 200, description="Sending started")
@response_schema(**_ORIGINAL_FAILURE, code=500, description="Sending runs already")
async def original_start(request: web.Request) -> web.Response:
    # The supervisor's answer says whether this very request started it: of two at once, one did.
    if not (await services(request).supervisor.start()).changed:
        return original_error(500, "auto sending is already running")
    return _original_ok("OK")


@docs(
    tags=["original service"],
    summary="Stop automatic sending, as the original Go service did",
    description='200 `{"success": true, "data": "OK"}` when it stops; 500 '
    '`{"success": false, "error": "auto sending is not running"}` when it is stopped already. '
    "insider's own, idempotent stop is `POST /api/v1/messages/stop`.",
)
@response_schema(OriginalOkSchema, 200, description="Sending stopped")
@response_schema(**_ORIGINAL_FAILURE, code=500, description="Sending is stopped already")
async def original_stop(request: web.Request) -> web.Response:
    if not (await services(request).supervisor.stop()).changed:
        return original_error(500, "auto sending is not running")
    return _original_ok("OK")


async def swagger_spec(request: web.Request) -> web.Response:
    """The spec again at the original's address, /swagger/doc.json."""
    return web.json_response(request.app["swagger_dict"])
