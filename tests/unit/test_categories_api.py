"""Categories through HTTP, on SQLite ``:memory:`` and a fake clock: taken by a message and a
batch, shown on every item, a list filter with its cursors, counted in the stats, in Swagger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from insider.web.schemas import MessageSchema, StatsSchema
from tests.unit.test_messages_api import PHONE, Api, open_api

OTHER = "+15555550100"


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with open_api() as opened:
        yield opened


async def test_a_message_takes_a_category_and_every_item_shows_it(api: Api) -> None:
    status, commercial = await api.post("/api/v1/messages", {"to": PHONE, "content": "Sale", "category": "commercial"})
    assert status == 201, commercial
    assert commercial["category"] == "commercial"
    assert MessageSchema().validate(commercial) == {}
    _, plain = await api.post("/api/v1/messages", {"to": PHONE, "content": "Your code is 1234"})
    assert plain["category"] == "transactional"  # the default
    _, again = await api.get(f"/api/v1/messages/{commercial['id']}")
    assert again["category"] == "commercial"
    _, page = await api.get("/api/v1/messages", status="pending")
    assert [m["category"] for m in page["data"]] == ["transactional", "commercial"]
    await api.run_once()
    _, sent = await api.get("/api/v1/messages")
    assert {m["id"]: m["category"] for m in sent["data"]} == {
        commercial["id"]: "commercial",
        plain["id"]: "transactional",
    }


@pytest.mark.parametrize("value", ["spam", "Commercial", "", 1, None, ["commercial"]])
async def test_a_bad_category_is_a_422_naming_the_field(api: Api, value: Any) -> None:
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "category": value})
    assert status == 422, body
    assert set(body["fields"]) == {"category"}
    _, stats = await api.get("/api/v1/stats")
    assert stats["total"] == 0


async def test_a_batch_takes_categories_and_names_a_bad_one(api: Api) -> None:
    items = [
        {"to": PHONE, "content": "a", "category": "commercial"},
        {"to": PHONE, "content": "b"},
        {"to": PHONE, "content": "c", "category": "transactional"},
    ]
    status, body = await api.post("/api/v1/messages/batch", {"messages": items})
    assert status == 201, body
    assert [m["category"] for m in body["data"]] == ["commercial", "transactional", "transactional"]
    status, body = await api.post(
        "/api/v1/messages/batch", {"messages": [*items, {"to": PHONE, "content": "d", "category": "promo"}]}
    )
    assert status == 422
    assert set(body["fields"]) == {"messages.3.category"}


async def test_an_idempotency_key_with_another_category_is_409(api: Api) -> None:
    body = {"to": PHONE, "content": "once", "category": "commercial"}
    status, first = await api.post("/api/v1/messages", body, **{"Idempotency-Key": "cat-1"})
    assert status == 201
    status, again = await api.post("/api/v1/messages", body, **{"Idempotency-Key": "cat-1"})
    assert (status, again["id"]) == (201, first["id"])
    status, other = await api.post(
        "/api/v1/messages", body | {"category": "transactional"}, **{"Idempotency-Key": "cat-1"}
    )
    assert status == 409 and "Idempotency-Key" in other["fields"]


async def _walk(api: Api, **params: str) -> list[int]:
    """Every id of a listing, page after page through its cursors."""
    ids: list[int] = []
    cursor = None
    while True:
        status, page = await api.get("/api/v1/messages", limit="2", **params, **({"cursor": cursor} if cursor else {}))
        assert status == 200, page
        ids += [m["id"] for m in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            return ids


async def test_the_list_filters_by_category_across_pages(api: Api) -> None:
    made: dict[str, list[int]] = {"commercial": [], "transactional": []}
    for i in range(9):
        category = "commercial" if i % 3 else "transactional"
        to = OTHER if i % 2 else PHONE
        _, body = await api.post("/api/v1/messages", {"to": to, "content": f"m{i}", "category": category})
        made[category].append(body["id"])
        await api.clock.advance(1)
    newest_first = {c: ids[::-1] for c, ids in made.items()}
    for category in made:
        assert await _walk(api, status="pending", category=category) == newest_first[category]
    _, one = await api.get("/api/v1/messages", status="pending", category="commercial", to=OTHER)
    assert [m["content"] for m in one["data"]] == ["m7", "m5", "m1"]
    await api.run_once()  # all sent: the default listing (what the provider accepted) and `sent`
    for category in made:
        assert set(await _walk(api, category=category)) == set(made[category])
        assert set(await _walk(api, status="sent", category=category)) == set(made[category])
    assert len(await _walk(api)) == 9


async def test_a_bad_category_filter_is_a_422(api: Api) -> None:
    status, body = await api.get("/api/v1/messages", category="promo")
    assert status == 422 and "category" in body["fields"]


async def test_the_stats_count_each_category_per_status(api: Api) -> None:
    for category in ("commercial", "commercial", "transactional"):
        await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "category": category})
    _, cancelled = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "category": "commercial"})
    await api.post(f"/api/v1/messages/{cancelled['id']}/cancel", {})
    await api.run_once()
    await api.clock.advance(5)  # past the counts' cache
    _, stats = await api.get("/api/v1/stats")
    assert StatsSchema().validate(stats) == {}
    categories = stats["categories"]
    assert set(categories) == {"transactional", "commercial"}
    assert categories["commercial"]["total"] == 3
    assert (categories["commercial"]["counts"]["sent"], categories["commercial"]["counts"]["cancelled"]) == (2, 1)
    assert categories["transactional"] == {
        "total": 1,
        "counts": {s: 1 if s == "sent" else 0 for s in stats["counts"]},
    }
    assert categories["commercial"]["total"] + categories["transactional"]["total"] == stats["total"]


async def test_swagger_documents_the_category(api: Api) -> None:
    spec = await (await api.client.get("/api/docs/swagger.json")).json()
    definitions = spec["definitions"]
    for name in ("Enqueue", "Message"):
        assert definitions[name]["properties"]["category"]["enum"] == ["transactional", "commercial"], name
    assert "category" in definitions["Message"]["required"]
    listing = spec["paths"]["/api/v1/messages"]["get"]["parameters"]
    assert any(p["name"] == "category" and p["in"] == "query" for p in listing)
    assert "categories" in definitions["Stats"]["properties"]
