"""The composition root: every adapter, pool and client is made here, once."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import aiohttp
import redis.asyncio as aioredis
import structlog
from dependency_injector import containers, providers
from psycopg_pool import AsyncConnectionPool

from insider.adapters.memory import InMemorySentCache
from insider.adapters.postgres import PostgresMessageRepository, open_postgres_pool
from insider.adapters.redis import RedisSentCache, open_redis
from insider.adapters.webhook import WebhookSmsClient, open_http_session
from insider.clock import SystemClock
from insider.config import Settings
from insider.ports import RepositoryUnavailable
from insider.sender import BatchSender, SenderOptions
from insider.supervisor import Supervisor

T = TypeVar("T")
log = structlog.get_logger("insider")


async def _postgres_pool(url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with open_postgres_pool(url) as pool:
        yield pool


async def _http_session(concurrency_limit: int) -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session(concurrency_limit=concurrency_limit) as session:
        yield session


async def _redis(url: str) -> AsyncIterator[aioredis.Redis | None]:
    if not url:  # no Redis configured: the in-process cache is used instead
        yield None
        return
    async with open_redis(url) as client:
        yield client


def _cache_kind(settings: Settings) -> str:
    return "redis" if settings.redis_url else "memory"


class Container(containers.DeclarativeContainer):
    """Wires settings to adapters, the sender and the supervisor.

    Async resources (the database pool, the HTTP session, the Redis client) open in
    ``await container.init_resources()`` and close in ``await container.shutdown_resources()``.
    Tests swap any adapter with ``container.<name>.override(...)``.
    """

    settings = providers.Dependency(instance_of=Settings)
    clock = providers.Singleton(SystemClock)

    database_pool = providers.Resource(_postgres_pool, url=settings.provided.database_url)
    repository = providers.Singleton(PostgresMessageRepository, pool=database_pool)

    http_session = providers.Resource(_http_session, concurrency_limit=settings.provided.send_concurrency)
    sms_client = providers.Singleton(
        WebhookSmsClient,
        session=http_session,
        url=settings.provided.webhook_url,
        auth_key=settings.provided.webhook_auth_key,
        timeout_s=settings.provided.webhook_timeout_s,
    )

    redis_client = providers.Resource(_redis, url=settings.provided.redis_url)
    cache = providers.Selector(
        providers.Callable(_cache_kind, settings),
        redis=providers.Singleton(
            RedisSentCache,
            client=redis_client,
            prefix=settings.provided.redis_prefix,
            ttl_s=settings.provided.redis_ttl_s,
        ),
        memory=providers.Singleton(InMemorySentCache),
    )

    sender_options = providers.Singleton(
        SenderOptions,
        batch_size=settings.provided.batch_size,
        content_max_length=settings.provided.content_max_length,
        lease_s=settings.provided.lease_s,
        concurrency=settings.provided.send_concurrency,
        max_attempts=settings.provided.max_attempts,
        retry_backoff_s=settings.provided.retry_backoff_s,
        retry_backoff_max_s=settings.provided.retry_backoff_max_s,
    )
    sender = providers.Singleton(
        BatchSender,
        repository=repository,
        sms_client=sms_client,
        cache=cache,
        clock=clock,
        options=sender_options,
    )
    supervisor = providers.Singleton(
        Supervisor,
        sender=sender,
        repository=repository,
        interval_s=settings.provided.send_interval_s,
        clock=clock,
    )


async def resolve(provider: Callable[[], T | Awaitable[T]]) -> T:
    """A provider's object; those built on async resources hand back an awaitable."""
    value = provider()
    if inspect.isawaitable(value):
        return await value
    return value


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


@asynccontextmanager
async def open_service(container: Container) -> AsyncIterator[Supervisor]:
    """Open the container's resources, migrate, start sending (unless autostart is off).

    On the way out the sender stops (in-flight sends get INSIDER_SHUTDOWN_TIMEOUT to
    finish and be recorded) and every resource closes. This is the web app's lifespan,
    and what an embedding program uses to run the sender without the web app.
    """
    settings: Settings = container.settings()
    await _maybe_await(container.init_resources())
    try:
        try:
            await (await resolve(container.repository)).migrate()
        except RepositoryUnavailable as exc:
            log.error("database unavailable at start-up; sending will start once it answers", error=str(exc))
        supervisor = await resolve(container.supervisor)
        if settings.autostart:
            await supervisor.start()
        try:
            yield supervisor
        finally:
            await supervisor.stop(grace_s=settings.shutdown_timeout_s)
    finally:
        await _maybe_await(container.shutdown_resources())
