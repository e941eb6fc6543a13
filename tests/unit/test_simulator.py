"""The simulated provider: the in-process SmsClient (no real waiting) and its HTTP app."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from insider.domain import Outcome
from insider.simulator import (
    LISTED_MESSAGES,
    SimulatedProvider,
    SimulatedSmsClient,
    SimulatorOptions,
    create_simulator_app,
)

PHONE = "+905301234001"


class Sleeps:
    """An injected sleep that records what it was asked to wait and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


async def test_accepts_with_a_fresh_message_id_after_a_little_latency() -> None:
    sleeps = Sleeps()
    client = SimulatedSmsClient(sleep=sleeps)

    first = await client.send(PHONE, "Merhaba", "key-1")
    second = await client.send(PHONE, "Merhaba", "key-2")

    for result in (first, second):
        assert (result.outcome, result.status_code, result.error) == (Outcome.SENT, 202, None)
        assert result.provider_message_id is not None
        assert uuid.UUID(result.provider_message_id)
    assert first.provider_message_id != second.provider_message_id
    assert len(sleeps.calls) == 2
    assert all(0.02 <= s <= 0.05 for s in sleeps.calls)


async def test_the_same_idempotency_key_gets_the_same_message_id() -> None:
    client = SimulatedSmsClient(sleep=Sleeps())

    first = await client.send(PHONE, "once", "same-key")
    again = await client.send(PHONE, "once", "same-key")

    assert again.outcome is Outcome.SENT
    assert again.provider_message_id == first.provider_message_id
    assert len(client.received) == 1  # one message, not two
    assert client.counts["replayed"] == 1


async def test_injected_failures_are_retries() -> None:
    client = SimulatedSmsClient(SimulatorOptions(fail_rate=1.0), sleep=Sleeps())

    result = await client.send(PHONE, "content", "key")

    assert (result.outcome, result.status_code) == (Outcome.RETRY, 500)
    assert result.error is not None and result.error.startswith("HTTP 500")
    assert client.received == type(client.received)()  # nothing accepted


async def test_injected_rate_limits_carry_retry_after() -> None:
    client = SimulatedSmsClient(SimulatorOptions(rate_limit_rate=1.0, retry_after_s=2.5), sleep=Sleeps())

    result = await client.send(PHONE, "content", "key")

    assert (result.outcome, result.status_code, result.retry_after_s) == (Outcome.RETRY, 429, 3.0)


async def test_a_retry_after_a_failure_can_succeed_with_the_same_key() -> None:
    # With a seeded generator the draws are known: some fail, the rest go through.
    client = SimulatedSmsClient(SimulatorOptions(fail_rate=0.5), sleep=Sleeps(), rng=random.Random(7))

    outcomes = [await client.send(PHONE, "content", "key") for _ in range(20)]

    assert {r.outcome for r in outcomes} == {Outcome.RETRY, Outcome.SENT}
    ids = {r.provider_message_id for r in outcomes if r.outcome is Outcome.SENT}
    assert len(ids) == 1  # once accepted, the key always answers the same message


async def test_fail_and_rate_limit_shares_are_about_right() -> None:
    options = SimulatorOptions(fail_rate=0.2, rate_limit_rate=0.1, latency_s=(0, 0))
    client = SimulatedSmsClient(options, sleep=Sleeps(), rng=random.Random(1))

    results = [await client.send(PHONE, "content", str(i)) for i in range(2000)]

    codes = [r.status_code for r in results]
    assert 0.07 < codes.count(429) / 2000 < 0.13
    assert 0.17 < codes.count(500) / 2000 < 0.23


async def test_no_latency_means_no_sleep() -> None:
    sleeps = Sleeps()
    client = SimulatedSmsClient(SimulatorOptions(latency_s=(0, 0)), sleep=sleeps)

    await client.send(PHONE, "content", "key")

    assert sleeps.calls == []


@pytest.mark.parametrize(
    "options",
    [
        {"fail_rate": 1.5},
        {"rate_limit_rate": -0.1},
        {"latency_s": (0.05, 0.02)},
        {"latency_s": (-1.0, 0.0)},
        {"retry_after_s": float("inf")},
    ],
)
def test_options_out_of_range_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorOptions(**options)


async def test_memory_stays_bounded() -> None:
    client = SimulatedSmsClient(SimulatorOptions(latency_s=(0, 0)), sleep=Sleeps())

    for i in range(LISTED_MESSAGES + 10):
        await client.send(PHONE, f"m{i}", str(i))

    assert len(client.received) == LISTED_MESSAGES
    assert client.received[-1].content == f"m{LISTED_MESSAGES + 9}"


@pytest.fixture
async def http() -> AsyncIterator[tuple[TestClient[Any, Any], SimulatedProvider]]:
    provider = SimulatedProvider(SimulatorOptions(auth_key="k3y"), sleep=Sleeps())
    client: TestClient[Any, Any] = TestClient(TestServer(create_simulator_app(provider)))
    await client.start_server()
    try:
        yield client, provider
    finally:
        await client.close()


@pytest.mark.parametrize("path", ["/", "/webhook"])
async def test_http_accepts_like_the_webhook(http: tuple[TestClient[Any, Any], SimulatedProvider], path: str) -> None:
    client, _ = http
    headers = {"x-ins-auth-key": "k3y", "Idempotency-Key": "abc"}

    response = await client.post(path, json={"to": PHONE, "content": "Merhaba"}, headers=headers)
    again = await client.post(path, json={"to": PHONE, "content": "Merhaba"}, headers=headers)

    assert response.status == 202
    body = await response.json()
    assert body["message"] == "Accepted" and uuid.UUID(body["messageId"])
    assert (again.status, await again.json()) == (202, body)


async def test_http_checks_the_auth_key(http: tuple[TestClient[Any, Any], SimulatedProvider]) -> None:
    client, provider = http

    for headers in ({}, {"x-ins-auth-key": "wrong"}):
        response = await client.post("/webhook", json={"to": PHONE, "content": "x"}, headers=headers)
        assert response.status == 401
        assert "error" in await response.json()
    assert len(provider.received) == 0


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"to": 5, "content": "x"}', '{"content": "x"}'])
async def test_http_refuses_a_body_that_is_not_a_message(
    http: tuple[TestClient[Any, Any], SimulatedProvider], body: str
) -> None:
    client, _ = http

    response = await client.post(
        "/webhook", data=body, headers={"x-ins-auth-key": "k3y", "Content-Type": "application/json"}
    )

    assert response.status == 400
    assert "error" in await response.json()


async def test_http_injects_500s_and_429s_with_retry_after() -> None:
    for options, status in ((SimulatorOptions(fail_rate=1.0), 500), (SimulatorOptions(rate_limit_rate=1.0), 429)):
        provider = SimulatedProvider(options, sleep=Sleeps())
        async with TestClient(TestServer(create_simulator_app(provider))) as client:
            response = await client.post("/webhook", json={"to": PHONE, "content": "x"})
            assert response.status == status
            assert "error" in await response.json()
            if status == 429:
                assert response.headers["Retry-After"] == "1"


async def test_http_health_and_the_list_of_received_messages(
    http: tuple[TestClient[Any, Any], SimulatedProvider],
) -> None:
    client, _ = http
    assert (await client.get("/healthz")).status == 200
    for i in range(2):
        await client.post(
            "/webhook",
            json={"to": PHONE, "content": f"m{i}"},
            headers={"x-ins-auth-key": "k3y", "Idempotency-Key": f"key-{i}"},
        )

    listed = await (await client.get("/messages")).json()

    assert [m["content"] for m in listed["data"]] == ["m1", "m0"]  # newest first
    assert [m["idempotencyKey"] for m in listed["data"]] == ["key-1", "key-0"]
    assert all(m["to"] == PHONE and m["messageId"] and m["receivedAt"] for m in listed["data"])
    assert listed["counts"]["accepted"] == 2


async def test_http_counts_every_kind_of_answer() -> None:
    provider = SimulatedProvider(SimulatorOptions(auth_key="k3y"), sleep=Sleeps(), rng=random.Random(1))
    key = {"x-ins-auth-key": "k3y"}
    async with TestClient(TestServer(create_simulator_app(provider))) as client:
        requests: list[tuple[dict[str, str], Any]] = [
            (key | {"Idempotency-Key": "a"}, {"to": PHONE, "content": "x"}),  # accepted
            (key | {"Idempotency-Key": "a"}, {"to": PHONE, "content": "x"}),  # replayed
            ({}, {"to": PHONE, "content": "x"}),  # unauthorized
            (key | {"x-ins-auth-key": "wrong"}, {"to": PHONE, "content": "x"}),  # unauthorized
            (key, [1, 2]),  # rejected: not an object
            (key, {"to": 5, "content": "x"}),  # rejected: not a message
            (key, {"to": PHONE, "content": "x" * 70_000}),  # tooLarge
        ]
        statuses = []
        for headers, body in requests:
            response = await client.post("/webhook", json=body, headers=headers)
            statuses.append(response.status)
            assert "error" in await response.json() or response.status == 202
        not_json = await client.post("/", data="{", headers=key | {"Content-Type": "application/json"})
        statuses.append(not_json.status)
        counts = (await (await client.get("/messages")).json())["counts"]

    assert statuses == [202, 202, 401, 401, 400, 400, 413, 400]
    assert counts == {
        "accepted": 1,
        "replayed": 1,
        "failed": 0,
        "rateLimited": 0,
        "rejected": 3,
        "unauthorized": 2,
        "tooLarge": 1,
    }
    assert sum(counts.values()) == len(statuses)
