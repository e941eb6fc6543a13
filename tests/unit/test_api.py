"""The HTTP API over SQLite :memory: and the fakes: shapes, status codes and errors."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from insider.domain import MessageStatus
from insider.web.schemas import MessageSchema, PageSchema, SenderSchema
from tests.unit.web_support import Api


async def test_enqueue_then_listed_once_sent(api: Api) -> None:
    response = await api.client.post("/api/v1/messages", json={"to": "+905301234001", "content": "Merhaba dünya"})
    assert response.status == 201
    body = await response.json()
    assert MessageSchema().validate(body) == {}
    assert body["status"] == "pending" and body["recipientPhone"] == "+905301234001"

    listed = await (await api.client.get("/api/v1/messages")).json()
    assert listed == {"data": [], "nextCursor": None}

    report = await api.container.supervisor().run_once()
    assert report.sent == 1
    listed = await (await api.client.get("/api/v1/messages")).json()
    assert PageSchema().validate(listed) == {}
    [item] = listed["data"]
    assert item["id"] == body["id"] and item["status"] == "sent" and item["messageId"]
    assert item["content"] == "Merhaba dünya"


async def test_pagination_is_keyset_and_complete(api: Api) -> None:
    for i in range(7):
        api.repository.add(f"+9053012340{i:02d}", f"m{i}")
    pending_ids: list[int] = []
    cursor = None
    while True:
        params = {"status": "pending", "limit": "3"} | ({"cursor": cursor} if cursor else {})
        page = await (await api.client.get("/api/v1/messages", params=params)).json()
        pending_ids += [m["id"] for m in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pending_ids == [7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "status=lost", "colour=red"])
async def test_bad_list_query_is_422_naming_the_field(api: Api, query: str) -> None:
    response = await api.client.get(f"/api/v1/messages?{query}")
    assert response.status == 422
    body = await response.json()
    assert query.split("=")[0] in body["fields"]


async def test_forged_cursor_is_400(api: Api) -> None:
    response = await api.client.get("/api/v1/messages?cursor=bm90LWEtY3Vyc29y")
    assert response.status == 400
    assert "cursor" in (await response.json())["fields"]


@pytest.mark.parametrize(
    "raw",
    [
        '["sent","2020-01-01T00:00:00+00:00",true]',
        '["sent","2020-01-01T00:00:00+00:00",9223372036854775808]',
        '["sent","0001-01-01T00:00:00+14:00",1]',
        '["sent","9999-12-31T23:59:59-14:00",1]',
        '["sent","2020-01-01T00:00:00+00:00",1,1]',
    ],
)
async def test_forged_cursor_structure_is_400_json(api: Api, raw: str) -> None:
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    response = await api.client.get("/api/v1/messages", params={"cursor": cursor})
    assert response.status == 400
    assert response.content_type == "application/json"
    assert (await response.json())["fields"] == {"cursor": ["cursor is not one this service handed out"]}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/messages/9223372036854775808", 404),
        ("/api/v1/messages/" + "9" * 5000, 404),
        ("/api/v1/messages/0/retry", 404),
        ("/api/v1/messages?limit=99999999999999999999999", 422),
        ("/api/v1/messages?limit=" + "9" * 5000, 422),
        ("/api/v1/messages?limit=-0", 422),
    ],
)
async def test_out_of_range_ids_and_limits_are_json_4xx(api: Api, path: str, status: int) -> None:
    method = "POST" if path.endswith("/retry") else "GET"
    response = await api.client.request(method, path)
    assert response.status == status
    assert "error" in await response.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "905301234001", "content": "x"}, "to"),
        ({"to": "+90", "content": "x"}, "to"),
        ({"to": "+905301234001", "content": "ç" * 161}, "content"),
        ({"to": "+905301234001", "content": ""}, "content"),
        ({"to": "+905301234001"}, "content"),
        ({"content": "x"}, "to"),
        ({"to": 905301234001, "content": "x"}, "to"),
        ({"to": "+905301234001", "content": "x", "extra": 1}, "extra"),
    ],
)
async def test_invalid_enqueue_is_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    response = await api.client.post("/api/v1/messages", json=body)
    assert response.status == 422
    assert field in (await response.json())["fields"]
    assert api.repository.rows == []


async def test_turkish_text_at_the_limit_is_accepted(api: Api) -> None:
    response = await api.client.post("/api/v1/messages", json={"to": "+905301234001", "content": "ğüşıöç" * 26 + "ab"})
    assert response.status == 201


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400),
        (b"to=+905301234001", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b"x" * (65 * 1024), {"Content-Type": "application/json"}, 413),
    ],
)
async def test_malformed_bodies_get_json_4xx(api: Api, data: bytes, headers: dict[str, str], status: int) -> None:
    response = await api.client.post("/api/v1/messages", data=data, headers=headers)
    assert response.status == status
    assert response.content_type == "application/json"
    assert "error" in await response.json()


async def test_unknown_route_and_method_are_json(api: Api) -> None:
    missing = await api.client.get("/api/v1/nothing")
    assert missing.status == 404 and (await missing.json())["error"]
    wrong = await api.client.delete("/api/v1/messages")
    assert wrong.status == 405 and (await wrong.json())["error"]


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_start_and_stop_are_idempotent(api: Api, method: str) -> None:
    for result, before in (("started", "idle"), ("already running", "running")):
        response = await api.client.request(method, "/api/v1/messages/start")
        answer = {"running": True, "result": result, "previousState": before, "state": "running"}
        assert (response.status, await response.json()) == (200, answer)
    status = await (await api.client.get("/api/v1/sender")).json()
    assert SenderSchema().validate(status) == {}
    assert status["running"] is True and status["batchSize"] == 2 and status["intervalSeconds"] == 120
    for result, before in (("stopped", "running"), ("already stopped", "idle")):
        response = await api.client.request(method, "/api/v1/messages/stop")
        answer = {"running": False, "result": result, "previousState": before, "state": "idle"}
        assert (response.status, await response.json()) == (200, answer)
    status = await (await api.client.get("/api/v1/sender")).json()
    assert status["running"] is False and status["nextTickAt"] is None


async def test_get_one_and_retry(api: Api) -> None:
    failed = api.repository.add("+905301234001", "x", status=MessageStatus.FAILED)
    pending = api.repository.add("+905301234002", "y")
    got = await api.client.get(f"/api/v1/messages/{failed.id}")
    assert got.status == 200 and (await got.json())["status"] == "failed"
    assert (await api.client.get("/api/v1/messages/999")).status == 404
    assert (await api.client.get("/api/v1/messages/abc")).status == 404
    conflict = await api.client.post(f"/api/v1/messages/{pending.id}/retry")
    assert conflict.status == 409 and "pending" in (await conflict.json())["error"]
    retried = await api.client.post(f"/api/v1/messages/{failed.id}/retry")
    assert retried.status == 200 and (await retried.json())["status"] == "pending"
    assert (await api.client.post("/api/v1/messages/999/retry")).status == 404


async def test_database_outage_is_503_json(api: Api) -> None:
    api.repository.available = False
    response = await api.client.get("/api/v1/messages")
    assert response.status == 503
    assert "database" in (await response.json())["error"]
    sender = await api.client.get("/api/v1/sender")
    assert sender.status == 200


async def test_request_id_is_echoed_or_made(api: Api) -> None:
    given = await api.client.get("/api/v1/sender", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    made = await api.client.get("/api/v1/sender")
    assert len(made.headers["X-Request-Id"]) == 32


async def test_swagger_documents_every_endpoint_with_errors(api: Api) -> None:
    spec = await (await api.client.get("/api/docs/swagger.json")).json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/api/v1/messages",
        "/api/v1/messages/{id}",
        "/api/v1/messages/{id}/retry",
        "/api/v1/messages/start",
        "/api/v1/messages/stop",
        "/api/v1/sender",
    }
    assert {"200", "422", "503"} <= set(paths["/api/v1/messages"]["get"]["responses"])
    assert {"201", "400", "413", "415", "422", "503"} <= set(paths["/api/v1/messages"]["post"]["responses"])
    assert set(paths["/api/v1/messages/start"]) == {"get", "post"}
    ui = await api.client.get("/swagger")
    assert ui.status == 200 and "swagger" in (await ui.text()).lower()
