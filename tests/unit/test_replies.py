"""The replies service with a fake store: what it asks the store to do, what it counts and logs; and the SMPP
callback that hands it a provider's replies."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog.testing

from insider.domain import Category, NewMessage
from insider.inbound import Inbound, Reply
from insider.keywords import Keywords
from insider.metrics import Metrics
from insider.ports import RecordedReply, ReplyPage
from insider.replies import Replies, bind_inbound

PHONE = "+905301234567"
AT = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


@dataclass
class FakeStore:
    """Records what it was asked; a provider id seen before is replayed."""

    recorded: list[tuple[Inbound, str | None, str, NewMessage | None]] = field(default_factory=list)
    ids: dict[tuple[str | None, str], Reply] = field(default_factory=dict)

    async def record_inbound(
        self, inbound: Inbound, action: str | None, scope: str, confirmation: NewMessage | None
    ) -> RecordedReply:
        key = (inbound.provider, inbound.provider_message_id or "")
        if inbound.provider_message_id and key in self.ids:
            return RecordedReply(self.ids[key], replayed=True)
        self.recorded.append((inbound, action, scope, confirmation))
        reply = Reply(
            len(self.recorded),
            inbound.from_phone,
            inbound.text,
            AT,
            action,
            inbound.to_phone,
            inbound.provider,
            inbound.provider_message_id,
        )
        if inbound.provider_message_id:
            self.ids[key] = reply
        return RecordedReply(reply)

    async def list_inbound(self, limit: int, cursor: str | None = None, from_phone: str | None = None) -> ReplyPage:
        return ReplyPage([], None)


def replies(store: FakeStore, metrics: Metrics | None = None, **options: Any) -> Replies:
    return Replies(store, Keywords(), observer=metrics, **options)


async def test_a_keyword_is_recorded_with_its_action_scope_and_confirmation() -> None:
    store = FakeStore()
    service = replies(store, opt_out_scope="commercial", opt_out_reply="Bye", opt_in_reply="Hi again")
    await service.receive(Inbound(PHONE, "ıptal"))
    await service.receive(Inbound(PHONE, "Başla"))
    await service.receive(Inbound(PHONE, "thanks"))
    [(_, out, scope, bye), (_, back, _, hi), (_, nothing, _, none)] = store.recorded
    assert (out, scope, back, nothing, none) == ("opt-out", "commercial", "opt-in", None, None)
    assert bye is not None and hi is not None
    assert (bye.recipient_phone, bye.content, bye.category) == (PHONE, "Bye", Category.TRANSACTIONAL)
    assert bye.consent_reply and hi.consent_reply and hi.content == "Hi again"
    # An answer to what the sender just wrote: first in the queue, and at any hour.
    assert (bye.priority, bye.respect_sending_hours) == (9, False)


async def test_no_confirmation_text_means_none_queued() -> None:
    store = FakeStore()
    await replies(store).receive(Inbound(PHONE, "STOP"))
    assert store.recorded[0][3] is None


async def test_counted_once_by_action_even_when_the_provider_sends_it_again() -> None:
    store, metrics = FakeStore(), Metrics()
    service = replies(store, metrics)
    replayed = [
        (await service.receive(Inbound(PHONE, text, provider_message_id=sid))).replayed
        for text, sid in (("STOP", "a"), ("STOP", "a"), ("START", "b"), ("hi", None), ("hi", None))
    ]
    assert replayed == [False, True, False, False, False]
    exposition = metrics.exposition().decode()
    assert 'insider_inbound_replies_total{action="opt-out"} 1.0' in exposition
    assert 'insider_inbound_replies_total{action="opt-in"} 1.0' in exposition
    assert 'insider_inbound_replies_total{action="none"} 2.0' in exposition


async def test_the_smpp_callback_hands_replies_over_under_the_providers_name() -> None:
    store = FakeStore()
    take = bind_inbound("carrier", replies(store), "TR")
    await take({"from": "+905301234567", "to": "INSIDER", "text": "STOP"})
    await take({"from": "05301234567", "to": "INSIDER", "text": "national, in the region"})
    await take({"from": "905301234567", "to": "4545", "text": "international digits without their +"})
    assert [(i.from_phone, i.to_phone, i.provider) for i, *_ in store.recorded] == [
        (PHONE, "INSIDER", "carrier"),
        (PHONE, "INSIDER", "carrier"),
        (PHONE, "4545", "carrier"),
    ]
    assert store.recorded[0][1] == "opt-out"


@pytest.mark.parametrize("sender", ["INFO", "", "12"])
async def test_an_smpp_reply_from_no_phone_number_is_logged_masked_and_dropped(sender: str) -> None:
    store = FakeStore()
    take = bind_inbound("carrier", replies(store), "")
    with structlog.testing.capture_logs() as logs:
        await take({"from": sender, "to": "INSIDER", "text": "STOP"})
    assert store.recorded == []
    [line] = [e for e in logs if e["event"].startswith("SMPP reply that cannot be taken")]
    assert line["provider"] == "carrier" and list(line["problems"]) == ["from"]


async def test_each_reply_is_logged_with_its_numbers_masked_and_not_its_text() -> None:
    store = FakeStore()
    with structlog.testing.capture_logs() as logs:
        await replies(store).receive(Inbound(PHONE, "STOP", "+12125550123", "carrier", "SM1"))
    [line] = [e for e in logs if e["event"] == "reply received"]
    assert (line["sender"], line["to"], line["action"], line["provider"]) == (
        "+905*******67",
        "+121******23",
        "opt-out",
        "carrier",
    )
    assert PHONE not in repr(logs) and "text" not in line
