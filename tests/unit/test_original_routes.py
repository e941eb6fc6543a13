"""Issue 12, point 3: the original Go service's routes, answered as it answered them."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from insider.domain import MessageStatus
from insider.original import go_time, sent_item
from tests.unit.web_support import Api, open_api

GO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


@pytest.mark.parametrize("path", ["/messages", "/messages/"])
async def test_nothing_sent_is_success_with_null_data(api: Api, path: str) -> None:
    api.repository.add("+905301234001", "waiting")
    response = await api.client.get(path)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"success": True, "data": None}


async def test_the_list_is_every_sent_message_newest_first_from_the_database(api: Api) -> None:
    for n in range(5):
        api.repository.add(f"+90530123400{n}", f"m{n}")
    for _ in range(3):  # batches of 2: five messages go in three batches, at three times
        await api.container.supervisor().run_once()
        await api.clock.advance(1.5)
    api.repository.add("+905301234009", "given up", status=MessageStatus.FAILED)

    body = await (await api.client.get("/messages")).json()

    assert body["success"] is True
    sent = sorted(
        (m for m in api.repository.rows if m.status is MessageStatus.SENT),
        key=lambda m: (m.sent_at, m.id),
        reverse=True,
    )
    assert body["data"] == [{"messageId": m.message_id, "sentAt": go_time(m.sent_at)} for m in sent if m.sent_at]
    assert len(body["data"]) == 5
    assert all(GO_TIME.match(item["sentAt"]) and item["messageId"] for item in body["data"])
    assert [list(item) for item in body["data"]] == [["messageId", "sentAt"]] * 5


def test_times_are_written_as_go_writes_them() -> None:
    assert go_time(datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)) == "2026-03-02T12:00:00Z"
    assert go_time(datetime(2026, 3, 2, 12, 0, 0, 123400, tzinfo=UTC)) == "2026-03-02T12:00:00.1234Z"
    assert sent_item(None, datetime(2026, 3, 2, tzinfo=UTC)) == {"messageId": "", "sentAt": "2026-03-02T00:00:00Z"}


@pytest.mark.parametrize("slash", ["", "/"])
async def test_start_and_stop_answer_as_the_original_did(api: Api, slash: str) -> None:
    start, stop = f"/messages/start{slash}", f"/messages/stop{slash}"
    response = await api.client.get(stop)
    assert (response.status, await response.json()) == (500, {"success": False, "error": "auto sending is not running"})

    response = await api.client.get(start)
    assert (response.status, await response.json()) == (200, {"success": True, "data": "OK"})
    assert api.container.supervisor().running

    response = await api.client.get(start)
    assert (response.status, await response.json()) == (
        500,
        {"success": False, "error": "auto sending is already running"},
    )

    response = await api.client.get(stop)
    assert (response.status, await response.json()) == (200, {"success": True, "data": "OK"})
    assert not api.container.supervisor().running


async def test_two_starts_at_once_one_starts_the_other_is_told_it_runs(api: Api) -> None:
    responses = await asyncio.gather(*(api.client.get("/messages/start") for _ in range(2)))
    assert sorted(r.status for r in responses) == [200, 500]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_twenty_concurrent_starts_and_stops_on_either_route_family_change_the_state_once(
    api: Api, method: str
) -> None:
    # The supervisor answers each request with the transition it caused: no check-then-act in the web layer.
    for path, word in (("start", "started"), ("stop", "stopped")):
        mine = await asyncio.gather(*(api.client.request(method, f"/api/v1/messages/{path}") for _ in range(20)))
        results = [(await r.json())["result"] for r in mine]
        assert results.count(word) == 1 and len(results) == 20
        originals = await asyncio.gather(*(api.client.get(f"/messages/{path}") for _ in range(20)))
        assert [r.status for r in originals] == [500] * 20  # the state already changed above: nothing to do
    both = [api.client.request(method, "/api/v1/messages/start") for _ in range(10)]
    both += [api.client.get("/messages/start") for _ in range(10)]
    responses = await asyncio.gather(*both)
    mine_started = [(await r.json())["result"] == "started" for r in responses[:10]]
    originals_ok = [r.status == 200 for r in responses[10:]]
    assert sum(mine_started) + sum(originals_ok) == 1  # one started it, across both families


async def test_insiders_own_api_v1_keeps_its_shapes(api: Api) -> None:
    for result in ("started", "already running"):
        response = await api.client.get("/api/v1/messages/start")
        body = await response.json()
        assert (response.status, body["running"], body["result"]) == (200, True, result)
    body = await (await api.client.get("/api/v1/messages")).json()
    assert body == {"data": [], "nextCursor": None}


async def test_the_database_down_is_a_500_in_the_originals_envelope(api: Api) -> None:
    api.repository.available = False
    response = await api.client.get("/messages")
    assert response.status == 500
    body = await response.json()
    assert body["success"] is False and "database" in body["error"]


@pytest.mark.parametrize("path", ["/messages", "/messages/", "/messages/start", "/messages/stop/"])
async def test_with_a_token_the_original_routes_need_it_too(path: str) -> None:
    async with open_api(api_token="s3cret") as api:
        response = await api.client.get(path)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body: dict[str, Any] = await response.json()
        assert body["success"] is False and "Authorization: Bearer" in body["error"]

        response = await api.client.get(path, headers={"Authorization": "Bearer wrong"})
        assert response.status == 401

        response = await api.client.get(path, headers={"Authorization": "Bearer s3cret"})
        assert response.status in (200, 500)
        assert "success" in await response.json()
        assert not api.container.supervisor().running or path.startswith("/messages/start")


async def test_swagger_is_at_the_originals_addresses_and_describes_its_routes(api: Api) -> None:
    for path in ("/swagger", "/swagger/"):
        response = await api.client.get(path)
        assert response.status == 200, path
        assert response.content_type == "text/html"
        assert "/api/docs/swagger.json" in await response.text()
    response = await api.client.get("/swagger/doc.json")
    assert response.status == 200
    spec = await response.json()
    assert spec == await (await api.client.get("/api/docs/swagger.json")).json()
    for path in ("/messages", "/messages/start", "/messages/stop"):
        assert set(spec["paths"][path]["get"]["responses"]) >= {"200", "500"}, path
    assert "/api/v1/messages/{id}" in spec["paths"] and "/api/v1/messages/{uuid}" in spec["paths"]
