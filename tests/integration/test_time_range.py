"""Times at the edges of the calendar on every route that takes one, on SQLite and on PostgreSQL.

Every time the API accepts is one the database stores and gives back: a time outside
``domain.TIME_RANGE`` (in UTC) is a JSON 422 naming its field, never a 500 (a provider retries
a 500 for ever), and the first and last times of the range round-trip through each database,
PostgreSQL in a server time zone 14 hours east of UTC included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from dependency_injector import providers
from psycopg import sql

from insider.adapters.memory import InMemorySmsClient
from insider.config import load_settings
from insider.container import Container
from insider.domain import TIME_RANGE
from insider.web.app import create_app
from tests.conftest import eventually

TOKEN = "receipts-secret"
PHONE = "+905301234001"
OUT_OF_RANGE = [
    "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
    "0999-12-31T23:59:59Z",
    "1000-01-01T00:00:00+00:01",
]
EARLIEST = "1000-01-01T00:00:00+00:00"
LATEST = "9999-12-31T23:59:59.999999+00:00"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'insider.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    with psycopg.connect(url, autocommit=True) as conn:  # rendered there, the last time would be in year 10000
        name = conn.info.dbname
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'Pacific/Kiritimati'").format(sql.Identifier(name)))
    return url


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    env = {
        "INSIDER_DATABASE_URL": database_url,
        "INSIDER_REDIS_URL": "",
        "INSIDER_WEBHOOK_URL": "http://127.0.0.1:9/unused",
        "INSIDER_AUTOSTART": "false",
        "INSIDER_DLR_TOKEN": TOKEN,
    }
    container = Container(settings=load_settings(env, env_file=None))
    container.sms_client.override(providers.Object(InMemorySmsClient()))
    test_client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


async def post(client: TestClient[Any, Any], path: str, body: Any) -> tuple[int, Any]:
    response = await client.post(path, json=body, headers={"x-ins-auth-key": TOKEN})
    return response.status, await response.json()


@pytest.mark.parametrize("when", OUT_OF_RANGE)
@pytest.mark.parametrize("field", ["sendAt", "validUntil"])
async def test_a_time_outside_the_range_is_a_422_naming_the_field_on_both_message_routes(
    client: TestClient[Any, Any], field: str, when: str
) -> None:
    one = {"to": PHONE, "content": "edge", field: when}
    status, body = await post(client, "/api/v1/messages", one)
    assert (status, body["fields"]) == (422, {field: [f"must be {TIME_RANGE}"]})

    status, body = await post(client, "/api/v1/messages/batch", {"messages": [{"to": PHONE, "content": "ok"}, one]})
    assert (status, body["fields"]) == (422, {f"messages.1.{field}": [f"must be {TIME_RANGE}"]})

    response = await client.get("/api/v1/messages", params={"status": "pending"})
    assert (await response.json())["data"] == []  # nothing stored


@pytest.mark.parametrize("when", OUT_OF_RANGE)
async def test_a_receipt_time_outside_the_range_is_a_422_naming_the_item(
    client: TestClient[Any, Any], when: str
) -> None:
    status, body = await post(
        client, "/api/v1/delivery-reports", {"messageId": "p-1", "status": "DELIVRD", "doneAt": when}
    )
    assert (status, body["fields"]) == (422, {"doneAt": [f"must be {TIME_RANGE}"]})

    receipts = [{"messageId": "p-1", "status": "DELIVRD"}, {"messageId": "p-2", "status": "DELIVRD", "doneAt": when}]
    status, body = await post(client, "/api/v1/delivery-reports", receipts)
    assert (status, body["fields"]) == (422, {"1.doneAt": [f"must be {TIME_RANGE}"]})


async def test_the_first_and_last_times_of_the_range_are_stored_and_read_back(client: TestClient[Any, Any]) -> None:
    # The same instants written with offsets at the ends: +14:00 on the first, -14:00 on the last.
    status, early = await post(
        client, "/api/v1/messages", {"to": PHONE, "content": "early", "sendAt": "1000-01-01T14:00:00+14:00"}
    )
    assert status == 201, early
    status, batch = await post(
        client,
        "/api/v1/messages/batch",
        {"messages": [{"to": PHONE, "content": "late", "validUntil": "9999-12-31T09:59:59.999999-14:00"}]},
    )
    assert status == 201, batch
    [late] = batch["data"]

    got_early = await (await client.get(f"/api/v1/messages/{early['id']}")).json()
    got_late = await (await client.get(f"/api/v1/messages/{late['id']}")).json()
    assert (early["sendAt"], got_early["sendAt"]) == (EARLIEST, EARLIEST)
    assert (late["validUntil"], got_late["validUntil"]) == (LATEST, LATEST)

    # Both sent (the in-memory provider), then a receipt at each end of the range.
    ids: dict[int, str] = {}

    async def sent() -> bool:
        for message in (early, late):
            got = await (await client.get(f"/api/v1/messages/{message['id']}")).json()
            ids[message["id"]] = got["messageId"]
        return all(ids.values())

    assert (await client.post("/api/v1/messages/start")).status == 200
    await eventually(sent, what="both messages sent")
    await client.post("/api/v1/messages/stop")
    receipts = [
        {"messageId": ids[early["id"]], "status": "DELIVRD", "doneAt": "1000-01-01T00:00:00Z"},
        {"messageId": ids[late["id"]], "status": "DELIVRD", "doneAt": "9999-12-31T23:59:59.999999"},  # no offset: UTC
    ]
    status, answer = await post(client, "/api/v1/delivery-reports", receipts)
    assert status == 200 and [r["result"] for r in answer["results"]] == ["applied", "applied"], answer

    for message, done_at in ((early, EARLIEST), (late, LATEST)):
        got = await (await client.get(f"/api/v1/messages/{message['id']}")).json()
        events = await (await client.get(f"/api/v1/messages/{message['id']}/events")).json()
        assert got["deliveredAt"] == done_at
        assert [e["doneAt"] for e in events["data"] if e["kind"] == "receipt"] == [done_at]
