"""Shared fixtures: real PostgreSQL and Redis, a real local SMS provider, and test helpers."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import aioresponses.core
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from psycopg import sql

# Admin connection used to create (and drop) this run's own database.
ADMIN_URL = os.environ.get("INSIDER_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("INSIDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
# CI sets this so that a test needing a service fails instead of being skipped.
REQUIRE_SERVICES = os.environ.get("INSIDER_TEST_REQUIRE_SERVICES", "") not in ("", "0", "false")


class _SentStreamWriter:
    """Stands in for the stream writer of a request already sent (all aiohttp 3.14 reads of it)."""

    output_size = 0


class _StreamWriterDefault(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` that aiohttp 3.14 requires
    (a known upstream issue); supply one. Remove when aioresponses releases its fix."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("stream_writer") is None:
            kwargs["stream_writer"] = _SentStreamWriter()
        super().__init__(*args, **kwargs)


aioresponses.core.ClientResponse = _StreamWriterDefault  # type: ignore[attr-defined]


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc}); integration tests need it"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and INSIDER_TEST_REQUIRE_SERVICES is set", pytrace=False)
    pytest.skip(message)


def _with_db(url: str, dbname: str) -> str:
    """The same server URL, another database."""
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        _unavailable(f"PostgreSQL at {ADMIN_URL}", exc)
    return ADMIN_URL


@contextmanager
def _scratch_database(admin_url: str, name: str) -> Iterator[str]:
    """The URL of a new, empty database ``name``, dropped on exit."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A database of this test run's own, created empty and dropped at the end."""
    with _scratch_database(postgres_admin_url, f"insider_test_{os.getpid()}_{uuid.uuid4().hex[:6]}") as url:
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """An empty database for one test (for migrations and multi-process tests)."""
    with _scratch_database(postgres_admin_url, f"insider_t_{uuid.uuid4().hex[:12]}") as url:
        yield url


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        _unavailable(f"Redis at {REDIS_URL}", exc)
    await client.aclose()
    yield REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own; keys under it are deleted by the tests that use it."""
    return f"insider-test-{uuid.uuid4().hex[:10]}"


@dataclass
class Provider:
    """A provider webhook on a real local port that records what it receives."""

    server: TestServer
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 202
    gate: asyncio.Event | None = None  # when set, requests wait for it (a slow provider)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/webhook"))


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    app = web.Application()
    state = Provider(server=TestServer(app))

    async def webhook(request: web.Request) -> web.Response:
        body = await request.json()
        state.received.append({"body": body, "headers": dict(request.headers)})
        if state.gate is not None:
            await state.gate.wait()
        if state.status >= 300:
            return web.json_response({"error": "nope"}, status=state.status)
        return web.json_response({"message": "Accepted", "messageId": str(uuid.uuid4())}, status=state.status)

    app.router.add_post("/webhook", webhook)
    await state.server.start_server()
    try:
        yield state
    finally:
        if state.gate is not None:
            state.gate.set()
        await state.server.close()


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Wait until ``condition`` holds, polling, or fail after ``timeout_s``: never a bare sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)
