"""Replies through the running service (a subprocess): a STOP posted as Twilio posts it keeps every later message
from the provider, START lets them go again, and the confirmations reach the provider all the same."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.acceptance.conftest import Service, start_simulator
from tests.conftest import eventually

TOKEN = "dlr-token-for-replies"
PHONE = "+905301234567"
OTHER = "+905301234568"
BYE = "You will get no more messages. Reply START to come back."
WELCOME = "Welcome back."


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


async def _reply(session: aiohttp.ClientSession, service: Service, body: str) -> dict[str, Any]:
    fields = {"From": PHONE, "To": "+12125550123", "Body": body, "MessageSid": f"SM-{body}", "NumMedia": "0"}
    async with session.post(f"{service.base_url}/api/v1/inbound?token={TOKEN}", data=fields) as response:
        assert response.status == 201, await response.text()
        assert response.content_type == "application/json"
        return dict(await response.json())


async def _queue(session: aiohttp.ClientSession, service: Service, to: str, content: str, category: str) -> int:
    body = {"to": to, "content": content, "category": category}
    async with session.post(service.base_url + "/api/v1/messages", json=body) as response:
        assert response.status == 201, await response.text()
        return int((await response.json())["id"])


async def _status(session: aiohttp.ClientSession, service: Service, message_id: int) -> str:
    async with session.get(f"{service.base_url}/api/v1/messages/{message_id}") as response:
        return str((await response.json())["status"])


async def _received(session: aiohttp.ClientSession, simulator: Service) -> list[tuple[str, str]]:
    async with session.get(simulator.base_url + "/messages") as response:
        return [(m["to"], m["content"]) for m in reversed((await response.json())["data"])]


async def test_stop_by_form_keeps_messages_from_the_provider_and_start_lets_them_go(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    simulator = await start_simulator(start_service, session)
    service = start_service(
        database_url=f"sqlite:///{tmp_path / 'insider.db'}",
        webhook_url=simulator.base_url + "/webhook",
        dlr_token=TOKEN,
        send_interval="0",
        batch_size="10",
        opt_out_reply=BYE,
        opt_in_reply=WELCOME,
    )
    await service.wait_answering(session)

    stop = await _reply(session, service, " İptal ")
    assert (stop["from"], stop["action"], stop["text"]) == (PHONE, "opt-out", " İptal ")
    commercial = await _queue(session, service, PHONE, "Kampanya: %20 indirim", "commercial")
    code = await _queue(session, service, PHONE, "Kodunuz 123456", "transactional")  # scope all: this one too
    elsewhere = await _queue(session, service, OTHER, "Kampanya: %20 indirim", "commercial")

    async def settled() -> bool:
        return await _status(session, service, elsewhere) in ("sent", "delivered") and (PHONE, BYE) in (
            await _received(session, simulator)
        )

    await eventually(settled, timeout_s=20, what="the other number's message and the confirmation sent")
    assert await _status(session, service, commercial) == "suppressed"
    assert await _status(session, service, code) == "suppressed"

    start = await _reply(session, service, "BAŞLA")
    assert start["action"] == "opt-in"
    again = await _queue(session, service, PHONE, "Yeni kampanya", "commercial")

    async def sent_again() -> bool:
        return await _status(session, service, again) in ("sent", "delivered")

    await eventually(sent_again, timeout_s=20, what="the message after the opt-in sent")
    await eventually(lambda: _has(session, simulator, (PHONE, WELCOME)), timeout_s=20, what="the opt-in's confirmation")
    received = await _received(session, simulator)
    assert sorted(received) == sorted(
        [(PHONE, BYE), (OTHER, "Kampanya: %20 indirim"), (PHONE, WELCOME), (PHONE, "Yeni kampanya")]
    )
    # Nothing suppressed ever reached the provider, and it stays so.
    assert await _status(session, service, commercial) == "suppressed"

    async with session.get(service.base_url + "/api/v1/inbound") as response:
        listed = await response.json()
    assert [(r["text"], r["action"]) for r in listed["data"]] == [("BAŞLA", "opt-in"), (" İptal ", "opt-out")]
    async with session.get(service.base_url + "/metrics") as response:
        metrics = await response.text()
    assert 'insider_inbound_replies_total{action="opt-out"} 1.0' in metrics
    assert PHONE not in service.log()


async def _has(session: aiohttp.ClientSession, simulator: Service, item: tuple[str, str]) -> bool:
    return item in await _received(session, simulator)
