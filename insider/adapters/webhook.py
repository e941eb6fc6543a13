"""The SMS provider as an HTTP webhook: one JSON POST per message over aiohttp's client, answers mapped to outcomes.

Only aiohttp's public API is used. The status decides as soon as aiohttp hands over the
response (``session.post`` returns after the status line and the headers): a 2xx is sent,
whatever follows (a body that is cut, mis-framed, oversized or slow is a warning, not a
retry that could send it twice). Where aiohttp raises before it has a status (it could not
parse the answer's head, the connection dropped, the timeout came), the outcome is unknown:
the provider may have the message or not, so it goes again with the same Idempotency-Key,
as a retry whose error says "outcome unknown", never a failure. A request that never got
a connection never left. A request lost on a reused keep-alive connection before any
status is sent again at once, once. Whether aiohttp took the connection from its pool is
known from the session's ``socket_factory`` (``open_http_session``), which aiohttp calls
in the requesting task for each new connection: a request that made none went on a reused
one. (A ``TraceConfig`` on ``on_connection_reuseconn`` says the same, but turns on all of
aiohttp's tracing for every request: about 20 us more CPU per message in the drain
benchmark, over a tenth; docs/performance.md.)
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import netrc
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.request import getproxies, proxy_bypass

import aiohttp
import orjson
from yarl import URL

import insider
from insider.adapters.encoding import json_bytes
from insider.config import mask_url
from insider.domain import Outcome, SendResult
from insider.logs import get_logger

log = get_logger("insider.webhook")

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
# How a request lost to a keep-alive race surfaces: the server's close, or a reset.
_LOST = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)


# A request that fails with one of these never reached the provider: no connection was made
# (refused, DNS, TLS, the proxy refused the tunnel) or the URL is unusable.
_NEVER_SENT = (
    aiohttp.ClientConnectorError,
    aiohttp.ClientHttpProxyError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.InvalidURL,
)


class _Try:
    """One request, as far as the connection it went on."""

    __slots__ = ("fresh",)

    def __init__(self) -> None:
        self.fresh = False  # aiohttp opened a connection for it: not one from the pool


# The request this task is sending, for the socket factory to mark fresh. A key, not state:
# each task's context holds its own value.
_SENDING: contextvars.ContextVar[_Try | None] = contextvars.ContextVar("insider_webhook_sending", default=None)


def _new_socket(addr_info: aiohttp.AddrInfoType) -> socket.socket:
    """aiohttp's socket for a new connection (its ``socket_factory``): the request it is for was not on a reused one."""
    tried = _SENDING.get()
    if tried is not None:
        tried.fresh = True
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


@asynccontextmanager
async def open_http_session(
    *, concurrency_limit: int = 100, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP session of the webhook client, closed on exit.

    At most ``concurrency_limit`` connections are open at once; an idle one is closed after
    ``keepalive_s``. Open one per process, in the composition root, and share it: the
    immediate resend of a request lost on a reused connection needs this session's sockets.
    """
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=concurrency_limit, keepalive_timeout=keepalive_s, socket_factory=_new_socket
        ),
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


def proxy_from_environment(url: str) -> tuple[URL | None, str | None]:
    """The proxy for ``url`` and its ``Proxy-Authorization``, from HTTP(S)_PROXY and NO_PROXY.

    The rules are those of aiohttp's ``trust_env``, read with the standard library
    (``urllib.request.getproxies`` and ``proxy_bypass``, ``netrc``): credentials come from
    the proxy URL or from ~/.netrc (or $NETRC) for the proxy's host. A proxy aiohttp cannot
    use raises ValueError naming the variable (aiohttp would ignore an https:// one and go
    direct).
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
    if not valid or proxy.host is None:
        raise ValueError(f"{name}: expected a proxy URL like http://host:3128, got {mask_url(raw)!r}")
    try:
        if proxy.raw_user is not None or proxy.raw_password is not None:
            return proxy.with_user(None), aiohttp.encode_basic_auth(proxy.user or "", proxy.password or "")
        return proxy, _netrc_credentials(proxy.host)
    except ValueError as exc:  # a user name with a colon cannot be sent
        raise ValueError(f"{name}: unusable proxy credentials ({exc})") from None


def _netrc_credentials(host: str) -> str | None:
    """``Basic ...`` for ``host`` from ~/.netrc (or the file $NETRC names), if it has an entry."""
    named = os.environ.get("NETRC")
    path = named or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except FileNotFoundError:
        if named:
            log.warning("NETRC names a file that does not exist", path=named)
        return None
    except (OSError, netrc.NetrcParseError) as exc:
        log.warning("could not read the .netrc file", path=path, error=str(exc))
        return None
    if entry is None:
        return None
    login, account, password = entry
    return aiohttp.encode_basic_auth(login or account or "", password or "")


class WebhookSmsClient:
    """The SMS provider behind a webhook URL.

    ``send`` never raises for a provider answer or a transport failure: a 2xx status is
    sent (whatever follows it), 408, 429, 5xx, network errors and answers whose outcome is
    unknown are worth a retry, anything else is permanent. A request lost on a reused
    keep-alive connection before any status is sent again at once, once, with the same
    idempotency key. ``session`` (from ``open_http_session``) belongs to the caller, which
    opens and closes it. The proxy is read from the environment when the client is made.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, auth_key: str, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self._session = session
        self._url = URL(url)  # parsed once, not on every request
        self._auth_key = auth_key
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._proxy, credentials = proxy_from_environment(url)
        self._headers = {"Content-Type": "application/json", AUTH_HEADER: auth_key}
        # The proxy's credentials go to the proxy only, as aiohttp's proxy_auth would send them:
        # on the request itself to a plain-HTTP target (the proxy forwards it without them), on
        # the CONNECT to an HTTPS one (the request inside the tunnel must not carry them).
        self._proxy_headers: dict[str, str] | None = None
        if credentials is not None:
            if self._url.scheme == "https":
                self._proxy_headers = {"Proxy-Authorization": credentials}
            else:
                self._headers["Proxy-Authorization"] = credentials
        # Whether the session's connections are known to come from _new_socket: only then does
        # a request that made no new connection tell of a reused one (a session from elsewhere,
        # or a mocked one, never resends at once).
        self._sockets_seen = False

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        """POST one message; the provider deduplicates on ``idempotency_key``."""
        body = json_bytes({"to": to, "content": content})
        headers = {**self._headers, IDEMPOTENCY_HEADER: idempotency_key}
        tried = _Try()
        limit = self._timeout
        started = time.monotonic()
        for again in (False, True):
            token = _SENDING.set(tried)
            try:
                # A redirect is an answer in itself (3xx is permanent): following one could
                # turn the POST into a GET or resend it elsewhere.
                response = await self._session.post(
                    self._url,
                    data=body,
                    headers=headers,
                    timeout=limit,
                    allow_redirects=False,
                    proxy=self._proxy,
                    proxy_headers=self._proxy_headers,
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failure = self._failure(exc)
                # Lost on a reused connection: no new one was made (and none failed to be,
                # as when the name does not resolve), and the session's sockets are ours.
                reused = self._sockets_seen and not tried.fresh and not isinstance(exc, _NEVER_SENT)
                if again or not (reused and isinstance(exc, _LOST)):
                    return failure
            else:
                async with response:  # releases the connection, or closes it if the body was left unread
                    return await self._answer(response)
            finally:
                _SENDING.reset(token)
                if tried.fresh:
                    self._sockets_seen = True
            # The server closed the idle connection as the request went out (a keep-alive
            # race): it most likely never saw it. Once more, at once, with the same key.
            remaining_s = self._timeout_s - (time.monotonic() - started)
            if remaining_s <= 0:
                return SendResult(
                    Outcome.RETRY, error=f"outcome unknown: timeout after {self._timeout_s:g}s", ambiguous=True
                )
            limit = aiohttp.ClientTimeout(total=remaining_s)
            log.info(
                "webhook request lost on a reused keep-alive connection; sending it again at once",
                idempotency_key=idempotency_key,
                error=failure.error,
            )
        raise AssertionError("the second try always returns")

    async def _answer(self, response: aiohttp.ClientResponse) -> SendResult:
        """The outcome of an answer whose status and headers aiohttp has read."""
        try:
            raw, problem = await _read_body(response)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The status stands; only the body is broken (cut, mis-framed, slow).
            raw, problem = b"", _describe(exc, self._timeout_s)
        result = self._result(response.status, response.headers, raw, problem)
        if result.outcome is Outcome.SENT and result.warning is None:
            oversized = _oversized_headers(response.raw_headers)
            if oversized is not None:
                return dataclasses.replace(result, warning=f"the answer's headers were oversized: {oversized}")
        return result

    def _failure(self, exc: BaseException) -> SendResult:
        """The outcome of a request aiohttp gave no status for."""
        if isinstance(exc, _NEVER_SENT):
            return SendResult(Outcome.RETRY, error=self._redact(f"connection error: {_describe(exc, self._timeout_s)}"))
        # It may have reached the provider, or not: the same key again, later.
        return SendResult(
            Outcome.RETRY, error=self._redact(f"outcome unknown: {_describe(exc, self._timeout_s)}"), ambiguous=True
        )

    def _result(self, status: int, headers: Mapping[str, str], raw: bytes, problem: str | None) -> SendResult:
        """The outcome of an answer: its status, and what could be read after it (``problem`` if not all)."""
        if 200 <= status < 300:
            message_id = _message_id(raw)
            if message_id is None:
                message_id = _header_message_id(headers)
            warning = None
            if problem is not None:
                warning = self._redact(f"the answer after its {status} status line could not be read: {problem}")
            return SendResult(Outcome.SENT, status_code=status, provider_message_id=message_id, warning=warning)
        error = self._redact(f"HTTP {status}: " + (_excerpt(raw) if problem is None else f"({problem})"))
        if status >= 500 or status in _TRANSIENT_4XX:
            delay = parse_retry_after(headers.get("Retry-After")) if status in _RETRY_AFTER_STATUSES else None
            throttled = status == 429 or delay is not None
            return SendResult(Outcome.RETRY, status_code=status, error=error, retry_after_s=delay, throttled=throttled)
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
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # the proxy refused the tunnel
        text = f"the proxy answered {exc.status}: {exc.message}"
    elif isinstance(exc, aiohttp.ClientResponseError):  # a parser error: its status is aiohttp's, not the provider's
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
