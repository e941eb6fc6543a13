"""The aiohttp app factory: routes, middlewares, Swagger and the service's lifespan."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import structlog
from aiohttp import web
from aiohttp_apispec import setup_aiohttp_apispec, validation_middleware
from marshmallow import ValidationError

from insider import __version__
from insider.container import Container, open_service
from insider.ports import InvalidCursor, RepositoryUnavailable
from insider.web import handlers
from insider.web.handlers import error_response

log = structlog.get_logger("insider.web")

CONTAINER = web.AppKey("container", Container)
MAX_BODY_BYTES = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _validation_error(error: ValidationError, req: Any, schema: Any, *args: Any, **kwargs: Any) -> NoReturn:
    """webargs' error hook: a JSON 422 naming each bad field (or 400 for a body that is no object)."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    # webargs nests by location ({"json": {...}}); the client wants the field names.
    flat: dict[str, list[str]] = {}
    for location in messages.values():
        items = location.items() if isinstance(location, dict) else [("_schema", location)]
        for name, problems in items:
            flat[str(name)] = [str(p) for p in problems] if isinstance(problems, list) else [str(problems)]
    if set(flat) == {"_schema"}:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body must be a JSON object", "fields": flat}),
            content_type="application/json",
        )
    raise web.HTTPUnprocessableEntity(
        text=json.dumps({"error": "invalid input", "fields": flat}), content_type="application/json"
    )


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id (taken from X-Request-Id or made) into every log line of the request."""
    request_id = request.headers.get("X-Request-Id", "")[:128] or uuid.uuid4().hex
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        response = await handler(request)
        response.headers["X-Request-Id"] = request_id
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON: HTTP errors keep their status, an outage is 503, a bug is 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json" and '"error"' in (exc.text or ""):
            raise  # already in our shape
        if exc.status == 413:
            return error_response(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        if exc.status == 400 and exc.content_type == "application/json":  # webargs: a body that is not JSON
            return error_response(400, "the body is not valid JSON")
        return error_response(exc.status, exc.reason.lower())
    except RepositoryUnavailable:
        return error_response(503, "the database is unavailable; try again shortly")
    except InvalidCursor as exc:
        return error_response(400, str(exc), {"cursor": [str(exc)]})
    except Exception:
        log.exception("request failed")
        return error_response(500, "internal error")


@web.middleware
async def require_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body that is not JSON is refused before validation, with a clear 415."""
    if (
        request.method in ("POST", "PUT", "PATCH")
        and request.can_read_body
        and request.content_type != "application/json"
    ):
        return error_response(415, "the body must be application/json")
    return await handler(request)


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    async with open_service(app[CONTAINER]):
        yield


def create_app(container: Container) -> web.Application:
    """The aiohttp app over a container; opening and closing its resources is the app's lifespan."""
    container.wire(modules=[handlers])
    app = web.Application(
        middlewares=[request_context, json_errors, require_json, validation_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONTAINER] = container
    app.router.add_get("/api/v1/messages", handlers.list_messages, allow_head=False)
    app.router.add_post("/api/v1/messages", handlers.enqueue_message)
    app.router.add_get(r"/api/v1/messages/{id:\d+}", handlers.get_message, allow_head=False)
    app.router.add_post(r"/api/v1/messages/{id:\d+}/retry", handlers.retry_message)
    for method in ("POST", "GET"):
        app.router.add_route(method, "/api/v1/messages/start", handlers.start_sending)
        app.router.add_route(method, "/api/v1/messages/stop", handlers.stop_sending)
    app.router.add_get("/api/v1/sender", handlers.sender_status, allow_head=False)
    setup_aiohttp_apispec(
        app,
        title="insider",
        version=__version__,
        info={"description": "Sends queued SMS messages at a controlled rate."},
        url="/api/docs/swagger.json",
        swagger_path="/swagger",
        error_callback=_validation_error,
        in_place=True,
    )
    app.cleanup_ctx.append(_lifespan)
    return app
