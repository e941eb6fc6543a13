"""The Swagger spec: built without touching the shared handlers, then told what no decorator can say."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from insider.web.paths import DELIVERY_REPORTS_PATH, OPEN_API_PATHS, guarded, is_original
from insider.web.receipts import DLR_AUTH_HEADER
from insider.web.schemas import RECEIPT_DEFINITION

SECURITY_SCHEME = "bearer"
DLR_SECURITY_SCHEME = "dlrToken"
DLR_QUERY_SECURITY_SCHEME = "dlrTokenQuery"


@contextmanager
def docs_left_intact(app: web.Application) -> Iterator[None]:
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


def document_security(spec: dict[str, Any], token_required: bool, dlr_token_set: bool = False) -> None:
    """With a token set: describe the bearer scheme in the spec and require it on every /api/v1 operation.

    The spec tells the truth about this instance: without a token nothing needs one and no 401 is sent,
    and no scheme is described (Swagger UI then shows no "Authorize" button, which would lead nowhere).
    The receipts endpoint has its own token (INSIDER_DLR_TOKEN), described only when it is set.
    """
    spec.setdefault("definitions", {})["Receipt"] = RECEIPT_DEFINITION
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
        for operation in spec.get("paths", {}).get(DELIVERY_REPORTS_PATH, {}).values():
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
            for operation in operations.values():
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
