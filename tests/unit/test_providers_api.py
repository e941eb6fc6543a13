"""The providers through the HTTP API on SQLite :memory: and in-memory clients: state, switches, routes, totals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers
from structlog.testing import capture_logs

from insider.adapters.memory import InMemorySmsClient, Request
from insider.clock import FakeClock
from insider.domain import Outcome, SendResult
from insider.ports import ProviderStore
from insider.web.provider_schemas import ProviderListSchema, ProviderSchema
from insider.web.schemas import EventsSchema, MessageSchema, PreviewResultSchema, StatsSchema
from tests.unit.web_support import Api, in_memory_container, open_container_api

PHONE = "+905301234001"
PROVIDERS = """
[[providers]]
name = "alpha"
url = "http://127.0.0.1:9/alpha"
price = 0.02
concurrency = 4
breaker_failures = 2
breaker_cooldown = "30s"

[[providers]]
name = "beta"
url = "http://127.0.0.1:9/beta"
price = 0.01

[[providers]]
name = "gamma"                # in no route: listed, never sent to
url = "http://127.0.0.1:9/gamma"
rate = 50

[[routes]]
name = "turkey"
match = { prefix = ["+90"] }
providers = ["alpha", "beta"]

[[routes]]
name = "cheap"
match = { prefix = ["+44"] }
strategy = "cheapest"
providers = ["alpha", "beta"]

[[routes]]
name = "split"
strategy = "weighted"
providers = ["alpha", "beta"]
weights = [20, 80]
"""


@dataclass
class Providers:
    api: Api
    alpha: InMemorySmsClient
    beta: InMemorySmsClient

    async def send_all(self) -> None:
        await self.api.container.supervisor().run_once()
        await self.api.clock.advance(3)  # past the counts' 2 s cache

    async def item(self, name: str) -> dict[str, Any]:
        response = await self.api.client.get(f"/api/v1/providers/{name}")
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        assert ProviderSchema().validate(body) == {}
        return body


@asynccontextmanager
async def open_providers(tmp_path: Path, **settings: str) -> AsyncIterator[Providers]:
    path = tmp_path / "providers.toml"
    path.write_text(PROVIDERS)
    options = {"batch_size": "10", "send_concurrency": "1", "content_max_length": "400"} | settings
    container = in_memory_container(FakeClock(), providers_file=str(path), webhook_url="", **options)
    alpha, beta = InMemorySmsClient(), InMemorySmsClient()
    clients = {"alpha": alpha, "beta": beta, "gamma": InMemorySmsClient()}
    container.provider_clients.override(providers.Object(clients))
    async with open_container_api(container) as api:
        yield Providers(api, alpha, beta)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Providers]:
    async with open_providers(tmp_path) as opened:
        yield opened


def down(request: Request) -> SendResult:
    return SendResult(Outcome.RETRY, status_code=503, error="HTTP 503: down")


async def test_every_provider_is_listed_with_its_settings_and_state(two: Providers) -> None:
    response = await two.api.client.get("/api/v1/providers")
    assert response.status == 200
    body = await response.json()
    assert ProviderListSchema().validate(body) == {}
    alpha, beta, gamma = body["data"]
    assert alpha | {"recentErrors": None} == {
        "name": "alpha",
        "kind": "webhook",
        "enabled": True,
        "breaker": "closed",
        "breakerRetryAt": None,
        "rate": None,
        "concurrency": 4,
        "concurrencyShare": 4,
        "price": 0.02,
        "sent": 0,
        "failed": 0,
        "segments": 0,
        "cost": 0.0,
        "inFlight": 0,
        "throttled": 0,
        "throttledUntil": None,
        "meanLatencyMs": None,
        "recentErrors": None,
    }
    assert alpha["recentErrors"] == []
    assert (beta["name"], beta["rate"], beta["price"]) == ("beta", None, 0.01)
    assert (gamma["name"], gamma["rate"], gamma["price"]) == ("gamma", 50.0, None)


async def test_totals_breaker_and_recent_errors_follow_the_sends(two: Providers) -> None:
    two.alpha.responder = down
    for i in range(3):
        await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": f"m{i}"})
    await two.send_all()

    alpha, beta = await two.item("alpha"), await two.item("beta")
    # Two failures opened alpha's breaker: the third message went straight to beta.
    assert len(two.alpha.requests) == 2 and len(two.beta.requests) == 3
    assert alpha["breaker"] == "open" and alpha["breakerRetryAt"] is not None
    assert (alpha["sent"], alpha["failed"]) == (0, 2)
    assert [e["error"] for e in alpha["recentErrors"]] == ["HTTP 503: down", "HTTP 503: down"]
    assert (beta["sent"], beta["failed"], beta["segments"], beta["cost"]) == (3, 0, 3, 0.03)

    await two.api.clock.advance(30)  # the cool-down: half-open, and the next message probes it
    assert (await two.item("alpha"))["breaker"] == "half-open"


async def test_the_one_provider_shorthand_is_listed_too(api: Api) -> None:
    await api.client.post("/api/v1/messages", json={"to": PHONE, "content": "hello"})
    await api.container.supervisor().run_once()
    await api.clock.advance(3)
    body = await (await api.client.get("/api/v1/providers")).json()
    [only] = body["data"]
    assert (only["name"], only["kind"], only["breaker"], only["enabled"]) == ("webhook", "webhook", "closed", True)
    assert (only["sent"], only["price"], only["cost"]) == (1, None, 0.0)


async def test_the_built_in_simulated_provider_is_listed(make_api: Any) -> None:
    api = await make_api(webhook_url="")
    [only] = (await (await api.client.get("/api/v1/providers")).json())["data"]
    assert (only["name"], only["kind"]) == ("simulator", "simulator")


async def test_a_disabled_provider_takes_nothing_until_enabled_again(two: Providers) -> None:
    response = await two.api.client.post("/api/v1/providers/alpha/disable")
    assert response.status == 200
    body = await response.json()
    assert ProviderSchema().validate(body) == {}
    assert (body["name"], body["enabled"]) == ("alpha", False)
    assert await switches_of(two.api.repository) == {"alpha": False}  # for the whole deployment
    listed = (await (await two.api.client.get("/api/v1/providers")).json())["data"]
    assert [p["enabled"] for p in listed] == [False, True, True]

    await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": "one"})
    await two.send_all()
    assert (len(two.alpha.requests), len(two.beta.requests)) == (0, 1)

    again = await two.api.client.post("/api/v1/providers/alpha/disable")  # idempotent
    assert (again.status, (await again.json())["enabled"]) == (200, False)
    enabled = await two.api.client.post("/api/v1/providers/alpha/enable")
    assert (enabled.status, (await enabled.json())["enabled"]) == (200, True)
    assert await switches_of(two.api.repository) == {"alpha": True}
    await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": "two"})
    await two.send_all()
    assert (len(two.alpha.requests), len(two.beta.requests)) == (1, 1)


async def test_a_switch_is_logged(two: Providers) -> None:
    with capture_logs() as logs:
        await two.api.client.post("/api/v1/providers/beta/disable")
    switched = [e for e in logs if e["event"] == "provider switched"]
    assert [(e["provider"], e["enabled"]) for e in switched] == [("beta", False)]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/providers/delta/disable"),
        ("POST", "/api/v1/providers/delta/enable"),
        ("GET", "/api/v1/providers/delta"),
        ("POST", "/api/v1/providers/al%20pha/disable"),
    ],
)
async def test_an_unknown_provider_is_404_json(two: Providers, method: str, path: str) -> None:
    response = await two.api.client.request(method, path)
    assert response.status == 404
    assert response.content_type == "application/json"
    assert "error" in await response.json()
    assert await switches_of(two.api.repository) == {}


async def test_switches_need_the_token_and_refuse_other_sites(tmp_path: Path) -> None:
    async with open_providers(tmp_path, api_token="s3cret") as two:
        client = two.api.client
        assert (await client.post("/api/v1/providers/alpha/disable")).status == 401
        assert (await client.get("/api/v1/providers")).status == 401
        auth = {"Authorization": "Bearer s3cret"}
        cross = await client.post("/api/v1/providers/alpha/disable", headers=auth | {"Origin": "http://evil.example"})
        assert cross.status == 403
        assert await switches_of(two.api.repository) == {}
        assert (await client.post("/api/v1/providers/alpha/disable", headers=auth)).status == 200


async def test_message_items_and_attempts_name_their_provider_and_cost(two: Providers) -> None:
    two.alpha.responder = down
    created = await (await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": "hi"})).json()
    assert (created["provider"], created["cost"]) == (None, None)
    await two.send_all()

    message = await (await two.api.client.get(f"/api/v1/messages/{created['id']}")).json()
    assert MessageSchema().validate(message) == {}
    assert (message["provider"], message["cost"]) == ("beta", 0.01)
    [listed] = (await (await two.api.client.get("/api/v1/messages")).json())["data"]
    assert (listed["provider"], listed["cost"]) == ("beta", 0.01)

    events = await (await two.api.client.get(f"/api/v1/messages/{created['id']}/events")).json()
    assert EventsSchema().validate(events) == {}
    assert [(e["provider"], e["outcome"]) for e in events["data"]] == [("alpha", "failover"), ("beta", "sent")]


async def test_a_message_without_a_price_has_a_null_cost(api: Api) -> None:
    created = await (await api.client.post("/api/v1/messages", json={"to": PHONE, "content": "hi"})).json()
    await api.container.supervisor().run_once()
    message = await (await api.client.get(f"/api/v1/messages/{created['id']}")).json()
    assert (message["provider"], message["cost"]) == ("webhook", None)


async def preview(two: Providers, **body: Any) -> dict[str, Any]:
    response = await two.api.client.post("/api/v1/messages/preview", json={"content": "x" * 170} | body)
    assert response.status == 200
    answer: dict[str, Any] = await response.json()
    assert PreviewResultSchema().validate(answer) == {}
    return answer


async def test_preview_says_which_route_and_provider_and_the_cost(two: Providers) -> None:
    answer = await preview(two, to="+90 530 123 40 01")  # two segments
    assert answer["segments"] == 2
    assert answer["route"] == {
        "name": "turkey",
        "strategy": "failover",
        "providers": ["alpha", "beta"],
        "provider": "alpha",
        "cost": 0.04,
    }
    cheap = (await preview(two, to="+447700900123"))["route"]
    assert (cheap["name"], cheap["providers"], cheap["cost"]) == ("cheap", ["beta", "alpha"], 0.02)
    split = (await preview(two, to="+12125550123", category="commercial", priority=9))["route"]
    assert (split["name"], split["strategy"], split["providers"]) == ("split", "weighted", ["beta", "alpha"])

    await two.api.client.post("/api/v1/providers/alpha/disable")
    passed_over = (await preview(two, to=PHONE))["route"]
    assert (passed_over["provider"], passed_over["cost"]) == ("beta", 0.02)
    await two.api.client.post("/api/v1/providers/beta/disable")
    assert (await preview(two, to=PHONE))["route"]["provider"] is None


@pytest.mark.parametrize("to", [None, "12"])
async def test_preview_without_a_recipient_shows_no_route(two: Providers, to: str | None) -> None:
    answer = await preview(two, **({"to": to} if to else {}))
    assert answer["route"] is None and answer["segments"] == 2


async def test_preview_checks_category_and_priority(two: Providers) -> None:
    response = await two.api.client.post(
        "/api/v1/messages/preview", json={"content": "x", "to": PHONE, "category": "spam", "priority": 12}
    )
    assert response.status == 422
    assert set((await response.json())["fields"]) == {"category", "priority"}


async def test_stats_sum_sent_and_cost_per_provider(two: Providers) -> None:
    for i in range(2):
        await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": f"m{i}"})
    await two.send_all()
    two.alpha.responder = down
    await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": "x" * 170})
    await two.send_all()

    stats = await (await two.api.client.get("/api/v1/stats")).json()
    assert StatsSchema().validate(stats) == {}
    assert stats["providers"] == [
        {"name": "alpha", "sent": 2, "failed": 1, "segments": 2, "cost": 0.04},
        {"name": "beta", "sent": 1, "failed": 0, "segments": 2, "cost": 0.02},
        {"name": "gamma", "sent": 0, "failed": 0, "segments": 0, "cost": 0.0},
    ]


async def test_metrics_per_provider(two: Providers) -> None:
    def metrics_text() -> str:
        return two.api.metrics.exposition().decode()

    before = metrics_text()
    for name in ("alpha", "beta", "gamma"):  # every series from the start, at 0
        for metric in ("sent_total", "failed_total", "throttled_total", "send_duration_seconds_count", "cost"):
            assert f'insider_provider_{metric}{{provider="{name}"}} 0.0' in before
    two.alpha.responder = down
    for i in range(3):
        await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": f"m{i}"})
    await two.send_all()
    scraped = await (await two.api.client.get("/metrics")).text()
    assert 'insider_provider_failed_total{provider="alpha"} 2.0' in scraped
    assert 'insider_provider_sent_total{provider="beta"} 3.0' in scraped
    assert 'insider_provider_send_duration_seconds_count{provider="alpha"} 2.0' in scraped
    assert 'insider_provider_breaker_state{provider="alpha"} 2.0' in scraped  # open
    assert 'insider_provider_breaker_state{provider="beta"} 0.0' in scraped
    assert 'insider_provider_cost{provider="beta"} 0.03' in scraped

    await two.api.client.post("/api/v1/providers/beta/disable")
    scraped = await (await two.api.client.get("/metrics")).text()
    assert 'insider_provider_enabled{provider="beta"} 0.0' in scraped
    assert 'insider_provider_enabled{provider="alpha"} 1.0' in scraped


async def test_a_throttling_provider_shows_until_when(two: Providers) -> None:
    two.alpha.responder = lambda r: SendResult(
        Outcome.RETRY, status_code=429, error="HTTP 429", retry_after_s=20, throttled=True
    )
    await two.api.client.post("/api/v1/messages", json={"to": PHONE, "content": "m"})
    await two.send_all()
    alpha = await two.item("alpha")
    assert alpha["throttled"] == 1 and alpha["throttledUntil"] is not None
    assert alpha["breaker"] == "closed"
    scraped = await (await two.api.client.get("/metrics")).text()
    assert 'insider_provider_throttled_total{provider="alpha"} 1.0' in scraped
    await two.api.clock.advance(20)
    assert (await two.item("alpha"))["throttledUntil"] is None


async def test_a_repository_without_provider_switches_refuses_them_with_409(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(PROVIDERS)
    container = in_memory_container(FakeClock(), providers_file=str(path), webhook_url="")
    container.provider_clients.override(providers.Object({n: InMemorySmsClient() for n in ("alpha", "beta", "gamma")}))
    container.provider_switches.override(providers.Object(None))  # as for an embedding program's own adapter
    async with open_container_api(container) as api:
        response = await api.client.post("/api/v1/providers/alpha/disable")
        assert response.status == 409
        assert (await response.json())["error"] == "this repository keeps no provider switches"
        assert (await (await api.client.get("/api/v1/providers/alpha")).json())["enabled"] is True


async def switches_of(repository: object) -> dict[str, bool]:
    """The operators' switches the database keeps, by provider."""
    assert isinstance(repository, ProviderStore)
    return {name: state.enabled for name, state in (await repository.provider_states()).items()}
