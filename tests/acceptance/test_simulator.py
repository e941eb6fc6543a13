"""`python -m insider simulate` as a subprocess: a real HTTP peer with injected failures, 429s and idempotency."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from insider.adapters.webhook import WebhookSmsClient, open_http_session
from insider.domain import Outcome
from tests.acceptance.conftest import Service, free_port, log_events, service_env, wait_answering
from tests.conftest import eventually

PHONE = "+905301234001"


Simulator = Service  # a simulator runs as the same kind of subprocess; its base_url is the provider's


@pytest.fixture
def start_simulator(start_service: Callable[..., Service]) -> Callable[..., Simulator]:
    """Start ``python -m insider simulate`` on a free port with the given options; stopped after the test."""

    def start(*options: str) -> Simulator:
        port = str(free_port())
        return start_service("simulate", "--port", port, "--latency", "0", *options, port=port)

    return start


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session() as opened:
        yield opened


async def _healthy(session: aiohttp.ClientSession, simulator: Simulator) -> None:
    await wait_answering(session, simulator.process, simulator.log, simulator.base_url + "/healthz")


async def test_accepts_and_the_same_idempotency_key_gets_the_same_message_id(
    start_simulator: Callable[..., Simulator], session: aiohttp.ClientSession
) -> None:
    simulator = start_simulator()
    await _healthy(session, simulator)
    client = WebhookSmsClient(session, simulator.base_url + "/webhook", auth_key="", timeout_s=5)

    first = await client.send(PHONE, "Merhaba", "key-1")
    retried = await client.send(PHONE, "Merhaba", "key-1")
    other = await client.send(PHONE, "Merhaba", "key-2")

    assert (first.outcome, first.status_code) == (Outcome.SENT, 202)
    assert retried.provider_message_id == first.provider_message_id
    assert other.provider_message_id not in (None, first.provider_message_id)
    async with session.get(simulator.base_url + "/messages") as response:
        listed = await response.json()
    assert [m["idempotencyKey"] for m in listed["data"]] == ["key-2", "key-1"]
    assert listed["counts"]["accepted"] == 2 and listed["counts"]["replayed"] == 1

    simulator.process.send_signal(signal.SIGTERM)
    assert simulator.process.wait(timeout=20) == 0
    log = simulator.log()
    assert "nothing leaves this machine" in log
    assert PHONE not in log  # phone numbers are masked in its log too
    # The suggested command runs this very interpreter (the venv's), not whatever `python` is on the PATH.
    assert f"/webhook {sys.executable} -m insider" in log


async def test_injected_failures_are_seen_as_retries(
    start_simulator: Callable[..., Simulator], session: aiohttp.ClientSession
) -> None:
    simulator = start_simulator("--fail-rate", "1")
    await _healthy(session, simulator)

    result = await WebhookSmsClient(session, simulator.base_url + "/webhook", "", 5).send(PHONE, "content", "key")

    assert (result.outcome, result.status_code) == (Outcome.RETRY, 500)
    assert "simulated" in (result.error or "")


async def test_injected_rate_limits_give_retry_after(
    start_simulator: Callable[..., Simulator], session: aiohttp.ClientSession
) -> None:
    simulator = start_simulator("--rate-limit-rate", "1", "--retry-after", "3s")
    await _healthy(session, simulator)

    result = await WebhookSmsClient(session, simulator.base_url + "/webhook", "", 5).send(PHONE, "content", "key")

    assert (result.outcome, result.status_code, result.retry_after_s) == (Outcome.RETRY, 429, 3.0)


async def test_the_auth_key_is_checked(
    start_simulator: Callable[..., Simulator], session: aiohttp.ClientSession
) -> None:
    simulator = start_simulator("--auth-key", "s3cret")
    await _healthy(session, simulator)

    wrong = await WebhookSmsClient(session, simulator.base_url + "/", "nope", 5).send(PHONE, "content", "key")
    right = await WebhookSmsClient(session, simulator.base_url + "/", "s3cret", 5).send(PHONE, "content", "key")

    assert (wrong.outcome, wrong.status_code) == (Outcome.FAILED, 401)
    assert (right.outcome, right.status_code) == (Outcome.SENT, 202)
    assert "INSIDER_WEBHOOK_AUTH_KEY=<the --auth-key>" in simulator.log()
    assert "s3cret" not in simulator.log()


async def test_a_service_sending_to_a_failing_simulator_retries_with_backoff(
    start_simulator: Callable[..., Simulator], start_service: Any, session: aiohttp.ClientSession
) -> None:
    simulator = start_simulator("--fail-rate", "1")
    await _healthy(session, simulator)
    service: Service = start_service(
        webhook_url=simulator.base_url + "/webhook", send_interval="0.2s", retry_backoff="100ms", max_attempts="2"
    )

    await service.wait_answering(session)
    async with session.post(service.base_url + "/api/v1/messages", json={"to": PHONE, "content": "x"}) as response:
        assert response.status == 201
        message_id = (await response.json())["id"]

    async def given_up() -> bool:
        async with session.get(f"{service.base_url}/api/v1/messages/{message_id}") as response:
            return bool((await response.json())["status"] == "failed")

    # Two attempts, both answered 500: retried once after the backoff, then failed.
    await eventually(given_up, timeout_s=20, what="the message to fail after its attempts")
    async with session.get(f"{service.base_url}/api/v1/messages/{message_id}") as response:
        message = await response.json()
    assert message["attempts"] == 2
    assert message["lastError"].startswith("gave up after 2 attempts: HTTP 500")
    assert any(e.get("outcome") == "retry" for e in log_events(service.log()))
    async with session.get(simulator.base_url + "/messages") as response:
        assert (await response.json())["counts"]["failed"] == 2
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=20) == 0


async def test_the_simulator_posts_delivery_receipts_to_the_service(
    start_simulator: Callable[..., Simulator], start_service: Any, session: aiohttp.ClientSession
) -> None:
    service_port = str(free_port())
    receipts_url = f"http://127.0.0.1:{service_port}/api/v1/delivery-reports"
    simulator = start_simulator(
        "--dlr-url", receipts_url, "--dlr-token", "dlr-s3cret", "--dlr-delay", "100ms-400ms",
        "--undelivered-rate", "0.5",
    )  # fmt: skip
    await _healthy(session, simulator)
    assert f"Receipts  POST {receipts_url} after 100ms to 400ms, 50% undelivered" in simulator.log()
    service: Service = start_service(
        port=service_port,
        webhook_url=simulator.base_url + "/webhook",
        send_interval="0",
        batch_size="20",
        dlr_token="dlr-s3cret",
        database_url="sqlite:///insider.db",
    )
    await service.wait_answering(session)
    ids = []
    for i in range(12):
        async with session.post(service.base_url + "/api/v1/messages", json={"to": PHONE, "content": f"m{i}"}) as r:
            ids.append((await r.json())["id"])

    statuses: dict[int, str] = {}

    async def all_reported() -> bool:
        for message_id in ids:
            async with session.get(f"{service.base_url}/api/v1/messages/{message_id}") as response:
                statuses[message_id] = (await response.json())["status"]
        return set(statuses.values()) <= {"delivered", "undelivered"}

    await eventually(all_reported, timeout_s=30, what="every message to get its receipt")
    assert set(statuses.values()) == {"delivered", "undelivered"}  # 12 draws at 50%: both, but for 1 in 2048
    async with session.get(simulator.base_url + "/messages") as response:
        receipts = (await response.json())["receipts"]
    assert receipts["delivered"] + receipts["undelivered"] == 12 and receipts["failed"] == 0
    assert "dlr-s3cret" not in simulator.log() + service.log()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=20) == 0


@pytest.mark.postgres
@pytest.mark.redis
async def test_receipts_racing_the_outcome_write_all_land_on_postgres_and_redis(
    start_simulator: Callable[..., Simulator],
    start_service: Any,
    session: aiohttp.ClientSession,
    fresh_postgres_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Receipts 0 to 30 ms after the provider's answer: some arrive before the service records
    the send (they wait; 8 of 60 in a run here), the rest after (found through Redis); every
    message ends final, with one attempt and one receipt in its history."""
    service_port = str(free_port())
    simulator = start_simulator(
        "--dlr-url", f"http://127.0.0.1:{service_port}/api/v1/delivery-reports?token=t0k",
        "--dlr-delay", "0s-30ms", "--undelivered-rate", "0.2",
    )  # fmt: skip
    await _healthy(session, simulator)
    service: Service = start_service(
        port=service_port,
        webhook_url=simulator.base_url + "/webhook",
        database_url=fresh_postgres_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        send_interval="0",
        batch_size="50",
        dlr_token="t0k",
    )
    await service.wait_answering(session)
    for i in range(60):
        async with session.post(service.base_url + "/api/v1/messages", json={"to": PHONE, "content": f"m{i}"}) as r:
            assert r.status == 201

    async def all_final() -> bool:
        async with session.get(service.base_url + "/api/v1/stats") as response:
            counts = (await response.json())["counts"]
        return bool(counts["delivered"] + counts["undelivered"] == 60)

    await eventually(all_final, timeout_s=40, what="every message to get its receipt")
    async with await psycopg.AsyncConnection.connect(fresh_postgres_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE kind = 'attempt'), count(*) FILTER (WHERE kind = 'receipt') "
            "FROM insider_message_events"
        )
        assert await cur.fetchone() == (60, 60)
        cur = await conn.execute("SELECT count(*) FROM insider_pending_receipts")
        assert await cur.fetchone() == (0,)
    assert "t0k" not in service.log() + simulator.log()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=20) == 0


async def test_down_on_the_control_port_refuses_connections_until_up(
    start_simulator: Callable[..., Simulator], session: aiohttp.ClientSession
) -> None:
    control_url = f"http://127.0.0.1:{free_port()}"
    simulator = start_simulator("--control-port", control_url.rsplit(":", 1)[1], "--fault", "error:502")
    await _healthy(session, simulator)
    client = WebhookSmsClient(session, simulator.base_url + "/webhook", auth_key="", timeout_s=5)
    assert f"Control   GET {control_url}/simulator" in simulator.log()
    assert "Mode      error: every request answered 502" in simulator.log()

    failed = await client.send(PHONE, "x", "key-1")
    async with session.post(control_url + "/simulator/down") as response:
        assert (await response.json())["listening"] is False
    refused = await client.send(PHONE, "x", "key-1")
    async with session.post(control_url + "/simulator/up") as response:
        assert (await response.json())["mode"] == "up"
    sent = await client.send(PHONE, "x", "key-1")

    assert (failed.outcome, failed.status_code) == (Outcome.RETRY, 502)
    # Refused: certainly not taken (not an ambiguous outcome), so a route may move to its next provider.
    assert (refused.outcome, refused.status_code, refused.ambiguous) == (Outcome.RETRY, None, False)
    assert refused.error is not None and refused.error.startswith("connection error")
    assert (sent.outcome, sent.status_code) == (Outcome.SENT, 202)
    async with session.get(control_url + "/simulator") as response:
        state = await response.json()
    assert (state["mode"], state["listening"], state["counts"]["failed"], state["counts"]["accepted"]) == (
        "up", True, 1, 1
    )  # fmt: skip


async def test_a_simulator_holding_requests_in_hang_mode_stops_at_once(
    start_simulator: Callable[..., Simulator], session: aiohttp.ClientSession
) -> None:
    simulator = start_simulator("--fault", "hang")
    await _healthy(session, simulator)
    assert "Mode      hang: no answer until the mode changes" in simulator.log()
    held = asyncio.create_task(WebhookSmsClient(session, simulator.base_url + "/", "", 30).send(PHONE, "x", "k"))

    async def holding() -> bool:
        async with session.get(simulator.base_url + "/simulator") as response:
            return bool((await response.json())["held"] == 1)

    await eventually(holding, what="the request held")
    stopping_at = time.monotonic()
    simulator.process.send_signal(signal.SIGTERM)
    assert simulator.process.wait(timeout=20) == 0
    assert time.monotonic() - stopping_at < 5  # the held request is cut, not waited for (aiohttp's 60 s)
    result = await asyncio.wait_for(held, 10)
    assert result.outcome is Outcome.RETRY and result.ambiguous  # it may have been taken: the same key later


def test_down_at_start_without_a_control_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "insider", "simulate", "--port", str(free_port()), "--fault", "down"],
        cwd=tmp_path, env=service_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "insider: error: --fault down needs --control-port PORT, the port to bring the webhook up again on"
    ]
