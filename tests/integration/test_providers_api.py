"""An operator's switch on a provider, through the HTTP API of two services on one PostgreSQL database:
it holds for both, survives a restart, and sends go around the provider while it is off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from insider.config import load_settings
from insider.container import Container
from insider.web.app import create_app
from tests.conftest import eventually
from tests.integration.test_providers import PHONE, providers_file, stubs  # noqa: F401 (a fixture)

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def service(database_url: str, path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """One service (its own container, supervisor and switches) over the database, behind a test client."""
    settings = load_settings(
        {
            "INSIDER_DATABASE_URL": database_url,
            "INSIDER_REDIS_URL": "",
            "INSIDER_PROVIDERS_FILE": str(path),
            "INSIDER_SEND_INTERVAL": "0",
            "INSIDER_BATCH_SIZE": "1",
            "INSIDER_AUTOSTART": "false",
        },
        env_file=None,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(Container(settings=settings))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def enabled(client: TestClient[Any, Any]) -> dict[str, bool]:
    response = await client.get("/api/v1/providers")
    assert response.status == 200
    return {p["name"]: p["enabled"] for p in (await response.json())["data"]}


async def test_a_disabled_provider_is_off_for_every_process_and_after_a_restart(
    stubs: Any,  # noqa: F811
    fresh_postgres_url: str,
    tmp_path: Path,
) -> None:
    alpha, beta = await stubs(), await stubs()
    path = providers_file(tmp_path, alpha, beta)
    async with service(fresh_postgres_url, path) as first, service(fresh_postgres_url, path) as second:
        response = await first.post("/api/v1/providers/alpha/disable")
        assert response.status == 200
        assert (await response.json())["enabled"] is False
        assert await enabled(first) == {"alpha": False, "beta": True}

        async def second_follows() -> bool:
            return (await enabled(second))["alpha"] is False

        await eventually(second_follows, what="the other process to see alpha disabled")
        # The other process sends around it.
        queued = await second.post("/api/v1/messages", json={"to": PHONE, "content": "around alpha"})
        assert queued.status == 201
        assert (await second.post("/api/v1/messages/start")).status == 200
        message_path = f"/api/v1/messages/{(await queued.json())['id']}"

        async def sent_through_beta() -> bool:
            message = await (await second.get(message_path)).json()
            return bool(message["status"] == "sent" and message["provider"] == "beta")

        await eventually(sent_through_beta, what="the message sent through beta")
        assert alpha.keys == [] and len(beta.keys) == 1

    async with service(fresh_postgres_url, path) as restarted:
        assert await enabled(restarted) == {"alpha": False, "beta": True}
        assert (await restarted.post("/api/v1/providers/alpha/enable")).status == 200
        assert await enabled(restarted) == {"alpha": True, "beta": True}
        queued = await restarted.post("/api/v1/messages", json={"to": PHONE, "content": "through alpha"})
        assert (await restarted.post("/api/v1/messages/start")).status == 200
        await eventually(lambda: len(alpha.keys) == 1, what="the message through alpha again")

        async def totals_read() -> bool:
            body = await (await restarted.get("/api/v1/stats")).json()
            return {p["name"]: (p["sent"], p["cost"]) for p in body["providers"]} == {
                "alpha": (1, 0.02),
                "beta": (1, 0.01),
            }

        await eventually(totals_read, what="the totals of both providers in the stats")

    async with service(fresh_postgres_url, path) as again:
        assert await enabled(again) == {"alpha": True, "beta": True}
