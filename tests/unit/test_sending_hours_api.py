"""Sending hours through HTTP on SQLite ``:memory:`` and a fake clock: a message due outside them is
stored waiting and never claimed before its time; a claimed one outside them is put back by the gate
with a ``deferred`` event; ``respectSendingHours``; the stats, the metrics and Swagger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from insider.adapters.memory import InMemorySmsClient
from insider.clock import FakeClock
from insider.domain import build_message
from insider.sender import BatchSender, SenderOptions
from insider.sending_hours import SendingHours, SendingHoursGate, SendingHoursPolicy, parse_sending_hours
from insider.web.schemas import MessageSchema, StatsSchema
from tests.unit import web_support
from tests.unit.support import ProbedRepository
from tests.unit.test_messages_api import Api

TURKEY = "+905301234001"  # Europe/Istanbul, UTC+3
NEW_YORK = "+12125550123"  # America/New_York, UTC-5 in December
# 12:00 UTC: 15:00 in Istanbul (inside 08:00-21:00), 07:00 in New York (outside until 13:00 UTC).
NOON = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@asynccontextmanager
async def open_api(start: datetime = NOON, **settings: str) -> AsyncIterator[Api]:
    hours = {"sending_hours": "08:00-21:00", "batch_size": "10"}
    async with web_support.open_api(FakeClock(start), **(hours | settings)) as base:
        yield Api(base)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with open_api() as opened:
        yield opened


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def commercial(api: Api, to: str, content: str = "Sale", **more: Any) -> dict[str, Any]:
    status, body = await api.post("/api/v1/messages", {"to": to, "content": content, "category": "commercial"} | more)
    assert status == 201, body
    return dict(body)


async def events(api: Api, message_id: int) -> list[dict[str, Any]]:
    status, body = await api.get(f"/api/v1/messages/{message_id}/events")
    assert status == 200, body
    return list(body["data"])


async def test_a_message_due_outside_its_hours_waits_from_enqueue_and_is_not_claimed(api: Api) -> None:
    inside = await commercial(api, TURKEY, "tr")
    outside = await commercial(api, NEW_YORK, "us")

    assert (inside["waitingUntil"], inside["waitReason"]) == (None, None)
    assert outside["status"] == "pending"
    assert outside["waitReason"] == "sending-hours"
    assert at(outside["waitingUntil"]) == datetime(2026, 12, 5, 13, 0, tzinfo=UTC)  # 08:00 in New York
    assert MessageSchema().validate(outside) == {}
    for _ in range(3):  # batch after batch: the waiting message is not even read
        await api.run_once()
    assert [r.content for r in api.sms.requests] == ["tr"]
    assert all(outside["id"] not in claim for claim in api.repository.claims)
    _, again = await api.get(f"/api/v1/messages/{outside['id']}")
    assert (again["status"], again["attempts"], again["waitReason"]) == ("pending", 0, "sending-hours")
    assert await events(api, outside["id"]) == []

    await api.clock.advance((datetime(2026, 12, 5, 13, 0, tzinfo=UTC) - api.clock.now()).total_seconds())
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["tr", "us"]
    _, sent = await api.get(f"/api/v1/messages/{outside['id']}")
    assert (sent["status"], sent["attempts"], sent["waitingUntil"], sent["waitReason"]) == ("sent", 1, None, None)


async def test_a_message_claimed_after_its_hours_closed_is_put_back_by_the_gate() -> None:
    # 17:59 UTC is 20:59 in Istanbul: queued inside the window; the sender runs at 18:00 (21:00 there).
    async with open_api(datetime(2026, 12, 5, 17, 59, tzinfo=UTC)) as api:
        message = await commercial(api, TURKEY)
        assert message["waitReason"] is None
        await api.clock.advance(60)
        await api.run_once()

        assert api.sms.requests == []
        _, held = await api.get(f"/api/v1/messages/{message['id']}")
        assert (held["status"], held["attempts"], held["waitReason"]) == ("pending", 0, "sending-hours")
        assert at(held["waitingUntil"]) == datetime(2026, 12, 6, 5, 0, tzinfo=UTC)  # 08:00 in Istanbul
        [deferred] = await events(api, message["id"])
        assert deferred["outcome"] == "deferred"
        assert deferred["error"] == (
            "outside the sending hours 08:00-21:00: 21:00 in Europe/Istanbul; "
            "may go at 2026-12-06T05:00:00Z (08:00 there)"
        )
        registry = api.base.metrics.registry
        assert registry.get_sample_value("insider_send_attempts_total", {"outcome": "deferred"}) == 1

        claims = len(api.repository.claims)
        for _ in range(3):
            await api.run_once()
        assert all(message["id"] not in claim for claim in api.repository.claims[claims:])
        assert len(await events(api, message["id"])) == 1  # no event piles up

        await api.clock.advance((datetime(2026, 12, 6, 5, 0, tzinfo=UTC) - api.clock.now()).total_seconds())
        await api.run_once()
        assert [r.to for r in api.sms.requests] == [TURKEY]
        _, sent = await api.get(f"/api/v1/messages/{message['id']}")
        assert (sent["status"], sent["attempts"]) == ("sent", 1)


async def test_transactional_messages_keep_no_hours_by_default(api: Api) -> None:
    status, body = await api.post("/api/v1/messages", {"to": NEW_YORK, "content": "Code 1234"})
    assert status == 201
    assert body["waitReason"] is None and body["respectSendingHours"] is True
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["Code 1234"]


async def test_only_a_transactional_message_may_ignore_the_hours() -> None:
    async with open_api(sending_hours_for="transactional,commercial") as api:
        status, kept = await api.post("/api/v1/messages", {"to": NEW_YORK, "content": "kept"})
        assert (status, kept["waitReason"]) == (201, "sending-hours")
        status, urgent = await api.post(
            "/api/v1/messages", {"to": NEW_YORK, "content": "urgent", "respectSendingHours": False}
        )
        assert status == 201, urgent
        assert (urgent["waitReason"], urgent["respectSendingHours"]) == (None, False)
        status, refused = await api.post(
            "/api/v1/messages",
            {"to": NEW_YORK, "content": "x", "category": "commercial", "respectSendingHours": False},
        )
        assert status == 422
        assert refused["fields"] == {
            "respectSendingHours": ["respectSendingHours may be false only for transactional messages"]
        }
        await api.run_once()
        assert [r.content for r in api.sms.requests] == ["urgent"]


@pytest.mark.parametrize("value", ["false", 0, 1, None, "yes"])
async def test_respect_sending_hours_is_true_or_false(api: Api, value: Any) -> None:
    status, body = await api.post("/api/v1/messages", {"to": TURKEY, "content": "x", "respectSendingHours": value})
    assert status == 422, body
    assert set(body["fields"]) == {"respectSendingHours"}


async def test_a_batch_marks_each_item_and_names_a_commercial_opt_out(api: Api) -> None:
    items = [
        {"to": TURKEY, "content": "a", "category": "commercial"},
        {"to": NEW_YORK, "content": "b", "category": "commercial"},
    ]
    status, body = await api.post("/api/v1/messages/batch", {"messages": items})
    assert status == 201, body
    assert [m["waitReason"] for m in body["data"]] == [None, "sending-hours"]
    status, body = await api.post(
        "/api/v1/messages/batch",
        {
            "messages": [
                *items,
                {"to": NEW_YORK, "content": "c", "category": "commercial", "respectSendingHours": False},
            ]
        },
    )
    assert status == 422
    assert list(body["fields"]) == ["messages.2.respectSendingHours"]


async def test_the_due_time_is_send_at(api: Api) -> None:
    # 22:00 UTC is 17:00 in New York: no wait. 03:00 UTC the next day is 22:00 there: until 08:00.
    evening = await commercial(api, NEW_YORK, sendAt="2026-12-05T22:00:00Z")
    night = await commercial(api, NEW_YORK, sendAt="2026-12-06T03:00:00Z")
    assert evening["waitingUntil"] is None
    assert at(night["waitingUntil"]) == datetime(2026, 12, 6, 13, 0, tzinfo=UTC)
    assert night["sendAt"].startswith("2026-12-06T03:00:00")


async def test_without_sending_hours_nothing_waits() -> None:
    async with open_api(sending_hours="") as api:
        message = await commercial(api, NEW_YORK)
        assert message["waitReason"] is None
        await api.run_once()
        assert len(api.sms.requests) == 1


async def test_the_stats_and_the_metrics_count_the_waiting(api: Api) -> None:
    await commercial(api, NEW_YORK, "a")
    await commercial(api, NEW_YORK, "b")
    await commercial(api, TURKEY, "c")
    await api.clock.advance(5)  # past the counts' cache
    status, stats = await api.get("/api/v1/stats")
    assert status == 200
    assert stats["waiting"] == {"sending-hours": 2, "cap": 0}
    assert StatsSchema().validate(stats) == {}
    response = await api.client.get("/metrics")
    text = await response.text()
    assert 'insider_messages_waiting{reason="sending-hours"} 2.0' in text
    assert 'insider_messages_waiting{reason="cap"} 0.0' in text


async def test_swagger_declares_the_field_and_the_item(api: Api) -> None:
    status, spec = await api.get("/api/docs/swagger.json")
    assert status == 200
    definitions = spec["definitions"]
    enqueue = definitions["Enqueue"]["properties"]["respectSendingHours"]
    assert enqueue["type"] == "boolean" and enqueue["default"] is True
    assert "transactional" in enqueue["description"]
    item = definitions["Message"]["properties"]
    assert {"waitingUntil", "waitReason", "respectSendingHours"} <= set(item)
    assert "sending-hours" in definitions["Waiting"]["properties"]


async def test_a_waiting_message_is_seen_at_its_time_not_before(api: Api) -> None:
    outside = await commercial(api, NEW_YORK)
    await api.clock.advance((datetime(2026, 12, 5, 12, 59, 59, tzinfo=UTC) - api.clock.now()).total_seconds())
    await api.run_once()
    assert api.sms.requests == []
    await api.clock.advance(1)
    await api.run_once()
    assert [r.to for r in api.sms.requests] == [NEW_YORK]
    assert outside["id"] in api.repository.claims[-1]


async def test_a_message_still_waiting_at_its_valid_until_expires(api: Api) -> None:
    message = await commercial(api, NEW_YORK, validUntil="2026-12-05T12:30:00Z")
    assert message["waitReason"] == "sending-hours"
    await api.clock.advance(31 * 60)
    await api.run_once()
    _, expired = await api.get(f"/api/v1/messages/{message['id']}")
    assert (expired["status"], expired["waitingUntil"], expired["waitReason"]) == ("expired", None, None)
    assert api.sms.requests == []


async def test_a_waiting_message_keeps_its_time_and_is_judged_then_by_the_settings_in_force() -> None:
    clock = FakeClock(NOON)
    repository = ProbedRepository(clock)
    try:
        queued_under = SendingHoursPolicy(hours("08:00-21:00"), ["commercial"], "UTC")
        message = build_message(
            NEW_YORK,
            "Sale",
            send_at=None,
            priority=5,
            valid_until=None,
            now=clock.now(),
            max_length=160,
            category="commercial",
            sending_hours=queued_under,
        )
        (stored,) = (await repository.enqueue_many([message])).messages
        sms = InMemorySmsClient()
        # The hours switched off: the message still keeps its time.
        await BatchSender(repository, sms, None, clock, SenderOptions(batch_size=10)).run_batch()
        assert sms.requests == []
        # At its time, the hours in force then (from 09:00 in New York) hold it back again.
        await clock.advance(3600)
        now_in_force = SendingHoursGate(SendingHoursPolicy(hours("09:00-21:00"), ["commercial"], "UTC"))
        sender = BatchSender(repository, sms, None, clock, SenderOptions(batch_size=10), gates=[now_in_force])
        report = await sender.run_batch()
        assert (report.deferred, sms.requests) == (1, [])
        held = await repository.get(stored.id)
        assert held is not None and held.waiting_until == datetime(2026, 12, 5, 14, 0, tzinfo=UTC)
    finally:
        await repository.close()


def hours(text: str) -> SendingHours:
    window = parse_sending_hours(text)
    assert window is not None
    return window
