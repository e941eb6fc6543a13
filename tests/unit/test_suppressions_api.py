"""The suppression list through HTTP, on SQLite ``:memory:`` and a fake clock: every route, every bad
input, and what a suppression does to messages queued before, after, and already sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from insider.adapters.cursor import encode_cursor
from insider.domain import MessageStatus
from insider.suppressions import MAX_REASON_LENGTH
from tests.unit import test_messages_api
from tests.unit.test_messages_api import Api, open_api

make_api = test_messages_api.make_api

PHONE = "+905301234001"
PATH = "/api/v1/suppressions"


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with open_api(default_region="TR") as opened:
        yield opened


async def delete(api: Api, path: str) -> tuple[int, Any]:
    response = await api.client.delete(path)
    return response.status, (await response.json() if response.status != 204 else await response.text())


async def test_post_adds_a_number_then_changes_its_entry(api: Api) -> None:
    status, body = await api.post(PATH, {"to": "0530 123 40 01"})
    assert status == 201, body
    assert body == {
        "to": PHONE,
        "scope": "all",
        "reason": "opt-out",
        "source": "api",
        "createdAt": api.clock.now().isoformat(),
    }
    first = body["createdAt"]
    await api.clock.advance(60)
    status, body = await api.post(PATH, {"to": "+90 530 123 4001", "scope": "commercial", "reason": "asked by phone"})
    assert status == 200, body
    assert (body["scope"], body["reason"], body["createdAt"]) == ("commercial", "asked by phone", first)
    status, body = await api.get(f"{PATH}/%2B905301234001")
    assert status == 200 and body["reason"] == "asked by phone"


@pytest.mark.parametrize("given", ["%2B905301234001", "+905301234001", "0530%20123%2040%2001", "905301234001"])
async def test_a_number_in_the_path_in_any_form(api: Api, given: str) -> None:
    await api.post(PATH, {"to": PHONE})
    status, body = await api.get(f"{PATH}/{given}")
    assert status == 200, body
    assert body["to"] == PHONE


async def test_get_and_delete_of_a_number_not_on_the_list_are_404(api: Api) -> None:
    status, body = await api.get(f"{PATH}/%2B905301234001")
    assert (status, body) == (404, {"error": "that number is not on the suppression list"})
    assert await delete(api, f"{PATH}/%2B905301234001") == (
        404,
        {"error": "that number is not on the suppression list"},
    )


async def test_delete_takes_a_number_off_the_list(api: Api) -> None:
    await api.post(PATH, {"to": PHONE})
    assert await delete(api, f"{PATH}/%2B905301234001") == (204, "")
    assert (await api.get(f"{PATH}/%2B905301234001"))[0] == 404
    assert await api.repository.get_suppression(PHONE) is None


async def test_the_list_pages_most_recent_first_and_filters_by_number(api: Api) -> None:
    for i in range(5):
        await api.post(PATH, {"to": f"+90530123400{i}"})
        await api.clock.advance(1)
    status, first = await api.get(PATH, limit="2")
    assert status == 200
    assert [s["to"] for s in first["data"]] == ["+905301234004", "+905301234003"]
    _, second = await api.get(PATH, limit="2", cursor=first["nextCursor"])
    _, third = await api.get(PATH, limit="2", cursor=second["nextCursor"])
    assert [s["to"] for s in second["data"] + third["data"]] == ["+905301234002", "+905301234001", "+905301234000"]
    assert third["nextCursor"] is None
    _, one = await api.get(PATH, to="0530 123 40 02")
    assert [s["to"] for s in one["data"]] == ["+905301234002"] and one["nextCursor"] is None
    _, none = await api.get(PATH, to="+15555550100")
    assert none == {"data": [], "nextCursor": None}
    _, everything = await api.get(PATH)
    assert len(everything["data"]) == 5 and set(everything["data"][0]) == {
        "to",
        "scope",
        "reason",
        "source",
        "createdAt",
    }


BAD_BODIES = [
    ({}, "to", "Missing data for required field."),
    ({"to": "hello"}, "to", "to is not a possible phone number: not a phone number"),
    ({"to": "+90 530"}, "to", "too short"),
    ({"to": 5305}, "to", "Not a valid string."),
    ({"to": PHONE, "scope": "marketing"}, "scope", "Must be one of: all, commercial."),
    ({"to": PHONE, "scope": None}, "scope", "Field may not be null."),
    ({"to": PHONE, "reason": "x" * (MAX_REASON_LENGTH + 1)}, "reason", f"over the limit of {MAX_REASON_LENGTH}"),
    ({"to": PHONE, "reason": "two\nlines"}, "reason", "without control characters"),
    ({"to": PHONE, "reason": "   "}, "reason", "must not be blank"),
    ({"to": PHONE, "reason": 7}, "reason", "Not a valid string."),
    ({"to": PHONE, "reason": "nul \u0000"}, "reason", "NUL"),
    ({"to": PHONE, "source": "import"}, "source", "Unknown field."),
    ({"to": PHONE, "createdAt": "2026-01-01T00:00:00Z"}, "createdAt", "Unknown field."),
]


@pytest.mark.parametrize(("body", "field", "why"), BAD_BODIES)
async def test_a_bad_body_is_422_naming_the_field(api: Api, body: dict[str, Any], field: str, why: str) -> None:
    status, answer = await api.post(PATH, body)
    assert status == 422, answer
    assert why in " ".join(answer["fields"][field])
    assert await api.repository.count_suppressions() == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status", "error"),
    [
        ("{not json", "application/json", 400, "the body is not valid JSON"),
        ('["+905301234001"]', "application/json", 400, "the body must be a JSON object"),
        ("to=%2B905301234001", "application/x-www-form-urlencoded", 415, "the body must be application/json"),
        ('{"to": "+905301234001"}', "text/plain", 415, "the body must be application/json"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_refused(
    api: Api, data: str, content_type: str, status: int, error: str
) -> None:
    response = await api.client.post(PATH, data=data, headers={"Content-Type": content_type})
    assert response.status == status
    assert (await response.json())["error"] == error


async def test_a_body_over_64_kib_is_413(api: Api) -> None:
    response = await api.client.post(PATH, json={"to": PHONE, "reason": "x" * 70_000})
    assert response.status == 413


@pytest.mark.parametrize(
    ("params", "field", "status"),
    [
        ({"limit": "0"}, "limit", 422),
        ({"limit": "501"}, "limit", 422),
        ({"limit": "many"}, "limit", 422),
        ({"to": "hello"}, "to", 422),
        ({"to": ""}, "to", 422),
        ({"colour": "red"}, "colour", 422),
        ({"cursor": "not-a-cursor"}, "cursor", 400),
        ({"cursor": encode_cursor(MessageStatus.SENT, datetime(2026, 1, 1, tzinfo=UTC), 3)}, "cursor", 400),
    ],
)
async def test_a_bad_query_names_the_field(api: Api, params: dict[str, str], field: str, status: int) -> None:
    got, body = await api.get(PATH, **params)
    assert got == status, body
    assert field in body["fields"]


@pytest.mark.parametrize("method", ["get", "delete"])
async def test_a_path_that_is_not_a_number_is_422_naming_to(api: Api, method: str) -> None:
    response = await getattr(api.client, method)(f"{PATH}/hello")
    assert response.status == 422
    assert "not a possible phone number" in (await response.json())["fields"]["to"][0]


async def test_a_message_to_a_suppressed_number_is_held_back_by_category(api: Api) -> None:
    sent = (await api.post("/api/v1/messages", {"to": PHONE, "content": "sent before", "category": "commercial"}))[1]
    await api.run_once()
    queued = (
        await api.post(
            "/api/v1/messages",
            {"to": PHONE, "content": "tomorrow's sale", "category": "commercial", "sendAt": api.iso(3600)},
        )
    )[1]
    assert (await api.post(PATH, {"to": PHONE, "scope": "commercial", "reason": "no ads"}))[0] == 201
    status, after = await api.post("/api/v1/messages", {"to": PHONE, "content": "flash", "category": "commercial"})
    assert status == 201
    assert (after["status"], after["suppressionReason"]) == ("suppressed", "no ads")
    _, code = await api.post("/api/v1/messages", {"to": PHONE, "content": "code 1234"})
    assert code["status"] == "pending"  # transactional: the scope is commercial
    await api.clock.advance(3600)
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["sent before", "code 1234"]
    _, ended = await api.get(f"/api/v1/messages/{queued['id']}")
    assert (ended["status"], ended["suppressionReason"]) == ("suppressed", "no ads")
    _, history = await api.get(f"/api/v1/messages/{queued['id']}/events")
    assert [(e["outcome"], e["error"]) for e in history["data"]] == [("suppressed", "suppressed: no ads")]
    _, still = await api.get(f"/api/v1/messages/{sent['id']}")
    assert (still["status"], still["suppressionReason"]) == ("sent", None)
    _, listed = await api.get("/api/v1/messages", status="suppressed")
    assert sorted(m["content"] for m in listed["data"]) == ["flash", "tomorrow's sale"]
    await api.clock.advance(api.container.counts().ttl_s)
    _, stats = await api.get("/api/v1/stats")
    assert stats["counts"]["suppressed"] == 2
    assert stats["categories"]["commercial"]["counts"]["suppressed"] == 2


async def test_taken_off_the_list_a_number_gets_messages_again(api: Api) -> None:
    await api.post(PATH, {"to": PHONE})
    held = (await api.post("/api/v1/messages", {"to": PHONE, "content": "held"}))[1]
    assert held["status"] == "suppressed"
    await delete(api, f"{PATH}/%2B905301234001")
    again = (await api.post("/api/v1/messages", {"to": PHONE, "content": "again"}))[1]
    assert again["status"] == "pending"
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["again"]
    assert (await api.get(f"/api/v1/messages/{held['id']}"))[1]["status"] == "suppressed"  # stays ended


async def test_the_metrics_gauge_counts_the_numbers_on_the_list(api: Api) -> None:
    for i in range(3):
        await api.post(PATH, {"to": f"+90530123400{i}"})
    response = await api.client.get("/metrics")
    text = await response.text()
    assert "insider_suppressions 3.0" in text.splitlines()
    await delete(api, f"{PATH}/%2B905301234000")
    await api.clock.advance(api.container.counts().ttl_s)
    text = await (await api.client.get("/metrics")).text()
    assert "insider_suppressions 2.0" in text.splitlines()


async def test_the_routes_need_the_api_token(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(api_token="secret")
    for method, path in [("get", PATH), ("post", PATH), ("get", f"{PATH}/%2B905301234001"), ("delete", f"{PATH}/1")]:
        response = await getattr(api.client, method)(path, json={"to": PHONE} if method == "post" else None)
        assert response.status == 401, (method, path)
    response = await api.client.post(PATH, json={"to": PHONE}, headers={"Authorization": "Bearer secret"})
    assert response.status == 201


async def test_the_spec_documents_every_route_and_answer(api: Api) -> None:
    spec = api.client.app["swagger_dict"]
    listing, one = spec["paths"][PATH], spec["paths"][f"{PATH}/{{to}}"]
    assert set(listing) == {"get", "post"} and set(one) == {"get", "delete"}
    assert {"200", "400", "422", "503"} <= set(listing["get"]["responses"])
    assert {"200", "201", "400", "413", "415", "422", "503"} <= set(listing["post"]["responses"])
    assert {"200", "404", "422", "503"} <= set(one["get"]["responses"])
    assert {"204", "404", "422", "503"} <= set(one["delete"]["responses"])
    assert set(spec["definitions"]["Suppression"]["properties"]) == {"to", "scope", "reason", "source", "createdAt"}
