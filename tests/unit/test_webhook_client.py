"""The webhook SMS client against mocked HTTP answers (aioresponses): request shape and outcome mapping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from insider.adapters.webhook import WebhookSmsClient, open_http_session, parse_retry_after
from insider.domain import Outcome, SendResult

URL_ = "https://provider.test/webhook/abc"
AUTH_KEY = "s3cret-auth-key-INS.me1a9"
TO = "+905551234567"
TURKISH = "İyi günler, çağrı ŞÖÜ"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session(concurrency_limit=4) as s:
        yield s


@pytest.fixture
def client(session: aiohttp.ClientSession) -> WebhookSmsClient:
    return WebhookSmsClient(session, URL_, AUTH_KEY, timeout_s=10)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


async def send(client: WebhookSmsClient, content: str = "Merhaba") -> SendResult:
    return await client.send(TO, content, "idem-1")


def assert_no_secret(result: SendResult) -> None:
    assert AUTH_KEY not in repr(result)


def only_request(mocked: aioresponses) -> Any:
    calls = mocked.requests[("POST", URL(URL_))]
    assert len(calls) == 1
    return calls[0]


async def test_posts_exact_body_and_headers(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, status=202, payload={"message": "Accepted", "messageId": "67f2f8a8-ea58"})

    result = await client.send(TO, TURKISH, "key-123")

    call = only_request(mocked)
    body = call.kwargs["data"]
    assert isinstance(body, bytes)
    assert json.loads(body.decode("utf-8")) == {"to": TO, "content": TURKISH}
    headers = call.kwargs["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["x-ins-auth-key"] == AUTH_KEY
    assert headers["Idempotency-Key"] == "key-123"
    assert call.kwargs["timeout"] == aiohttp.ClientTimeout(total=10)
    assert call.kwargs["allow_redirects"] is False
    assert result == SendResult(Outcome.SENT, status_code=202, provider_message_id="67f2f8a8-ea58")


async def test_numeric_message_id_becomes_text(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, status=200, payload={"messageId": 12345})

    result = await send(client)

    assert result == SendResult(Outcome.SENT, status_code=200, provider_message_id="12345")


@pytest.mark.parametrize(
    "payload", [{"message": "Accepted"}, {"messageId": None}, {"messageId": ""}, {"messageId": True}, ["x"]]
)
async def test_2xx_without_message_id_is_sent(client: WebhookSmsClient, mocked: aioresponses, payload: Any) -> None:
    mocked.post(URL_, status=201, payload=payload)

    result = await send(client)

    assert result == SendResult(Outcome.SENT, status_code=201, provider_message_id=None)


@pytest.mark.parametrize("body", ["<html>ok</html>", "", "\xff\xfe"])
async def test_2xx_with_non_json_is_sent(client: WebhookSmsClient, mocked: aioresponses, body: str) -> None:
    mocked.post(URL_, status=200, body=body, content_type="text/html")

    result = await send(client)

    assert result == SendResult(Outcome.SENT, status_code=200, provider_message_id=None)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 301, 307])
async def test_permanent_statuses_fail(client: WebhookSmsClient, mocked: aioresponses, status: int) -> None:
    mocked.post(URL_, status=status, body='{"error": "invalid phone"}')

    result = await send(client)

    assert result.outcome is Outcome.FAILED
    assert result.status_code == status
    assert result.error == f'HTTP {status}: {{"error": "invalid phone"}}'
    assert result.retry_after_s is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_transient_statuses_retry(client: WebhookSmsClient, mocked: aioresponses, status: int) -> None:
    mocked.post(URL_, status=status, body="upstream down " + "x" * 500)

    result = await send(client)

    assert result.outcome is Outcome.RETRY
    assert result.status_code == status
    assert result.error == f"HTTP {status}: " + ("upstream down " + "x" * 500)[:200]
    assert result.provider_message_id is None


async def test_429_with_retry_after_seconds(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, status=429, body="slow down", headers={"Retry-After": "7"})

    result = await send(client)

    assert result == SendResult(
        Outcome.RETRY, status_code=429, error="HTTP 429: slow down", retry_after_s=7.0, throttled=True
    )


async def test_429_with_retry_after_http_date(client: WebhookSmsClient, mocked: aioresponses) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    mocked.post(URL_, status=429, headers={"Retry-After": format_datetime(when, usegmt=True)})

    result = await send(client)

    assert result.outcome is Outcome.RETRY
    assert result.retry_after_s is not None
    assert 100 <= result.retry_after_s <= 121


async def test_503_with_retry_after(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, status=503, headers={"Retry-After": "30"})

    result = await send(client)

    assert result.outcome is Outcome.RETRY
    assert result.retry_after_s == 30.0


@pytest.mark.parametrize("value", ["soon", "-5", "1e9", "", "Mon, 99 Foo 2026 xx"])
async def test_429_with_garbage_retry_after(client: WebhookSmsClient, mocked: aioresponses, value: str) -> None:
    mocked.post(URL_, status=429, headers={"Retry-After": value})

    result = await send(client)

    assert result.outcome is Outcome.RETRY
    assert result.retry_after_s is None


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now) == 90.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # past: clamped
    assert parse_retry_after("9" * 400) is None
    assert parse_retry_after("later") is None


# Without a status from aiohttp, the provider may or may not have the message: a retry
# (the same key, later) whose error says so. Only a connection that was never made is known
# not to have carried it.


def refused() -> aiohttp.ClientConnectorError:
    key = SimpleNamespace(host="provider.test", port=443, ssl=True)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (refused(), "connection error: Cannot connect to host provider.test:443 ssl:default [Connection refused]"),
        (aiohttp.ConnectionTimeoutError(), "connection error: timeout after 10s"),
    ],
    ids=["refused", "connect-timeout"],
)
async def test_a_connection_never_made_is_a_connection_error(
    client: WebhookSmsClient, mocked: aioresponses, exc: Exception, error: str
) -> None:
    mocked.post(URL_, exception=exc)

    assert await send(client) == SendResult(Outcome.RETRY, error=error)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (aiohttp.ClientConnectionError("Connection lost"), "Connection lost"),
        (ConnectionResetError("reset by peer"), "reset by peer"),
        (aiohttp.ServerDisconnectedError(), "the server closed the connection"),
        (TimeoutError(), "timeout after 10s"),
        (aiohttp.ServerTimeoutError("read"), "timeout after 10s"),
    ],
    ids=["connection-lost", "reset", "disconnected", "timeout", "read-timeout"],
)
async def test_an_error_before_any_status_is_an_unknown_outcome(
    client: WebhookSmsClient, mocked: aioresponses, exc: Exception, error: str
) -> None:
    mocked.post(URL_, exception=exc)

    # The provider may have it: a retry that must go to the same provider with the same key.
    assert await send(client) == SendResult(Outcome.RETRY, error=f"outcome unknown: {error}", ambiguous=True)


@pytest.mark.parametrize(
    ("status", "headers", "throttled"),
    [
        (429, {}, True),
        (429, {"Retry-After": "3"}, True),
        (503, {"Retry-After": "3"}, True),
        (503, {}, False),
        (500, {}, False),
        (408, {}, False),
    ],
)
async def test_an_answered_error_is_certainly_not_accepted_and_says_whether_it_throttles(
    client: WebhookSmsClient, mocked: aioresponses, status: int, headers: dict[str, str], throttled: bool
) -> None:
    mocked.post(URL_, status=status, headers=headers, body="busy")

    result = await send(client)

    assert (result.outcome, result.ambiguous, result.throttled) == (Outcome.RETRY, False, throttled)


async def test_cancellation_propagates(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, exception=asyncio.CancelledError())

    with pytest.raises(asyncio.CancelledError):
        await send(client)


@pytest.mark.parametrize("status", [401, 500, 429])
async def test_auth_key_never_in_error(client: WebhookSmsClient, mocked: aioresponses, status: int) -> None:
    # A provider that echoes the request headers back in its error page.
    mocked.post(URL_, status=status, body=f"bad header x-ins-auth-key: {AUTH_KEY}")

    result = await send(client)

    assert result.error is not None
    assert result.error.startswith(f"HTTP {status}: bad header x-ins-auth-key: ")
    assert_no_secret(result)


async def test_auth_key_never_in_transport_error(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, exception=aiohttp.ClientConnectionError(f"failed with {AUTH_KEY}"))

    result = await send(client)

    assert result.outcome is Outcome.RETRY
    assert_no_secret(result)


async def test_lone_surrogate_still_sends_valid_json(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, status=202, payload={"messageId": "m1"})

    result = await client.send(TO, "bad \ud800 text", "k")

    body = only_request(mocked).kwargs["data"]
    assert json.loads(body.decode("utf-8")) == {"to": TO, "content": "bad \ud800 text"}
    assert result.outcome is Outcome.SENT


async def test_rejects_non_positive_timeout(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        WebhookSmsClient(session, URL_, AUTH_KEY, timeout_s=0)


async def test_x_request_id_is_the_message_id_when_the_body_names_none(
    client: WebhookSmsClient, mocked: aioresponses
) -> None:
    # webhook.site's default answer: 200, a text body, the id in a header.
    mocked.post(URL_, status=200, body="ok", content_type="text/plain", headers={"X-Request-Id": " req-77 "})

    result = await send(client)

    assert result == SendResult(Outcome.SENT, status_code=200, provider_message_id="req-77")


async def test_the_bodys_message_id_wins_over_x_request_id(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, status=202, payload={"messageId": "body-1"}, headers={"x-request-id": "header-1"})

    assert (await send(client)).provider_message_id == "body-1"


@pytest.mark.parametrize(
    ("payload", "request_id", "expected"),
    [
        ({"messageId": "x" * 256}, "header-2", "header-2"),  # an id too long to be one
        ({"messageId": "x" * 255}, "header-2", "x" * 255),
        ({"message": "Accepted"}, "", None),
        ({"message": "Accepted"}, "   ", None),
        ({"message": "Accepted"}, "r" * 256, None),
    ],
    ids=["long-body-id", "longest-body-id", "empty-header", "blank-header", "long-header"],
)
async def test_message_ids_must_look_like_ids(
    client: WebhookSmsClient, mocked: aioresponses, payload: Any, request_id: str, expected: str | None
) -> None:
    mocked.post(URL_, status=202, payload=payload, headers={"x-request-id": request_id})

    assert (await send(client)).provider_message_id == expected


async def test_x_request_id_of_an_error_is_not_a_message_id(client: WebhookSmsClient, mocked: aioresponses) -> None:
    mocked.post(URL_, status=500, body="down", headers={"x-request-id": "err-1"})

    result = await send(client)

    assert result.outcome is Outcome.RETRY and result.provider_message_id is None


async def test_a_disconnect_on_a_fresh_request_is_retried_later_not_at_once(
    client: WebhookSmsClient, mocked: aioresponses
) -> None:
    mocked.post(URL_, exception=aiohttp.ServerDisconnectedError())

    result = await send(client)

    assert result == SendResult(
        Outcome.RETRY, error="outcome unknown: the server closed the connection", ambiguous=True
    )
    assert len(mocked.requests[("POST", URL(URL_))]) == 1


async def test_a_malformed_answer_without_a_status_is_one_short_line_and_never_a_failure(
    client: WebhookSmsClient, mocked: aioresponses
) -> None:
    # aiohttp's parser errors carry a 400 of its own, not the provider's.
    dump = "Bad status line:\n  b'\\x00\\x01garbage'\n  ^" + "x" * 500
    mocked.post(URL_, exception=aiohttp.ClientResponseError(None, (), status=400, message=dump))  # type: ignore[arg-type]

    result = await send(client)

    assert (result.outcome, result.status_code) == (Outcome.RETRY, None)
    assert result.error is not None
    assert result.error.startswith("outcome unknown: malformed answer: Bad status line: b'")
    assert "\n" not in result.error and len(result.error) <= 220


@pytest.mark.parametrize(
    ("environ", "proxy"),
    [
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, "http://proxy.internal:3128"),
        ({"https_proxy": "http://proxy.internal:3128"}, "http://proxy.internal:3128"),
        ({"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "provider.test"}, None),
        ({"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": ".test"}, None),
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, None),  # the webhook is https
        ({}, None),
    ],
)
async def test_the_proxy_comes_from_the_environment(
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    proxy: str | None,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    mocked.post(URL_, status=202, payload={"messageId": "p-1"})

    await send(WebhookSmsClient(session, URL_, AUTH_KEY, timeout_s=10))

    sent_through = only_request(mocked).kwargs["proxy"]
    assert (None if sent_through is None else str(sent_through)) == proxy


async def test_credentials_in_the_proxy_url_go_to_the_proxy(
    session: aiohttp.ClientSession, mocked: aioresponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    mocked.post(URL_, status=202, payload={"messageId": "p-2"})

    await send(WebhookSmsClient(session, URL_, AUTH_KEY, timeout_s=10))

    call = only_request(mocked)
    assert call.kwargs["proxy_headers"] == {"Proxy-Authorization": "Basic dXNlcjpwQHNz"}  # user:p@ss
    assert "Authorization" not in call.kwargs["headers"]  # not sent to the provider


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("HTTPS_PROXY", "https://proxy.internal:3128", "'https://proxy.internal:3128'"),  # aiohttp would ignore it
        ("HTTPS_PROXY", "socks5://proxy.internal:1080", "'socks5://proxy.internal:1080'"),
        ("https_proxy", "not a url", "'not a url'"),
        ("HTTPS_PROXY", "http://proxy.internal:99999", "'http://proxy.internal:99999'"),
        ("HTTPS_PROXY", "http://user:hunter2@[::1", "'***'"),
        ("HTTPS_PROXY", "https://user:hunter2@proxy.internal:3128", "'https://user:***@proxy.internal:3128'"),
    ],
)
def test_a_proxy_aiohttp_cannot_use_is_refused_naming_the_variable(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, name: str, value: str, shown: str
) -> None:
    for other in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)

    with pytest.raises(ValueError) as err:
        WebhookSmsClient(session, URL_, AUTH_KEY, timeout_s=10)

    assert str(err.value) == f"{name}: expected a proxy URL like http://host:3128, got {shown}"
    assert "hunter2" not in str(err.value)


def test_a_bad_proxy_the_webhook_does_not_use_is_no_concern(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "not a url")  # the webhook is https
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)

    WebhookSmsClient(session, URL_, AUTH_KEY, timeout_s=10)


def test_proxy_credentials_that_cannot_be_sent_are_refused_naming_the_variable(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    for other in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://us%3Aer:hunter2@proxy.internal:3128")  # Basic cannot carry "us:er"

    with pytest.raises(ValueError) as err:
        WebhookSmsClient(session, URL_, AUTH_KEY, timeout_s=10)

    assert str(err.value).startswith("HTTPS_PROXY: unusable proxy credentials (")
    assert "hunter2" not in str(err.value)
