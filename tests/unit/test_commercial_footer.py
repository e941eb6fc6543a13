"""INSIDER_COMMERCIAL_FOOTER through HTTP, on SQLite ``:memory:`` and a fake clock: the provider
receives it after a line break on commercial messages only, and it is counted from enqueue on
(encoding, segments, the limits' 422, the preview); files (``bulk``) count it too."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest

from insider.bulk import Limits, read_messages
from insider.config import load_settings
from insider.domain import Category, text_as_sent
from tests.unit.test_messages_api import PHONE, Api, open_api

FOOTER = "Reply STOP to opt out"  # 21 GSM-7 septets, 22 with the line break


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    async with AsyncExitStack() as stack:

        async def make(**settings: str) -> Api:
            return await stack.enter_async_context(open_api(**({"commercial_footer": FOOTER} | settings)))

        yield make


async def test_the_provider_receives_the_footer_on_commercial_messages_only(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await make_api()
    _, sale = await api.post("/api/v1/messages", {"to": PHONE, "content": "Sale today", "category": "commercial"})
    _, code = await api.post("/api/v1/messages", {"to": PHONE, "content": "Code 1234"})
    await api.run_once()

    assert sorted(r.content for r in api.sms.requests) == sorted([f"Sale today\n{FOOTER}", "Code 1234"])
    _, stored = await api.get(f"/api/v1/messages/{sale['id']}")
    assert stored["content"] == "Sale today"  # stored as given; the footer goes at send time
    assert stored["status"] == "sent"
    _, plain = await api.get(f"/api/v1/messages/{code['id']}")
    assert (plain["content"], plain["status"]) == ("Code 1234", "sent")


async def test_without_a_footer_commercial_messages_go_as_they_are(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(commercial_footer="")
    await api.post("/api/v1/messages", {"to": PHONE, "content": "Sale", "category": "commercial"})
    await api.run_once()
    assert [r.content for r in api.sms.requests] == ["Sale"]


async def test_a_footer_that_adds_a_segment_is_counted_at_enqueue_and_after_sending(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await make_api(content_max_length="1000")
    content = "a" * 150  # 150 septets: one segment alone, 172 with the footer: two
    _, sale = await api.post("/api/v1/messages", {"to": PHONE, "content": content, "category": "commercial"})
    _, code = await api.post("/api/v1/messages", {"to": PHONE, "content": content})
    assert (sale["encoding"], sale["segments"]) == ("GSM-7", 2)
    assert (code["encoding"], code["segments"]) == ("GSM-7", 1)
    _, batch = await api.post(
        "/api/v1/messages/batch", {"messages": [{"to": PHONE, "content": content, "category": "commercial"}]}
    )
    assert batch["data"][0]["segments"] == 2
    await api.run_once()
    await api.clock.advance(5)
    _, sent = await api.get(f"/api/v1/messages/{sale['id']}")
    assert (sent["status"], sent["segments"]) == ("sent", 2)  # the sender measures the text it sent
    _, stats = await api.get("/api/v1/stats")
    assert stats["segmentsSent"] == 2 + 1 + 2


async def test_a_footer_outside_gsm7_makes_a_commercial_message_ucs2(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(commercial_footer="İptal için RET yazın", content_max_length="1000")
    content = "b" * 60  # GSM-7 alone; 81 UTF-16 units in UCS-2 with the footer: two segments
    _, sale = await api.post("/api/v1/messages", {"to": PHONE, "content": content, "category": "commercial"})
    _, code = await api.post("/api/v1/messages", {"to": PHONE, "content": content})
    assert (sale["encoding"], sale["segments"]) == ("UCS-2", 2)
    assert (code["encoding"], code["segments"]) == ("GSM-7", 1)


async def test_the_limits_count_the_footer(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(max_segments="1", content_max_length="1000")
    status, body = await api.post("/api/v1/messages", {"to": PHONE, "content": "a" * 150, "category": "commercial"})
    assert status == 422
    assert body["fields"]["content"] == [
        "content takes 2 GSM-7 segments, over the limit of 1 (with the commercial footer)"
    ]
    status, _ = await api.post("/api/v1/messages", {"to": PHONE, "content": "a" * 150})
    assert status == 201
    status, body = await api.post(
        "/api/v1/messages/batch", {"messages": [{"to": PHONE, "content": "a" * 150, "category": "commercial"}]}
    )
    assert status == 422 and set(body["fields"]) == {"messages.0.content"}

    short = await make_api(content_max_length="160")
    status, body = await short.post("/api/v1/messages", {"to": PHONE, "content": "a" * 140, "category": "commercial"})
    assert status == 422
    assert body["fields"]["content"] == [
        "content is 162 characters, over the limit of 160 (with the commercial footer)"
    ]


async def test_the_preview_shows_the_text_as_sent(make_api: Callable[..., Awaitable[Api]]) -> None:
    api = await make_api(max_segments="1", content_max_length="1000")
    status, preview = await api.post(
        "/api/v1/messages/preview", {"content": "a" * 150, "category": "commercial", "to": PHONE}
    )
    assert status == 200, preview
    assert preview["text"] == "a" * 150 + "\n" + FOOTER
    assert (preview["characters"], preview["encoding"], preview["segments"]) == (172, "GSM-7", 2)
    assert preview["error"] == "content takes 2 GSM-7 segments, over the limit of 1 (with the commercial footer)"
    _, plain = await api.post("/api/v1/messages/preview", {"content": "a" * 150})
    assert (plain["text"], plain["segments"], plain["error"]) == ("a" * 150, 1, None)
    _, empty = await api.post("/api/v1/messages/preview", {"content": " ", "category": "commercial"})
    assert empty["error"] == "content is empty"


def test_a_file_counts_the_footer() -> None:
    stream = io.StringIO(f"to,content,category\n{PHONE},{'a' * 150},commercial\n{PHONE},{'a' * 150},\n")
    limits = Limits(1000, max_segments=1, footer=FOOTER)
    chunks = list(read_messages(stream, limits, now=datetime.now(UTC)))
    messages = [m for found, _ in chunks for m in found]
    rejected = [r for _, bad in chunks for r in bad]
    assert [(m.category, m.segments) for m in messages] == [(Category.TRANSACTIONAL, 1)]
    assert [(r.line, r.reason) for r in rejected] == [
        (2, "content takes 2 GSM-7 segments, over the limit of 1 (with the commercial footer)")
    ]


def test_the_setting_and_the_text_as_sent() -> None:
    settings = load_settings({"INSIDER_COMMERCIAL_FOOTER": f"  {FOOTER} "}, env_file=None)
    assert settings.commercial_footer == FOOTER
    assert load_settings({}, env_file=None).commercial_footer == ""
    assert text_as_sent("x", Category.COMMERCIAL, FOOTER) == f"x\n{FOOTER}"
    assert text_as_sent("x", Category.TRANSACTIONAL, FOOTER) == "x"
