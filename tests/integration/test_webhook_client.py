"""The webhook SMS client against a real local HTTP server that records what it receives."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from insider.adapters.http1 import Http1Client
from insider.adapters.webhook import WebhookSmsClient, open_http_session
from insider.domain import Outcome, SendResult
from tests.conftest import eventually

AUTH_KEY = "integration-auth-key-7f3a"
TO = "+905551234567"
# Every Turkish letter that differs from ASCII, both cases, plus an emoji outside the BMP.
TURKISH = "Çağrı İstanbul'dan: ÇĞİÖŞÜ çğıöşü — 👋"


@dataclass
class Received:
    """One request as the provider saw it."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Provider:
    """A fake SMS provider: records requests and answers with ``reply``."""

    server: TestServer
    requests: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    reply: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("/webhook"))


AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def provider(aiohttp_server: AiohttpServer) -> AsyncIterator[Provider]:
    state: list[Provider] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        p = state[0]
        p.requests.append(Received(request.path, dict(request.headers), await request.read()))
        if p.reply is not None:
            return await p.reply(request)
        return web.json_response({"message": "Accepted", "messageId": f"prov-{len(p.requests)}"}, status=202)

    app = web.Application()
    app.router.add_post("/webhook", handle)
    p = Provider(server=await aiohttp_server(app))
    state.append(p)
    try:
        yield p
    finally:
        # Let any handler still waiting finish before the server shuts down.
        p.release.set()


ClientFactory = Callable[..., WebhookSmsClient]


@pytest.fixture(params=["lean", "aiohttp"])
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[ClientFactory]:
    """Webhook clients over either HTTP client: the answers must map the same way."""
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(open_http_session(concurrency_limit=10))

        def make(url: str, timeout_s: float = 5.0) -> WebhookSmsClient:
            if request.param == "aiohttp":
                return WebhookSmsClient(session, url, AUTH_KEY, timeout_s=timeout_s)
            lean = Http1Client(url, limit=10)
            stack.push_async_callback(lean.aclose)
            return WebhookSmsClient(lean, url, AUTH_KEY, timeout_s=timeout_s)

        yield make


async def test_sends_exact_json_body_and_headers(provider: Provider, make_client: ClientFactory) -> None:
    client = make_client(provider.url)

    result = await client.send(TO, "Hello", "idem-abc")

    assert result == SendResult(Outcome.SENT, status_code=202, provider_message_id="prov-1")
    [received] = provider.requests
    assert received.path == "/webhook"
    assert json.loads(received.body) == {"to": TO, "content": "Hello"}
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["x-ins-auth-key"] == AUTH_KEY
    assert received.headers["Idempotency-Key"] == "idem-abc"


async def test_unicode_content_arrives_intact(provider: Provider, make_client: ClientFactory) -> None:
    client = make_client(provider.url)

    result = await client.send(TO, TURKISH, "idem-tr")

    assert result.outcome is Outcome.SENT
    [received] = provider.requests
    assert json.loads(received.body.decode("utf-8")) == {"to": TO, "content": TURKISH}


async def test_hanging_provider_times_out(provider: Provider, make_client: ClientFactory) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await provider.release.wait()
        return web.json_response({"messageId": "too-late"})

    provider.reply = hang
    client = make_client(provider.url, timeout_s=0.2)

    result = await client.send(TO, "Hello", "idem-slow")

    assert result == SendResult(Outcome.RETRY, error="timeout after 0.2s")
    assert len(provider.requests) == 1


async def test_cancellation_propagates_mid_request(provider: Provider, make_client: ClientFactory) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await provider.release.wait()
        return web.json_response({"messageId": "never-read"})

    provider.reply = hang
    client = make_client(provider.url, timeout_s=30)
    task = asyncio.create_task(client.send(TO, "Hello", "idem-cancel"))
    await eventually(lambda: len(provider.requests) == 1, what="the request to reach the provider")

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_429_with_retry_after(provider: Provider, make_client: ClientFactory) -> None:
    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, text="rate limited", headers={"Retry-After": "3"})

    provider.reply = busy
    client = make_client(provider.url)

    result = await client.send(TO, "Hello", "idem-429")

    assert result == SendResult(Outcome.RETRY, status_code=429, error="HTTP 429: rate limited", retry_after_s=3.0)


@pytest.mark.parametrize(("status", "outcome"), [(500, Outcome.RETRY), (400, Outcome.FAILED), (302, Outcome.FAILED)])
async def test_status_mapping(provider: Provider, make_client: ClientFactory, status: int, outcome: Outcome) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        headers = {"Location": "/elsewhere"} if status == 302 else None
        return web.Response(status=status, text=f"status {status}", headers=headers)

    provider.reply = answer
    client = make_client(provider.url)

    result = await client.send(TO, "Hello", "idem-status")

    assert result == SendResult(outcome, status_code=status, error=f"HTTP {status}: status {status}")
    assert len(provider.requests) == 1  # a redirect is not followed


async def test_connection_refused_retries(make_client: ClientFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    client = make_client(f"http://127.0.0.1:{port}/webhook")

    result = await client.send(TO, "Hello", "idem-refused")

    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("connection error: ")
    assert AUTH_KEY not in result.error


async def test_accepted_with_a_body_cut_short_is_still_sent(provider: Provider, make_client: ClientFactory) -> None:
    async def stall_after_headers(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=202, headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"messageId": ')
        await provider.release.wait()
        return response

    provider.reply = stall_after_headers
    client = make_client(provider.url, timeout_s=0.2)

    result = await client.send(TO, "Hello", "idem-partial")

    # The provider took it; a retry could send it twice.
    assert result == SendResult(Outcome.SENT, status_code=202, provider_message_id=None)
