"""The SMS provider as an HTTP webhook: one JSON POST per message, answers mapped to send outcomes.

Two HTTP clients can carry the POST: the lean one of ``insider.adapters.http1`` (the default)
and aiohttp's ``ClientSession``. The mapping from answers to outcomes is the same for both.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import orjson
from yarl import URL

from insider.adapters.encoding import json_bytes
from insider.adapters.http1 import Http1Client, HttpAnswer, HttpTransportError
from insider.domain import Outcome, SendResult

AUTH_HEADER = "x-ins-auth-key"
IDEMPOTENCY_HEADER = "Idempotency-Key"
BODY_EXCERPT_CHARS = 200
# Statuses worth another attempt: the provider is busy, down or slow, not refusing the message.
_TRANSIENT_4XX = frozenset({408, 429})
# Statuses whose Retry-After tells when to come back (RFC 9110 section 10.2.3, RFC 6585).
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_DELTA_SECONDS = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*$")
_REDACTED = "***"


@asynccontextmanager
async def open_http_session(*, concurrency_limit: int = 100) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session for the webhook client, closed on exit.

    ``concurrency_limit`` caps the connections open at once (the connector's pool size).
    Open one per process, in the composition root, and share it.
    """
    connector = aiohttp.TCPConnector(limit=concurrency_limit)
    # No cookie jar: a webhook's answer needs none, and the jar costs time on every response.
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


class _AiohttpPoster:
    """aiohttp's client behind the same ``post`` as ``Http1Client``."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = URL(url)  # parsed once, not on every request
        self._timeout = aiohttp.ClientTimeout()

    async def post(self, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpAnswer:
        if self._timeout.total != timeout_s:  # made once for the client's timeout, not per request
            self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                raise_for_status=False,
            ) as response:
                try:
                    raw, complete = await response.read(), True
                except (TimeoutError, aiohttp.ClientError, OSError):
                    raw, complete = b"", False
                return HttpAnswer(response.status, {k.lower(): v for k, v in response.headers.items()}, raw, complete)
        except TimeoutError:  # aiohttp's timeouts are ClientErrors too
            raise
        except aiohttp.ClientError as exc:
            raise HttpTransportError(str(exc) or type(exc).__name__) from exc


class WebhookSmsClient:
    """The SMS provider behind a webhook URL.

    ``send`` never raises for a provider answer or a transport failure: 2xx is sent,
    408, 429 and 5xx and network errors are worth a retry, anything else is permanent.
    ``http`` is an ``Http1Client`` made for ``url`` or an aiohttp ``ClientSession``; it
    belongs to the caller, which opens and closes it.
    """

    def __init__(self, http: Http1Client | aiohttp.ClientSession, url: str, auth_key: str, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if isinstance(http, Http1Client) and http.url != url:
            raise ValueError(f"the HTTP client was made for {http.url!r}, not {url!r}")
        self._http = _AiohttpPoster(http, url) if isinstance(http, aiohttp.ClientSession) else http
        self._auth_key = auth_key
        self._timeout_s = timeout_s

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        """POST one message; the provider deduplicates on ``idempotency_key``."""
        headers = {
            "Content-Type": "application/json",
            AUTH_HEADER: self._auth_key,
            IDEMPOTENCY_HEADER: idempotency_key,
        }
        try:
            # A redirect is an answer in itself (3xx is permanent): following one could turn
            # the POST into a GET or resend it elsewhere, so neither client follows one.
            answer = await self._http.post(json_bytes({"to": to, "content": content}), headers, self._timeout_s)
        except TimeoutError:  # also asyncio.TimeoutError and aiohttp's timeout errors
            return SendResult(Outcome.RETRY, error=f"timeout after {self._timeout_s:g}s")
        except (HttpTransportError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            return SendResult(Outcome.RETRY, error=self._redact(f"connection error: {detail}"))
        # The status line decides the outcome; a body cut short (timeout, dropped connection)
        # must not turn an accepted message into a retry, which could send it twice.
        return self._result(answer.status, answer.headers.get("retry-after"), answer.body if answer.complete else b"")

    def _result(self, status: int, retry_after: str | None, raw: bytes) -> SendResult:
        if 200 <= status < 300:
            return SendResult(Outcome.SENT, status_code=status, provider_message_id=_message_id(raw))
        error = self._redact(f"HTTP {status}: {_excerpt(raw)}")
        if status >= 500 or status in _TRANSIENT_4XX:
            delay = parse_retry_after(retry_after) if status in _RETRY_AFTER_STATUSES else None
            return SendResult(Outcome.RETRY, status_code=status, error=error, retry_after_s=delay)
        return SendResult(Outcome.FAILED, status_code=status, error=error)

    def _redact(self, text: str) -> str:
        # A provider may echo request headers back in an error page.
        return text.replace(self._auth_key, _REDACTED) if self._auth_key else text


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
    if isinstance(value, str) and value:
        return value
    return None


def _excerpt(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")[:BODY_EXCERPT_CHARS]
