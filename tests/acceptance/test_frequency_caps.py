"""A frequency cap held by two service processes on one PostgreSQL database, measured at the provider.

Two `python -m insider` processes share one database and one provider (the built-in simulator
as a separate process) with INSIDER_COMMERCIAL_CAP=2/1h: of six commercial messages to one
number, the provider receives exactly two; the other four wait, pending, for about an hour.
Then, one process at a time, the second holds back what the first's admissions fill.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from insider.adapters.webhook import open_http_session
from insider.domain import mask_phone
from tests.acceptance.conftest import Service, log_events, service_env, start_simulator, stop_gracefully
from tests.conftest import eventually

PHONE = "+905301234001"
OTHER = "+905301234002"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session() as opened:
        yield opened


async def get_json(session: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    async with session.get(url, params=params) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


@pytest.mark.postgres
async def test_two_processes_send_no_more_than_the_cap_and_the_rest_wait(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, fresh_postgres_url: str
) -> None:
    simulator = await start_simulator(start_service, session)
    services = [
        start_service(
            database_url=fresh_postgres_url,
            webhook_url=simulator.base_url + "/webhook",
            commercial_cap="2/1h",
            # One message a batch, a batch every 50 ms on the deployment's shared slot: the two
            # processes take the six messages in turn.
            batch_size="1",
            send_interval="0.05s",
        )
        for _ in range(2)
    ]
    for service in services:
        await service.wait_answering(session)
    api = services[0].base_url + "/api/v1/messages"
    queued_at = datetime.now(UTC)
    messages = [{"to": PHONE, "content": f"Sale {i}", "category": "commercial"} for i in range(6)]
    async with session.post(api + "/batch", json={"messages": messages}) as response:
        assert response.status == 201, await response.text()

    async def settled() -> bool:
        waiting = (await get_json(session, api, status="pending", limit="50"))["data"]
        sent = (await get_json(session, api, status="sent", limit="50"))["data"]
        return len(waiting) == 4 and all(m["waitReason"] == "cap" for m in waiting) and len(sent) == 2

    await eventually(settled, timeout_s=30, what="two messages sent and four waiting for the cap")
    # Nothing lost: two sent (which two depends on which process admitted first), four pending
    # until the cap allows them, about an hour from now.
    received = sorted(m["content"] for m in (await get_json(session, simulator.base_url + "/messages"))["data"])
    assert len(received) == 2
    sent = (await get_json(session, services[1].base_url + "/api/v1/messages", status="sent"))["data"]
    assert sorted(m["content"] for m in sent) == received
    waiting = (await get_json(session, api, status="pending"))["data"]
    assert sorted(m["content"] for m in waiting + sent) == [f"Sale {i}" for i in range(6)]
    for m in waiting:
        until = datetime.fromisoformat(m["waitingUntil"])
        assert queued_at + timedelta(minutes=59) < until < datetime.now(UTC) + timedelta(minutes=61), m
        assert m["attempts"] == 0
        events = (await get_json(session, f"{api}/{m['id']}/events"))["data"]
        assert [(e["outcome"], e["error"].split(":")[0]) for e in events] == [
            ("deferred", "2 commercial messages to this number within 1h")
        ]
    stats = await get_json(session, services[1].base_url + "/api/v1/stats")
    assert (stats["counts"]["sent"] + stats["counts"]["delivered"], stats["counts"]["pending"]) == (2, 4)
    assert stats["waiting"]["cap"] == 4

    # One process's admissions hold the other back: with the second stopped, the first sends
    # two messages to another number; then, the first stopped, the second holds four more.
    first, second = (service.base_url + "/api/v1/messages" for service in services)
    await post(session, second + "/stop")
    await post(session, first + "/batch", {"messages": [commercial(OTHER, f"First {i}") for i in range(2)]})

    async def first_sent() -> bool:
        return len((await get_json(session, first, status="sent", to=OTHER))["data"]) == 2

    await eventually(first_sent, timeout_s=30, what="two messages to the other number sent by the first process")
    await post(session, first + "/stop")
    await post(session, second + "/start")
    await post(session, second + "/batch", {"messages": [commercial(OTHER, f"Second {i}") for i in range(4)]})

    async def second_held() -> bool:
        waiting = (await get_json(session, second, status="pending", to=OTHER))["data"]
        return len(waiting) == 4 and all(m["waitReason"] == "cap" for m in waiting)

    await eventually(second_held, timeout_s=30, what="the second process holding four messages back")
    stop_gracefully(services)  # their logs written out
    held = [
        [e for e in log_events(s.log()) if e.get("outcome") == "deferred" and e.get("to") == mask_phone(OTHER)]
        for s in services
    ]
    assert (len(held[0]), len(held[1])) == (0, 4)
    received = [m["content"] for m in (await get_json(session, simulator.base_url + "/messages"))["data"]]
    assert len(received) == 4 and sorted(c for c in received if c.startswith("First")) == ["First 0", "First 1"]


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None) -> None:
    async with session.post(url, json=body) as response:
        assert response.status in (200, 201), await response.text()


def commercial(to: str, content: str) -> dict[str, str]:
    return {"to": to, "content": content, "category": "commercial"}


def test_a_bad_cap_stops_start_up_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "insider"],
        env=service_env(commercial_cap="3 a day"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "insider: error: INSIDER_COMMERCIAL_CAP: expected messages/duration such as 3/24h, 1/30s or 10/7d "
        "(or empty), got '3 a day'"
    ]
