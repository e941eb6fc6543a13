"""A lean HTTP/1.1 client for one origin: keep-alive connections, responses parsed by llhttp.

The webhook sends one small POST per message to one URL, thousands of times a second in
drain mode. aiohttp's client spends about three times the CPU per request that this does
(building a request object, a response object, a stream reader, cookies, tracing hooks), and
in drain mode that cost is the service's ceiling. This client keeps only what the webhook
needs: a pool of keep-alive connections to one origin (plain or TLS), requests written as
bytes, and responses parsed by httptools (llhttp, the parser of Node.js and uvicorn), with
Content-Length, chunked and read-until-close bodies, informational (1xx) answers skipped,
gzip and deflate bodies decoded, and a cap on what it keeps of a body.

What it leaves out, on purpose: redirects (an answer in itself for the webhook), proxies,
cookies, HTTP/2. ``INSIDER_WEBHOOK_CLIENT=aiohttp`` selects aiohttp's client instead.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import zlib
from collections.abc import Mapping
from typing import NamedTuple, cast

import httptools
from yarl import URL

import insider

# What the client keeps of a body; the rest is read (to keep the connection usable) and dropped.
MAX_BODY_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 << 10
# An idle connection older than this is closed rather than reused: a server may be closing it
# at the same moment (aiohttp's default keep-alive is the same 15 s).
KEEPALIVE_S = 15.0
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class HttpAnswer(NamedTuple):
    """A response: its status, its headers (names in lower case) and its body.

    ``complete`` is False when the body was cut short (a timeout or a dropped connection
    after the status line arrived); ``body`` then holds what arrived.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    complete: bool = True


class HttpTransportError(Exception):
    """The request failed before a status line arrived: refused, reset, closed or malformed."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._header_bytes = 0
        self.headers_done = False
        self._body: list[bytes] = []
        self._body_bytes = 0
        self.keep_alive = True

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, hence no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: a server out of step; drop the connection
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpTransportError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(HttpTransportError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self.headers_done and self._reads_until_close():
            self._finish(complete=True)
        elif self.headers_done:
            self._finish(complete=False)
        else:
            reason = f": {exc}" if exc else ""
            self._waiter.set_exception(HttpTransportError(f"connection closed before an answer{reason}"))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():  # more than was asked for: out of step
            raise HttpTransportError("the server sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise HttpTransportError(f"response headers over {MAX_HEADER_BYTES} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status >= 200:
            self.headers_done = True
            self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        room = MAX_BODY_BYTES - self._body_bytes
        if room > 0:
            self._body.append(body if len(body) <= room else body[:room])
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        if not self.headers_done:  # 1xx: the real answer follows on the same connection
            self.headers.clear()
            self._header_bytes = 0
            return
        self._finish(complete=True)

    # -- the client's side

    def request(self, data: bytes, timeout_at: float) -> asyncio.Future[HttpAnswer]:
        """Write one request; the future resolves with its answer or fails by ``timeout_at``."""
        assert self.transport is not None
        self._reset()
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_at(timeout_at, self._expire, waiter)
        waiter.add_done_callback(lambda _: timer.cancel())
        self.transport.write(data)
        return waiter

    def usable(self) -> bool:
        """Open, and not on its way to closing (a server's close seen, not yet reported)."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def release(self) -> bool:
        """After an answer: whether the connection may carry another request."""
        self._waiter = None
        return not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _expire(self, waiter: asyncio.Future[HttpAnswer]) -> None:
        if waiter.done():
            return
        self.close()  # the answer may still come; this connection can no longer carry another
        if self.headers_done:
            self._finish(complete=False)
        else:
            waiter.set_exception(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self._waiter is None or self._waiter.done():
            return
        if self.headers_done:  # the status line stands; only the body is broken
            self._finish(complete=False)
        else:
            self._waiter.set_exception(exc)

    def _finish(self, *, complete: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        body = b"".join(self._body)
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding in _DECODERS and body:
            body = _decode(body, _DECODERS[encoding])
        if not complete:
            self.keep_alive = False
        waiter.set_result(HttpAnswer(self.status, self.headers, body, complete))

    def _reads_until_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get("transfer-encoding", "")


def _decode(body: bytes, wbits: int) -> bytes:
    try:
        return zlib.decompressobj(wbits).decompress(body, MAX_BODY_BYTES)
    except zlib.error:
        return body  # not what it claimed to be: keep the bytes for the error excerpt


class Http1Client:
    """POSTs to one URL over a pool of at most ``limit`` keep-alive connections.

    ``post`` raises ``TimeoutError`` when no status line arrived within the timeout and
    ``HttpTransportError`` when the connection failed before one did; once a status line has
    arrived it returns an answer, marked incomplete if the body was cut short.
    Close with ``await client.aclose()``.
    """

    def __init__(self, url: str, *, limit: int, ssl_context: ssl.SSLContext | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        parsed = URL(url)
        self.url = url
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"expected an http or https URL, got {url!r}")
        self._host = parsed.host
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        lines = [
            f"POST {parsed.raw_path_qs or '/'} HTTP/1.1",
            f"Host: {parsed.host_port_subcomponent}",
            f"User-Agent: insider/{insider.__version__}",
        ]
        if parsed.user is not None:  # credentials in the URL mean Basic authentication
            token = base64.b64encode(f"{parsed.user}:{parsed.password or ''}".encode()).decode("ascii")
            lines.append(f"Authorization: Basic {token}")
        self._head = "\r\n".join(lines) + "\r\n"
        self._slots = asyncio.Semaphore(limit)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open: set[_Connection] = set()
        self._closed = False

    async def post(self, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpAnswer:
        """POST ``body`` with ``headers`` (besides Host, User-Agent and Content-Length)."""
        loop = asyncio.get_running_loop()
        timeout_at = loop.time() + timeout_s
        request = self._serialize(body, headers)
        async with self._slots:
            connection = await self._acquire(loop, timeout_at)
            reusable = False
            try:
                answer = await connection.request(request, timeout_at)
                reusable = answer.complete
                return answer
            finally:
                if reusable and connection.release():
                    connection.idle_since = loop.time()
                    self._idle.append(connection)
                else:
                    self._discard(connection)

    async def aclose(self) -> None:
        """Close every connection; later posts fail."""
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._open if not c.closed)

    def _serialize(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        parts = [self._head]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"a line break in the HTTP header {name!r}")
            parts.append(f"{name}: {value}\r\n")
        parts.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(parts).encode("utf-8") + body

    async def _acquire(self, loop: asyncio.AbstractEventLoop, timeout_at: float) -> _Connection:
        if self._closed:
            raise HttpTransportError("the HTTP client is closed")
        stale_before = loop.time() - KEEPALIVE_S
        idle = self._idle
        while idle and (not idle[0].usable() or idle[0].idle_since < stale_before):  # the oldest first
            self._discard(idle.popleft())
        while idle:
            connection = idle.pop()  # the most recently used is the likeliest alive
            if connection.usable():
                return connection
            self._discard(connection)
        try:
            async with asyncio.timeout_at(timeout_at):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable, unknown host, TLS handshake
            raise HttpTransportError(str(exc) or type(exc).__name__) from exc
        self._open.add(connection)
        return connection
