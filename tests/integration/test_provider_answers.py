"""Odd provider answers through the whole send path, on the real PostgreSQL and Redis.

A 2xx status line is a send whatever follows it (issue 11, point 3); webhook.site's answer
names the message in its ``x-request-id`` header (issue 12, point 4): recorded and cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from insider.adapters.postgres import PostgresMessageRepository
from insider.adapters.redis import RedisSentCache, open_redis
from insider.adapters.webhook import WebhookSmsClient, open_http_session
from insider.clock import SystemClock
from insider.domain import MessageStatus
from insider.sender import BatchSender, SenderOptions

pytestmark = pytest.mark.postgres

PHONE = "+905301234567"
Answer = Callable[[int], bytes]  # the n-th request's (1-based) raw answer


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(v.split(b":", 1)[1]) for v in head.split(b"\r\n") if v.lower().startswith(b"content-length:"))
    await reader.readexactly(length)


@pytest.fixture
async def raw_provider() -> AsyncIterator[Callable[[Answer], Awaitable[tuple[str, list[int]]]]]:
    """A provider that answers each request with raw bytes, then closes; returns its URL and request count."""
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[str, list[int]]:
        count = [0]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await _read_request(reader)
                count[0] += 1
                writer.write(answer(count[0]))
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/webhook", count

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


async def drain_once(
    repository: PostgresMessageRepository, cache: RedisSentCache, url: str, count: int
) -> list[tuple[MessageStatus, str | None, int, str | None]]:
    messages = [await repository.enqueue(PHONE, f"m{i}") for i in range(count)]
    async with open_http_session(concurrency_limit=4) as session:
        client = WebhookSmsClient(session, url, "answers-key", timeout_s=5)
        sender = BatchSender(repository, client, cache, SystemClock(), SenderOptions(batch_size=count, lease_s=60))
        await sender.run_batch()
    rows = [await repository.get(m.id) for m in messages]
    return [(r.status, r.message_id, r.attempts, r.last_error) for r in rows if r is not None]


async def test_webhook_site_answers_are_recorded_and_cached_under_x_request_id(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[tuple[str, list[int]]]],
) -> None:
    def webhook_site(n: int) -> bytes:
        body = b"This URL has no default content configured."
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            b"x-request-id: 5c6e1f0a-0000-4000-8000-00000000000%d\r\n"
            b"Content-Length: %d\r\n\r\n" % (n, len(body)) + body
        )

    url, _ = await raw_provider(webhook_site)
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    rows = await drain_once(pg_repository, cache, url, 2)

    ids = sorted(message_id for _, message_id, _, _ in rows if message_id)
    assert [status for status, *_ in rows] == [MessageStatus.SENT] * 2
    assert ids == ["5c6e1f0a-0000-4000-8000-000000000001", "5c6e1f0a-0000-4000-8000-000000000002"]
    for message_id in ids:
        cached = await redis_client.hgetall(cache.key(message_id))
        assert cached["messageId"] == message_id


@pytest.mark.parametrize(
    ("answer", "warning"),
    [
        (
            b'HTTP/1.1 202 Accepted\r\nContent-Length: 20\r\n\r\n{"messageId": "m-1"}, "more": "bytes"}',
            "Bad status line",
        ),
        (b"HTTP/1.1 202 Accepted\r\nX-Big: " + b"a" * 400_000 + b"\r\nContent-Length: 2\r\n\r\n{}", "Got more than"),
        (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nnot-a-size\r\n", "chunk size"),
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\n{}", "payload is not completed"),
    ],
    ids=["body-longer-than-its-length", "400-KB-header", "broken-chunks", "cut-mid-body"],
)
async def test_a_2xx_with_broken_framing_is_sent_once_with_a_warning(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[tuple[str, list[int]]]],
    answer: bytes,
    warning: str,
) -> None:
    url, requests = await raw_provider(lambda n: answer)
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    with capture_logs() as logs:
        [(status, message_id, attempts, last_error)] = await drain_once(pg_repository, cache, url, 1)

    assert (status, message_id, attempts, last_error) == (MessageStatus.SENT, None, 1, None)
    assert requests == [1]  # not retried: the provider had accepted it
    [send] = [e for e in logs if e["event"] == "send"]
    assert send["log_level"] == "warning"
    assert send["outcome"] == "sent" and send["status_code"] == 202
    assert warning in send["warning"]
    assert "answers-key" not in str(logs)


async def test_an_answer_without_a_2xx_status_line_is_retried(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[tuple[str, list[int]]]],
) -> None:
    url, requests = await raw_provider(lambda n: b"SMTP ready\r\n")
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    [(status, message_id, attempts, last_error)] = await drain_once(pg_repository, cache, url, 1)

    assert (status, message_id, attempts) == (MessageStatus.PENDING, None, 1)
    assert last_error is not None and last_error.startswith("connection error: malformed answer")
    assert requests == [1]


async def test_a_2xx_with_a_100_kb_header_is_read_whole_and_logged_as_oversized(
    pg_repository: PostgresMessageRepository,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    raw_provider: Callable[[Answer], Awaitable[tuple[str, list[int]]]],
) -> None:
    body = b'{"messageId": "big-header-1"}'
    answer = b"HTTP/1.1 202 Accepted\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    url, requests = await raw_provider(lambda n: answer)
    cache = RedisSentCache(redis_client, prefix=redis_prefix, ttl_s=60)

    with capture_logs() as logs:
        [(status, message_id, attempts, _)] = await drain_once(pg_repository, cache, url, 1)

    assert (status, message_id, attempts, requests) == (MessageStatus.SENT, "big-header-1", 1, [1])
    [send] = [e for e in logs if e["event"] == "send"]
    assert send["log_level"] == "warning"
    assert send["warning"] == "the answer's headers were oversized: a header line of 100005 bytes"
    assert await redis_client.hgetall(cache.key("big-header-1"))
