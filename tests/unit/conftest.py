"""Shared unit fixtures: the in-memory adapters, all on one fake clock."""

from __future__ import annotations

import pytest

from insider.adapters.memory import InMemoryMessageRepository, InMemorySentCache, InMemorySmsClient
from insider.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def repo(clock: FakeClock) -> InMemoryMessageRepository:
    return InMemoryMessageRepository(clock)


@pytest.fixture
def sms() -> InMemorySmsClient:
    """Accepts every request with a fresh provider message id unless a test sets ``responder``."""
    return InMemorySmsClient()


@pytest.fixture
def cache() -> InMemorySentCache:
    return InMemorySentCache()
