"""The original Go service's routes (/messages, its start and stop, its spec's address), answered as it answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp_apispec import docs, response_schema

from insider.original import SENT_LIST_MAX, sent_item
from insider.ports import RepositoryUnavailable
from insider.supervisor import Supervisor, Transition
from insider.web.original_schemas import OriginalErrorSchema, OriginalOkSchema, OriginalSentListSchema
from insider.web.services import services

_ORIGINAL_FAILURE = {"schema": OriginalErrorSchema}
Handler = Callable[[web.Request], Awaitable[web.Response]]


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


def _command(
    verb: str, act: Callable[[Supervisor], Awaitable[Transition]], done: str, refusal: str, already: str
) -> Handler:
    """The original's start or stop: 200 when this request changed the state, else a 500 saying why not.

    The supervisor answers each request with the transition it caused, so of two at once one
    changed it and the other is told; the web layer never checks, then acts.
    """

    @docs(
        tags=["original service"],
        summary=f"{verb.capitalize()} automatic sending, as the original Go service did",
        description=f'200 `{{"success": true, "data": "OK"}}` when it {verb}s; 500 `{{"success": false, "error": '
        f'"{refusal}"}}` when {already}. insider\'s own, idempotent {verb} is `POST /api/v1/messages/{verb}`.',
    )
    @response_schema(OriginalOkSchema, 200, description=f"Sending {done}")
    @response_schema(**_ORIGINAL_FAILURE, code=500, description=f"Nothing to do: {refusal}")
    async def command(request: web.Request) -> web.Response:
        transition = await act(services(request).supervisor)
        return _original_ok("OK") if transition.changed else original_error(500, refusal)

    command.__name__ = command.__qualname__ = f"original_{verb}"
    return cast(Handler, command)


original_start = _command("start", Supervisor.start, "started", "auto sending is already running", "it runs already")
original_stop = _command(
    "stop", lambda supervisor: supervisor.stop(), "stopped", "auto sending is not running", "it is stopped already"
)


async def swagger_spec(request: web.Request) -> web.Response:
    """The spec again at the original's address, /swagger/doc.json."""
    return web.json_response(request.app["swagger_dict"])
