"""Shared unit fixtures: SQLite :memory:, the fake SMS client and the in-process cache, all on one fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from insider.adapters.memory import InMemorySentCache, InMemorySmsClient
from insider.clock import FakeClock
from tests.unit.support import ProbedRepository
from tests.unit.web_support import Api, open_api


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def repo(clock: FakeClock) -> AsyncIterator[ProbedRepository]:
    """The SQLite repository on a :memory: database of this test's own, on the fake clock."""
    repository = ProbedRepository(clock)
    try:
        yield repository
    finally:
        await repository.close()


@pytest.fixture
def sms() -> InMemorySmsClient:
    """Accepts every request with a fresh provider message id unless a test sets ``responder``."""
    return InMemorySmsClient()


@pytest.fixture
def cache() -> InMemorySentCache:
    return InMemorySentCache()


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """The web app on SQLite :memory: and the fakes, on a fake clock, with a test client (no API token)."""
    async with open_api() as opened:
        yield opened


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """Opens the app with INSIDER_* settings by short name (``await make_api(api_token="s3cret")``); one per test."""
    async with AsyncExitStack() as stack:

        async def make(**settings: str) -> Api:
            return await stack.enter_async_context(open_api(**settings))

        yield make
