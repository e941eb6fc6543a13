"""The aiohttp app factory: the route table, the middlewares and the service's lifespan."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from insider.container import Container, open_service, resolve
from insider.domain import mask_phone
from insider.logs import get_logger
from insider.ports import InvalidCursor, RepositoryUnavailable
from insider.supervisor import SupervisorClosed
from insider.web import inbound, messages, original, probes, providers, receipts, sending, suppressions
from insider.web.access_log import QuerySecretsMasked
from insider.web.guard import GUARD, BrowserGuard, browser_checks
from insider.web.openapi import (
    document_batch_items,
    document_browser_checks,
    document_routes,
    document_security,
    serve_swagger,
)
from insider.web.original import original_error
from insider.web.paths import (
    DELIVERY_REPORTS_PATH,
    INBOUND_PATH,
    OPEN_API_OPERATIONS,
    OPEN_API_PATHS,
    guarded,
    is_original,
)
from insider.web.responses import error_response
from insider.web.server import (
    LIMITS,
    MAX_BODY_BYTES,
    Limits,
    expect_continue,
    read_body,
    request_limits,
    unread_body_stays_unread,
)
from insider.web.services import SERVICES, AppServices, Services
from insider.web.tokens import same_secret
from insider.web.validation import validate

log = get_logger("insider.web")

CONTAINER = web.AppKey("container", Container)
API_TOKEN = web.AppKey("api_token", str)
# Whether the lifespan starts the sender (None follows INSIDER_AUTOSTART) and waits for one
# try at the schema; the command line passes False for both, binds the listener, then does them.
AUTOSTART: web.AppKey[bool | None] = web.AppKey("autostart")
WAIT_FOR_SCHEMA = web.AppKey("wait_for_schema", bool)
# A UUID as the original Go service showed it (either case), for GET /api/v1/messages/{uuid}.
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
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
            path=_logged_path(request),
            status=response.status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def _logged_path(request: web.Request) -> str:
    """The request's path as logged: a phone number in it (a suppression's, by its route) masked."""
    to = request.match_info.get("to")
    return request.path.replace(to, mask_phone(to)) if to else request.path


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


def _protected(request: web.Request) -> bool:
    """Whether the token guards this request: its path, or the route it matched, is guarded.

    The receipts endpoint is the exception: a provider's server calls it, with a token of its own.
    """
    resource = request.match_info.route.resource
    paths = (request.path, resource.canonical if resource is not None else "")
    if any(p in OPEN_API_PATHS or (request.method, p) in OPEN_API_OPERATIONS for p in paths):
        return False
    return any(guarded(p) for p in paths)


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
    refuse = original_error if is_original(request.path) else error_response
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
async def require_receipts_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The refusals of the endpoints a provider posts to (receipts, replies), before the body is read: off (404),
    no or a wrong INSIDER_DLR_TOKEN (401), a body neither JSON nor a form (415), an unknown ``?provider=`` (422)."""
    refused = None
    if request.match_info.handler is receipts.delivery_reports:
        refused = receipts.receipts_refusal(request)
    elif request.match_info.handler is inbound.receive_inbound:
        refused = inbound.inbound_refusal(request)
    if refused is not None:
        return refused
    return await handler(request)


@web.middleware
async def require_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body sent to an endpoint that reads JSON must be ``application/json`` (decided by the header alone, before
    the body is read): else a 415. Endpoints that read no body (start, stop, retry) ignore whatever is sent."""
    if request.body_exists and _takes_json(request) and request.content_type != "application/json":
        return error_response(415, "the body must be application/json")
    return await handler(request)


@web.middleware
async def parse_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A JSON body that does not parse is a 400 before validation.

    The parse here also catches what webargs lets through as a 500: a body nested deeper than
    the interpreter's recursion limit, or a charset that Python does not know.
    """
    if request.body_exists and _takes_json(request):
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
                dispatcher=await resolve(container.dispatcher),
                switches=await resolve(container.provider_switches),
                sending_hours=await resolve(container.sending_hours),
                replies=await resolve(container.replies),
            )
        )
        try:
            yield
        finally:
            app[SERVICES].close()


def create_app(container: Container, *, autostart: bool | None = None, wait_for_schema: bool = True) -> web.Application:
    """The aiohttp app over a container; opening and closing its resources is the app's lifespan.

    The handlers reach this container's objects through the app (``request.app[SERVICES]``),
    never through process-wide wiring: several apps over several containers can run in one
    process, each with its own supervisor and repository. The lifespan starts the sender
    when ``autostart`` is true (None: INSIDER_AUTOSTART); see ``open_service`` for
    ``wait_for_schema``.
    """
    settings = container.settings()
    app = web.Application(
        # Everything that can refuse a request is judged on its head, before the one step that reads a body
        # (read_body, which cuts it at its route's limit); a route's expect_handler leaves the 100 to that step.
        middlewares=[
            request_context,
            unread_body_stays_unread,
            json_errors,
            browser_checks,
            request_limits,
            require_token,
            require_receipts_token,
            require_json,
            read_body,
            parse_json,
            validate,
        ],
        client_max_size=MAX_BODY_BYTES,  # read_body raises it for the routes that take more
        # aiohttp's access log, where a runner keeps one, with the receipts endpoint's ?token= masked.
        handler_args={"access_log_class": QuerySecretsMasked},
    )
    app[CONTAINER] = container
    app[SERVICES] = AppServices()
    app[API_TOKEN] = settings.api_token
    app[AUTOSTART] = autostart
    app[WAIT_FOR_SCHEMA] = wait_for_schema
    app[GUARD] = BrowserGuard.for_service(settings.allowed_hosts, settings.host, original_envelope=is_original)
    app[LIMITS] = Limits(settings.http_header_timeout_s, settings.http_body_timeout_s)
    serve_swagger(app)  # before the routes: it would read (and edit) the shared handlers' docs
    app.router.add_get("/", probes.dashboard)
    app.router.add_static("/static/dashboard", probes.STATIC_DIR, name="dashboard.static")
    app.router.add_get("/healthz", probes.healthz, allow_head=False)
    app.router.add_get("/readyz", probes.readyz, allow_head=False)
    app.router.add_get("/metrics", probes.metrics, allow_head=False)
    app.router.add_get("/api/v1/messages", messages.list_messages, allow_head=False)
    app.router.add_post("/api/v1/messages", messages.enqueue_message, expect_handler=expect_continue)
    app.router.add_post("/api/v1/messages/batch", messages.enqueue_batch, expect_handler=expect_continue)
    app.router.add_post("/api/v1/messages/preview", messages.preview_message, expect_handler=expect_continue)
    app.router.add_post(r"/api/v1/messages/{id:[0-9]+}/cancel", messages.cancel_message, expect_handler=expect_continue)
    app.router.add_get(r"/api/v1/messages/{id:[0-9]+}", messages.get_message, allow_head=False)
    app.router.add_get(f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}", messages.get_message_by_uuid, allow_head=False)
    app.router.add_post(r"/api/v1/messages/{id:[0-9]+}/retry", messages.retry_message, expect_handler=expect_continue)
    app.router.add_post(
        f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}/retry",
        messages.retry_message_by_uuid,
        expect_handler=expect_continue,
    )
    app.router.add_get(
        f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}/events", messages.message_events_by_uuid, allow_head=False
    )
    app.router.add_get(r"/api/v1/messages/{id:[0-9]+}/events", messages.message_events, allow_head=False)
    app.router.add_post(DELIVERY_REPORTS_PATH, receipts.delivery_reports, expect_handler=expect_continue)
    app.router.add_post(INBOUND_PATH, inbound.receive_inbound, expect_handler=expect_continue)
    app.router.add_get(INBOUND_PATH, inbound.list_inbound, allow_head=False)
    app.router.add_post(
        f"/api/v1/messages/{{uuid:{UUID_PATTERN}}}/cancel",
        messages.cancel_message_by_uuid,
        expect_handler=expect_continue,
    )
    for method in ("POST", "GET"):
        app.router.add_route(method, "/api/v1/messages/start", sending.start_sending, expect_handler=expect_continue)
        app.router.add_route(method, "/api/v1/messages/stop", sending.stop_sending, expect_handler=expect_continue)
    app.router.add_get("/api/v1/sender", sending.sender_status, allow_head=False)
    app.router.add_get("/api/v1/stats", sending.stats, allow_head=False)
    app.router.add_get("/api/v1/providers", providers.list_providers, allow_head=False)
    app.router.add_get(providers.PROVIDER_PATH, providers.get_provider, allow_head=False)
    for action, handler in (("disable", providers.disable_provider), ("enable", providers.enable_provider)):
        app.router.add_post(f"{providers.PROVIDER_PATH}/{action}", handler, expect_handler=expect_continue)
    app.router.add_get(suppressions.SUPPRESSIONS_PATH, suppressions.list_suppressions, allow_head=False)
    app.router.add_post(suppressions.SUPPRESSIONS_PATH, suppressions.suppress, expect_handler=expect_continue)
    app.router.add_get(suppressions.SUPPRESSION_PATH, suppressions.get_suppression, allow_head=False)
    app.router.add_delete(suppressions.SUPPRESSION_PATH, suppressions.unsuppress)
    # The original Go service's routes (fiber answered them with or without a final slash).
    for path, handler in (
        ("/messages", original.original_list),
        ("/messages/start", original.original_start),
        ("/messages/stop", original.original_stop),
    ):
        app.router.add_get(path, handler, allow_head=False)
        app.router.add_get(path + "/", handler, allow_head=False)
    document_routes(app)
    document_security(
        app["swagger_dict"], token_required=bool(settings.api_token), dlr_token_set=bool(settings.dlr_token)
    )
    # Swagger UI also at the original's /swagger/, its spec at /swagger/doc.json.
    [swagger_page] = list(app.router["swagger.docs"])  # aiohttp-apispec's page, GET only
    app.router.add_get("/swagger/", swagger_page.handler, allow_head=False)
    app.router.add_get("/swagger/doc.json", original.swagger_spec, allow_head=False)
    document_browser_checks(app["swagger_dict"])
    document_batch_items(app["swagger_dict"])
    app.cleanup_ctx.append(_lifespan)
    return app
