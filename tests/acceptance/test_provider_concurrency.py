"""A provider's concurrency held across two service processes on one PostgreSQL, measured at the simulator.

Two `python -m insider` processes share one database; the providers file gives `alpha`
`concurrency = 2`, and each process may have 8 requests in flight of its own. The simulator
answers each request after 0.4 s and lists when each arrived (`receivedAt`): at no moment are
more than two of them in its hands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from insider.adapters.webhook import open_http_session
from tests.acceptance.conftest import Service, senders_to, start_simulator, stop_gracefully
from tests.conftest import eventually

pytestmark = pytest.mark.postgres

CONCURRENCY = 2  # alpha's, for the whole deployment
LATENCY_S = 0.4  # how long the simulator takes to answer each request
# A request answered at r + LATENCY_S lets the next one in; this much is left for clocks and scheduling.
SLACK_S = 0.05


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session() as opened:
        yield opened


def most_at_once(arrivals: list[float]) -> int:
    """The most requests the simulator held at one moment, each for LATENCY_S from its arrival."""
    return max(sum(1 for r in arrivals if r <= at < r + LATENCY_S - SLACK_S) for at in arrivals)


def test_most_at_once_counts_overlapping_holds() -> None:
    assert most_at_once([0.0, 0.4, 0.8]) == 1
    assert most_at_once([0.0, 0.1, 0.2, 0.5]) == 3


async def test_a_providers_concurrency_holds_across_two_processes(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, fresh_postgres_url: str, tmp_path: Path
) -> None:
    alpha = await start_simulator(start_service, session, "--latency", f"{LATENCY_S * 1000:g}ms")
    providers = tmp_path / "providers.toml"
    providers.write_text(
        f"""
[[providers]]
name = "alpha"
url = "{alpha.base_url}/webhook"
timeout = "10s"
concurrency = {CONCURRENCY}
"""
    )
    services = [
        start_service(
            providers_file=str(providers),
            database_url=fresh_postgres_url,
            send_interval="0",
            batch_size="8",
            send_concurrency="8",
        )
        for _ in range(2)
    ]
    for service in services:
        await service.wait_answering(session)
    count = 40  # 8 s of work at two at a time: long enough for the second process to get its share
    async with session.post(
        services[0].base_url + "/api/v1/messages/batch",
        json={"messages": [{"to": "+905301234001", "content": f"m-{i}"} for i in range(count)]},
    ) as response:
        assert response.status == 201, await response.text()

    async def arrivals() -> list[float]:
        async with session.get(alpha.base_url + "/messages") as response:
            listed = (await response.json())["data"]
        return sorted(datetime.fromisoformat(m["receivedAt"]).timestamp() for m in listed)

    async def all_there() -> bool:
        return len(await arrivals()) == count

    await eventually(all_there, timeout_s=60, what="every message at the simulator")
    times = await arrivals()
    assert most_at_once(times) <= CONCURRENCY, times
    # Both processes sent to alpha: the bound is the deployment's, each process a share of it.
    assert senders_to(services, "alpha") == 2
    stop_gracefully(services)
