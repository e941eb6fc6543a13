"""The one place insider reaches into aiohttp's server: its connections' own answers, and a deadline on heads.

What it does. :class:`SeamRunner` (an ``aiohttp.web.AppRunner``) serves an app with connections that are
aiohttp's own ``RequestHandler`` with three changes:

- What aiohttp answers by itself, outside the app's middlewares (a request its HTTP parser refuses, an
  ``HTTPException`` raised by a route's ``expect_handler``), is the ``answer`` the runner is given, instead of
  aiohttp's text, which echoes part of the request.
- After a request the parser refused, nothing more is read from the connection. aiohttp would feed every
  later read to the failed parser until the refusal is answered, queuing one more error per read, each quoting
  up to the whole read: megabytes per connection for a client whose headers never end.
- A connection whose request head is not complete ``header_timeout_s`` after it connected, or after the first
  byte of its next request, is closed, with ``answer(408, None)`` if a request had begun (a slowloris).

Why there is no public way. aiohttp builds each connection's handler in ``web.Server.__call__`` from keyword
arguments it keeps privately, and ``AppRunner`` builds that server in a private method. A request the parser
refuses never reaches the app: no middleware runs, and as it has no ``match_info``, no ``on_response_prepare``
signal either; ``RequestHandler.handle_error`` is the one place it passes, and the refusal is known at once only
from the handler's private queue. aiohttp's only deadline before a request is its keep-alive timeout, counted
from the previous answer, with no answer to a client that had begun one; whether a connection is waiting for a
head is known only from the handler's private ``_waiter``. The rest of the server's edges (limits, the body's
deadline and limit per route, ``100 Continue``) is public API, in ``insider.web.server``.

What it relies on, each checked by ``tests/unit/test_aiohttp_seam.py``:

- ``AppRunner._make_server()``: a coroutine with no argument that starts and freezes the app and returns its
  ``web.Server``, whose ``_kwargs`` are the keyword arguments of each ``RequestHandler``;
- ``web.Server(handler, *, request_factory, handler_cancellation, loop)``; ``__call__()``, the protocol factory
  the sites give ``loop.create_server``; ``request_factory(message, payload, protocol, writer, task)``, called
  by a connection when it has a request's head (or one the parser refused), before any handler runs;
- ``web.RequestHandler(manager, *, loop, **kwargs)``, its ``connection_made``, ``connection_lost``,
  ``data_received`` and ``force_close``; ``handle_error(request, status, exc, message)``, returning the answer
  to every error aiohttp meets itself; ``finish_response(request, resp, start_time)``, given what an expect
  handler raised; ``_waiter``, a pending future exactly while the connection waits for a request head;
  ``_messages``, the queue ``data_received`` appends each parsed head to as ``(message, payload)``, a refused
  one as a ``web_protocol._ErrInfo``;
- ``aiohttp.http_exceptions``: the parser's errors (``LineTooLong``, ``BadHttpMethod``, ``InvalidURLError``, and
  ``HttpProcessingError``, which a body with broken framing raises without the C extension), told apart to say
  what was wrong (:func:`parser_error_reason`) without echoing the request.

On an aiohttp upgrade: setup.cfg pins aiohttp to the minor version this was checked on. To move the pin, read
the diff of ``web_protocol.py`` (``RequestHandler.start``, ``data_received``, ``handle_error``,
``finish_response``, ``_process_keepalive``), ``web_server.py`` and ``web_runner.py`` (``AppRunner._make_server``),
then run ``tests/unit/test_aiohttp_seam.py``, ``tests/integration/test_http_server.py`` and
``tests/acceptance/test_http_edges.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import _ErrInfo

from insider.logs import get_logger

log = get_logger("insider.web")

# What reading a request's body raises when its framing is broken: aiohttp's C parser wraps it in the public
# RequestPayloadError; its pure-Python parser (without the C extension) raises its own HttpProcessingError.
BODY_FRAMING_ERRORS = (web.RequestPayloadError, http_exceptions.HttpProcessingError)

Answer = Callable[[int, BaseException | None], web.Response]
"""What a connection answers for an error aiohttp meets by itself: given the status and what aiohttp raised (a
parser error, an expect handler's ``HTTPException``, ``None`` for a slow request head)."""


def parser_error_reason(exc: BaseException | None, *, max_line_bytes: int, max_headers: int) -> str:
    """What was wrong with a request aiohttp's parser refused (``exc``, given to an :data:`Answer`), in words that
    echo nothing of it."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return f"the request line or a header is longer than {max_line_bytes} bytes"
    message = getattr(exc, "message", "") or ""
    first = str(message).split(":\n", 1)[0].split("\n", 1)[0].strip()
    if isinstance(exc, http_exceptions.BadHttpMethod) and "HTTPS" not in first:
        return "the method is not one HTTP knows"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "the request target is not a valid URL (characters outside ASCII must be percent-encoded)"
    if first.startswith("Too many headers"):
        return f"more than {max_headers} headers"
    # llhttp's own wording is a fixed phrase before the quoted request ("Invalid char in url path").
    if first and len(first) <= 80 and first.isascii() and first.isprintable() and "b'" not in first:
        return first[0].lower() + first[1:]
    return "the request is not valid HTTP"


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, with the product's answers for its own errors and a deadline on request heads.

    Attributes of its own are prefixed ``_seam_``, so that none shadows one of aiohttp's.
    """

    def __init__(self, manager: web.Server, *, header_timeout_s: float, answer: Answer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._seam_header_timeout_s = header_timeout_s
        self._seam_answer = answer
        self._seam_deadline: asyncio.TimerHandle | None = None
        self._seam_head_begun = False
        # From the moment a request's head is taken until the connection waits for the next one, what arrives is
        # that request's body (or the next request, pipelined), not a head still due.
        self._seam_in_request = False
        self._seam_refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._seam_arm()  # the first request's head is due from the moment of connecting

    def connection_lost(self, exc: BaseException | None) -> None:
        self._seam_disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._seam_refused:
            return
        if self._seam_awaiting_head():
            self._seam_in_request = False
        if data and not self._seam_in_request:
            self._seam_head_begun = True
            if self._seam_deadline is None:  # the first byte of a kept-alive connection's next request
                self._seam_arm()
        super().data_received(data)
        if self._messages and isinstance(self._messages[-1][0], _ErrInfo):  # the parser refused the request
            self._seam_refused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _seam_head_taken(self) -> None:
        """aiohttp has a whole request head (or one its parser refused) and makes the request: its deadline is met."""
        self._seam_in_request = True
        self._seam_disarm()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's hook for every error it answers itself (the parser's, above all)."""
        if request.writer.output_size > 0:  # as aiohttp's own: an answer has begun, nothing else can be said
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = self._seam_answer(status, exc)
        response.force_close()
        return response

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:  # raised outside the middlewares
            resp = self._seam_answer(resp.status, resp)
        return await super().finish_response(request, resp, start_time)

    def _seam_awaiting_head(self) -> bool:
        # aiohttp's own idle test (RequestHandler._process_keepalive).
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _seam_arm(self) -> None:
        self._seam_deadline = asyncio.get_running_loop().call_later(self._seam_header_timeout_s, self._seam_too_slow)

    def _seam_disarm(self) -> None:
        self._seam_head_begun = False
        if self._seam_deadline is not None:
            self._seam_deadline.cancel()
            self._seam_deadline = None

    def _seam_too_slow(self) -> None:
        self._seam_deadline = None
        if self.transport is None or (self._seam_in_request and not self._seam_awaiting_head()):
            return
        if self._seam_head_begun:  # a request had begun: say why before closing
            answer = self._seam_answer(408, None)
            body = answer.text.encode() if answer.text is not None else b""
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                % (answer.headers["Content-Type"].encode(), len(body), body)
            )
        log.debug("connection dropped", reason="headers too slow", partial=self._seam_head_begun)
        self.force_close()


class _Server(web.Server):
    """The app's ``web.Server`` again, making :class:`_Connection`s and telling each when it has a request head."""

    def __init__(self, made: web.Server, *, header_timeout_s: float, answer: Answer) -> None:
        loop = asyncio.get_running_loop()
        make_request = made.request_factory

        def take_head(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            if isinstance(protocol, _Connection):
                protocol._seam_head_taken()
            return make_request(message, payload, protocol, writer, task)

        super().__init__(
            made.request_handler,
            request_factory=take_head,
            handler_cancellation=made.handler_cancellation,
            loop=loop,
        )
        self._seam_loop = loop
        self._seam_connection_kwargs = {**made._kwargs, "header_timeout_s": header_timeout_s, "answer": answer}

    def __call__(self) -> _Connection:
        return _Connection(self, loop=self._seam_loop, **self._seam_connection_kwargs)


class SeamRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer aiohttp's own errors with ``answer`` and close a client whose
    request head takes longer than ``header_timeout_s``; other keyword arguments are ``AppRunner``'s."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, answer: Answer, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._seam_header_timeout_s = header_timeout_s
        self._seam_answer = answer

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts and freezes the app
        return _Server(made, header_timeout_s=self._seam_header_timeout_s, answer=self._seam_answer)
