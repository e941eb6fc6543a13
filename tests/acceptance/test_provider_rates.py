"""Per-provider rates and throttling across two service processes on one PostgreSQL, measured at the simulators.

Two `python -m insider` processes share one database; `alpha` has `rate = 5` and `beta`
none. Arrival times are read from each simulator's `GET /messages` (`receivedAt`).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from insider.adapters.webhook import open_http_session
from tests.acceptance.conftest import Service, free_port, log_events, senders_to, start_simulator, stop_gracefully
from tests.conftest import eventually

pytestmark = pytest.mark.postgres

TR, US = "+905301234001", "+15555550100"  # +90 goes to alpha, the rest to beta
RATE = 5.0  # alpha's messages per second, for the whole deployment
# How far apart two arrivals may come closer than the rate allows: each process sleeps until
# its turn, then the request takes a few milliseconds more or less to arrive.
JITTER_S = 0.15


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session() as opened:
        yield opened


@dataclass
class Deployment:
    session: aiohttp.ClientSession
    services: list[Service]
    alpha_url: str  # alpha's control port: it answers there whatever its mode
    beta_url: str

    async def listing(self, url: str) -> dict[str, Any]:
        async with self.session.get(url + "/messages") as response:
            return dict(await response.json())

    async def arrivals(self, url: str) -> dict[str, float]:
        """When each message (by content) reached the simulator, in seconds since the epoch."""
        listed = (await self.listing(url))["data"]
        return {m["content"]: datetime.fromisoformat(m["receivedAt"]).timestamp() for m in listed}

    async def enqueue(self, messages: list[dict[str, str]]) -> None:
        async with self.session.post(
            self.services[0].base_url + "/api/v1/messages/batch", json={"messages": messages}
        ) as response:
            assert response.status == 201, await response.text()

    async def switch(self, body: dict[str, Any]) -> None:
        async with self.session.post(self.alpha_url + "/simulator/mode", json=body) as response:
            assert response.status == 200, await response.text()

    def senders_to(self, provider: str) -> int:
        """How many of the service processes sent something to ``provider``."""
        return senders_to(self.services, provider)


@pytest.fixture
async def deployment(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, fresh_postgres_url: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    control_port = free_port()
    alpha = await start_simulator(start_service, session, control_port=control_port)
    beta = await start_simulator(start_service, session)
    providers = tmp_path / "providers.toml"
    providers.write_text(
        f"""
[[providers]]
name = "alpha"
url = "{alpha.base_url}/webhook"
timeout = "5s"
rate = {RATE:g}

[[providers]]
name = "beta"
url = "{beta.base_url}/webhook"
timeout = "5s"

[[routes]]
match = {{ prefix = ["+90"] }}
providers = ["alpha"]

[[routes]]
providers = ["beta"]
"""
    )
    services = [
        start_service(
            providers_file=str(providers),
            database_url=fresh_postgres_url,
            # A batch every 50 ms, the deployment's slot shared: both processes claim in turn, so
            # both send to alpha (draining, the one that put a message back often claims it first).
            send_interval="0.05s",
            batch_size="4",
            send_concurrency="4",
            retry_backoff="0.2s",
            retry_backoff_max="0.5s",
            max_attempts="50",
        )
        for _ in range(2)
    ]
    for service in services:
        await service.wait_answering(session)
    yield Deployment(session, services, f"http://127.0.0.1:{control_port}", beta.base_url)
    stop_gracefully(services)


async def arrived(d: Deployment, alpha_count: int, beta_count: int) -> tuple[list[float], list[float]]:
    """Wait until that many messages reached each simulator; their arrival times, sorted."""

    async def all_there() -> bool:
        return (len(await d.arrivals(d.alpha_url)), len(await d.arrivals(d.beta_url))) == (alpha_count, beta_count)

    await eventually(all_there, timeout_s=30, what="every message at its provider")
    return sorted((await d.arrivals(d.alpha_url)).values()), sorted((await d.arrivals(d.beta_url)).values())


def mixed(count: int) -> list[dict[str, str]]:
    """``count`` messages for alpha and as many for beta, alternating."""
    return [m for i in range(count) for m in ({"to": TR, "content": f"alpha-{i}"}, {"to": US, "content": f"beta-{i}"})]


async def test_a_providers_rate_holds_across_two_processes(deployment: Deployment) -> None:
    d = deployment
    count = 16
    await d.enqueue(mixed(count))
    alpha, _ = await arrived(d, count, count)

    # No window of alpha's arrivals holds more than the rate allows: k intervals between any
    # two that are k apart (less the jitter), so the span of all of them is (count - 1) / rate.
    interval_s = 1 / RATE
    for (i, early), (j, late) in itertools.combinations(enumerate(alpha), 2):
        assert late - early >= (j - i) * interval_s - JITTER_S, (i, j, late - early, alpha)
    span_s = alpha[-1] - alpha[0]
    assert span_s >= (count - 1) * interval_s - JITTER_S
    # (How fully the rate is used is measured, not asserted here: 3.0 to 3.7 s for these 16.)
    # Both processes sent to alpha: the rate is the deployment's, not each process's.
    assert d.senders_to("alpha") == 2
    listed = await d.listing(d.alpha_url)
    assert listed["counts"]["accepted"] == count and listed["counts"]["replayed"] == 0


async def test_a_provider_without_a_rate_is_not_slowed_by_another_providers_rate(deployment: Deployment) -> None:
    d = deployment
    count = 16
    await d.enqueue(mixed(count))
    alpha, beta = await arrived(d, count, count)

    span_s = alpha[-1] - alpha[0]
    assert span_s >= (count - 1) / RATE - JITTER_S
    # Beta, with no rate, took its messages long before alpha's rate let all of alpha's through
    # (within 0.1 s here): alpha's messages waiting for their turns did not hold its batches.
    assert beta[-1] - beta[0] < span_s / 3, (beta[-1] - beta[0], span_s)
    assert beta[-1] < alpha[0] + span_s / 3


def throttled_at(service: Service) -> list[float]:
    """When ``service`` was answered 429 by alpha (its log's attempt events), in seconds since the epoch."""
    return sorted(
        datetime.fromisoformat(e["timestamp"]).timestamp()
        for e in log_events(service.log())
        if e.get("event") == "send" and e.get("provider") == "alpha" and e.get("status_code") == 429
    )


async def test_a_429_with_retry_after_slows_that_provider_only_in_every_process(deployment: Deployment) -> None:
    d = deployment
    retry_after_s = 2.0
    await d.switch({"mode": "throttle", "retryAfter": f"{retry_after_s:g}s"})
    count = 6
    await d.enqueue(mixed(count) + [{"to": US, "content": f"beta-more-{i}"} for i in range(count)])

    async def beta_done_and_alpha_asked_again() -> bool:
        beta_done = len(await d.arrivals(d.beta_url)) == 2 * count
        return beta_done and all(len(throttled_at(s)) >= 2 for s in d.services)

    # Beta takes all of its messages while alpha throttles: not slowed. Alpha is asked again by
    # each process, but only after the Retry-After of the 429 before (its other messages wait
    # meanwhile without an attempt): the backoff alone (0.2 s to 0.5 s) would ask far sooner.
    await eventually(beta_done_and_alpha_asked_again, timeout_s=30, what="beta's messages, and alpha asked again")
    assert len(await d.arrivals(d.alpha_url)) == 0
    for service in d.services:
        times = throttled_at(service)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= retry_after_s - JITTER_S, gaps

    # Nothing failed: once alpha takes messages again, every one of them is sent, once.
    await d.switch({"mode": "up"})
    alpha, beta = await arrived(d, count, 2 * count)
    assert min(alpha) > max(beta)
    listed = await d.listing(d.alpha_url)
    assert listed["counts"]["accepted"] == count and listed["counts"]["replayed"] == 0
    assert all(e.get("outcome") != "failed" for s in d.services for e in log_events(s.log()))
