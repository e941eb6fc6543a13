"""The Swagger spec: built from copies of the handlers' docs (the shared handlers stay as they are), then completed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web
from aiohttp_apispec import setup_aiohttp_apispec

from insider import __version__
from insider.web.inbound_schemas import INBOUND_DEFINITION
from insider.web.paths import DELIVERY_REPORTS_PATH, OPEN_API_OPERATIONS, OPEN_API_PATHS, guarded, is_original
from insider.web.receipts import DLR_AUTH_HEADER
from insider.web.schemas import RECEIPT_DEFINITION

SECURITY_SCHEME = "bearer"
DLR_SECURITY_SCHEME = "dlrToken"
DLR_QUERY_SECURITY_SCHEME = "dlrTokenQuery"
SPEC_URL = "/api/docs/swagger.json"
SWAGGER_UI_PATH = "/swagger"
_SPEC_INFO: Final = MappingProxyType(
    {
        "title": "insider",
        "version": __version__,
        "info": {"description": "Sends queued SMS messages at a controlled rate."},
    }
)


def serve_swagger(app: web.Application) -> None:
    """aiohttp-apispec's Swagger UI (``/swagger``) and spec route (``/api/docs/swagger.json``) on ``app``.

    Call it before the app has routes: aiohttp-apispec builds a spec from the routes there are,
    and edits each handler's ``__apispec__`` as it reads it (pops the request schemas, appends
    parameters). The handlers are module functions shared by every app in the process, so
    the spec comes from :func:`document_routes` instead, which reads copies. No error hook is
    given: aiohttp-apispec would install it on webargs' process-wide parser (the app
    validates with a parser of its own).
    """
    if any(hasattr(route.handler, "__apispec__") for route in app.router.routes()):
        raise RuntimeError("serve_swagger() comes before the documented routes")
    setup_aiohttp_apispec(app, url=SPEC_URL, swagger_path=SWAGGER_UI_PATH, in_place=True, **_SPEC_INFO)


def document_routes(app: web.Application) -> None:
    """``app``'s spec (served by :func:`serve_swagger`'s route), built from copies of its handlers' docs.

    aiohttp-apispec reads the copies on an app of their own, made for the purpose: the
    handlers of ``app`` are left as they are, and every app gets the whole spec.
    """
    documented = web.Application()
    copies: dict[int, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}
    for route in app.router.routes():
        docs = getattr(route.handler, "__apispec__", None)
        if not isinstance(docs, dict):
            continue
        # One copy per handler, shared by its routes, as the handler itself is.
        handler = copies.setdefault(id(route.handler), _carrying(_copy(docs)))
        info = route.resource.get_info() if route.resource is not None else {}
        documented.router.add_route(route.method, info.get("path") or info["formatter"], handler)
    setup_aiohttp_apispec(documented, url=None, in_place=True, **_SPEC_INFO)
    spec = app["swagger_dict"]
    spec.clear()
    spec.update(documented["swagger_dict"])


def _copy(value: Any) -> Any:
    """Dicts and lists copied all the way down (what aiohttp-apispec edits); schemas and the like shared."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _carrying(docs: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler that only carries ``docs`` for aiohttp-apispec to read: it never serves a request."""

    async def documented(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    setattr(documented, "__apispec__", docs)  # noqa: B010 (the attribute aiohttp-apispec reads)
    return documented


def document_security(spec: dict[str, Any], token_required: bool, dlr_token_set: bool = False) -> None:
    """With a token set: describe the bearer scheme in the spec and require it on every /api/v1 operation.

    The spec tells the truth about this instance: without a token nothing needs one and no 401 is sent,
    and no scheme is described (Swagger UI then shows no "Authorize" button, which would lead nowhere).
    The receipts endpoint has its own token (INSIDER_DLR_TOKEN), described only when it is set.
    """
    spec.setdefault("definitions", {})["Receipt"] = RECEIPT_DEFINITION
    spec["definitions"]["Inbound"] = INBOUND_DEFINITION
    # A provider's POSTs carry INSIDER_DLR_TOKEN: the receipts, and the replies.
    dlr_operations = [*spec.get("paths", {}).get(DELIVERY_REPORTS_PATH, {}).values()]
    dlr_operations += [
        operation
        for method, path in OPEN_API_OPERATIONS
        for name, operation in spec.get("paths", {}).get(path, {}).items()
        if name == method.lower()
    ]
    schemes: dict[str, Any] = {}
    if dlr_token_set:
        schemes[DLR_SECURITY_SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": DLR_AUTH_HEADER,
            "description": "INSIDER_DLR_TOKEN, for the provider's delivery receipts",
        }
        schemes[DLR_QUERY_SECURITY_SCHEME] = {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": "INSIDER_DLR_TOKEN as a query parameter, for providers that only take a URL",
        }
        for operation in dlr_operations:
            operation["security"] = [{DLR_SECURITY_SCHEME: []}, {DLR_QUERY_SECURITY_SCHEME: []}]
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
        if guarded(path):
            for method, operation in operations.items():
                if (method.upper(), path) in OPEN_API_OPERATIONS:
                    continue
                operation["security"] = [{SECURITY_SCHEME: []}]
                refused = original_unauthorized if is_original(path) else unauthorized
                operation.setdefault("responses", {})["401"] = refused


def document_browser_checks(spec: dict[str, Any]) -> None:
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
                for code, response in (original if is_original(path) else refusals).items():
                    operation["responses"].setdefault(code, response)


def document_batch_items(spec: dict[str, Any]) -> None:
    """Each item of POST /api/v1/messages/batch is the body of POST /api/v1/messages.

    The handler checks the items one by one (to name each bad one), so its schema takes
    objects; the spec says what those objects are.
    """
    batch = spec.get("definitions", {}).get("Batch")
    if batch is not None:
        batch["properties"]["messages"]["items"] = {"$ref": "#/definitions/Enqueue"}
