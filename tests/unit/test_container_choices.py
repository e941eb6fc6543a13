"""The container picks adapters from the settings and opens only the resources of those it picked."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from insider.adapters.memory import InMemorySentCache
from insider.adapters.postgres import PostgresMessageRepository
from insider.adapters.redis import RedisSentCache
from insider.adapters.sqlite import SqliteMessageRepository
from insider.adapters.webhook import WebhookSmsClient
from insider.config import load_settings
from insider.container import Container, open_repository, resolve
from insider.ports import RepositoryUnavailable
from insider.simulator import SimulatedSmsClient


def container(**environ: str) -> Container:
    settings = load_settings({f"INSIDER_{k.upper()}": v for k, v in environ.items()}, env_file=None)
    return Container(settings=settings)


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def test_embedded_defaults_open_a_sqlite_file_and_no_pool(tmp_path: Path) -> None:
    c = container(database_url=f"sqlite:///{tmp_path / 'insider.db'}")
    with structlog.testing.capture_logs() as logs:
        await _maybe_await(c.init_resources())
        try:
            assert await resolve(c.database_pool) is None
            repository = await resolve(c.repository)
            assert isinstance(repository, SqliteMessageRepository)
            await repository.migrate()
            assert isinstance(await resolve(c.sms_client), SimulatedSmsClient)
            assert isinstance(await resolve(c.cache), InMemorySentCache)
            assert await resolve(c.redis_client) is None
        finally:
            await _maybe_await(c.shutdown_resources())
    assert (tmp_path / "insider.db").is_file()
    events = {(e["log_level"], e["event"]) for e in logs}
    assert ("info", "cache in use") in events
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "NOTHING LEAVES THIS MACHINE" in warning["event"]
    # Closed with the container: the repository no longer answers.
    with pytest.raises(RepositoryUnavailable):
        await repository.ping()


async def test_postgres_redis_and_a_webhook_when_configured() -> None:
    c = container(
        database_url="postgresql://127.0.0.1:9/unused",
        redis_url="redis://127.0.0.1:9/0",
        webhook_url="http://127.0.0.1:9/hook",
    )
    await _maybe_await(c.init_resources())
    try:
        assert await resolve(c.sqlite_database) is None
        assert isinstance(await resolve(c.repository), PostgresMessageRepository)
        assert isinstance(await resolve(c.sms_client), WebhookSmsClient)
        assert isinstance(await resolve(c.webhook_http), aiohttp.ClientSession)
        assert isinstance(await resolve(c.cache), RedisSentCache)
    finally:
        await _maybe_await(c.shutdown_resources())


async def test_one_aiohttp_session_carries_the_webhook_for_the_containers_life() -> None:
    c = container(webhook_url="http://127.0.0.1:9/hook", send_concurrency="13")
    await _maybe_await(c.init_resources())
    try:
        client = await resolve(c.sms_client)
        assert isinstance(client, WebhookSmsClient)
        session = await resolve(c.webhook_http)
        assert isinstance(session, aiohttp.ClientSession)
        assert await resolve(c.webhook_http) is session  # one session, not one per call
        assert session.connector is not None
        assert session.connector.limit == 13  # connections bounded by INSIDER_SEND_CONCURRENCY
    finally:
        await _maybe_await(c.shutdown_resources())
    assert session.closed


async def test_no_http_client_without_a_webhook(tmp_path: Path) -> None:
    c = container(database_url=f"sqlite:///{tmp_path / 'insider.db'}")
    await _maybe_await(c.init_resources())
    try:
        assert await resolve(c.webhook_http) is None
    finally:
        await _maybe_await(c.shutdown_resources())


async def test_open_repository_opens_the_database_and_nothing_else(tmp_path: Path) -> None:
    c = container(database_url=f"sqlite:///{tmp_path / 'insider.db'}", redis_url="redis://127.0.0.1:9/0")

    async with open_repository(c) as repository:
        await repository.migrate()
        message = await repository.enqueue("+905301234001", "content")
        assert c.sqlite_database.initialized
        assert not c.webhook_http.initialized
        assert not c.redis_client.initialized
        assert not c.database_pool.initialized

    assert message.id == 1
    assert not c.sqlite_database.initialized
