"""Fixtures of the PostgreSQL integration tests: a pool and a clean, migrated repository."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from insider.adapters.postgres import Pool, PostgresMessageRepository, open_postgres_pool

# The session databases migrated so far: migrating is done once per database.
_migrated: set[str] = set()


@pytest.fixture
async def pg_pool(postgres_url: str) -> AsyncIterator[Pool]:
    """A pool on this run's database, opened for one test."""
    async with open_postgres_pool(postgres_url, min_size=1, max_size=10) as pool:
        await pool.wait(timeout=10.0)
        yield pool


@pytest.fixture
async def pg_repository(pg_pool: Pool, postgres_url: str) -> PostgresMessageRepository:
    """A repository on a migrated database emptied for this test."""
    repository = PostgresMessageRepository(pg_pool)
    if postgres_url not in _migrated:
        await repository.migrate()
        _migrated.add(postgres_url)
    async with pg_pool.connection() as conn:
        await conn.execute(
            "TRUNCATE messages, insider_slots, insider_message_events, insider_pending_receipts,"
            " insider_suppressions, insider_inbound RESTART IDENTITY"
        )
    return repository
