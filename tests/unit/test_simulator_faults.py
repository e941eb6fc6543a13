"""The simulated provider's fault modes: down, slow, hang, error status and throttle, switched over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from insider.domain import Outcome
from insider.simulator import SimulatedProvider, SimulatedSmsClient, create_control_app, create_simulator_app
from insider.simulator_control import Fault, FaultError, fault_from_json, parse_fault
from tests.unit.test_simulator import Sleeps

PHONE = "+905301234001"


class Port:
    """A stand-in for the webhook's listening port: records stops and starts."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def stop(self) -> None:
        self.calls.append("stop")

    async def start(self) -> None:
        self.calls.append("start")


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("up", Fault("up")),
        ("down", Fault("down")),
        ("hang", Fault("hang")),
        ("slow:5s", Fault("slow", latency_s=5.0)),
        ("error", Fault("error", status=503)),
        ("error:500", Fault("error", status=500)),
        ("throttle", Fault("throttle", retry_after_s=4.0)),
        ("throttle:2s", Fault("throttle", retry_after_s=2.0)),
    ],
)
def test_fault_modes_from_the_command_line(text: str, fault: Fault) -> None:
    assert parse_fault(text, retry_after_s=4.0) == fault


@pytest.mark.parametrize("text", ["sideways", "slow", "slow:soon", "error:200", "error:abc", "down:5s", "hang:1s"])
def test_a_fault_mode_that_cannot_be_used_is_refused(text: str) -> None:
    with pytest.raises(FaultError):
        parse_fault(text)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {},
        {"mode": "sideways"},
        {"mode": "error", "status": 200},
        {"mode": "error", "status": "503"},
        {"mode": "slow"},
        {"mode": "slow", "latency": "soon"},
        {"mode": "up", "colour": "red"},
    ],
)
def test_a_mode_body_that_cannot_be_used_is_refused(body: Any) -> None:
    with pytest.raises(FaultError):
        fault_from_json(body)


async def test_error_and_throttle_modes_answer_every_request_and_up_restores_the_options() -> None:
    client = SimulatedSmsClient(sleep=Sleeps())

    client.set_fault(Fault("error", status=503))
    failed = await client.send(PHONE, "x", "k1")
    client.set_fault(Fault("throttle", retry_after_s=2.5))
    throttled = await client.send(PHONE, "x", "k2")
    client.set_fault(Fault("up"))
    sent = await client.send(PHONE, "x", "k3")

    assert (failed.outcome, failed.status_code) == (Outcome.RETRY, 503)
    assert (throttled.outcome, throttled.status_code, throttled.retry_after_s) == (Outcome.RETRY, 429, 3.0)
    assert (sent.outcome, sent.status_code) == (Outcome.SENT, 202)
    assert [r.idempotency_key for r in client.received] == ["k3"]
    assert (client.counts["failed"], client.counts["rateLimited"], client.counts["accepted"]) == (1, 1, 1)


async def test_down_in_process_is_a_refused_connection_not_an_ambiguous_one() -> None:
    client = SimulatedSmsClient(sleep=Sleeps())
    client.set_fault(Fault("down"))

    result = await client.send(PHONE, "x", "k1")

    assert result.outcome is Outcome.RETRY and not result.ambiguous
    assert result.error is not None and "refused" in result.error
    assert len(client.received) == 0


async def test_slow_mode_takes_its_latency_for_every_answer() -> None:
    sleeps = Sleeps()
    client = SimulatedSmsClient(sleep=sleeps)
    client.set_fault(Fault("slow", latency_s=7.0))

    result = await client.send(PHONE, "x", "k1")

    assert result.outcome is Outcome.SENT
    assert sleeps.calls == [7.0]


async def test_hang_holds_a_request_undecided_until_the_mode_changes() -> None:
    client = SimulatedSmsClient(sleep=Sleeps())
    client.set_fault(Fault("hang"))

    held = asyncio.create_task(client.send(PHONE, "x", "k1"))
    done, _ = await asyncio.wait({held}, timeout=0.05)  # a bounded look: it must still be held
    assert not done and len(client.received) == 0 and client.held == 1
    client.set_fault(Fault("error", status=502))
    result = await asyncio.wait_for(held, 5)
    assert client.held == 0

    assert (result.outcome, result.status_code) == (Outcome.RETRY, 502)  # answered as the new mode says


async def test_the_mode_is_switched_and_shown_over_http() -> None:
    provider = SimulatedProvider(sleep=Sleeps())
    async with TestClient(TestServer(create_simulator_app(provider))) as client:
        state = await (await client.get("/simulator")).json()
        assert (state["mode"], state["listening"]) == ("up", True)

        switched = await client.post("/simulator/mode", json={"mode": "error", "status": 503})
        assert switched.status == 200
        assert (await switched.json())["status"] == 503
        answer = await client.post("/webhook", json={"to": PHONE, "content": "x"})
        assert answer.status == 503

        throttled = await client.post("/simulator/mode", json={"mode": "throttle", "retryAfter": "2s"})
        assert (await throttled.json())["retryAfter"] == "2s"
        answer = await client.post("/webhook", json={"to": PHONE, "content": "x"})
        assert (answer.status, answer.headers["Retry-After"]) == (429, "2")

        bad = await client.post("/simulator/mode", json={"mode": "sideways"})
        assert bad.status == 400 and "mode must be one of" in (await bad.json())["error"]
        # Down on the webhook's own port would cut the way back: refused, and nothing changes.
        down = await client.post("/simulator/down")
        assert down.status == 409 and "control port" in (await down.json())["error"]
        assert (await (await client.get("/simulator")).json())["mode"] == "throttle"

        up = await client.post("/simulator/up")
        assert (await up.json())["mode"] == "up"
        answer = await client.post("/webhook", json={"to": PHONE, "content": "x"})
        assert answer.status == 202
        counts = (await (await client.get("/messages")).json())["counts"]
        assert (counts["failed"], counts["rateLimited"], counts["accepted"]) == (1, 1, 1)


async def test_down_on_the_control_port_stops_the_webhooks_port_and_up_starts_it_again() -> None:
    provider = SimulatedProvider(sleep=Sleeps())
    port = Port()
    async with TestClient(TestServer(create_control_app(provider, port))) as control:
        assert (await control.post("/webhook", json={"to": PHONE, "content": "x"})).status in (404, 405)

        down = await (await control.post("/simulator/down")).json()
        again = await (await control.post("/simulator/mode", json={"mode": "down"})).json()
        assert (down["mode"], down["listening"], again["listening"]) == ("down", False, False)
        # Out of down into another fault: listening again, misbehaving otherwise.
        error = await (await control.post("/simulator/mode", json={"mode": "error"})).json()
        assert (error["mode"], error["status"], error["listening"]) == ("error", 503, True)
        await control.post("/simulator/up")

    assert port.calls == ["stop", "start"]
