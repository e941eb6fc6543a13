"""Odd provider answers through the whole send path, on the real PostgreSQL and Redis.

A 2xx status is a send once aiohttp hands it over, whatever follows it; an answer aiohttp
gives no status for is an unknown outcome, sent again later with the same key. webhook.site's
answer names the message in its ``x-request-id`` header: recorded and cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from insider.adapters.postgres import PostgresMessageRepository
from insider.adapters.redis import RedisSentCache, open_redis
from insider.adapters.webhook import WebhookSmsClient, open_http_session
from insider.clock import SystemClock
from insider.domain import Message, MessageStatus
from insider.sender import BatchSender, SenderOptions

pytestmark = pytest.mark.postgres

PHONE = "+905301234567"
Answer = Callable[[int], bytes]  # the n-th request's (1-based) raw answer


@dataclass
class RawProvider:
    url: str
    keys: list[str] = field(default_factory=list)  # the Idempotency-Key of each request, in order


async def _read_request(reader: asyncio.StreamReader) -> str:
    """Read one request; its Idempotency-Key."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(v.split(b":", 1)[1]) for v in lines if v.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return next(v.split(b":", 1)[1].strip().decode() for v in lines if v.lower().startswith(b"idempotency-key:"))


@pytest.fixture
async def raw_provider() -> AsyncIterator[Callable[[Answer], Awaitable[RawProvider]]]:
    """A provider that answers each request with raw bytes, then closes."""
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> RawProvider:
        provider = RawProvider("")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                provider.keys.append(await _read_request(reader))
                writer.write(answer(len(provider.keys)))
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        provider.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/webhook"
        return provider

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    async with open_redis(redis_url) as client:
        try:
            yield client
        finally:
            keys = [key async for key in client.scan_iter(f"{redis_prefix}:*")]
            if keys:
                await client.delete(*keys)


async def drain(
    repository: PostgresMessageRepository, cache: RedisSentCache, url: str, count: int, *, batches: int = 1
) -> list[tuple[MessageStatus, str | None, int, str | None]]:
    """Enqueue ``count`` messages, run ``batches`` batches (retries due at once); each row's state."""
    return [
        (m.status, m.message_id, m.attempts, m.last_error)
        for m in await drained(repository, cache, url, count, batches)
    ]


async def drained(
    repository: PostgresMessageRepository, cache: RedisSentCache, url: str, count: int, batches: int = 1
) -> list[Message]:
    messages = [await repository.enqueue(PHONE, f"m{i}") for i in range(count)]
    async with open_http_session(concurrency_limit=4) as session:
        client = WebhookSmsClient(session, url, "answers-key", timeout_s=5)
        options = SenderOptions(batch_size=count, lease_s=60, retry_backoff_s=0.0)
        sender = BatchSender(repository, client, cache, SystemClock(), options)
        for _ in range(batches):
            await sender.run_batch()
    rows = [await repository.get(m.id) for m in messages]
    return [r for r in rows if r is not None]


async def test_webhook_site_answers_are_recorded_and_cached_under_x_request_id(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[RawProvider]],
) -> None:
    def webhook_site(n: int) -> bytes:
        body = b"This URL has no default content configured."
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            b"x-request-id: 5c6e1f0a-0000-4000-8000-00000000000%d\r\n"
            b"Content-Length: %d\r\n\r\n" % (n, len(body)) + body
        )

    provider = await raw_provider(webhook_site)
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    rows = await drain(pg_repository, cache, provider.url, 2)

    ids = sorted(message_id for _, message_id, _, _ in rows if message_id)
    assert [status for status, *_ in rows] == [MessageStatus.SENT] * 2
    assert ids == ["5c6e1f0a-0000-4000-8000-000000000001", "5c6e1f0a-0000-4000-8000-000000000002"]
    for message_id in ids:
        cached = await redis_client.hgetall(cache.key(message_id))
        assert cached["messageId"] == message_id


@pytest.mark.parametrize(
    ("answer", "warning"),
    [
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\n{}", "payload is not completed"),
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 9999999\r\n\r\n{}", "over 65536, was not read"),
        (b"HTTP/1.1 202 Accepted\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", "content-encoding"),
    ],
    ids=["cut-mid-body", "oversized-body", "bad-gzip"],
)
async def test_a_2xx_with_a_broken_body_is_sent_once_with_a_warning(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[RawProvider]],
    answer: bytes,
    warning: str,
) -> None:
    # The status and headers were read whole: the provider took the message.
    provider = await raw_provider(lambda n: answer)
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    with capture_logs() as logs:
        [(status, message_id, attempts, last_error)] = await drain(pg_repository, cache, provider.url, 1, batches=2)

    assert (status, message_id, attempts, last_error) == (MessageStatus.SENT, None, 1, None)
    assert len(provider.keys) == 1  # not sent again: a retry could deliver it twice
    [send] = [e for e in logs if e["event"] == "send"]
    assert send["log_level"] == "warning"
    assert send["outcome"] == "sent" and send["status_code"] == 202
    assert warning in send["warning"]
    assert "answers-key" not in str(logs)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            b'HTTP/1.1 202 Accepted\r\nContent-Length: 20\r\n\r\n{"messageId": "m-1"}, "more": "bytes"}',
            "malformed answer: Bad status line",
        ),
        (b"HTTP/1.1 202 Accepted\r\nX-Big: " + b"a" * 400_000 + b"\r\nContent-Length: 2\r\n\r\n{}", "Got more than"),
        (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nnot-a-size\r\n", "chunk size"),
        (b"HTTP/1.1 202 Accepted\r\n", "the server closed the connection"),
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}, and more", "malformed answer: Bad status line"),
        (b"SMTP ready\r\n", "malformed answer: Bad status line"),
    ],
    ids=[
        "body-longer-than-its-length",
        "400-KB-header",
        "broken-chunks",
        "status-line-then-close",
        "broken-400",
        "smtp",
    ],
)
async def test_an_answer_without_a_status_is_an_unknown_outcome_sent_again_later_with_the_same_key(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[RawProvider]],
    answer: bytes,
    error: str,
) -> None:
    # aiohttp raised before it handed over a status: the provider may have the message or not.
    # The first request gets the broken answer, the second a good one.
    body = b'{"messageId": "ok-2"}'
    good = b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    provider = await raw_provider(lambda n: answer if n == 1 else good)
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    message = await pg_repository.enqueue(PHONE, "unknown")
    async with open_http_session(concurrency_limit=4) as session:
        client = WebhookSmsClient(session, provider.url, "answers-key", timeout_s=5)
        options = SenderOptions(batch_size=1, lease_s=60, retry_backoff_s=0.0)
        sender = BatchSender(pg_repository, client, cache, SystemClock(), options)
        await sender.run_batch()
        after_first = await pg_repository.get(message.id)
        await sender.run_batch()
    after_second = await pg_repository.get(message.id)

    assert after_first is not None and after_second is not None
    assert (after_first.status, after_first.attempts) == (MessageStatus.PENDING, 1)  # never failed
    assert after_first.last_error is not None and after_first.last_error.startswith("outcome unknown: ")
    assert (after_second.status, after_second.message_id, after_second.attempts) == (MessageStatus.SENT, "ok-2", 2)
    assert provider.keys == [message.idempotency_key] * 2  # a provider that deduplicates sends it once
    unknown, sent = sorted(
        (e for e in await pg_repository.events(message.id) if e.kind == "attempt"), key=lambda e: e.id
    )
    assert (unknown.outcome, unknown.status_code) == ("retry", None)  # not "failed", even for the broken 400
    assert unknown.error == after_first.last_error
    assert error in unknown.error and "answers-key" not in unknown.error
    assert (sent.outcome, sent.provider_message_id) == ("sent", "ok-2")


async def test_a_2xx_with_a_100_kb_header_is_read_whole_and_logged_as_oversized(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[RawProvider]],
) -> None:
    body = b'{"messageId": "big-header-1"}'
    answer = b"HTTP/1.1 202 Accepted\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    provider = await raw_provider(lambda n: answer)
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    with capture_logs() as logs:
        [(status, message_id, attempts, _)] = await drain(pg_repository, cache, provider.url, 1)

    assert (status, message_id, attempts, len(provider.keys)) == (MessageStatus.SENT, "big-header-1", 1, 1)
    [send] = [e for e in logs if e["event"] == "send"]
    assert send["log_level"] == "warning"
    assert send["warning"] == "the answer's headers were oversized: a header line of 100005 bytes"
    assert await redis_client.hgetall(cache.key("big-header-1"))
