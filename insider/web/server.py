"""The HTTP server's edges: limits and deadlines on what a client sends, and JSON for every error the server answers.

Middlewares do what they can before a body is read: :func:`request_limits` refuses a declared length over the
route's limit (413) and answers a missing static file (JSON 404); after every other check that could refuse the
request, :func:`read_body` is the one step that reads a body, under INSIDER_HTTP_BODY_TIMEOUT, cut with a 413 as
soon as it passes the route's limit. A route's ``expect_handler`` (:func:`expect_continue`) leaves the
``100 Continue`` to that step, so a request that is refused is never invited to send its body.

What aiohttp answers before any middleware (a request line, header or method the parser refuses; an expectation
it does not know) and the deadline on a request's head belong to the connection: :class:`ServiceRunner` serves
the app with the connections of :mod:`insider.web.aiohttp_seam` (the one place that uses aiohttp internals), and
:func:`connection_answer` says what they answer: a short JSON error that echoes nothing of the request.

What cannot be JSON: a connection that sends no request at all, or bytes that are not HTTP
after a response has begun, only ever gets closed; the status line of a parser error is
``HTTP/1.0`` (aiohttp answers before it knows the client's version).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import HttpVersion11, web

from insider.config import format_duration
from insider.logs import get_logger
from insider.web.aiohttp_seam import BODY_FRAMING_ERRORS, SeamRunner, parser_error_reason

log = get_logger("insider.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp's limits, written out: what a request line or one header may hold, and how many headers.
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 100
# An idle keep-alive connection is closed after this long.
KEEPALIVE_S = 15.0
# After answering a request whose body is still coming, how long the connection stays open (reading
# nothing) before it closes: closing at once could reset it before the client has read the answer.
LINGERING_S = 2.0
MAX_BODY_BYTES = 64 * 1024
# POST /api/v1/messages/batch takes up to 1,000 messages.
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
LARGE_BODY_PATHS = frozenset({"/api/v1/messages/batch"})
# Set by expect_continue on a request that asked for "Expect: 100-continue": read_body sends the 100.
CONTINUE_AWAITED = web.RequestKey("continue_awaited", bool)


def body_limit(request: web.Request) -> int:
    """The largest body this request's route takes: 4 MiB for a batch of messages, else 64 KiB."""
    return MAX_BATCH_BODY_BYTES if request.path in LARGE_BODY_PATHS else MAX_BODY_BYTES


class Limits:
    """The deadlines of one server (INSIDER_HTTP_HEADER_TIMEOUT and INSIDER_HTTP_BODY_TIMEOUT)."""

    __slots__ = ("body_timeout_s", "header_timeout_s")

    def __init__(self, header_timeout_s: float = 5.0, body_timeout_s: float = 10.0) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s


LIMITS = web.AppKey("http_limits", Limits)


def _json_error(status: int, error: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": error}), content_type="application/json", charset="utf-8"
    )


def _closing_error(status: int, error: str) -> web.Response:
    """An error after which the connection closes (see :func:`unread_body_stays_unread`)."""
    response = _json_error(status, error)
    response.force_close()
    return response


def connection_answer(header_timeout_s: float, status: int, exc: BaseException | None) -> web.Response:
    """What a connection answers for an error aiohttp meets by itself, outside the app's middlewares: a short JSON
    error for a request the parser refuses, a request head slower than ``header_timeout_s`` (408), an expect
    handler's ``HTTPException`` or a crash."""
    if isinstance(exc, web.HTTPException):  # raised by a route's expect_handler (an unknown Expect: 417)
        if exc.content_type == "application/json":
            return exc
        response = _json_error(exc.status, exc.reason.lower())
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    if status == 408:
        return _json_error(
            408,
            f"the request headers took longer than {format_duration(header_timeout_s)} (INSIDER_HTTP_HEADER_TIMEOUT)",
        )
    if status >= 500:
        if status == 500:
            log.error("request failed", exc_info=exc)
        return _json_error(status, "internal error" if status == 500 else "the request took too long")
    error = (
        f"not a valid HTTP request: {parser_error_reason(exc, max_line_bytes=MAX_LINE_BYTES, max_headers=MAX_HEADERS)}"
    )
    log.info("bad request", status=status, reason=error)
    return _json_error(status, error)


class ServiceRunner(SeamRunner):
    """An ``aiohttp.web.AppRunner`` with the service's HTTP edges: its limits on request heads and keep-alive,
    JSON for what aiohttp answers itself, and the head deadline of the app's :data:`LIMITS`."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("handle_signals", False)
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_S)
        kwargs.setdefault("lingering_time", LINGERING_S)
        kwargs.setdefault("max_line_size", MAX_LINE_BYTES)
        kwargs.setdefault("max_field_size", MAX_FIELD_BYTES)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        header_timeout_s = (app.get(LIMITS) or Limits()).header_timeout_s
        super().__init__(
            app,
            header_timeout_s=header_timeout_s,
            answer=functools.partial(connection_answer, header_timeout_s),
            **kwargs,
        )


async def expect_continue(request: web.Request) -> None:
    """A route's ``expect_handler``: ``Expect: 100-continue`` is answered by :func:`read_body`, once every check that
    could refuse the request has passed (a refused request gets its answer instead of the 100); any other
    expectation is a 417."""
    if request.version != HttpVersion11:  # HTTP/1.0 knows no 100 Continue: nothing to do (as aiohttp's own)
        return
    if request.headers.get("Expect", "").lower() == "100-continue":
        request[CONTINUE_AWAITED] = True
        return
    raise web.HTTPExpectationFailed(text=json.dumps({"error": "expectation failed"}), content_type="application/json")


def _missing_static_file(request: web.Request) -> bool:
    """A static route whose file does not exist (aiohttp answers that with an empty 404 of its own)."""
    resource = request.match_info.route.resource
    if not isinstance(resource, web.StaticResource):
        return False
    directory = Path(resource.get_info()["directory"])
    name = request.match_info.get("filename", "")
    try:
        path = (directory / name).resolve()
        path.relative_to(directory.resolve())
    except (ValueError, OSError):
        return False  # aiohttp refuses these itself, as JSON through json_errors
    return not path.exists()


@web.middleware
async def unread_body_stays_unread(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request answered before its body arrived in full (refused, or cut at its limit) reads no more of it.

    What has arrived is dropped and the connection stops reading; it says ``Connection: close`` and closes
    LINGERING_S after the answer, time for a client still sending to read it. (Left to itself, aiohttp would
    go on reading the rest and throwing it away, up to half a megabyte in memory per connection as it goes.)
    A body that has arrived whole keeps the connection alive.
    """
    response = await handler(request)
    payload = request.content
    if request.body_exists and not payload.is_eof():
        response.force_close()
        try:
            while payload.read_nowait():  # dropping one buffer can let aiohttp parse what it held back: drop it too
                pass
        except Exception:  # the body had failed already (framing, the client left): nothing is held for it
            return response
        if request.transport is not None:
            request.transport.pause_reading()
    return response


@web.middleware
async def request_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 at once for a declared body over the route's limit (and the connection closed); JSON for missing files."""
    if _missing_static_file(request):
        return _json_error(404, "not found")
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        return _closing_error(413, f"the body is larger than {limit} bytes")
    return await handler(request)


@web.middleware
async def read_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one step that reads a body, after everything that could refuse the request: under the body deadline
    (408), cut as soon as it passes the route's limit (413), the connection closed after either.

    A request whose route or method does not exist is passed on unread (to its 404 or 405). The body is
    kept: handlers read it again from memory.
    """
    if not request.body_exists or request.match_info.http_exception is not None:
        return await handler(request)
    limit = body_limit(request)
    if limit != request.client_max_size:
        request = request.clone(client_max_size=limit)  # aiohttp's read() checks it chunk by chunk
    if request.get(CONTINUE_AWAITED):
        if request.transport is None:
            return _closing_error(400, "the connection closed before the body arrived")
        # Straight to the transport: it is no part of the answer, which the response's writer has yet to begin.
        request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body_timeout_s = (request.app.get(LIMITS) or Limits()).body_timeout_s
    try:
        async with asyncio.timeout(body_timeout_s):
            await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _closing_error(413, f"the body is larger than {limit} bytes")
    except BODY_FRAMING_ERRORS:  # chunked framing broken, fewer bytes than declared
        return _closing_error(400, "the body's framing is invalid (Content-Length or chunked encoding)")
    except ConnectionError:  # the client went away: nobody reads this answer
        return _closing_error(400, "the connection closed before the body arrived")
    except TimeoutError:
        return _closing_error(
            408, f"the request body took longer than {format_duration(body_timeout_s)} (INSIDER_HTTP_BODY_TIMEOUT)"
        )
    return await handler(request)
