"""The service as a subprocess on PostgreSQL, sending to a real HTTP provider: a message scheduled
3 s ahead goes after and not before, an urgent one overtakes a backlog, a cancelled one never goes,
the same Idempotency-Key twice queues once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.acceptance.conftest import Service
from tests.conftest import Provider, eventually

pytestmark = [pytest.mark.postgres]


async def test_schedule_priority_cancel_and_idempotency(
    fresh_postgres_url: str, provider: Provider, start_service: Any
) -> None:
    service: Service = start_service(
        database_url=fresh_postgres_url,
        webhook_url=provider.url,
        batch_size="5",
        send_interval="0.5s",
        send_concurrency="1",
        autostart="false",
        default_region="TR",
    )
    api = service.base_url + "/api/v1/messages"
    async with aiohttp.ClientSession() as session:
        await service.wait_answering(session)

        async def post(path: str, body: Any, **headers: str) -> tuple[int, Any]:
            async with session.post(api + path, json=body, headers=headers) as response:
                return response.status, await response.json()

        backlog = {"messages": [{"to": "0530 123 40 01", "content": f"kampanya {i}", "priority": 1} for i in range(20)]}
        status, _ = await post("/batch", backlog, **{"Idempotency-Key": "campaign-1"})
        assert status == 201
        status, again = await post("/batch", backlog, **{"Idempotency-Key": "campaign-1"})
        assert status == 201 and len(again["data"]) == 20
        status, otp = await post("", {"to": "+905301234002", "content": "OTP 4711", "priority": 9})
        assert status == 201
        _, doomed = await post("", {"to": "+905301234003", "content": "never", "priority": 9})
        status, cancelled = await post(f"/{doomed['id']}/cancel", None)
        assert (status, cancelled["status"]) == (200, "cancelled")
        send_at = datetime.now(UTC) + timedelta(seconds=3)
        _, later = await post("", {"to": "+905301234004", "content": "later", "sendAt": send_at.isoformat()})

        started = time.monotonic()
        async with session.post(api + "/start") as response:
            assert response.status == 200
        await eventually(lambda: len(provider.received) >= 1, timeout_s=10, what="the first send")
        assert provider.received[0]["body"] == {"to": "+905301234002", "content": "OTP 4711"}

        await eventually(
            lambda: any(r["body"]["content"] == "later" for r in provider.received), timeout_s=15, what="'later'"
        )
        sent_later_at = next(i for i, r in enumerate(provider.received) if r["body"]["content"] == "later")
        assert time.monotonic() - started >= 2.5  # not before its time (started < 0.5 s before sendAt - 3 s)
        item: dict[str, Any] = {}

        async def recorded() -> bool:
            async with session.get(f"{api}/{later['id']}") as response:
                item.update(await response.json())
            return bool(item["status"] == "sent")

        await eventually(recorded, timeout_s=10, what="'later' recorded as sent")
        assert datetime.fromisoformat(item["sentAt"]) >= send_at
        assert sent_later_at >= 1
        await eventually(lambda: len(provider.received) == 22, timeout_s=20, what="every message but the cancelled")
        contents = [r["body"]["content"] for r in provider.received]
        assert "never" not in contents and contents.count("kampanya 0") == 1
        assert {r["body"]["to"] for r in provider.received if r["body"]["content"].startswith("kampanya")} == {
            "+905301234001"
        }
        assert otp["priority"] == 9
