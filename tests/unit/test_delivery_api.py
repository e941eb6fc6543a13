"""POST /api/v1/delivery-reports and GET /api/v1/messages/{id}/events, on SQLite :memory: and a fake clock."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog.testing
from aiohttp.test_utils import TestClient, TestServer

from insider.adapters.memory import InMemorySentCache, InMemorySmsClient
from insider.adapters.sqlite import SqliteMessageRepository
from insider.clock import FakeClock
from insider.config import load_settings
from insider.container import Container, resolve
from insider.domain import TIME_RANGE, Message, MessageStatus, Outcome, SendResult
from insider.receipt_parsing import WAITING_MAX_AGE_S
from insider.supervisor import Supervisor
from insider.web.app import create_app
from insider.web.schemas import EventsSchema, MessageSchema, ReceiptsResultSchema, StatsSchema
from tests.conftest import eventually
from tests.unit.support import HeldProvider
from tests.unit.web_support import BASE_SETTINGS

TOKEN = "dlr-secret-token"
URL = "/api/v1/delivery-reports"
PHONE = "+905301234001"


@dataclasses.dataclass
class Api:
    client: TestClient[Any, Any]
    repository: SqliteMessageRepository
    sms: InMemorySmsClient
    cache: InMemorySentCache
    clock: FakeClock
    container: Container
    supervisor: Supervisor

    async def sent(self, n: int = 1) -> list[Message]:
        """``n`` messages queued and sent (each with a fresh provider id)."""
        queued = [await self.repository.enqueue(PHONE, f"message {i}") for i in range(n)]
        for _ in range(n):
            await self.supervisor.run_once()
        got = [await self.repository.get(m.id) for m in queued]
        assert all(m is not None and m.status is MessageStatus.SENT for m in got)
        return [m for m in got if m is not None]

    async def post(self, body: Any, *, token: str | None = TOKEN, **kwargs: Any) -> tuple[int, Any]:
        headers = {"x-ins-auth-key": token} if token is not None else {}
        response = await self.client.post(URL, json=body, headers=headers | kwargs.pop("headers", {}), **kwargs)
        assert response.content_type == "application/json"
        return response.status, await response.json()


@asynccontextmanager
async def open_api(**settings: str) -> AsyncIterator[Api]:
    """The app on SQLite :memory:, the in-memory provider and cache, and a fake clock."""
    env = BASE_SETTINGS | {"INSIDER_DATABASE_URL": "sqlite:///:memory:", "INSIDER_DLR_TOKEN": TOKEN}
    env |= {f"INSIDER_{k.upper()}": v for k, v in settings.items()}
    container = Container(settings=load_settings(env, env_file=None))
    clock = FakeClock()
    container.clock.override(clock)
    sms, cache = InMemorySmsClient(), InMemorySentCache(clock=clock)
    container.sms_client.override(sms)
    container.cache.override(cache)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
    await client.start_server()
    try:
        repository = await resolve(container.repository)
        supervisor = await resolve(container.supervisor)
        assert isinstance(repository, SqliteMessageRepository)
        yield Api(client, repository, sms, cache, clock, container, supervisor)
    finally:
        await client.close()
        container.unwire()


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with open_api() as opened:
        yield opened


async def test_a_delivered_receipt_shows_on_the_message_the_list_the_stats_and_the_metrics(api: Api) -> None:
    [message] = await api.sent()
    api.clock._t += 3.0

    status, body = await api.post({"messageId": message.message_id, "status": "DELIVRD"})

    assert status == 200
    assert ReceiptsResultSchema().validate(body) == {}
    assert body == {"received": 1, "results": [{"messageId": message.message_id, "result": "applied"}]}
    item = await (await api.client.get(f"/api/v1/messages/{message.id}")).json()
    assert MessageSchema().validate(item) == {}
    assert (item["status"], item["deliveryStatus"], item["deliveryError"]) == ("delivered", "delivered", None)
    assert item["deliveredAt"] is not None
    listed = await (await api.client.get("/api/v1/messages?status=delivered")).json()
    assert [m["id"] for m in listed["data"]] == [message.id]
    everything = await (await api.client.get("/api/v1/messages")).json()
    assert [m["id"] for m in everything["data"]] == [message.id]  # the default list still shows it
    assert (await (await api.client.get("/api/v1/messages?status=sent")).json())["data"] == []
    api.clock._t += 5.0
    stats = await (await api.client.get("/api/v1/stats")).json()
    assert StatsSchema().validate(stats) == {}
    assert (stats["counts"]["delivered"], stats["counts"]["sent"], stats["deliveryRate"]) == (1, 0, 1.0)
    metrics = (await (await api.client.get("/metrics")).read()).decode()
    assert "insider_messages_delivered_total 1.0" in metrics
    assert "insider_messages_undelivered_total 0.0" in metrics
    assert 'insider_delivery_seconds_bucket{le="5.0"} 1.0' in metrics
    assert 'insider_delivery_seconds_bucket{le="2.5"} 0.0' in metrics


async def test_an_undelivered_receipt_and_the_delivery_rate(api: Api) -> None:
    messages = await api.sent(4)
    body: list[dict[str, Any]] = [{"messageId": m.message_id, "status": "delivered"} for m in messages[:3]]
    body.append({"messageId": messages[3].message_id, "status": "UNDELIV", "errorCode": 34})

    status, answer = await api.post(body)

    assert status == 200 and [r["result"] for r in answer["results"]] == ["applied"] * 4
    item = await (await api.client.get(f"/api/v1/messages/{messages[3].id}")).json()
    assert (item["status"], item["deliveryStatus"], item["deliveryError"]) == ("undelivered", "undelivered", "34")
    api.clock._t += 5.0
    stats = await (await api.client.get("/api/v1/stats")).json()
    assert stats["deliveryRate"] == 0.75
    metrics = (await (await api.client.get("/metrics")).read()).decode()
    assert "insider_messages_undelivered_total 1.0" in metrics


async def test_the_same_receipt_twice_is_200_both_times_and_changes_nothing(api: Api) -> None:
    [message] = await api.sent()
    receipt = {"messageId": message.message_id, "status": "delivered", "doneAt": "2026-01-01T00:00:03Z"}

    first = await api.post(receipt)
    after_first = await (await api.client.get(f"/api/v1/messages/{message.id}")).json()
    second = await api.post(receipt)

    assert first == (200, {"received": 1, "results": [{"messageId": message.message_id, "result": "applied"}]})
    assert second == (200, {"received": 1, "results": [{"messageId": message.message_id, "result": "duplicate"}]})
    assert await (await api.client.get(f"/api/v1/messages/{message.id}")).json() == after_first
    assert after_first["deliveredAt"] == "2026-01-01T00:00:03+00:00"
    metrics = (await (await api.client.get("/metrics")).read()).decode()
    assert "insider_messages_delivered_total 1.0" in metrics


async def test_a_contrary_later_receipt_is_kept_as_an_event_only(api: Api) -> None:
    [message] = await api.sent()
    await api.post({"messageId": message.message_id, "status": "delivered"})

    status, body = await api.post({"messageId": message.message_id, "status": "undelivered"})

    assert status == 200 and body["results"][0]["result"] == "recorded"
    item = await (await api.client.get(f"/api/v1/messages/{message.id}")).json()
    assert item["status"] == "delivered"
    events = (await (await api.client.get(f"/api/v1/messages/{message.id}/events")).json())["data"]
    assert [(e["kind"], e.get("status")) for e in events] == [
        ("attempt", None),
        ("receipt", "delivered"),
        ("receipt", "undelivered"),
    ]


async def test_an_unknown_status_is_kept_and_changes_nothing(api: Api) -> None:
    [message] = await api.sent()

    status, body = await api.post({"messageId": message.message_id, "status": "ENROUTE"})

    assert status == 200 and body["results"][0]["result"] == "recorded"
    assert (await api.repository.get(message.id)) == message


async def test_a_receipt_before_the_outcome_is_applied_when_the_message_gets_the_id(api: Api) -> None:
    await api.repository.enqueue(PHONE, "fast network")
    # The receipt for the provider id this send will get arrives while the request is in flight.
    provider_id = "prov-early-1"
    answers: list[tuple[int, Any]] = []

    async def respond(request: Any) -> SendResult:
        answers.append(await api.post({"messageId": provider_id, "status": "delivered"}))
        return SendResult(Outcome.SENT, status_code=202, provider_message_id=provider_id)

    api.sms.responder = respond
    await api.supervisor.run_once()

    assert answers == [(200, {"received": 1, "results": [{"messageId": provider_id, "result": "waiting"}]})]
    listed = await (await api.client.get("/api/v1/messages?status=delivered")).json()
    assert [m["messageId"] for m in listed["data"]] == [provider_id]
    metrics = (await (await api.client.get("/metrics")).read()).decode()
    assert "insider_messages_delivered_total 1.0" in metrics


async def test_a_cancel_after_a_stop_cut_a_send_short_keeps_the_message_cancelled_whatever_the_provider_reports(
    api: Api,
) -> None:
    # A stop cuts the request short: the provider may have it, and insider never learns its id.
    message = await api.repository.enqueue(PHONE, "cut short")
    held = HeldProvider(lambda request: SendResult(Outcome.SENT, status_code=202, provider_message_id="p-cut"))
    api.sms.responder = held
    await api.supervisor.start()
    await eventually(lambda: held.in_flight == 1, what="the request in flight")
    await api.supervisor.stop()
    assert held.cancelled == 1

    cancelled = await api.client.post(f"/api/v1/messages/{message.id}/cancel")

    assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"
    history = await (await api.client.get(f"/api/v1/messages/{message.id}/events")).json()
    assert [(e["kind"], e["outcome"]) for e in history["data"]] == [("attempt", "interrupted")]
    # The provider had it, delivered it and reports so: its id is no message's, so the receipt
    # waits (200) and the message stays cancelled, through the periodic pass and until it is dropped.
    status, body = await api.post({"messageId": "p-cut", "status": "DELIVRD"})
    assert (status, body["results"]) == (200, [{"messageId": "p-cut", "result": "waiting"}])
    upkeep = await resolve(api.container.receipt_upkeep)
    await upkeep.waiting_once()
    api.clock._t += WAITING_MAX_AGE_S + 1
    with structlog.testing.capture_logs() as logs:
        await upkeep.waiting_once()
    assert [e["provider_message_id"] for e in logs if e["event"].startswith("receipt dropped")] == ["p-cut"]
    item = await (await api.client.get(f"/api/v1/messages/{message.id}")).json()
    assert (item["status"], item["messageId"], item["deliveryStatus"]) == ("cancelled", None, None)
    history = await (await api.client.get(f"/api/v1/messages/{message.id}/events")).json()
    assert [(e["kind"], e["outcome"]) for e in history["data"]] == [("attempt", "interrupted")]


async def test_the_cache_is_asked_first_and_the_database_answers_when_it_is_down(api: Api) -> None:
    first, second = await api.sent(2)

    await api.post({"messageId": first.message_id, "status": "delivered"})
    assert api.cache.lookups == 1
    api.cache.available = False  # Redis down
    status, body = await api.post({"messageId": second.message_id, "status": "delivered"})

    assert status == 200 and body["results"][0]["result"] == "applied"
    assert (await api.repository.get(second.id)).status is MessageStatus.DELIVERED  # type: ignore[union-attr]


async def test_the_token_in_the_query_works_and_never_reaches_the_logs(
    api: Api, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    [message] = await api.sent()
    caplog.set_level(logging.DEBUG)

    response = await api.client.post(
        f"{URL}?token={TOKEN}", json={"messageId": message.message_id, "status": "delivered"}
    )

    assert response.status == 200
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    assert "delivery-reports" in captured.out + captured.err + caplog.text  # the request was logged, without it


async def test_receipts_taken_are_logged_at_debug_and_refusals_at_info(api: Api) -> None:
    # A provider posting thousands of receipts a second: the writer's one line per batch says
    # what they did; a line per request would bury the sends. A refused post still shows.
    [message] = await api.sent()

    with structlog.testing.capture_logs() as logs:
        assert (await api.post({"messageId": message.message_id, "status": "delivered"}))[0] == 200
        assert (await api.post({"messageId": message.message_id, "status": "delivered"}, token="wrong"))[0] == 401

    requests = [(e["log_level"], e["status"]) for e in logs if e["event"] == "request"]
    assert requests == [("debug", 200), ("info", 401)]
    assert any(e["event"] == "receipts" and e["log_level"] == "info" and e["applied"] == 1 for e in logs)


@pytest.mark.parametrize(
    ("headers", "query", "error"),
    [
        ({}, "", "needs the INSIDER_DLR_TOKEN"),
        ({"x-ins-auth-key": "wrong"}, "", "not valid"),
        ({}, "?token=wrong", "not valid"),
        ({"x-ins-auth-key": ""}, "", "needs the INSIDER_DLR_TOKEN"),
        ({"x-ins-auth-key": "wrong"}, f"?token={TOKEN}", "not valid"),  # the header, when given, decides
        ({"Authorization": f"Bearer {TOKEN}"}, "", "needs the INSIDER_DLR_TOKEN"),
    ],
)
async def test_a_missing_or_wrong_token_is_a_json_401(
    api: Api, headers: dict[str, str], query: str, error: str
) -> None:
    [message] = await api.sent()

    response = await api.client.post(
        URL + query, json={"messageId": message.message_id, "status": "delivered"}, headers=headers
    )

    assert response.status == 401
    assert error in (await response.json())["error"]
    assert (await api.repository.get(message.id)) == message


async def test_without_a_token_set_the_endpoint_is_off_and_says_how_to_turn_it_on() -> None:
    async with open_api(dlr_token="") as api:
        status, body = await api.post({"messageId": "x", "status": "delivered"}, token="anything")

    assert status == 404
    assert "INSIDER_DLR_TOKEN" in body["error"]


async def test_the_api_token_does_not_apply_but_still_guards_the_rest() -> None:
    async with open_api(api_token="api-secret") as api:
        status, _ = await api.post({"messageId": "x", "status": "delivered"})
        events = await api.client.get("/api/v1/messages/1/events")

    assert status == 200
    assert events.status == 401


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"status": "delivered"}, {"messageId": ["messageId is required"]}),
        ({"messageId": "a", "status": ""}, {"status": ["must not be empty"]}),
        ({"messageId": "a", "status": 5}, {"status": ["must be a string"]}),
        (
            {"messageId": "a", "status": "delivered", "doneAt": "yesterday"},
            {"doneAt": ["must be an ISO 8601 time, e.g. 2026-01-01T12:00:00Z"]},
        ),
        (
            {"messageId": "a", "status": "delivered", "doneAt": "9999-12-31T23:59:59-14:00"},
            {"doneAt": [f"must be {TIME_RANGE}"]},
        ),
        (
            [
                {"messageId": "a", "status": "delivered"},
                {"messageId": "b", "status": "x", "doneAt": "0001-01-01T00:00:00+14:00"},
            ],
            {"1.doneAt": [f"must be {TIME_RANGE}"]},
        ),
        ([{"messageId": "a", "status": "delivered"}, {"messageId": "b"}], {"1.status": ["status is required"]}),
        ([{"messageId": "a", "status": "delivered"}, "nope"], {"1": ["must be an object with messageId and status"]}),
        # Worded as for a message's text: one rule of what no database can store.
        ([{"messageId": "a\u0000", "status": "x"}], {"0.messageId": ["must not contain NUL characters (\\u0000)"]}),
        (
            {"messageId": "a", "status": "x", "errorCode": "\ud800"},
            {"errorCode": ["must not contain unpaired surrogates (\\ud800 to \\udfff)"]},
        ),
        ("delivered", {"_schema": ["the body must be a receipt object or a JSON array of them"]}),
    ],
)
async def test_invalid_receipts_are_a_422_naming_the_item_and_nothing_is_applied(
    api: Api, body: Any, fields: dict[str, list[str]]
) -> None:
    [message] = await api.sent()
    if isinstance(body, list) and isinstance(body[0], dict) and body[0].get("messageId") == "a":
        body[0]["messageId"] = message.message_id

    status, answer = await api.post(body)

    assert status == 422
    assert answer == {"error": "invalid receipt", "fields": fields}
    assert (await api.repository.get(message.id)) == message


async def test_bodies_that_are_not_json(api: Api) -> None:
    headers = {"x-ins-auth-key": TOKEN}
    not_json = await api.client.post(URL, data=b"{nope", headers=headers | {"Content-Type": "application/json"})
    form = await api.client.post(
        URL,
        data=b"messageId=a&status=delivered",
        headers=headers | {"Content-Type": "text/plain"},
    )
    too_big = await api.client.post(
        URL,
        data=io.BytesIO(b"[" + b" " * (1024 * 1024 + 10) + b"]"),
        headers=headers | {"Content-Type": "application/json"},
    )

    assert (not_json.status, form.status, too_big.status) == (400, 415, 413)
    for response in (not_json, form, too_big):
        assert "error" in await response.json()


async def test_a_burst_in_one_request(api: Api) -> None:
    messages = await api.sent(20)
    body = [{"messageId": m.message_id, "status": "delivered"} for m in messages]
    body += [{"messageId": f"unknown-{i}", "status": "delivered"} for i in range(1000)]  # about 50 KiB

    status, answer = await api.post(body)

    assert status == 200 and answer["received"] == 1020
    assert [r["result"] for r in answer["results"]] == ["applied"] * 20 + ["waiting"] * 1000


async def test_the_history_of_a_retried_sent_and_delivered_message(api: Api) -> None:
    message = await api.repository.enqueue(PHONE, "retried")
    answers = iter(
        [
            SendResult(Outcome.RETRY, status_code=503, error="HTTP 503: busy", retry_after_s=0.0),
            SendResult(Outcome.SENT, status_code=202, provider_message_id="prov-9"),
        ]
    )
    api.sms.responder = lambda request: next(answers)
    await api.supervisor.run_once()
    api.clock._t += 1.0
    await api.supervisor.run_once()
    await api.post({"messageId": "prov-9", "status": "DELIVRD", "doneAt": "2026-01-01T00:00:02Z"})

    response = await api.client.get(f"/api/v1/messages/{message.id}/events")

    assert response.status == 200
    body = await response.json()
    assert EventsSchema().validate(body) == {}
    events = body["data"]
    assert [(e["kind"], e["outcome"]) for e in events] == [
        ("attempt", "retry"),
        ("attempt", "sent"),
        ("receipt", "delivered"),
    ]
    retry, sent, receipt = events
    assert (retry["attempt"], retry["statusCode"], retry["error"], retry["providerMessageId"]) == (
        1,
        503,
        "HTTP 503: busy",
        None,
    )
    assert retry["durationMs"] is not None
    assert (sent["attempt"], sent["statusCode"], sent["providerMessageId"], sent["error"]) == (2, 202, "prov-9", None)
    assert (receipt["status"], receipt["doneAt"], receipt["providerMessageId"]) == (
        "DELIVRD",
        "2026-01-01T00:00:02+00:00",
        "prov-9",
    )
    assert retry["at"] < sent["at"] <= receipt["at"]


async def test_events_of_a_message_that_does_not_exist_is_404(api: Api) -> None:
    missing = await api.client.get("/api/v1/messages/999/events")
    fresh = await api.repository.enqueue(PHONE, "never sent")
    empty = await api.client.get(f"/api/v1/messages/{fresh.id}/events")

    assert missing.status == 404 and "error" in await missing.json()
    assert (empty.status, await empty.json()) == (200, {"data": []})


async def test_the_original_services_list_keeps_a_delivered_message(api: Api) -> None:
    first, second = await api.sent(2)
    await api.post({"messageId": first.message_id, "status": "delivered"})

    body = await (await api.client.get("/messages")).json()

    assert body["success"] is True
    assert sorted(item["messageId"] for item in body["data"]) == sorted([str(first.message_id), str(second.message_id)])


async def test_events_by_a_uuid_no_message_has_is_404(api: Api) -> None:
    response = await api.client.get("/api/v1/messages/0667bb37-9172-449c-8abd-cdfad15bba08/events")

    assert response.status == 404
    assert (await response.json())["error"] == "no message has that id"


async def test_a_twilio_status_callback_form_is_a_receipt(api: Api) -> None:
    first, second = await api.sent(2)
    form = "application/x-www-form-urlencoded"

    delivered = await api.client.post(
        f"{URL}?token={TOKEN}",
        data=f"SmsSid={first.message_id}&MessageSid={first.message_id}&MessageStatus=delivered&AccountSid=AC1",
        headers={"Content-Type": form},
    )
    failed = await api.client.post(
        f"{URL}?token={TOKEN}",
        data=f"MessageSid={second.message_id}&MessageStatus=undelivered&ErrorCode=30003",
        headers={"Content-Type": form},
    )
    missing = await api.client.post(f"{URL}?token={TOKEN}", data="MessageSid=x", headers={"Content-Type": form})
    broken = await api.client.post(f"{URL}?token={TOKEN}", data="just text", headers={"Content-Type": form})

    assert (delivered.status, failed.status) == (200, 200)
    assert (await delivered.json())["results"] == [{"messageId": first.message_id, "result": "applied"}]
    item = await (await api.client.get(f"/api/v1/messages/{second.id}")).json()
    assert (item["status"], item["deliveryError"]) == ("undelivered", "30003")
    assert (missing.status, await missing.json()) == (
        422,
        {"error": "invalid receipt", "fields": {"status": ["status is required"]}},
    )
    assert broken.status == 400 and "error" in await broken.json()


async def test_swagger_describes_the_receipts_token_when_one_is_set(api: Api) -> None:
    spec = await (await api.client.get("/api/docs/swagger.json")).json()

    [operation] = spec["paths"]["/api/v1/delivery-reports"].values()
    assert operation["security"] == [{"dlrToken": []}, {"dlrTokenQuery": []}]
    assert spec["securityDefinitions"]["dlrToken"]["name"] == "x-ins-auth-key"
    assert spec["securityDefinitions"]["dlrTokenQuery"] == {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": spec["securityDefinitions"]["dlrTokenQuery"]["description"],
    }
    assert "bearer" not in spec["securityDefinitions"]  # no API token here


async def test_the_host_and_cross_site_checks_do_not_apply_to_receipts(api: Api) -> None:
    [message] = await api.sent()
    headers = {"Host": "insider.example.com", "Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"}

    status, body = await api.post({"messageId": message.message_id, "status": "delivered"}, headers=headers)
    elsewhere = await api.client.get("/api/v1/stats", headers=headers)

    assert (status, body["results"][0]["result"]) == (200, "applied")
    assert elsewhere.status in (403, 421)  # the rest of the API keeps its checks
