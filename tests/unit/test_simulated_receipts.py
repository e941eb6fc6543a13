"""The simulated provider's delivery receipts: when, what, batched, and to where (fake clock, no waiting)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from insider.clock import FakeClock
from insider.simulator import ReceiptOptions, ReceiptReporter, SimulatedSmsClient, http_receipt_sink

PHONE = "+905301234001"


class Sink:
    """Records every call: one list of receipts each."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.fail = False

    async def __call__(self, receipts: list[dict[str, Any]]) -> None:
        if self.fail:
            raise ConnectionError("the service is not up")
        self.calls.append(receipts)

    @property
    def receipts(self) -> list[dict[str, Any]]:
        return [r for call in self.calls for r in call]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def reporting(reporter: ReceiptReporter) -> AsyncIterator[ReceiptReporter]:
    """The reporter running in a task the test owns, cancelled on the way out."""
    task = asyncio.create_task(reporter.run())
    try:
        yield reporter
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_each_accepted_message_gets_a_receipt_within_the_delay() -> None:
    clock, sink = FakeClock(), Sink()
    reporter = ReceiptReporter(sink, ReceiptOptions(delay_s=(1.0, 5.0), undelivered_rate=0.0), clock=clock)
    client = SimulatedSmsClient(sleep=clock.sleep, reporter=reporter)
    async with reporting(reporter):
        await _each_accepted_message_gets_a_receipt(clock, sink, reporter, client)


async def _each_accepted_message_gets_a_receipt(
    clock: FakeClock, sink: Sink, reporter: ReceiptReporter, client: SimulatedSmsClient
) -> None:
    sends = [asyncio.create_task(client.send(PHONE, f"m{i}", f"key-{i}")) for i in range(20)]
    await clock.advance(0.1)
    ids = [str((await s).provider_message_id) for s in sends]
    replay = asyncio.create_task(client.send(PHONE, "m0", "key-0"))  # not a new message: no second receipt
    await clock.advance(0.1)
    assert (await replay).provider_message_id == ids[0]

    await clock.advance(0.7)
    assert sink.receipts == []  # none before the shortest delay
    await clock.advance(5.0)
    await settle()

    assert sorted(r["messageId"] for r in sink.receipts) == sorted(ids)
    assert {r["status"] for r in sink.receipts} == {"delivered"}
    assert all(datetime.fromisoformat(r["doneAt"]).tzinfo is not None for r in sink.receipts)
    assert len(sink.calls) < 20  # those due together went together
    assert reporter.counts["delivered"] == 20 and reporter.scheduled == 0


async def test_a_share_is_undelivered_with_an_error_code() -> None:
    clock, sink = FakeClock(), Sink()
    options = ReceiptOptions(delay_s=(0.0, 0.0), undelivered_rate=0.3)
    reporter = ReceiptReporter(sink, options, clock=clock, rng=random.Random(3))
    async with reporting(reporter):
        for i in range(200):
            reporter.schedule(f"p-{i}")
        await clock.advance(0.5)
        await settle()

    undelivered = [r for r in sink.receipts if r["status"] == "undelivered"]
    assert len(sink.receipts) == 200
    assert 40 <= len(undelivered) <= 80
    assert all(r["errorCode"] == "1" for r in undelivered)


async def test_a_failing_sink_is_counted_and_the_reporter_goes_on() -> None:
    clock, sink = FakeClock(), Sink()
    reporter = ReceiptReporter(sink, ReceiptOptions(delay_s=(1.0, 1.0), undelivered_rate=0.0), clock=clock)
    async with reporting(reporter):
        sink.fail = True
        reporter.schedule("p-1")
        await clock.advance(1.5)
        await settle()
        sink.fail = False
        reporter.schedule("p-2")
        await clock.advance(1.5)
        await settle()

    assert [r["messageId"] for r in sink.receipts] == ["p-2"]
    assert reporter.counts == {"delivered": 1, "undelivered": 0, "failed": 1}


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="delay_s"):
        ReceiptOptions(delay_s=(5.0, 1.0))
    with pytest.raises(ValueError, match="undelivered_rate"):
        ReceiptOptions(undelivered_rate=1.5)


async def test_the_http_sink_posts_one_array_with_the_token_and_retries_a_5xx() -> None:
    seen: list[tuple[str | None, Any]] = []
    answers = iter([503, 200])

    async def receive(request: web.Request) -> web.Response:
        seen.append((request.headers.get("x-ins-auth-key"), await request.json()))
        return web.json_response({}, status=next(answers))

    app = web.Application()
    app.router.add_post("/api/v1/delivery-reports", receive)
    server = TestServer(app)
    await server.start_server()
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session:
            post = http_receipt_sink(session, str(server.make_url("/api/v1/delivery-reports")), "T0K", attempts=2)
            await post([{"messageId": "a", "status": "delivered"}, {"messageId": "b", "status": "undelivered"}])
    finally:
        await server.close()

    assert len(seen) == 2  # the 503 was tried again
    assert seen[1] == ("T0K", [{"messageId": "a", "status": "delivered"}, {"messageId": "b", "status": "undelivered"}])


async def test_the_http_sink_gives_up_on_a_refusal() -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "the token is not valid"}, status=401)

    app = web.Application()
    app.router.add_post("/r", refuse)
    server = TestServer(app)
    await server.start_server()
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session:
            post = http_receipt_sink(session, str(server.make_url("/r")), "wrong")
            with pytest.raises(RuntimeError, match="HTTP 401"):
                await post([{"messageId": "a", "status": "delivered"}])
    finally:
        await server.close()
