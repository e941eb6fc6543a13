"""The supervisor embedded in another asyncio program, without the web app (as the README shows)."""

from __future__ import annotations

import psycopg
import pytest

from insider import load_settings
from insider.container import Container, open_service, resolve
from insider.domain import MessageStatus
from tests.conftest import Provider, eventually

pytestmark = pytest.mark.postgres


async def test_embedded_supervisor_sends_and_stops(fresh_postgres_url: str, provider: Provider) -> None:
    settings = load_settings(
        {
            "INSIDER_DATABASE_URL": fresh_postgres_url,
            "INSIDER_REDIS_URL": "",
            "INSIDER_WEBHOOK_URL": provider.url,
            "INSIDER_SEND_INTERVAL": "1h",
            "INSIDER_AUTOSTART": "false",
        },
        env_file=None,
    )
    container = Container(settings=settings)
    async with open_service(container) as supervisor:
        assert not supervisor.running
        repository = await resolve(container.repository)
        message = await repository.enqueue("+905301234001", "from an embedding program")
        await supervisor.start()
        await eventually(lambda: len(provider.received) == 1, what="the send")

        async def sent() -> bool:
            got = await repository.get(message.id)
            return got is not None and got.status is MessageStatus.SENT

        await eventually(sent, what="the row to be sent")
    assert not supervisor.running
    # Every resource was closed on the way out: the pool no longer hands out connections.
    with psycopg.connect(fresh_postgres_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row == (0,)
