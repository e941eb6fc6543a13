"""Two services in one process: two containers, two apps, each serving its own supervisor and repository.

Nothing is wired process-wide: each app's handlers reach their own container's objects, so closing
one app leaves the other answering with its own data.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from tests.unit.web_support import Api, open_api


async def post(api: Api, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await api.client.post(path, **kwargs)
    return response.status, await response.json()


async def get(api: Api, path: str) -> tuple[int, Any]:
    response = await api.client.get(path)
    return response.status, await response.json()


async def test_two_apps_in_one_process_each_serve_their_own_objects_and_outlive_each_other() -> None:
    async with AsyncExitStack() as both:
        first = await both.enter_async_context(open_api())
        async with open_api() as second:
            status, a = await post(first, "/api/v1/messages", json={"to": "+905301234001", "content": "for the first"})
            assert status == 201
            status, b = await post(
                second, "/api/v1/messages", json={"to": "+905301234002", "content": "for the second"}
            )
            assert status == 201
            assert a["id"] == b["id"] == 1  # two databases, each with its own row 1

            assert (await get(first, "/api/v1/messages/1"))[1]["content"] == "for the first"
            assert (await get(second, "/api/v1/messages/1"))[1]["content"] == "for the second"
            assert [m.content for m in first.repository.rows] == ["for the first"]
            assert [m.content for m in second.repository.rows] == ["for the second"]

            # Starting the first starts its own supervisor only.
            status, started = await post(first, "/api/v1/messages/start")
            assert (status, started["running"], started["result"]) == (200, True, "started")
            assert first.container.supervisor().running
            assert not second.container.supervisor().running
            assert (await get(second, "/api/v1/sender"))[1]["running"] is False
            assert (await get(second, "/api/v1/stats"))[1]["sender"]["running"] is False
            status, stopped = await post(first, "/api/v1/messages/stop")
            assert (status, stopped["running"], stopped["result"]) == (200, False, "stopped")
            # The first supervisor's batch sent the first app's message, from the first database only.
            await first.clock.settle()
            assert [r.content for r in first.sms.requests] == ["for the first"]
            assert second.sms.requests == []
            assert (await get(second, "/api/v1/messages/1"))[1]["status"] == "pending"

        # The second app is closed (its lifespan ran to the end); the first still answers from its own.
        status, page = await get(first, "/api/v1/messages")
        assert status == 200, page
        assert [m["content"] for m in page["data"]] == ["for the first"]
        assert (await get(first, "/api/v1/messages/1"))[1]["content"] == "for the first"
        status, started = await post(first, "/api/v1/messages/start")
        assert (status, started["running"], started["result"]) == (200, True, "started")
        assert first.container.supervisor().running
        assert (await get(first, "/api/v1/stats"))[1]["sender"]["running"] is True
        assert (await get(first, "/readyz"))[0] == 200
        metrics = await (await first.client.get("/metrics")).text()
        assert "insider_sender_running 1.0" in metrics
        status, stopped = await post(first, "/api/v1/messages/stop")
        assert (status, stopped["running"], stopped["result"]) == (200, False, "stopped")
