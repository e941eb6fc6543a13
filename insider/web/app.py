"""The aiohttp app factory: routes, middlewares, Swagger and the service's lifespan."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import structlog
from aiohttp import web
from aiohttp_apispec import setup_aiohttp_apispec, validation_middleware
from marshmallow import ValidationError

from insider import __version__
from insider.container import Container, open_service, resolve
from insider.logs import mask_access_log_secrets
from insider.ports import InvalidCursor, RepositoryUnavailable
from insider.supervisor import SupervisorClosed
from insider.web import handlers
from insider.web.guard import GUARD, BrowserGuard, browser_checks
from insider.web.handlers import SERVICES, AppServices, Services, error_response, original_error, same_secret
from insider.web.schemas import RECEIPT_DEFINITION
from insider.web.server import (
    LIMITS,
    MAX_BATCH_BODY_BYTES,
    Limits,
    body_limit,
    expect_within_limits,
    request_limits,
)

log = structlog.get_logger("insider.web")

CONTAINER = web.AppKey("container", Container)
API_TOKEN = web.AppKey("api_token", str)
# Whether the lifespan starts the sender (None follows INSIDER_AUTOSTART) and waits for one
# try at the schema; the command line passes False for both, binds the listener, then does them.
AUTOSTART: web.AppKey[bool | None] = web.AppKey("autostart")
WAIT_FOR_SCHEMA = web.AppKey("wait_for_schema", bool)
# Everything under this prefix needs the token (when one is set); health, metrics, Swagger and the
# dashboard's page stay open, so that probes, scrapers and the login form itself work.
API_PREFIX = "/api/v1"
# The original Go service's routes: GET /messages, /messages/start, /messages/stop.
ORIGINAL_PREFIX = "/messages"
SECURITY_SCHEME = "bearer"
# A UUID as the original Go service showed it (either case), for GET /api/v1/messages/{uuid}.
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
DELIVERY_REPORTS_PATH = "/api/v1/delivery-reports"
# Under /api/v1 but not guarded by INSIDER_API_TOKEN: they have a token of their own.
OPEN_API_PATHS = frozenset({DELIVERY_REPORTS_PATH})
# A request id a client may choose: printable and short, so it is safe in logs and response headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# Headers of an HTTP error that still mean something on its JSON version (405's Allow, above all).
_KEPT_ERROR_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Routine polling is logged at debug, so that it does not bury the sends: probes and scrapes by
# path, the dashboard's periodic refresh by the header its script sets on every GET.
POLLED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
POLL_HEADER = "X-Insider-Refresh"


def is_routine_poll(request: web.Request) -> bool:
    """A probe, a scrape or the dashboard's refresh: logged at debug, not info."""
    if request.method != "GET":
        return False
    if request.path in POLLED_PATHS:
        return True
    # GET on start and stop changes state (the original's clients use it): never routine.
    return POLL_HEADER in request.headers and request.path.rsplit("/", 1)[-1] not in ("start", "stop")


def _flatten(name: str, problems: Any, into: dict[str, list[str]]) -> None:
    """Nested problems (a list's items: ``{"messages": {3: [...]}}``) as dotted names (``messages.3``)."""
    if isinstance(problems, dict):
        for key, inner in problems.items():
            _flatten(f"{name}.{key}", inner, into)
    else:
        into[name] = [str(p) for p in problems] if isinstance(problems, list) else [str(problems)]


def _validation_error(error: ValidationError, req: Any, schema: Any, *args: Any, **kwargs: Any) -> NoReturn:
    """webargs' error hook: a JSON 422 naming each bad field (or 400 for a body that is no object)."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    if "match_info" in messages:  # a path id of the right digits but out of range names nothing
        raise web.HTTPNotFound(text=json.dumps({"error": "not found"}), content_type="application/json")
    # webargs nests by location ({"json": {...}}); the client wants the field names.
    flat: dict[str, list[str]] = {}
    for location in messages.values():
        items = location.items() if isinstance(location, dict) else [("_schema", location)]
        for name, problems in items:
            _flatten(str(name), problems, flat)
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
    request_id = request.headers.get("X-Request-Id", "")
    if not _REQUEST_ID.fullmatch(request_id):  # absent, too long or unsafe to echo: make one
        request_id = uuid.uuid4().hex
    started = time.monotonic()
    # Set and reset by token: a keep-alive connection serves its requests in one task, and
    # structlog's bound_contextvars() (which copies the whole context twice) cost more here.
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
        response.headers["X-Request-Id"] = request_id
        (log.debug if _routine(request, response) else log.info)(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def _routine(request: web.Request, response: web.StreamResponse) -> bool:
    """Polling, and receipts taken (the receipt writer logs one line per batch): logged at debug."""
    if response.status == 200 and request.path == DELIVERY_REPORTS_PATH:
        return True
    return is_routine_poll(request)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON: HTTP errors keep their status, an outage is 503, a bug is 500.

    Errors come back as responses, never raised past this point, so that the request's log
    line and X-Request-Id cover them too.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json" and '"error"' in (exc.text or ""):
            response = web.Response(status=exc.status, text=exc.text, content_type="application/json")
        elif exc.status == 413:
            response = error_response(413, f"the body is larger than {MAX_BATCH_BODY_BYTES} bytes")
        elif exc.status == 400 and exc.content_type == "application/json":  # webargs: a body that is not JSON
            response = error_response(400, "the body is not valid JSON")
        else:
            response = error_response(exc.status, exc.reason.lower())
        for name in _KEPT_ERROR_HEADERS:
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except RepositoryUnavailable:
        return error_response(503, "the database is unavailable; try again shortly")
    except SupervisorClosed:
        return error_response(503, "the service is shutting down: sending cannot start")
    except InvalidCursor as exc:
        return error_response(400, str(exc), {"cursor": [str(exc)]})
    except Exception:
        log.exception("request failed")
        return error_response(500, "internal error")


def _guarded(path: str) -> bool:
    """Whether the token guards ``path``: under /api/v1, or one of the original's /messages routes."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in (API_PREFIX, ORIGINAL_PREFIX))


def _original(path: str) -> bool:
    return path == ORIGINAL_PREFIX or path.startswith(ORIGINAL_PREFIX + "/")


def _protected(request: web.Request) -> bool:
    """Whether the token guards this request: its path, or the route it matched, is guarded.

    The receipts endpoint is the exception: a provider's server calls it, with a token of its own.
    """
    resource = request.match_info.route.resource
    paths = (request.path, resource.canonical if resource is not None else "")
    if any(p in OPEN_API_PATHS for p in paths):
        return False
    return any(_guarded(p) for p in paths)


def _bearer(header: str) -> str | None:
    scheme, _, credentials = header.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With INSIDER_API_TOKEN set, /api/v1/... needs ``Authorization: Bearer <token>``: else a JSON 401."""
    token = request.app[API_TOKEN]
    if not token or not _protected(request):
        return await handler(request)
    # The original's routes answer in its envelope, {"success": false, "error": ...}.
    refuse = original_error if _original(request.path) else error_response
    given = _bearer(request.headers.get("Authorization", ""))
    if given is None:
        response = refuse(401, "this endpoint needs the header Authorization: Bearer <INSIDER_API_TOKEN>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="insider"'
        return response
    if not same_secret(given, token):
        response = refuse(401, "the token is not valid")
        response.headers["WWW-Authenticate"] = 'Bearer realm="insider", error="invalid_token"'
        return response
    return await handler(request)


def _takes_json(request: web.Request) -> bool:
    """Whether the matched handler reads a JSON body (it has a request schema for it)."""
    schemas = getattr(request.match_info.handler, "__schemas__", ())
    return any(schema.get("location") == "json" for schema in schemas)


@web.middleware
async def require_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body that is not JSON is refused before validation: 415 for another type, 400 for one that won't parse.

    The parse here also catches what webargs lets through as a 500: a body nested deeper than
    the interpreter's recursion limit, or a charset that Python does not know. Endpoints that
    read no body (start, stop, retry) ignore whatever is sent.
    """
    if request.body_exists and _takes_json(request):
        if request.content_type != "application/json":
            return error_response(415, "the body must be application/json")
        limit = body_limit(request)
        if request.content_length is not None and request.content_length > limit:
            return error_response(413, f"the body is larger than {limit} bytes")
        raw = await request.read()
        if len(raw) > limit:
            return error_response(413, f"the body is larger than {limit} bytes")
        try:
            json.loads(await request.text())  # the body is kept: webargs reads it again from memory
        except (ValueError, LookupError, RecursionError):  # UnicodeDecodeError is a ValueError
            return error_response(400, "the body is not valid JSON")
    return await handler(request)


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    container = app[CONTAINER]
    async with open_service(container, autostart=app[AUTOSTART], wait_for_schema=app[WAIT_FOR_SCHEMA]) as supervisor:
        app[SERVICES].open(
            Services(
                settings=container.settings(),
                repository=await resolve(container.repository),
                cache=await resolve(container.cache),
                counts=await resolve(container.counts),
                metrics=await resolve(container.metrics),
                supervisor=supervisor,
                receipts=await resolve(container.receipts),
                clock=await resolve(container.clock),
            )
        )
        try:
            yield
        finally:
            app[SERVICES].close()


@contextmanager
def _docs_left_intact(app: web.Application) -> Iterator[None]:
    """Let aiohttp-apispec build the spec from copies of the handlers' docs.

    It edits a handler's ``__apispec__`` as it reads it (pops the request schemas, appends
    parameters), so a second app in the same process (tests, an embedded copy) got a spec
    with its request bodies missing and dangling references. The handlers are module
    functions shared by every app: each build now reads a copy and leaves them as they were.
    """
    originals: dict[int, tuple[Any, dict[str, Any]]] = {}
    for route in app.router.routes():
        handler: Any = route.handler
        docs = getattr(handler, "__apispec__", None)
        if isinstance(docs, dict) and id(handler) not in originals:
            originals[id(handler)] = (handler, docs)
            handler.__apispec__ = {
                key: list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
                for key, value in docs.items()
            }
    try:
        yield
    finally:
        for handler, docs in originals.values():
            handler.__apispec__ = docs


def _document_security(spec: dict[str, Any], token_required: bool, dlr_token_set: bool = False) -> None:
    """With a token set: describe the bearer scheme in the spec and require it on every /api/v1 operation.

    The spec tells the truth about this instance: without a token nothing needs one and no 401 is sent,
    and no scheme is described (Swagger UI then shows no "Authorize" button, which would lead nowhere).
    The receipts endpoint has its own token (INSIDER_DLR_TOKEN), described only when it is set.
    """
    spec.setdefault("definitions", {})["Receipt"] = RECEIPT_DEFINITION
    schemes: dict[str, Any] = {}
    if dlr_token_set:
        schemes[handlers.DLR_SECURITY_SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": handlers.DLR_AUTH_HEADER,
            "description": "INSIDER_DLR_TOKEN, for the provider's delivery receipts",
        }
        schemes[handlers.DLR_QUERY_SECURITY_SCHEME] = {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": "INSIDER_DLR_TOKEN as a query parameter, for providers that only take a URL",
        }
        for operation in spec.get("paths", {}).get(DELIVERY_REPORTS_PATH, {}).values():
            operation["security"] = [{handlers.DLR_SECURITY_SCHEME: []}, {handlers.DLR_QUERY_SECURITY_SCHEME: []}]
    if token_required:
        schemes[SECURITY_SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Bearer <INSIDER_API_TOKEN>`; required on /api/v1 when the service has a token",
        }
    if schemes:
        spec["securityDefinitions"] = schemes
    if not token_required:
        return
    unauthorized = {
        "description": "No token, or not the right one (`Authorization: Bearer <INSIDER_API_TOKEN>`)",
        "schema": {"$ref": "#/definitions/Error"},
        "headers": {"WWW-Authenticate": {"type": "string", "description": "Bearer"}},
    }
    original_unauthorized = unauthorized | {"schema": {"$ref": "#/definitions/OriginalError"}}
    for path, operations in spec.get("paths", {}).items():
        if path in OPEN_API_PATHS:
            continue
        if _guarded(path):
            for operation in operations.values():
                operation["security"] = [{SECURITY_SCHEME: []}]
                refused = original_unauthorized if _original(path) else unauthorized
                operation.setdefault("responses", {})["401"] = refused


def _document_browser_checks(spec: dict[str, Any]) -> None:
    """Every operation may answer 421 (a Host the service does not answer to) and 403 (a cross-site request)."""
    refusals = {
        "403": {
            "description": "A request from a page on another site (Sec-Fetch-Site, Origin or Referer)",
            "schema": {"$ref": "#/definitions/Error"},
        },
        "421": {
            "description": "A Host the service does not answer to (INSIDER_ALLOWED_HOSTS)",
            "schema": {"$ref": "#/definitions/Error"},
        },
    }
    original = {code: r | {"schema": {"$ref": "#/definitions/OriginalError"}} for code, r in refusals.items()}
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                for code, response in (original if _original(path) else refusals).items():
                    operation["responses"].setdefault(code, response)


def _document_batch_items(spec: dict[str, Any]) -> None:
    """Each item of POST /api/v1/messages/batch is the body of POST /api/v1/messages.

    The handler checks the items one by one (to name each bad one), so its schema takes
    objects; the spec says what those objects are.
    """
    batch = spec.get("definitions", {}).get("Batch")
    if batch is not None:
        batch["properties"]["messages"]["items"] = {"$ref": "#/definitions/Enqueue"}


def create_app(container: Container, *, autostart: bool | None = None, wait_for_schema: bool = True) -> web.Application:
    """The aiohttp app over a container; opening and closing its resources is the app's lifespan.

    The handlers reach this container's objects through the app (``request.app[SERVICES]``),
    never through process-wide wiring: several apps over several containers can run in one
    process, each with its own supervisor and repository. The lifespan starts the sender
    when ``autostart`` is true (None: INSIDER_AUTOSTART); see ``open_service`` for
    ``wait_for_schema``.
    """
    mask_access_log_secrets()  # the receipts endpoint's ?token= must not reach an access log
    settings = container.settings()
    app = web.Application(
        middlewares=[
            request_context,
            json_errors,
            browser_checks,
            request_limits,
            require_token,
            require_json,
            validation_middleware,
        ],
        client_max_size=MAX_BATCH_BODY_BYTES,
    )
    app[CONTAINER] = container
    app[SERVICES] = AppServices()
    app[API_TOKEN] = settings.api_token
    app[AUTOSTART] = autostart
    app[WAIT_FOR_SCHEMA] = wait_for_schema
    app[GUARD] = BrowserGuard.for_service(settings.allowed_hosts, settings.host, original_envelope=_original)
    app[LIMITS] = Limits(settings.http_header_timeout_s, settings.http_body_timeout_s)
    app.router.add_get("/", handlers.dashboard)
    app.router.add_static("/static/dashboard", handlers.STATIC_DIR, name="dashboard.static")
    app.router.add_get("/healthz", handlers.healthz, allow_head=False)
    app.router.add_get("/readyz", handlers.readyz, allow_head=False)
    app.router.add_get("/metrics", handlers.metrics, allow_head=False)
    app.router.add_get("/api/v1/messages", handlers.list_messages, allow_head=False)
    app.router.add_post("/api/v1/messages", handlers.enqueue_message, expect_handler=expect_within_limits)
    app.router.add_post("/api/v1/messages/batch", handlers.enqueue_batch, expect_handler=expect_within_limits)
    app.router.add_post("/api/v1/messages/preview", handlers.preview_message, expect_handler=expect_within_limits)
    app.router.add_post(
        r"/api/v1/messages/{id:[0-9]+}/cancel", handlers.cancel_message, expect_handler=expect_within_limits
    )
    app.router.add_get(r"/api/v1/messages/{id:[0-9]+}", handlers.get_message, allow_head=False)
    app.router.add_get(f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}", handlers.get_message_by_uuid, allow_head=False)
    app.router.add_post(
        r"/api/v1/messages/{id:[0-9]+}/retry", handlers.retry_message, expect_handler=expect_within_limits
    )
    app.router.add_post(
        f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}/retry",
        handlers.retry_message_by_uuid,
        expect_handler=expect_within_limits,
    )
    app.router.add_get(
        f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}/events", handlers.message_events_by_uuid, allow_head=False
    )
    app.router.add_get(r"/api/v1/messages/{id:[0-9]+}/events", handlers.message_events, allow_head=False)
    app.router.add_post(DELIVERY_REPORTS_PATH, handlers.delivery_reports, expect_handler=expect_within_limits)
    app.router.add_post(
        f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}/cancel",
        handlers.cancel_message_by_uuid,
        expect_handler=expect_within_limits,
    )
    for method in ("POST", "GET"):
        app.router.add_route(
            method, "/api/v1/messages/start", handlers.start_sending, expect_handler=expect_within_limits
        )
        app.router.add_route(
            method, "/api/v1/messages/stop", handlers.stop_sending, expect_handler=expect_within_limits
        )
    app.router.add_get("/api/v1/sender", handlers.sender_status, allow_head=False)
    app.router.add_get("/api/v1/stats", handlers.stats, allow_head=False)
    # The original Go service's routes (fiber answered them with or without a final slash).
    for path, handler in (
        ("/messages", handlers.original_list),
        ("/messages/start", handlers.original_start),
        ("/messages/stop", handlers.original_stop),
    ):
        app.router.add_get(path, handler, allow_head=False)
        app.router.add_get(path + "/", handler, allow_head=False)
    with _docs_left_intact(app):
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
    _document_security(
        app["swagger_dict"], token_required=bool(settings.api_token), dlr_token_set=bool(settings.dlr_token)
    )
    # Swagger UI also at the original's /swagger/, its spec at /swagger/doc.json.
    [swagger_page] = list(app.router["swagger.docs"])  # aiohttp-apispec's page, GET only
    app.router.add_get("/swagger/", swagger_page.handler, allow_head=False)
    app.router.add_get("/swagger/doc.json", handlers.swagger_spec, allow_head=False)
    app[handlers.ORIGINAL_COMMANDS] = asyncio.Lock()
    _document_browser_checks(app["swagger_dict"])
    _document_batch_items(app["swagger_dict"])
    app.cleanup_ctx.append(_lifespan)
    return app
