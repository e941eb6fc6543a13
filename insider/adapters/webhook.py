"""The SMS provider as an HTTP webhook: one JSON POST per message over aiohttp's client, answers mapped to outcomes.

The status line decides: once it says 2xx the message is sent, whatever follows (a broken,
oversized or cut body or header is a warning, not a retry that could send it twice). aiohttp
parses each packet whole and raises on anything broken in it before it hands over a response:
bytes past Content-Length in the answer's own packet fail as "Bad status line" (the parser
reads them as the next answer), a header over its limit as "Got more than N bytes"; in a
later packet, they only close the connection after the answer was read. So a small tap on
each connection (``_ProviderConnection``) notes the status line as the bytes arrive, for the
request waiting on that connection, and any error after a 2xx status line is a warning.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.request import getproxies, proxy_bypass

import aiohttp
import orjson
import structlog
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

import insider
from insider.adapters.encoding import json_bytes
from insider.config import mask_url
from insider.domain import Outcome, SendResult

log = structlog.get_logger("insider.webhook")

AUTH_HEADER = "x-ins-auth-key"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# webhook.site and the original Go service: the id of an answer whose body names none.
REQUEST_ID_HEADER = "x-request-id"
BODY_EXCERPT_CHARS = 200
# What is read of an answer's body: a messageId or an error excerpt needs far less; the
# rest is not read and the connection is closed rather than reused.
MAX_BODY_BYTES = 64 * 1024
# Longer "ids" are not ids (a provider's error, a header stuffed by a proxy); kept out of the
# database and of Redis keys.
MAX_MESSAGE_ID_CHARS = 255
# An idle connection is closed after this long rather than reused. Common servers close
# idle keep-alive connections after 5 s (Apache, Node.js, uvicorn) to 60-75 s (nginx, load
# balancers); reusing one at the moment the server closes it loses the request. Below 5 s
# that race needs a server stricter than all of those, and the one immediate retry below
# covers what is left of it.
KEEPALIVE_S = 4.0
# aiohttp refuses header lines over 8 KiB and answers over 128 headers; a provider's 2xx
# with a 100 KB header is still read whole up to these.
MAX_HEADER_LINE_BYTES = 256 * 1024
MAX_HEADERS = 1024
# aiohttp's own limits: beyond them an answer is read, but with a warning.
USUAL_MAX_HEADER_LINE_BYTES = 8190
USUAL_MAX_HEADERS = 128
# Statuses worth another attempt: the provider is busy, down or slow, not refusing the message.
_TRANSIENT_4XX = frozenset({408, 429})
# Statuses whose Retry-After tells when to come back (RFC 9110 section 10.2.3, RFC 6585).
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_DELTA_SECONDS = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*$")
_REDACTED = "***"
# A status line as far as its code: "HTTP/1.1 202 " (the reason phrase may be cut or empty).
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] ([1-9][0-9][0-9])[ \r\n]")
_STATUS_LINE_MIN_BYTES = len(b"HTTP/1.1 202 ")
# How much of interim (1xx) answers the tap looks through for the final status line.
_MAX_INTERIM_BYTES = 64 * 1024
# How a request lost to a keep-alive race surfaces: the server's close, or a reset.
_LOST = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)


class _Attempt:
    """What the connection saw of one request's answer, whatever aiohttp made of it."""

    __slots__ = ("received", "reused", "status")

    def __init__(self) -> None:
        self.status: int | None = None  # the final status line's code, once read
        self.received = False  # any byte of an answer arrived
        self.reused = False  # the connection had carried a request before


# The attempt of the request running in this task; the connection that carries it takes it
# up when aiohttp hands it the request (set_response_params runs in the requesting task).
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("insider_webhook_attempt", default=None)


class _ProviderConnection(ResponseHandler):
    """aiohttp's connection protocol, noting the status line of each answer before aiohttp parses it."""

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self._requests = 0
        self._attempt: _Attempt | None = None
        self._head = b""

    def set_response_params(self, **kwargs: Any) -> None:
        self._requests += 1
        self._head = b""
        attempt = self._attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.status = None
            attempt.received = False
            attempt.reused = self._requests > 1
        super().set_response_params(**kwargs)  # may feed bytes that arrived early

    def data_received(self, data: bytes) -> None:
        if self._attempt is not None and data:
            self._note_status(data)
        body = self._payload
        super().data_received(data)
        if body is not None and not body.is_eof() and body.exception() is None and self.exception() is not None:
            # A parse error mid-body (a bad chunk size) reaches the connection but not the body
            # being read, which would then wait out the whole timeout: hand it on.
            error = aiohttp.ClientPayloadError(f"Response payload is not completed: {self.exception()}")
            body.set_exception(error)

    def _note_status(self, data: bytes) -> None:
        attempt = self._attempt
        assert attempt is not None
        attempt.received = True
        head = self._head + data if self._head else data
        while True:
            match = _STATUS_LINE.match(head)
            if match is None:
                if len(head) < _STATUS_LINE_MIN_BYTES and b"\n" not in head:
                    self._head = head  # the status line is still arriving
                else:
                    self._stop_noting()  # not an HTTP answer: no status
                return
            code = int(match[1])
            if code >= 200 or code == 101:
                attempt.status = code
                self._stop_noting()
                return
            # An interim answer (100 Continue): the final one follows its empty line.
            end = head.find(b"\r\n\r\n", match.end() - 1)
            if end < 0:
                if len(head) > _MAX_INTERIM_BYTES:
                    self._stop_noting()
                else:
                    self._head = head
                return
            head = head[end + 4 :]
            if not head:
                self._head = b""
                return

    def _stop_noting(self) -> None:
        self._attempt = None
        self._head = b""


class _ProviderConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector with connections that note status lines."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp builds every connection (plain, TLS, through a proxy) from this factory.
        self._factory = cast(
            "functools.partial[ResponseHandler]", functools.partial(_ProviderConnection, loop=self._loop)
        )


@asynccontextmanager
async def open_http_session(
    *, concurrency_limit: int = 100, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP session of the webhook client, closed on exit.

    At most ``concurrency_limit`` connections are open at once; an idle one is closed after
    ``keepalive_s``. Open one per process, in the composition root, and share it.
    """
    connector = _ProviderConnector(limit=concurrency_limit, keepalive_timeout=keepalive_s)
    async with aiohttp.ClientSession(
        connector=connector,
        # No cookie jar: a webhook's answer needs none, and the jar costs time on every response.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": f"insider/{insider.__version__}"},
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
        max_headers=MAX_HEADERS,
        # The proxy comes from the environment once, in WebhookSmsClient: aiohttp's trust_env
        # looks it (and ~/.netrc) up in a worker thread on every request (docs/performance.md).
        trust_env=False,
    ) as session:
        yield session


def proxy_from_environment(url: str) -> tuple[URL | None, dict[str, str] | None]:
    """The proxy for ``url`` and its headers, from HTTP(S)_PROXY and NO_PROXY as aiohttp's ``trust_env`` reads them.

    Credentials come from the proxy URL or from ~/.netrc (or $NETRC) for the proxy's host,
    and go to the proxy only, as ``Proxy-Authorization``. A proxy aiohttp cannot use raises
    ValueError naming the variable (aiohttp would ignore an https:// one and go direct).
    """
    target = URL(url)
    if target.host is not None and proxy_bypass(target.host):  # NO_PROXY
        return None, None
    raw = getproxies().get(target.scheme)
    if not raw:
        return None, None
    # urllib prefers the lower-case variable; name the one in force.
    name = next((n for n in (f"{target.scheme}_proxy", f"{target.scheme.upper()}_PROXY") if os.environ.get(n)), "")
    try:
        proxy = URL(raw)
        valid = proxy.scheme == "http" and bool(proxy.host) and proxy.port is not None
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{name}: expected a proxy URL like http://host:3128, got {mask_url(raw)!r}")
    try:
        found, auth = get_env_proxy_for_url(target)
    except LookupError:
        return None, None
    return found, ({"Proxy-Authorization": auth.encode()} if auth is not None else None)


class WebhookSmsClient:
    """The SMS provider behind a webhook URL.

    ``send`` never raises for a provider answer or a transport failure: a 2xx status line is
    sent (whatever follows it), 408, 429, 5xx and network errors are worth a retry, anything
    else is permanent. A request lost on a reused keep-alive connection before any answer is
    sent again at once, once, with the same idempotency key. ``session`` (from
    ``open_http_session``) belongs to the caller, which opens and closes it. The proxy is
    read from the environment when the client is made.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, auth_key: str, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self._session = session
        self._url = URL(url)  # parsed once, not on every request
        self._auth_key = auth_key
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._proxy, self._proxy_headers = proxy_from_environment(url)

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        """POST one message; the provider deduplicates on ``idempotency_key``."""
        body = json_bytes({"to": to, "content": content})
        headers = {
            "Content-Type": "application/json",
            AUTH_HEADER: self._auth_key,
            IDEMPOTENCY_HEADER: idempotency_key,
        }
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        limit = self._timeout
        started = time.monotonic()
        try:
            for again in (False, True):
                try:
                    # A redirect is an answer in itself (3xx is permanent): following one could
                    # turn the POST into a GET or resend it elsewhere.
                    async with self._session.post(
                        self._url,
                        data=body,
                        headers=headers,
                        timeout=limit,
                        allow_redirects=False,
                        proxy=self._proxy,
                        proxy_headers=self._proxy_headers,
                    ) as response:
                        status = response.status
                        try:
                            raw, problem = await _read_body(response)
                        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                            # The status line stands; only the body is broken (cut, mis-framed, slow).
                            raw, problem = b"", _describe(exc, self._timeout_s)
                        result = self._result(status, response.headers, raw, problem)
                        oversized = _oversized_headers(response.raw_headers)
                        if oversized is not None and result.outcome is Outcome.SENT and result.warning is None:
                            return dataclasses.replace(
                                result, warning=f"the answer's headers were oversized: {oversized}"
                            )
                        return result
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    if attempt.status is not None:  # the status line arrived; what followed did not parse
                        return self._result(attempt.status, None, b"", _describe(exc, self._timeout_s))
                    if isinstance(exc, TimeoutError):  # also aiohttp's timeout errors
                        return SendResult(Outcome.RETRY, error=f"timeout after {self._timeout_s:g}s")
                    error = SendResult(
                        Outcome.RETRY, error=self._redact(f"connection error: {_describe(exc, self._timeout_s)}")
                    )
                    if again or not (attempt.reused and not attempt.received and isinstance(exc, _LOST)):
                        return error
                # The server closed the idle connection as the request went out (a keep-alive
                # race): it most likely never saw it. Once more, at once, with the same key.
                remaining_s = self._timeout_s - (time.monotonic() - started)
                if remaining_s <= 0:
                    return SendResult(Outcome.RETRY, error=f"timeout after {self._timeout_s:g}s")
                limit = aiohttp.ClientTimeout(total=remaining_s)
                log.info(
                    "webhook request lost on a reused keep-alive connection; sending it again at once",
                    idempotency_key=idempotency_key,
                    error=error.error,
                )
            raise AssertionError("the second try always returns")
        finally:
            _ATTEMPT.reset(token)

    def _result(self, status: int, headers: Mapping[str, str] | None, raw: bytes, problem: str | None) -> SendResult:
        """The outcome of an answer: its status, and what could be read after it (``problem`` if not all)."""
        if 200 <= status < 300:
            message_id = _message_id(raw)
            if message_id is None and headers is not None:
                message_id = _header_message_id(headers)
            warning = None
            if problem is not None:
                warning = self._redact(f"the answer after its {status} status line could not be read: {problem}")
            return SendResult(Outcome.SENT, status_code=status, provider_message_id=message_id, warning=warning)
        error = self._redact(f"HTTP {status}: " + (_excerpt(raw) if problem is None else f"({problem})"))
        if status >= 500 or status in _TRANSIENT_4XX:
            retry_after = headers.get("Retry-After") if headers is not None else None
            delay = parse_retry_after(retry_after) if status in _RETRY_AFTER_STATUSES else None
            return SendResult(Outcome.RETRY, status_code=status, error=error, retry_after_s=delay)
        return SendResult(Outcome.FAILED, status_code=status, error=error)

    def _redact(self, text: str) -> str:
        # A provider may echo request headers back in an error page.
        return text.replace(self._auth_key, _REDACTED) if self._auth_key else text


async def _read_body(response: aiohttp.ClientResponse) -> tuple[bytes, str | None]:
    """The body, or its first MAX_BODY_BYTES and why the rest was left unread."""
    length = response.content_length
    if length is not None and length <= MAX_BODY_BYTES:
        content = response.content
        if content.is_eof():  # a small answer arrives whole with its headers: no need to wait
            return content.read_nowait(), None
        return await response.read(), None
    if length is not None:
        return b"", f"a body of {length} bytes, over {MAX_BODY_BYTES}, was not read"
    parts: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        part = await response.content.read(MAX_BODY_BYTES + 1 - size)
        if not part:
            return b"".join(parts), None
        parts.append(part)
        size += len(part)
    return b"", f"a body over {MAX_BODY_BYTES} bytes was not read"


def _oversized_headers(raw_headers: tuple[tuple[bytes, bytes], ...]) -> str | None:
    """What is unusual about headers aiohttp read only because its limits were raised, if anything."""
    if len(raw_headers) > USUAL_MAX_HEADERS:
        return f"{len(raw_headers)} headers"
    longest = max((len(name) + len(value) for name, value in raw_headers), default=0)
    if longest > USUAL_MAX_HEADER_LINE_BYTES:
        return f"a header line of {longest} bytes"
    return None


def _describe(exc: BaseException, timeout_s: float) -> str:
    """One short line for a transport error (aiohttp's can hold a parser's dump of the answer)."""
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, aiohttp.ClientResponseError):  # a parser error: its status is aiohttp's, not the provider's
        text = f"malformed answer: {exc.message}"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):  # its text is the repr of a half-parsed answer
        text = "the server closed the connection"
    else:
        text = str(exc) or type(exc).__name__
    line = " ".join(text.split())
    return line if len(line) <= BODY_EXCERPT_CHARS else line[: BODY_EXCERPT_CHARS - 3] + "..."


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date), or None.

    A date in the past gives 0; anything unreadable gives None.
    """
    if value is None:
        return None
    match = _DELTA_SECONDS.match(value)
    if match:
        seconds = float(match.group(1))
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" in an HTTP-date still means UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _message_id(raw: bytes) -> str | None:
    if not raw:
        return None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:  # also invalid UTF-8
        return None
    if not isinstance(payload, dict):
        return None
    value = payload.get("messageId")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_MESSAGE_ID_CHARS:
        return value
    return None


def _header_message_id(headers: Mapping[str, str]) -> str | None:
    value = headers.get(REQUEST_ID_HEADER)
    if value is None:
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_MESSAGE_ID_CHARS else None


def _excerpt(raw: bytes) -> str:
    return raw[: BODY_EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:BODY_EXCERPT_CHARS]
