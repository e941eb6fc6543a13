"""`simulate --smpp-port N` as a subprocess, reached by the SMPP client: binds, answers, receipts, down and up."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from insider.adapters.smpp import SmppSmsClient
from insider.domain import Outcome
from tests.acceptance.conftest import Service, free_port, log_events, wait_answering
from tests.conftest import eventually

PHONE = "+905301234001"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


async def _simulator(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, *options: str
) -> tuple[Service, int]:
    port, smpp_port = str(free_port()), free_port()
    simulator = start_service(
        "simulate", "--port", port, "--smpp-port", str(smpp_port), "--latency", "0", *options, port=port
    )
    await wait_answering(session, simulator.process, simulator.log, simulator.base_url + "/healthz")
    return simulator, smpp_port


class Running:
    """A client bound to the simulator, run in a task of the test's own."""

    def __init__(self, client: SmppSmsClient) -> None:
        self.client = client
        self.task = asyncio.create_task(client.run())

    async def stop(self) -> None:
        self.client.finish()
        await asyncio.wait_for(self.task, 20)


async def test_the_simulated_smsc_binds_takes_messages_and_sends_receipts(
    start_service: Callable[..., Service], session: aiohttp.ClientSession
) -> None:
    simulator, smpp_port = await _simulator(
        start_service, session, "--dlr-delay", "100ms", "--undelivered-rate", "0", "--smpp-system-id", "insider"
    )
    got: list[dict[str, Any]] = []

    async def receipts(batch: list[dict[str, Any]]) -> None:
        got.extend(batch)

    running = Running(
        SmppSmsClient("sim", "127.0.0.1", smpp_port, "insider", "secret", source="INSIDER", receipts=receipts)
    )
    try:
        await eventually(lambda: running.client.state == "bound", what="the bind")
        short = await running.client.send(PHONE, "Merhaba", "k1")
        long = await running.client.send(PHONE, "Çağrı " * 30, "k2")  # UCS-2, three parts
        assert (short.outcome, long.outcome) == (Outcome.SENT, Outcome.SENT)
        await eventually(lambda: len(got) == 2, what="both receipts")
    finally:
        await running.stop()

    assert {r["messageId"] for r in got} == {short.provider_message_id, long.provider_message_id}
    assert {r["status"] for r in got} == {"DELIVRD"}
    async with session.get(simulator.base_url + "/smsc") as response:
        state = await response.json()
    assert state["counts"] | {"binds": 1} == {
        "binds": 1,
        "bindsRefused": 0,
        "accepted": 4,  # one, and three parts
        "failed": 0,
        "throttled": 0,
        "receiptsSent": 2,  # one per message: asked on the last part only
        "receiptsRefused": 0,
        "receiptsLost": 0,
        "repliesSent": 0,
    }
    simulator.process.send_signal(signal.SIGTERM)
    assert simulator.process.wait(timeout=20) == 0
    log = simulator.log()
    assert f"smpp://127.0.0.1:{smpp_port}" in log
    assert f'Bind to it: an smpp provider with host = "127.0.0.1", port = {smpp_port}' in log
    assert PHONE not in log


async def test_the_simulated_smsc_throttles_and_fails_on_request(
    start_service: Callable[..., Service], session: aiohttp.ClientSession
) -> None:
    _, throttling_port = await _simulator(start_service, session, "--rate-limit-rate", "1")
    _, failing_port = await _simulator(start_service, session, "--fail-rate", "1")
    throttling = Running(SmppSmsClient("a", "127.0.0.1", throttling_port, "insider", "pw", source="INSIDER"))
    failing = Running(SmppSmsClient("b", "127.0.0.1", failing_port, "insider", "pw", source="INSIDER"))
    try:
        await eventually(lambda: throttling.client.state == failing.client.state == "bound", what="the binds")
        throttled = await throttling.client.send(PHONE, "hello", "k")
        failed = await failing.client.send(PHONE, "hello", "k")
    finally:
        await throttling.stop()
        await failing.stop()

    assert (throttled.outcome, throttled.throttled, throttled.ambiguous) == (Outcome.RETRY, True, False)
    assert "ESME_RTHROTTLED" in (throttled.error or "")
    assert (failed.outcome, failed.throttled, failed.ambiguous) == (Outcome.RETRY, False, False)
    assert "ESME_RSYSERR" in (failed.error or "")


async def test_the_simulated_smsc_goes_down_and_up_again(
    start_service: Callable[..., Service], session: aiohttp.ClientSession
) -> None:
    simulator, smpp_port = await _simulator(start_service, session)
    running = Running(
        SmppSmsClient(
            "sim",
            "127.0.0.1",
            smpp_port,
            "insider",
            "pw",
            source="INSIDER",
            reconnect_backoff_s=0.1,
            reconnect_backoff_max_s=0.2,
        )
    )
    try:
        await eventually(lambda: running.client.state == "bound", what="the bind")
        async with session.post(simulator.base_url + "/smsc/down") as response:
            assert (await response.json())["state"] == "down"
        await eventually(lambda: running.client.state != "bound", what="the bind dropped")
        result = await running.client.send(PHONE, "hello", "k")
        assert (result.outcome, result.ambiguous) == (Outcome.RETRY, False)
        async with session.post(simulator.base_url + "/smsc/up") as response:
            assert (await response.json())["state"] == "up"
        await eventually(lambda: running.client.state == "bound", what="the bind again")
        assert (await running.client.send(PHONE, "hello", "k")).outcome is Outcome.SENT
    finally:
        await running.stop()
    events = [e["event"] for e in log_events(simulator.log())]
    assert "simulated SMSC down: binds refused" in events
    assert "simulated SMSC up: binds accepted" in events


async def test_a_bind_with_another_system_id_is_dropped(
    start_service: Callable[..., Service], session: aiohttp.ClientSession
) -> None:
    simulator, smpp_port = await _simulator(start_service, session, "--smpp-system-id", "insider")
    running = Running(SmppSmsClient("sim", "127.0.0.1", smpp_port, "intruder", "pw", source="INSIDER"))
    try:

        async def refused() -> bool:
            async with session.get(simulator.base_url + "/smsc") as response:
                return bool((await response.json())["counts"]["bindsRefused"])

        await eventually(refused, what="the bind refused")
    finally:
        await running.stop()
