"""POST and GET /api/v1/inbound on SQLite :memory: and a fake clock: replies stored, keywords acted on."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import structlog.testing
from aiohttp.test_utils import TestClient, TestServer

from insider.adapters.memory import InMemorySentCache, InMemorySmsClient
from insider.adapters.sqlite import SqliteMessageRepository
from insider.clock import FakeClock
from insider.config import load_settings
from insider.container import Container, resolve
from insider.domain import Category, MessageStatus
from insider.web.app import create_app
from insider.web.inbound_schemas import ReplyPageSchema, ReplySchema
from tests.unit.web_support import BASE_SETTINGS

TOKEN = "dlr-secret-token"
API_TOKEN = "api-secret-token"
URL = "/api/v1/inbound"
PHONE = "+905301234567"
FORM = "application/x-www-form-urlencoded"


@dataclasses.dataclass
class Api:
    client: TestClient[Any, Any]
    repository: SqliteMessageRepository
    container: Container
    clock: FakeClock
    sms: InMemorySmsClient

    async def post(self, body: Any, *, token: str | None = TOKEN, **kwargs: Any) -> tuple[int, Any]:
        headers = {"x-ins-auth-key": token} if token is not None else {}
        response = await self.client.post(URL, json=body, headers=headers | kwargs.pop("headers", {}), **kwargs)
        assert response.content_type == "application/json"
        return response.status, await response.json()

    async def form(self, fields: dict[str, str], *, token: str = TOKEN, **kwargs: Any) -> tuple[int, Any]:
        response = await self.client.post(URL, data=fields, headers={"x-ins-auth-key": token}, **kwargs)
        assert response.content_type == "application/json"
        return response.status, await response.json()

    async def list(self, **query: str) -> tuple[int, Any]:
        response = await self.client.get(URL, params=query, headers={"Authorization": f"Bearer {API_TOKEN}"})
        return response.status, await response.json()

    async def suppressions(self) -> dict[str, tuple[str, str, str]]:
        def read(conn: sqlite3.Connection) -> dict[str, tuple[str, str, str]]:
            rows = conn.execute("SELECT phone, scope, reason, source FROM insider_suppressions").fetchall()
            return {row[0]: (row[1], row[2], row[3]) for row in rows}

        return await self.repository.database.run(read)

    async def suppress(self, phone: str, scope: str, reason: str = "manual") -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO insider_suppressions (phone, scope, reason, source, created_at) "
                "VALUES (?, ?, ?, 'api', '2026-01-01T00:00:00.000000Z')",
                (phone, scope, reason),
            )
            conn.commit()

        await self.repository.database.run(write)


@asynccontextmanager
async def open_api(**settings: str) -> AsyncIterator[Api]:
    env = BASE_SETTINGS | {
        "INSIDER_DATABASE_URL": "sqlite:///:memory:",
        "INSIDER_DLR_TOKEN": TOKEN,
        "INSIDER_API_TOKEN": API_TOKEN,
    }
    env |= {f"INSIDER_{k.upper()}": v for k, v in settings.items()}
    container = Container(settings=load_settings(env, env_file=None))
    clock, sms = FakeClock(), InMemorySmsClient()
    container.clock.override(clock)
    container.sms_client.override(sms)
    container.cache.override(InMemorySentCache())
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
    await client.start_server()
    try:
        repository = await resolve(container.repository)
        assert isinstance(repository, SqliteMessageRepository)
        yield Api(client, repository, container, clock, sms)
    finally:
        await client.close()


async def test_a_json_reply_is_stored_and_listed() -> None:
    async with open_api(default_region="TR") as api:
        status, body = await api.post({"from": "0530 123 45 67", "to": "+90 850 123 45 67", "text": "Evet 👍"})
        assert status == 201, body
        assert ReplySchema().validate(body) == {}
        assert body["from"] == PHONE and body["to"] == "+908501234567"
        assert (body["text"], body["action"], body["provider"], body["messageId"]) == ("Evet 👍", None, None, None)
        assert body["receivedAt"].startswith("20")
        status, page = await api.list()
        assert status == 200 and ReplyPageSchema().validate(page) == {}
        assert page == {"data": [body], "nextCursor": None}
        assert await api.suppressions() == {}


@pytest.mark.parametrize("region", ["TR"])
async def test_twilios_form_is_taken_and_answered_in_json(region: str) -> None:
    async with open_api(default_region=region) as api:
        fields = {
            "From": "+905301234567",
            "To": "+12125550123",
            "Body": " Stop ",
            "MessageSid": "SM0123456789abcdef0123456789abcdef",
            "AccountSid": "AC1",
            "NumMedia": "0",
        }
        status, body = await api.form(fields)
        assert status == 201, body
        assert body["from"] == PHONE and body["to"] == "+12125550123"
        assert (body["text"], body["action"]) == (" Stop ", "opt-out")
        assert body["messageId"] == "SM0123456789abcdef0123456789abcdef"
        assert await api.suppressions() == {PHONE: ("all", "opt-out", "inbound")}


@pytest.mark.parametrize("word", ["STOP", "stop", " Stop ", "İPTAL", "ıptal", "iptal", "IPTAL", "RET", "quit", "End"])
async def test_an_opt_out_keyword_suppresses_the_sender_for_all_messages(word: str) -> None:
    async with open_api() as api:
        status, body = await api.post({"from": PHONE, "text": word})
        assert (status, body["action"]) == (201, "opt-out")
        assert await api.suppressions() == {PHONE: ("all", "opt-out", "inbound")}
        message = await api.repository.enqueue(PHONE, "a code")
        assert message.status is MessageStatus.SUPPRESSED


@pytest.mark.parametrize("word", ["START", "start", "BAŞLA", "başla", "Basla", "UNSTOP"])
async def test_an_opt_in_keyword_lifts_the_suppression(word: str) -> None:
    async with open_api() as api:
        await api.post({"from": PHONE, "text": "STOP"})
        status, body = await api.post({"from": PHONE, "text": word})
        assert (status, body["action"]) == (201, "opt-in")
        assert await api.suppressions() == {}
        assert (await api.repository.enqueue(PHONE, "welcome back")).status is MessageStatus.PENDING


async def test_an_opt_in_lifts_a_suppression_an_operator_made_too() -> None:
    async with open_api() as api:
        await api.suppress(PHONE, "commercial")
        await api.post({"from": PHONE, "text": "START"})
        assert await api.suppressions() == {}


async def test_the_scope_setting_suppresses_commercial_messages_only() -> None:
    async with open_api(opt_out_scope="commercial") as api:
        await api.post({"from": PHONE, "text": "STOP"})
        assert await api.suppressions() == {PHONE: ("commercial", "opt-out", "inbound")}


async def test_an_opt_out_never_narrows_a_suppression_of_every_message() -> None:
    async with open_api(opt_out_scope="commercial") as api:
        await api.suppress(PHONE, "all")
        await api.post({"from": PHONE, "text": "STOP"})
        assert await api.suppressions() == {PHONE: ("all", "opt-out", "inbound")}


async def test_an_opt_out_widens_a_commercial_suppression() -> None:
    async with open_api() as api:
        await api.suppress(PHONE, "commercial")
        await api.post({"from": PHONE, "text": "STOP"})
        assert await api.suppressions() == {PHONE: ("all", "opt-out", "inbound")}


@pytest.mark.parametrize("text", ["stop please", "STOP.", "Evet", ""])
async def test_other_replies_change_nothing(text: str) -> None:
    async with open_api() as api:
        status, body = await api.post({"from": PHONE, "text": text})
        assert (status, body["action"], body["text"]) == (201, None, text)
        assert await api.suppressions() == {}


async def test_the_confirmation_is_a_transactional_consent_reply_that_no_suppression_holds() -> None:
    out, back = "No more messages. Reply START to come back.", "Welcome back."
    async with open_api(opt_out_reply=out, opt_in_reply=back) as api:
        await api.post({"from": PHONE, "text": "İptal"})
        page = await api.repository.list_messages(MessageStatus.PENDING, 10)
        [confirmation] = page.items
        assert (confirmation.recipient_phone, confirmation.content) == (PHONE, out)
        assert confirmation.category is Category.TRANSACTIONAL and confirmation.consent_reply
        assert (confirmation.priority, confirmation.respect_sending_hours) == (9, False)
        await api.post({"from": PHONE, "text": "Başla"})
        page = await api.repository.list_messages(MessageStatus.PENDING, 10)
        assert [(m.content, m.consent_reply) for m in page.items] == [(back, True), (out, True)]


async def test_each_keyword_reply_is_confirmed_and_only_the_confirmations_reach_the_provider() -> None:
    async with open_api(opt_out_reply="Bye", opt_in_reply="Hi") as api:
        supervisor = await resolve(api.container.supervisor)
        scheduled = await api.repository.enqueue(
            PHONE, "tomorrow's offer", send_at=api.clock.now() + timedelta(hours=1)
        )
        for text in ("STOP", "stop"):  # two replies (no provider id): each confirmed
            await api.post({"from": PHONE, "text": text})
        await api.client.post(URL, json={"from": PHONE, "text": "x"}, headers={"x-ins-auth-key": TOKEN})
        await api.clock.advance(3600)
        for _ in range(3):
            await supervisor.run_once()
        # The message scheduled before the opt-out is suppressed when its time comes, never sent.
        assert [(r.to, r.content) for r in api.sms.requests] == [(PHONE, "Bye"), (PHONE, "Bye")]
        suppressed = await api.repository.get(scheduled.id)
        assert suppressed is not None and suppressed.status is MessageStatus.SUPPRESSED
        assert suppressed.suppression_reason == "opt-out"
        await api.post({"from": PHONE, "text": "START"})
        later = await api.repository.enqueue(PHONE, "a new offer")
        await supervisor.run_once()
        await supervisor.run_once()
        assert sorted(r.content for r in api.sms.requests[2:]) == ["Hi", "a new offer"]
        sent = await api.repository.get(later.id)
        assert sent is not None and sent.status is MessageStatus.SENT


async def test_no_confirmation_without_its_text_nor_for_other_replies() -> None:
    async with open_api(opt_out_reply="Bye") as api:
        await api.post({"from": PHONE, "text": "START"})
        await api.post({"from": PHONE, "text": "hello"})
        assert (await api.repository.counts())[MessageStatus.PENDING] == 0


async def test_the_same_provider_id_again_is_the_reply_stored_before_and_nothing_more() -> None:
    async with open_api(opt_out_reply="Bye") as api:
        fields = {"From": PHONE, "Body": "STOP", "MessageSid": "SM1"}
        first_status, first = await api.form(fields)
        again_status, again = await api.form(fields)
        assert (first_status, again_status) == (201, 200)
        assert again == first
        assert (await api.repository.counts())[MessageStatus.PENDING] == 1  # one confirmation
        _, page = await api.list()
        assert len(page["data"]) == 1
        # Another provider's reply with that id is another reply.
        response = await api.client.post(URL + "?provider=webhook", data=fields, headers={"x-ins-auth-key": TOKEN})
        assert response.status == 201


async def test_the_metrics_count_replies_by_action() -> None:
    async with open_api() as api:
        for text in ("STOP", "hi", "START", "hello"):
            await api.post({"from": PHONE, "text": text})
        text = await (await api.client.get("/metrics")).text()
        assert 'insider_inbound_replies_total{action="opt-out"} 1.0' in text
        assert 'insider_inbound_replies_total{action="opt-in"} 1.0' in text
        assert 'insider_inbound_replies_total{action="none"} 2.0' in text


async def test_each_reply_is_logged_with_the_numbers_masked() -> None:
    async with open_api() as api:
        with structlog.testing.capture_logs() as logs:
            await api.post({"from": PHONE, "to": "+12125550123", "text": "STOP"})
        [line] = [e for e in logs if e["event"] == "reply received"]
        assert line["sender"] == "+905*******67" and line["to"] == "+121******23"
        assert line["action"] == "opt-out" and line["scope"] == "all"
        assert PHONE not in repr(logs) and "STOP" not in repr(line)


async def test_the_listing_pages_newest_first_and_filters_by_sender() -> None:
    async with open_api(default_region="TR") as api:
        for i in range(5):
            await api.post({"from": PHONE if i % 2 == 0 else "+905301234000", "text": f"reply {i}"})
        status, first = await api.list(limit="2")
        assert status == 200
        assert [r["text"] for r in first["data"]] == ["reply 4", "reply 3"]
        _, second = await api.list(limit="2", cursor=first["nextCursor"])
        _, third = await api.list(limit="2", cursor=second["nextCursor"])
        assert [r["text"] for r in second["data"] + third["data"]] == ["reply 2", "reply 1", "reply 0"]
        assert third["nextCursor"] is None
        _, mine = await api.list(**{"from": "0530 123 45 67"})
        assert [r["text"] for r in mine["data"]] == ["reply 4", "reply 2", "reply 0"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"from": "not a number"}, "from"),
        ({"from": ""}, "from"),
        ({"sender": PHONE}, "sender"),
    ],
)
async def test_a_bad_query_is_a_422_naming_the_field(query: dict[str, str], field: str) -> None:
    async with open_api() as api:
        status, body = await api.list(**query)
        assert status == 422 and list(body["fields"]) == [field], body


async def test_a_cursor_of_another_kind_is_a_400() -> None:
    async with open_api() as api:
        status, body = await api.list(cursor="bm9wZQ")
        assert status == 400 and list(body["fields"]) == ["cursor"]


async def test_listing_needs_the_api_token_not_the_receipts_one() -> None:
    async with open_api() as api:
        response = await api.client.get(URL, headers={"x-ins-auth-key": TOKEN})
        assert response.status == 401
        response = await api.client.get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 401


async def test_posting_needs_the_receipts_token_not_the_api_one() -> None:
    async with open_api() as api:
        status, body = await api.post({"from": PHONE, "text": "STOP"}, token=None)
        assert status == 401 and "INSIDER_DLR_TOKEN" in body["error"]
        status, _ = await api.post({"from": PHONE, "text": "STOP"}, token="wrong")
        assert status == 401
        status, _ = await api.post(
            {"from": PHONE, "text": "STOP"}, token=None, headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        assert status == 401
        response = await api.client.post(f"{URL}?token={TOKEN}", json={"from": PHONE, "text": "STOP"})
        assert response.status == 201
        assert await api.suppressions() == {PHONE: ("all", "opt-out", "inbound")}


async def test_replies_are_off_without_the_receipts_token() -> None:
    async with open_api(dlr_token="") as api:
        status, body = await api.post({"from": PHONE, "text": "STOP"})
        assert status == 404 and "INSIDER_DLR_TOKEN" in body["error"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"text": "STOP"}, ["from"]),
        ({"from": PHONE}, ["text"]),
        ({"from": "hello", "text": "STOP"}, ["from"]),
        ({"from": 5, "text": "STOP"}, ["from"]),
        ({"from": PHONE, "text": 5}, ["text"]),
        ({"from": PHONE, "text": "x" * 1601}, ["text"]),
        ({"from": PHONE, "text": "\u0000"}, ["text"]),
        ({"from": PHONE, "text": "x", "to": "+1"}, ["to"]),
        ({"from": PHONE, "text": "x", "to": []}, ["to"]),
        ({"from": PHONE, "text": "x", "messageId": "m" * 200}, ["messageId"]),
    ],
)
async def test_bad_json_is_a_422_naming_each_field(body: dict[str, Any], fields: list[str]) -> None:
    async with open_api() as api:
        status, answer = await api.post(body)
        assert status == 422 and sorted(answer["fields"]) == fields, answer
        assert await api.suppressions() == {}
        _, page = await api.list()
        assert page["data"] == []


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"Body": "STOP"}, ["from"]),
        ({"From": PHONE}, ["text"]),
        ({"From": "nobody", "Body": "STOP"}, ["from"]),
        ({"From": PHONE, "Body": "x" * 1601}, ["text"]),
        ({"From": PHONE, "To": "+1", "Body": "x"}, ["to"]),
    ],
)
async def test_a_bad_form_is_a_422_naming_each_field(fields: dict[str, str], named: list[str]) -> None:
    async with open_api() as api:
        status, answer = await api.form(fields)
        assert status == 422 and sorted(answer["fields"]) == named, answer


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"STOP"', "application/json", 400),
        (b"From=\xff\xfe&Body=STOP", FORM, 400),
        (b"From=+905301234567&Body=STOP", "text/plain", 415),
        (b"<Body>STOP</Body>", "application/xml", 415),
    ],
)
async def test_a_body_that_cannot_be_read_is_refused(data: bytes, content_type: str, status: int) -> None:
    async with open_api() as api:
        response = await api.client.post(
            URL, data=data, headers={"x-ins-auth-key": TOKEN, "Content-Type": content_type}
        )
        assert response.status == status
        assert "error" in await response.json()


async def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    async with open_api() as api:
        response = await api.client.post(
            URL, data=b"x" * (64 * 1024 + 1), headers={"x-ins-auth-key": TOKEN, "Content-Type": FORM}
        )
        assert response.status == 413


async def test_an_unknown_provider_is_a_422_and_a_known_one_is_kept() -> None:
    async with open_api() as api:
        response = await api.client.post(
            URL + "?provider=nobody", json={"from": PHONE, "text": "x"}, headers={"x-ins-auth-key": TOKEN}
        )
        assert response.status == 422 and list((await response.json())["fields"]) == ["provider"]
        response = await api.client.post(
            URL + "?provider=webhook", json={"from": PHONE, "text": "x"}, headers={"x-ins-auth-key": TOKEN}
        )
        assert response.status == 201 and (await response.json())["provider"] == "webhook"
