"""Issue 13 through HTTP, on SQLite ``:memory:`` and a fake clock: numbers, segments, sendAt,
priority, validUntil, cancel, batches, Idempotency-Key, the recipient filter, preview, stats."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from insider.adapters.memory import InMemorySmsClient, Request
from insider.clock import FakeClock
from insider.container import Container
from insider.domain import Outcome, SendResult
from insider.web.schemas import MessageSchema
from tests.unit import web_support
from tests.unit.support import ProbedRepository

PHONE = "+905301234001"


@dataclass
class Api:
    """The app on SQLite :memory: (tests.unit.web_support), with shorthands for these tests."""

    base: web_support.Api

    @property
    def client(self) -> TestClient[Any, Any]:
        return self.base.client

    @property
    def repository(self) -> ProbedRepository:
        return self.base.repository

    @property
    def sms(self) -> InMemorySmsClient:
        return self.base.sms

    @property
    def clock(self) -> FakeClock:
        return self.base.clock

    @property
    def container(self) -> Container:
        return self.base.container

    async def post(self, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        response = await self.client.post(path, json=body, headers=headers)
        return response.status, await response.json()

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        response = await self.client.get(path, params=params)
        return response.status, await response.json()

    async def run_once(self) -> None:
        await self.container.supervisor().run_once()

    def iso(self, seconds_from_now: float) -> str:
        return (self.clock.now() + timedelta(seconds=seconds_from_now)).isoformat()


@asynccontextmanager
async def open_api(**settings: str) -> AsyncIterator[Api]:
    async with web_support.open_api(FakeClock(), **({"batch_size": "10"} | settings)) as base:
        yield Api(base)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with open_api() as opened:
        yield opened


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    async with AsyncExitStack() as stack:

        async def make(**settings: str) -> Api:
            return await stack.enter_async_context(open_api(**settings))

        yield make


# --- 1. numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given", ["+905301234001", "+90 530 123 40 01", "+90 (530) 123-4001", "0530 123 40 01", "905301234001"]
)
async def test_numbers_in_national_and_international_forms_are_stored_in_e164(
    make_api: Callable[..., Awaitable[Api]], given: str
) -> None:
    api = await make_api(default_region="TR")
    status, body = await api.post("/api/v1/messages", {"to": given, "content": "hi"})
    assert status == 201, body
    assert body["recipientPhone"] == "+905301234001"
    await api.run_once()
    assert [r.to for r in api.sms.requests] == ["+905301234001"]


async def test_national_forms_need_a_region(api: Api) -> None:
    status, body = await api.post("/api/v1/messages", {"to": "0530 123 40 01", "content": "hi"})
    assert status == 422
    assert "country code" in body["fields"]["to"][0]


@pytest.mark.parametrize(
    ("given", "why"),
    [("+90 530", "too short"), ("hello", "not a phone number"), ("+999 1234 5678", "country code"), ("", "empty")],
)
async def test_invalid_numbers_are_422_naming_why(api: Api, given: str, why: str) -> None:
    status, body = await api.post("/api/v1/messages", {"to": given, "content": "hi"})
    assert status == 422
    assert why in body["fields"]["to"][0]


async def test_a_row_inserted_with_a_national_number_is_checked_at_send_time(make_api: Any) -> None:
    api = await make_api()
    message = await api.repository.enqueue("0530 123 40 01", "straight into the table")  # no region set: unsendable
    await api.run_once()
    stored = await api.repository.get(message.id)
    assert stored is not None and stored.status.value == "failed"
    assert stored.last_error is not None and "not a possible phone number" in stored.last_error
    assert api.sms.requests == []


# --- 2. encoding and segments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension table: two septets each
        ("€" * 81, "GSM-7", 2),
        ("[]{}" * 20, "GSM-7", 1),
        ("[]{}" * 20 + "a", "GSM-7", 2),
        ("Doğum günün kutlu olsun", "UCS-2", 1),  # ğ is not in GSM 03.38 (ü is)
        ("ş" * 70, "UCS-2", 1),
        ("ş" * 71, "UCS-2", 2),
        ("😀" * 35, "UCS-2", 1),  # an emoji is two UTF-16 units
        ("😀" * 36, "UCS-2", 2),
        ("é" * 160, "GSM-7", 1),
    ],
)
async def test_encoding_and_segments_on_every_item(
    make_api: Callable[..., Awaitable[Api]], content: str, encoding: str, segments: int
) -> None:
    api = await make_api(content_max_length="1000")
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": content})
    assert status == 201, body
    assert (body["encoding"], body["segments"]) == (encoding, segments)
    assert MessageSchema().validate(body) == {}
    status, preview = await api.post("/api/v1/messages/preview", {"content": content})
    assert (preview["encoding"], preview["segments"], preview["characters"]) == (encoding, segments, len(content))


async def test_max_segments_refuses_longer_content(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(content_max_length="1000", max_segments="2")
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "a" * 307})
    assert status == 422
    assert "3 GSM-7 segments" in body["fields"]["content"][0]
    status, _ = await api.post("/api/v1/messages", {"to": PHONE, "content": "a" * 306})
    assert status == 201


async def test_segments_sent_in_stats_and_metrics(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(content_max_length="1000")
    await api.post("/api/v1/messages", {"to": PHONE, "content": "a" * 161})
    await api.post("/api/v1/messages", {"to": PHONE, "content": "b"})
    await api.run_once()
    await api.clock.advance(5)
    _, stats = await api.get("/api/v1/stats")
    assert stats["segmentsSent"] == 3
    assert set(stats["counts"]) >= {"expired", "cancelled"}
    text = await (await api.client.get("/metrics")).text()
    assert "insider_segments_sent_total 3.0" in text
    assert 'insider_messages{status="cancelled"} 0.0' in text


# --- 3. sendAt ------------------------------------------------------------------------------


async def test_a_scheduled_message_goes_in_the_first_batch_after_its_time(api: Api) -> None:
    _, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "later", "sendAt": api.iso(3)})
    assert body["sendAt"] is not None and body["status"] == "pending"
    await api.run_once()
    assert api.sms.requests == []
    await api.clock.advance(2.9)
    await api.run_once()
    assert api.sms.requests == []
    await api.clock.advance(0.2)
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["later"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sendAt", "2030-01-01T10:00:00"),  # no offset
        ("sendAt", "2030-01-01"),
        ("sendAt", "tomorrow"),
        ("sendAt", 1893456000),
        ("validUntil", "2030-13-01T10:00:00Z"),
        ("priority", 10),
        ("priority", -1),
        ("priority", "5"),
        ("priority", True),
        ("priority", 5.5),
    ],
)
async def test_bad_schedule_fields_are_422(api: Api, field: str, value: Any) -> None:
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", field: value})
    assert status == 422
    assert field in body["fields"]


async def test_valid_until_must_be_after_send_at_and_in_the_future(api: Api) -> None:
    status, body = await api.post(
        "/api/v1/messages", {"to": PHONE, "content": "x", "sendAt": api.iso(60), "validUntil": api.iso(30)}
    )
    assert status == 422 and "after sendAt" in body["fields"]["validUntil"][0]
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "validUntil": api.iso(-1)})
    assert status == 422 and "future" in body["fields"]["validUntil"][0]


# --- 4. priority ----------------------------------------------------------------------------


async def test_an_urgent_message_overtakes_a_backlog(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(batch_size="2")
    for i in range(20):
        await api.post("/api/v1/messages", {"to": PHONE, "content": f"campaign {i}", "priority": 1})
    await api.post("/api/v1/messages", {"to": PHONE, "content": "OTP 4711", "priority": 9})
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["OTP 4711", "campaign 0"]


async def test_send_order_newest(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(batch_size="2", send_order="newest")
    for i in range(4):
        await api.post("/api/v1/messages", {"to": PHONE, "content": f"m{i}"})
        await api.clock.advance(1)
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["m3", "m2"]


# --- 5. expiry ------------------------------------------------------------------------------


async def test_expiry_while_queued(api: Api) -> None:
    _, body = await api.post(
        "/api/v1/messages", {"to": PHONE, "content": "x", "sendAt": api.iso(10), "validUntil": api.iso(20)}
    )
    await api.clock.advance(21)
    _, got = await api.get(f"/api/v1/messages/{body['id']}")
    assert got["status"] == "expired" and got["lastError"].startswith("expired: not sent before validUntil")
    await api.run_once()
    assert api.sms.requests == []
    _, listed = await api.get("/api/v1/messages", status="expired")
    assert [m["id"] for m in listed["data"]] == [body["id"]]


async def test_expired_counts_in_stats_while_sending_is_stopped(api: Api) -> None:
    await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "validUntil": api.iso(5)})
    await api.clock.advance(10)
    _, stats = await api.get("/api/v1/stats")
    assert (stats["counts"]["pending"], stats["counts"]["expired"]) == (0, 1)
    text = await (await api.client.get("/metrics")).text()
    assert 'insider_messages{status="expired"} 1.0' in text


async def test_expiry_while_retrying(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(retry_backoff="30s", retry_backoff_max="30s")
    api.sms.responder = lambda request: SendResult(Outcome.RETRY, status_code=503, error="HTTP 503")
    _, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "validUntil": api.iso(10)})
    await api.run_once()  # the retry would come after 15 to 30 s
    _, got = await api.get(f"/api/v1/messages/{body['id']}")
    assert got["status"] == "expired"
    assert "HTTP 503" in got["lastError"] and "validUntil" in got["lastError"]
    await api.clock.advance(60)
    await api.run_once()
    assert len(api.sms.requests) == 1


async def test_the_sender_and_the_sweep_word_an_expiry_alike(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(retry_backoff="30s", retry_backoff_max="30s")
    api.sms.responder = lambda request: SendResult(Outcome.RETRY, status_code=503, error="HTTP 503")
    valid_until = api.clock.now().replace(microsecond=250_000) + timedelta(seconds=10)
    when = valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")  # in UTC, to the second, as the API takes times
    _, retried = await api.post(
        "/api/v1/messages", {"to": PHONE, "content": "x", "validUntil": valid_until.isoformat()}
    )
    _, swept = await api.post(
        "/api/v1/messages", {"to": PHONE, "content": "y", "sendAt": api.iso(5), "validUntil": valid_until.isoformat()}
    )
    await api.run_once()  # the retry would come after its validUntil: the sender expires it
    await api.clock.advance(11)  # the scheduled one was never due before its validUntil: the sweep expires it
    reasons = {
        body["id"]: (await api.get(f"/api/v1/messages/{body['id']}"))[1]["lastError"] for body in (retried, swept)
    }
    assert reasons == {
        retried["id"]: f"expired: not sent before validUntil {when} (last error: HTTP 503)",
        swept["id"]: f"expired: not sent before validUntil {when}",
    }


async def test_a_retry_past_valid_until_is_an_expired_attempt_in_the_history(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await make_api(retry_backoff="30s", retry_backoff_max="30s")
    api.sms.responder = lambda request: SendResult(Outcome.RETRY, status_code=503, error="HTTP 503")
    _, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "validUntil": api.iso(10)})
    _, cancelled = await api.post("/api/v1/messages", {"to": PHONE, "content": "y", "sendAt": api.iso(60)})
    await api.post(f"/api/v1/messages/{cancelled['id']}/cancel", None)
    await api.run_once()
    status, events = await api.get(f"/api/v1/messages/{body['id']}/events")
    assert status == 200
    assert [(e["kind"], e["outcome"], e["statusCode"], e["error"]) for e in events["data"]] == [
        ("attempt", "expired", 503, "HTTP 503")
    ]
    assert (await api.get(f"/api/v1/messages/{cancelled['id']}/events"))[1]["data"] == []


async def test_a_claimed_message_past_valid_until_is_not_sent(api: Api) -> None:
    _, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "validUntil": api.iso(5)})
    claimed = await api.repository.claim(10, 30)  # claimed, then the clock passes its validUntil
    assert [m.id for m in claimed] == [body["id"]]
    await api.clock.advance(40)  # the lease ends too: the next batch takes it again
    await api.run_once()
    assert api.sms.requests == []
    _, got = await api.get(f"/api/v1/messages/{body['id']}")
    assert got["status"] == "expired"


# --- 6. cancel ------------------------------------------------------------------------------


async def test_cancel_a_scheduled_message(api: Api) -> None:
    _, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x", "sendAt": api.iso(5)})
    status, cancelled = await api.post(f"/api/v1/messages/{body['id']}/cancel", None)
    assert status == 200 and cancelled["status"] == "cancelled"
    await api.clock.advance(10)
    await api.run_once()
    assert api.sms.requests == []
    status, again = await api.post(f"/api/v1/messages/{body['id']}/cancel", None)
    assert status == 409 and "cancelled" in again["error"]
    status, _ = await api.post("/api/v1/messages/999/cancel", None)
    assert status == 404


async def test_cancel_while_being_sent_is_409(api: Api) -> None:
    _, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x"})
    await api.repository.claim(10, 30)
    status, refused = await api.post(f"/api/v1/messages/{body['id']}/cancel", None)
    assert status == 409 and refused["error"].endswith("already being sent")


async def test_cancel_of_a_sent_message_is_409(api: Api) -> None:
    _, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x"})
    await api.run_once()
    status, refused = await api.post(f"/api/v1/messages/{body['id']}/cancel", None)
    assert status == 409 and "sent" in refused["error"]


# --- 7. batch -------------------------------------------------------------------------------


async def test_batch_stores_all_in_order(api: Api) -> None:
    items = [{"to": PHONE, "content": f"m{i}", "priority": i % 10} for i in range(25)]
    status, body = await api.post("/api/v1/messages/batch", {"messages": items})
    assert status == 201
    assert [m["content"] for m in body["data"]] == [f"m{i}" for i in range(25)]
    assert all(MessageSchema().validate(m) == {} for m in body["data"])


async def test_batch_with_bad_items_stores_none_and_names_each(api: Api) -> None:
    items = [
        {"to": PHONE, "content": "fine"},
        {"to": "nope", "content": "x"},
        {"to": PHONE, "content": "x", "priority": 11},
        {"to": PHONE},
        {"to": PHONE, "content": "x", "colour": "red"},
    ]
    status, body = await api.post("/api/v1/messages/batch", {"messages": items})
    assert status == 422
    assert set(body["fields"]) == {"messages.1.to", "messages.2.priority", "messages.3.content", "messages.4.colour"}
    _, stats = await api.get("/api/v1/stats")
    assert stats["total"] == 0


async def test_batch_items_that_are_not_objects_are_named(api: Api) -> None:
    status, body = await api.post("/api/v1/messages/batch", {"messages": [{"to": PHONE, "content": "x"}, "text", 3]})
    assert status == 422
    assert set(body["fields"]) == {"messages.1", "messages.2"}


@pytest.mark.parametrize("body", [{"messages": []}, {"messages": [{"to": PHONE, "content": "x"}] * 1001}, {}])
async def test_batch_size_limits(api: Api, body: Any) -> None:
    status, answer = await api.post("/api/v1/messages/batch", body)
    assert status == 422 and "messages" in answer["fields"]


async def test_a_full_batch_of_1000_fits_the_body_limit(api: Api) -> None:
    items = [{"to": PHONE, "content": "ğ" * 70, "sendAt": api.iso(60), "validUntil": api.iso(3600)}] * 1000
    status, body = await api.post("/api/v1/messages/batch", {"messages": items})
    assert status == 201 and len(body["data"]) == 1000


# --- 8. Idempotency-Key ---------------------------------------------------------------------


async def test_same_key_same_body_answers_the_same_message(api: Api) -> None:
    body = {"to": PHONE, "content": "once"}
    status1, first = await api.post("/api/v1/messages", body, **{"Idempotency-Key": "k-1"})
    status2, second = await api.post("/api/v1/messages", body, **{"Idempotency-Key": "k-1"})
    assert (status1, status2) == (201, 201)
    assert second["id"] == first["id"]
    await api.run_once()
    assert len(api.sms.requests) == 1
    status3, other = await api.post("/api/v1/messages", {"to": PHONE, "content": "twice"}, **{"Idempotency-Key": "k-1"})
    assert status3 == 409 and "Idempotency-Key" in other["fields"]


async def test_same_key_on_a_batch(api: Api) -> None:
    body = {"messages": [{"to": PHONE, "content": "a"}, {"to": PHONE, "content": "b"}]}
    _, first = await api.post("/api/v1/messages/batch", body, **{"Idempotency-Key": "batch-1"})
    status, second = await api.post("/api/v1/messages/batch", body, **{"Idempotency-Key": "batch-1"})
    assert status == 201 and [m["id"] for m in second["data"]] == [m["id"] for m in first["data"]]
    _, stats = await api.get("/api/v1/stats")
    assert stats["total"] == 2


async def test_a_key_expires_after_24_hours(api: Api) -> None:
    body = {"to": PHONE, "content": "daily"}
    _, first = await api.post("/api/v1/messages", body, **{"Idempotency-Key": "day"})
    await api.clock.advance(24 * 3600 + 1)
    _, second = await api.post("/api/v1/messages", body, **{"Idempotency-Key": "day"})
    assert second["id"] != first["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ünicode"])
async def test_a_bad_key_is_400(api: Api, key: str) -> None:
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "x"}, **{"Idempotency-Key": key})
    assert status == 400 and "Idempotency-Key" in body["fields"]


# --- 9. list filters ------------------------------------------------------------------------


async def test_list_filtered_by_recipient_in_any_form(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(default_region="TR")
    await api.post("/api/v1/messages", {"to": "0530 123 40 01", "content": "mine"})
    await api.post("/api/v1/messages", {"to": "+15555550100", "content": "theirs"})
    for form in ("+905301234001", "0530 123 40 01", "+90 530 123 4001"):
        _, page = await api.get("/api/v1/messages", status="pending", to=form)
        assert [m["content"] for m in page["data"]] == ["mine"], form
    status, body = await api.get("/api/v1/messages", to="not a number")
    assert status == 422 and "to" in body["fields"]


@pytest.mark.parametrize("status", ["expired", "cancelled"])
async def test_new_statuses_are_list_filters(api: Api, status: str) -> None:
    code, body = await api.get("/api/v1/messages", status=status)
    assert code == 200 and body == {"data": [], "nextCursor": None}


# --- the contract kept ----------------------------------------------------------------------


async def test_only_to_and_content_behaves_as_before(api: Api) -> None:
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "Merhaba"})
    assert status == 201
    assert (body["sendAt"], body["priority"], body["validUntil"]) == (None, 5, None)
    await api.run_once()
    assert [r.to for r in api.sms.requests] == [PHONE]


async def test_requests_reach_the_provider_with_the_normalised_number(api: Api) -> None:
    await api.repository.enqueue("+90 530 123 40 01", "a row written with spaces")
    await api.run_once()
    assert api.sms.requests == [Request(PHONE, "a row written with spaces", api.sms.requests[0].idempotency_key)]


def test_iso_helper_is_rfc3339() -> None:
    assert datetime.fromisoformat(FakeClock().now().isoformat()).tzinfo is not None
