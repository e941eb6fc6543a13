"""The HTTP server's edges: JSON even for what the parser refuses, deadlines on headers and body, the body limit.

aiohttp answers some requests before any handler or middleware runs: a request line or
header over its limit, too many headers, a method or target that is not HTTP. Its answer
is text that echoes part of the request; :class:`ServiceProtocol` (aiohttp's
``RequestHandler`` with its ``handle_error`` hook replaced) makes it a short JSON error.
The same protocol drops a client that has not sent its headers ``header_timeout_s`` after
connecting, or after the first byte of its next request (a slowloris). The body's deadline,
the body limit and missing static files are middleware (:func:`request_limits`).

What cannot be JSON: a connection that sends no request at all, or bytes that are not HTTP
after a response has begun, only ever gets closed; the status line of a parser error is
``HTTP/1.0`` (aiohttp answers before it knows the client's version).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from insider.config import format_duration

log = structlog.get_logger("insider.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp's limits, written out: what a request line or one header may hold, and how many headers.
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 100
# After a refused body, how long the rest is read and thrown away before the connection closes
# (closing at once could make the client miss the answer).
LINGERING_S = 2.0
# An idle keep-alive connection is closed after this long.
KEEPALIVE_S = 15.0
MAX_BODY_BYTES = 64 * 1024
# POST /api/v1/messages/batch takes up to 1,000 messages.
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
LARGE_BODY_PATHS = frozenset({"/api/v1/messages/batch"})


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


def parser_error_reason(exc: BaseException | None) -> str:
    """What was wrong with a request the parser refused, in words that echo nothing of it."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return f"the request line or a header is longer than {MAX_LINE_BYTES} bytes"
    message = getattr(exc, "message", "") or ""
    first = str(message).split(":\n", 1)[0].split("\n", 1)[0].strip()
    if isinstance(exc, http_exceptions.BadHttpMethod) and "HTTPS" not in first:
        return "the method is not one HTTP knows"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "the request target is not a valid URL (characters outside ASCII must be percent-encoded)"
    if first.startswith("Too many headers"):
        return f"more than {MAX_HEADERS} headers"
    # llhttp's own wording is a fixed phrase before the quoted request ("Invalid char in url path").
    if first and len(first) <= 80 and first.isascii() and first.isprintable() and "b'" not in first:
        return first[0].lower() + first[1:]
    return "the request is not valid HTTP"


class ServiceProtocol(RequestHandler):
    """aiohttp's connection handler with JSON errors and a deadline on the request headers."""

    def __init__(self, manager: Any, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_request = False
        self._partial = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and data:
            self._partial = True
            if self._header_deadline is None:
                self._arm_header_deadline()
        super().data_received(data)

    def headers_received(self) -> None:
        """A whole request head has arrived: its deadline is met, the body's (middleware) begins."""
        self._in_request = True
        self._partial = False
        self._disarm_header_deadline()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400 and resp.content_type != "application/json":
            # Raised before any middleware could turn it into JSON (an unknown Expect: 417).
            json_resp = _json_error(resp.status, resp.reason.lower())
            for name in ("Allow", "Retry-After"):
                if name in resp.headers:
                    json_resp.headers[name] = resp.headers[name]
            resp = json_resp
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._in_request = False

    def _arm_header_deadline(self) -> None:
        self._header_deadline = asyncio.get_running_loop().call_later(self._header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._in_request or self.transport is None:
            return
        # aiohttp's own idle test (RequestHandler._process_keepalive): its waiter is pending while
        # it waits for the next request.
        if self._waiter is None or self._waiter.done():
            # Not waiting for a request yet: still reading away a refused body (lingering). Look again later.
            self._arm_header_deadline()
            return
        if self._partial:  # a request had begun: say why before closing
            body = json.dumps(
                {
                    "error": f"the request headers took longer than {format_duration(self._header_timeout_s)} "
                    "(INSIDER_HTTP_HEADER_TIMEOUT)"
                }
            ).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        log.debug("connection dropped", reason="headers too slow", partial=self._partial)
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's hook for every error it answers itself: a short JSON body instead of text echoing the request."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status >= 500:
            if status == 500:
                log.error("request failed", exc_info=exc)
            error = "internal error" if status == 500 else "the request took too long"
        else:
            error = f"not a valid HTTP request: {parser_error_reason(exc)}"
            log.info("bad request", status=status, reason=error)
        resp = _json_error(status, error)
        resp.force_close()
        return resp


class ServiceServer(web.Server):
    """aiohttp's low-level server, making :class:`ServiceProtocol` connections."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        factory = self.request_factory

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            if isinstance(protocol, ServiceProtocol):
                protocol.headers_received()
            return factory(message, payload, protocol, writer, task)

        self.request_factory = make_request

    def __call__(self) -> ServiceProtocol:
        return ServiceProtocol(self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """An AppRunner whose server uses :class:`ServiceProtocol`, with the limits of the app's :data:`LIMITS`."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("handle_signals", False)
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_S)
        kwargs.setdefault("lingering_time", LINGERING_S)
        kwargs.setdefault("max_line_size", MAX_LINE_BYTES)
        kwargs.setdefault("max_field_size", MAX_FIELD_BYTES)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server in Application._make_handler; the same arguments make ours
        # (the handler_args of the app and this runner's keyword arguments are in its _kwargs).
        made = await super()._make_server()  # runs the app's startup and freezes it
        limits = self.app.get(LIMITS) or Limits()
        return ServiceServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            header_timeout_s=limits.header_timeout_s,
            **made._kwargs,
        )


async def expect_within_limits(request: web.Request) -> None:
    """A route's ``expect_handler``: ``Expect: 100-continue`` with a body over the limit is refused (413)
    before the 100 that would invite the client to send it; otherwise aiohttp's own handling."""
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit,
            actual_size=request.content_length,
            text=json.dumps({"error": f"the body is larger than {limit} bytes"}),
            content_type="application/json",
        )
    expect = request.headers.get("Expect", "")
    if request.version == (1, 1) and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's: the real answer is still to come
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
async def request_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 at once for a declared body over the limit; the body read under a deadline (408); JSON for missing files."""
    if _missing_static_file(request):
        return _json_error(404, "not found")
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        response = _json_error(413, f"the body is larger than {limit} bytes")
        response.force_close()
        return response
    if request.body_exists and not request.content.is_eof():  # else it is in memory already (small bodies)
        limits = request.app.get(LIMITS) or Limits()
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                await request.read()  # kept: handlers read it again from memory
        except http_exceptions.HttpProcessingError:  # chunked framing broken, fewer bytes than declared
            response = _json_error(400, "the body's framing is invalid (Content-Length or chunked encoding)")
            response.force_close()
            return response
        except ConnectionError:  # the client went away: nobody reads this answer
            response = _json_error(400, "the connection closed before the body arrived")
            response.force_close()
            return response
        except TimeoutError:
            response = _json_error(
                408,
                f"the request body took longer than {format_duration(limits.body_timeout_s)} "
                "(INSIDER_HTTP_BODY_TIMEOUT)",
            )
            response.force_close()
            return response
    return await handler(request)
