"""The migrate command: apply the database migrations and exit."""

from __future__ import annotations

import asyncio

from insider.cli.process import database_down, schema_refused
from insider.config import Settings, mask_url
from insider.container import Container, open_repository
from insider.logs import get_logger
from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused

log = get_logger("insider")


def run(settings: Settings) -> int:
    """Apply the migrations; the exit code."""
    return asyncio.run(migrate(settings))


async def migrate(settings: Settings) -> int:
    async with open_repository(Container(settings=settings)) as repository:
        try:
            await repository.migrate()
        except RepositoryUnavailable as exc:
            return database_down(settings.database_url, exc)
        except SchemaUpgradeRefused as exc:
            return schema_refused(exc)
    log.info("migrations applied", database=mask_url(settings.database_url))
    return 0
