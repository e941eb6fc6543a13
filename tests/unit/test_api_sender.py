"""The sender over HTTP: its state and why it waits, commands applied in order, a closed supervisor."""

from __future__ import annotations

import asyncio

from insider.web.schemas import SenderSchema
from insider.web.services import SERVICES
from tests.unit.support import HeldProvider
from tests.unit.web_support import Api

PHONE = "+905301234567"


async def test_the_sender_says_its_state_and_why_the_next_batch_waits(api: Api) -> None:
    status = await (await api.client.get("/api/v1/sender")).json()
    assert SenderSchema().validate(status) == {}
    assert (status["state"], status["waitReason"], status["nextTickAt"]) == ("idle", None, None)

    await api.client.post("/api/v1/messages/start")
    await api.clock.settle()
    status = await (await api.client.get("/api/v1/sender")).json()
    assert SenderSchema().validate(status) == {}
    assert status["state"] == "running" and status["running"] is True
    assert status["waitReason"].startswith("rate: one batch every 120s")
    assert status["nextTickAt"] is not None


async def test_stop_start_stop_over_http_during_a_slow_send_ends_stopped(api: Api) -> None:
    await api.repository.enqueue(PHONE, "slow")
    held = HeldProvider()
    api.sms.responder = held
    await api.client.post("/api/v1/messages/start")
    for _ in range(100):
        if held.in_flight:
            break
        await asyncio.sleep(0.01)
    assert held.in_flight == 1

    answers = []
    for command in ("stop", "start", "stop"):
        response = await api.client.post(f"/api/v1/messages/{command}")
        answers.append((await response.json())["running"])
    assert answers == [False, True, False]
    status = await (await api.client.get("/api/v1/sender")).json()
    assert (status["running"], status["state"]) == (False, "idle")
    assert held.cancelled >= 1
    sent = len(api.sms.requests)
    await api.clock.advance(600)
    assert len(api.sms.requests) == sent  # nothing runs on after the last stop


async def test_start_once_the_supervisor_is_closed_is_a_json_503(api: Api) -> None:
    supervisor = api.client.app[SERVICES].get().supervisor
    await supervisor.close()
    response = await api.client.post("/api/v1/messages/start")
    assert response.status == 503
    assert response.content_type == "application/json"
    assert "shutting down" in (await response.json())["error"]
    response = await api.client.post("/api/v1/messages/stop")  # harmless: it changes nothing
    answer = {"running": False, "result": "already stopped", "previousState": "closed", "state": "closed"}
    assert (response.status, await response.json()) == (200, answer)
