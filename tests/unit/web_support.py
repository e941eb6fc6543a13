"""The web app on SQLite :memory: and the fakes, on a fake clock, served on a local port for a test client."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from dependency_injector import providers

from insider.adapters.memory import InMemorySentCache, InMemorySmsClient
from insider.clock import FakeClock
from insider.config import load_settings
from insider.container import Container
from insider.metrics import Metrics
from insider.web.app import create_app
from tests.unit.support import ProbedRepository

BASE_SETTINGS = {
    "INSIDER_AUTOSTART": "false",
    "INSIDER_DATABASE_URL": "postgresql://127.0.0.1:9/unused",
    "INSIDER_REDIS_URL": "",
    "INSIDER_WEBHOOK_URL": "http://127.0.0.1:9/unused",
}


@dataclasses.dataclass
class Api:
    client: TestClient[Any, Any]
    repository: ProbedRepository
    sms: InMemorySmsClient
    cache: InMemorySentCache
    clock: FakeClock
    container: Container

    @property
    def metrics(self) -> Metrics:
        metrics: Metrics = self.container.metrics()
        return metrics


def in_memory_container(clock: FakeClock | None = None, **settings: str) -> Container:
    """A container on SQLite :memory: (a ProbedRepository) and the fakes; ``settings`` are INSIDER_* values by
    short name (``api_token``)."""
    env = BASE_SETTINGS | {f"INSIDER_{k.upper()}": v for k, v in settings.items()}
    container = Container(settings=load_settings(env, env_file=None))
    clock = clock or FakeClock()
    container.database_pool.override(providers.Object(None))
    container.clock.override(clock)
    container.repository.override(ProbedRepository(clock))
    container.sms_client.override(InMemorySmsClient())
    container.cache.override(InMemorySentCache())
    return container


@asynccontextmanager
async def open_api(clock: FakeClock | None = None, /, **settings: str) -> AsyncIterator[Api]:
    """The app (its lifespan included) behind a test client on a local port; its database dropped afterwards."""
    async with open_container_api(in_memory_container(clock or FakeClock(), **settings)) as api:
        yield api


@asynccontextmanager
async def open_container_api(container: Container) -> AsyncIterator[Api]:
    """As :func:`open_api`, on a container from :func:`in_memory_container` that the test adjusted first."""
    clock = container.clock()
    assert isinstance(clock, FakeClock), "in_memory_container() sets a FakeClock"
    repository: ProbedRepository = container.repository()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
    try:
        await client.start_server()
        try:
            yield Api(client, repository, container.sms_client(), container.cache(), clock, container)
        finally:
            await client.close()
    finally:
        await repository.close()
