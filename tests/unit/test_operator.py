"""The operator's surface on SQLite :memory: and fakes: health, readiness, metrics, stats, token, dashboard."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from dependency_injector import providers
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from insider.adapters.memory import Request
from insider.children import RESTART_BACKOFF_S, Child
from insider.clock import FakeClock
from insider.domain import MessageStatus, Outcome, SendResult
from insider.metrics import CountsCache, Metrics
from insider.web.probes import STATIC_DIR
from insider.web.schemas import HealthSchema, ReadySchema, StatsSchema
from tests.unit.web_support import Api, in_memory_container, open_api, open_container_api

TOKEN = "s3cret-token"
MakeApi = Callable[..., Awaitable[Api]]


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return samples(await response.text())


# --- health and readiness ---------------------------------------------------------------------------------------


async def test_healthz_is_200_whatever_the_database_does(api: Api) -> None:
    for available in (True, False):
        api.repository.available = available
        response = await api.client.get("/healthz")
        assert response.status == 200
        body = await response.json()
        assert HealthSchema().validate(body) == {} and body["status"] == "ok"


async def test_readyz_follows_the_database(api: Api) -> None:
    ready = await api.client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert ReadySchema().validate(body) == {}
    names = ("receipt-writer-1", "receipt-writer-2", "receipt-upkeep", "event-retention", "provider-switches")
    running = dict.fromkeys(names, "running")
    assert body == {"status": "ready", "database": "up", "cache": "up", "children": running}

    api.repository.available = False
    down = await api.client.get("/readyz")
    assert down.status == 503
    body = await down.json()
    assert ReadySchema().validate(body) == {}
    assert body["status"] == "unavailable" and body["database"] == "down" and "database" in body["error"]


async def test_a_cache_that_is_down_is_reported_but_does_not_fail_readiness(api: Api) -> None:
    api.cache.available = False
    response = await api.client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert (body["status"], body["database"], body["cache"]) == ("ready", "up", "down")


async def test_a_crashed_child_fails_readiness_and_shows_in_the_sender_until_it_runs_again() -> None:
    clock = FakeClock()
    container = in_memory_container(clock)
    crashes = 0

    async def flaky() -> None:
        nonlocal crashes
        if crashes < 1:
            crashes += 1
            raise RuntimeError("a bug")
        await asyncio.Event().wait()

    container.children.override(providers.Object([Child("flaky", flaky)]))
    async with open_container_api(container) as api:
        await clock.settle()
        response = await api.client.get("/readyz")
        body = await response.json()
        assert (response.status, body["children"]) == (503, {"flaky": "restarting"})
        assert body["error"] == "not running: flaky (restarting after RuntimeError: a bug)"
        sender = await (await api.client.get("/api/v1/sender")).json()
        assert sender["children"] == [
            {"name": "flaky", "state": "restarting", "restarts": 1, "lastError": "RuntimeError: a bug"}
        ]
        await clock.advance(RESTART_BACKOFF_S)
        response = await api.client.get("/readyz")
        assert (response.status, (await response.json())["children"]) == (200, {"flaky": "running"})


# --- metrics ----------------------------------------------------------------------------------------------------


async def test_metrics_are_prometheus_text_with_every_metric(api: Api) -> None:
    got = await scrape(api)
    names = {name for name, _ in got}
    assert {
        "insider_messages_sent_total",
        "insider_messages_failed_total",
        "insider_send_attempts_total",
        "insider_send_duration_seconds_count",
        "insider_send_duration_seconds_bucket",
        "insider_batch_duration_seconds_count",
        "insider_pending_messages",
        "insider_sender_running",
    } <= names
    for outcome in ("sent", "retry", "failed", "invalid"):
        assert got[("insider_send_attempts_total", (("outcome", outcome),))] == 0


async def test_counters_move_with_a_batch(make_api: MakeApi) -> None:
    api = await make_api(batch_size="10")

    def provider(request: Request) -> SendResult:
        if request.content == "refused":
            return SendResult(Outcome.FAILED, status_code=400, error="HTTP 400")
        if request.content == "later":
            return SendResult(Outcome.RETRY, status_code=503, error="HTTP 503")
        return SendResult(Outcome.SENT, status_code=202, provider_message_id=f"pm-{request.content}")

    api.sms.responder = provider
    for content in ("one", "two", "refused", "later"):
        api.repository.add("+905301234001", content)
    api.repository.add("12345", "an invalid recipient")

    report = await api.container.supervisor().run_once()
    assert (report.sent, report.failed, report.retried) == (2, 2, 1)

    got = await scrape(api)
    assert got[("insider_messages_sent_total", ())] == 2
    assert got[("insider_messages_failed_total", ())] == 2  # refused and invalid
    assert got[("insider_send_attempts_total", (("outcome", "sent"),))] == 2
    assert got[("insider_send_attempts_total", (("outcome", "retry"),))] == 1
    assert got[("insider_send_attempts_total", (("outcome", "failed"),))] == 1
    assert got[("insider_send_attempts_total", (("outcome", "invalid"),))] == 1
    assert got[("insider_send_duration_seconds_count", ())] == 4  # requests only; the invalid one made none
    assert got[("insider_batch_duration_seconds_count", ())] == 1
    assert got[("insider_pending_messages", ())] == 1  # "later" waits for its retry
    assert got[("insider_sender_running", ())] == 0


async def test_sender_running_gauge_follows_start_and_stop(api: Api) -> None:
    await api.client.post("/api/v1/messages/start")
    assert (await scrape(api))[("insider_sender_running", ())] == 1
    await api.client.post("/api/v1/messages/stop")
    assert (await scrape(api))[("insider_sender_running", ())] == 0


async def test_pending_gauge_reads_counts_at_most_once_per_ttl(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    counts = api.repository.counts

    async def counting() -> dict[MessageStatus, int]:
        nonlocal calls
        calls += 1
        return await counts()

    monkeypatch.setattr(api.repository, "counts", counting)
    api.repository.add("+905301234001", "x")
    for _ in range(5):
        assert (await scrape(api))[("insider_pending_messages", ())] == 1
    await api.client.get("/api/v1/stats")  # the dashboard shares the same cached counts
    assert calls == 1

    api.repository.add("+905301234002", "y")
    ttl_s = api.container.counts().ttl_s
    await api.clock.advance(ttl_s)
    assert (await scrape(api))[("insider_pending_messages", ())] == 2
    assert calls == 2


async def test_metrics_still_answer_when_the_database_is_down(api: Api) -> None:
    api.repository.add("+905301234001", "x")
    assert (await scrape(api))[("insider_pending_messages", ())] == 1
    api.repository.available = False
    await api.clock.advance(api.container.counts().ttl_s)
    assert (await scrape(api))[("insider_pending_messages", ())] == 1  # the last known count


def test_each_metrics_object_has_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()  # the global registry would refuse the second set of names
    first.send_attempt("sent", 0.01)
    assert first.registry is not second.registry
    assert b"insider_messages_sent_total 1.0" in first.exposition()
    assert b"insider_messages_sent_total 0.0" in second.exposition()


async def test_concurrent_readers_of_a_stale_counts_cache_share_one_query(api: Api) -> None:
    calls = 0

    class Repository:
        async def counts(self) -> dict[MessageStatus, int]:
            nonlocal calls
            calls += 1
            await api.clock.sleep(0)
            return dict.fromkeys(MessageStatus, 3)

        async def segments_sent(self) -> int:
            return 3

    cache = CountsCache(Repository(), ttl_s=5.0, clock=api.clock)  # type: ignore[arg-type]
    results = await asyncio.gather(*(cache.get() for _ in range(10)))
    assert calls == 1 and all(r[MessageStatus.PENDING] == 3 for r in results)


# --- stats ------------------------------------------------------------------------------------------------------


async def test_stats_counts_every_status_and_tells_the_sender_state(api: Api) -> None:
    api.repository.add("+905301234001", "a")
    api.repository.add("+905301234002", "b", status=MessageStatus.FAILED)
    api.repository.add("+905301234003", "c", status=MessageStatus.SENDING)
    response = await api.client.get("/api/v1/stats")
    assert response.status == 200
    body = await response.json()
    assert StatsSchema().validate(body) == {}
    assert body["counts"] == {
        "pending": 1,
        "sending": 1,
        "sent": 0,
        "failed": 1,
        "expired": 0,
        "cancelled": 0,
        "delivered": 0,
        "undelivered": 0,
        "suppressed": 0,
    }
    assert body["total"] == 3
    assert body["sender"]["running"] is False and body["sender"]["batchSize"] == 2


async def test_stats_is_503_json_when_the_database_is_down(api: Api) -> None:
    api.repository.available = False
    response = await api.client.get("/api/v1/stats")
    assert response.status == 503
    assert "database" in (await response.json())["error"]


# --- the token --------------------------------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/api/v1/messages", 200),
    ("POST", "/api/v1/messages", 201),
    ("GET", "/api/v1/messages/1", 200),
    ("POST", "/api/v1/messages/1/retry", 409),
    ("GET", "/api/v1/sender", 200),
    ("GET", "/api/v1/stats", 200),
    ("GET", "/api/v1/messages/start", 200),
    ("POST", "/api/v1/messages/stop", 200),
    ("GET", "/api/v1/nothing-here", 404),
]
OPEN = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/swagger",
    "/api/docs/swagger.json",
    "/static/swagger/swagger-ui.css",
    "/",
    "/static/dashboard/dashboard.js",
    "/static/dashboard/dashboard.css",
]


async def _call(api: Api, method: str, path: str, headers: dict[str, str]) -> Any:
    body = {"to": "+905301234001", "content": "hi"} if method == "POST" and path == "/api/v1/messages" else None
    return await api.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "status"), PROTECTED)
async def test_without_a_token_api_v1_is_401(make_api: MakeApi, method: str, path: str, status: int) -> None:
    api = await make_api(api_token=TOKEN)
    api.repository.add("+905301234001", "x")
    response = await _call(api, method, path, {})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization" in (await response.json())["error"]


@pytest.mark.parametrize(("method", "path", "status"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", ["Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer", "Bearer ş"]
)
async def test_a_wrong_token_is_401(make_api: MakeApi, method: str, path: str, status: int, authorization: str) -> None:
    api = await make_api(api_token=TOKEN)
    api.repository.add("+905301234001", "x")
    response = await _call(api, method, path, {"Authorization": authorization})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in await response.json()


@pytest.mark.parametrize(("method", "path", "status"), PROTECTED)
async def test_the_right_token_passes(make_api: MakeApi, method: str, path: str, status: int) -> None:
    api = await make_api(api_token=TOKEN)
    api.repository.add("+905301234001", "x")
    response = await _call(api, method, path, {"Authorization": f"Bearer {TOKEN}"})
    assert response.status == status


async def test_the_scheme_name_is_case_insensitive(make_api: MakeApi) -> None:
    api = await make_api(api_token=TOKEN)
    response = await api.client.get("/api/v1/sender", headers={"Authorization": f"bearer  {TOKEN} "})
    assert response.status == 200


async def test_refused_requests_change_nothing(make_api: MakeApi) -> None:
    api = await make_api(api_token=TOKEN)
    await api.client.post("/api/v1/messages/start", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await api.client.post("/api/v1/messages/stop")).status == 401
    assert (await api.client.post("/api/v1/messages", json={"to": "+905301234001", "content": "x"})).status == 401
    assert api.container.supervisor().running
    assert api.repository.rows == []


@pytest.mark.parametrize("path", OPEN)
async def test_open_endpoints_need_no_token(make_api: MakeApi, path: str) -> None:
    api = await make_api(api_token=TOKEN)
    response = await api.client.get(path)
    assert response.status == 200, await response.text()


async def test_without_a_configured_token_nothing_needs_one(api: Api) -> None:
    assert (await api.client.get("/api/v1/sender")).status == 200
    assert (await api.client.get("/api/v1/sender", headers={"Authorization": "Bearer anything"})).status == 200


async def test_the_token_never_reaches_the_logs(make_api: MakeApi) -> None:
    api = await make_api(api_token=TOKEN)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        for authorization in (f"Bearer {TOKEN}", f"Bearer {TOKEN}-wrong", TOKEN):
            await api.client.get("/api/v1/sender", headers={"Authorization": authorization})
            await api.client.get("/api/v1/messages?limit=0", headers={"Authorization": authorization})
    assert any(event.get("event") == "request" for event in logs)
    assert TOKEN not in repr(logs)
    assert TOKEN not in repr(api.container.settings())


async def test_swagger_documents_the_token(make_api: MakeApi) -> None:
    api = await make_api(api_token=TOKEN)
    spec = await (await api.client.get("/api/docs/swagger.json")).json()
    assert spec["securityDefinitions"]["bearer"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": spec["securityDefinitions"]["bearer"]["description"],
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            # The provider's receipts and replies: a token of their own (none set here).
            if path == "/api/v1/delivery-reports" or (method, path) == ("post", "/api/v1/inbound"):
                assert "security" not in operation, (method, path)
            elif path.startswith(("/api/v1/", "/messages")):  # insider's API, the original service's routes
                assert operation["security"] == [{"bearer": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
            else:
                assert "security" not in operation and "401" not in operation["responses"], (method, path)


async def test_swagger_requires_no_token_where_none_is_configured(api: Api) -> None:
    spec = await (await api.client.get("/api/docs/swagger.json")).json()
    assert "securityDefinitions" not in spec  # so Swagger UI shows no "Authorize" button
    assert all("security" not in op for ops in spec["paths"].values() for op in ops.values())


async def test_swagger_documents_the_operator_endpoints(api: Api) -> None:
    spec = await (await api.client.get("/api/docs/swagger.json")).json()
    paths = spec["paths"]
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "403", "421"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "403", "421", "503"}
    assert paths["/metrics"]["get"]["produces"] == ["text/plain"]
    assert {"200", "503"} <= set(paths["/api/v1/stats"]["get"]["responses"])
    assert "/" not in paths  # the dashboard is a page, not an API


async def test_every_app_gets_the_whole_spec() -> None:
    # aiohttp-apispec used to consume the handlers' docs: the second app lost its request bodies.
    specs = []
    for _ in range(2):
        async with open_api() as api:
            specs.append(await (await api.client.get("/api/docs/swagger.json")).json())
    assert specs[0] == specs[1]
    body = [p for p in specs[1]["paths"]["/api/v1/messages"]["post"]["parameters"] if p["in"] == "body"]
    assert body and body[0]["schema"] == {"$ref": "#/definitions/Enqueue"}
    assert "Enqueue" in specs[1]["definitions"]


# --- bad input: always a JSON 4xx -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"[" * 60_000, "application/json", 400),  # deeper than the recursion limit
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "application/json", 400),
        (b"{}", "application/json; charset=no-such-charset", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"to": "+905301234001", "content": "a\\u0000b"}', "application/json", 422),
        (b'{"to": "+905301234001", "content": "\\ud800"}', "application/json", 422),
        (b'{"to": "+905301234001", "content": "   "}', "application/json", 422),
    ],
)
async def test_bodies_that_would_break_a_parser_or_the_database_are_4xx(
    api: Api, data: bytes, content_type: str, status: int
) -> None:
    response = await api.client.post("/api/v1/messages", data=data, headers={"Content-Type": content_type})
    assert response.status == status
    assert response.content_type == "application/json" and "error" in await response.json()
    assert api.repository.rows == []


@pytest.mark.parametrize(
    "path",
    ["/api/v1/messages/0", "/api/v1/messages/99999999999999999999", "/api/v1/messages/１２", "/api/v1/messages/-1"],
)
async def test_ids_of_the_wrong_shape_are_404_json(api: Api, path: str) -> None:
    for method in ("GET", "POST"):
        response = await api.client.request(method, path + ("/retry" if method == "POST" else ""))
        assert response.status == 404
        assert (await response.json())["error"]


async def test_endpoints_without_a_body_ignore_one(api: Api) -> None:
    response = await api.client.post("/api/v1/messages/start", data=b"x", headers={"Content-Type": "text/plain"})
    assert (response.status, (await response.json())["result"]) == (200, "started")


async def test_errors_carry_the_request_id(api: Api) -> None:
    for path in ("/api/v1/messages?limit=0", "/api/v1/messages/0", "/nothing"):
        response = await api.client.get(path, headers={"X-Request-Id": "req-42"})
        assert response.status >= 400 and response.headers["X-Request-Id"] == "req-42"


async def test_a_wrong_method_is_405_json_with_allow(api: Api) -> None:
    response = await api.client.delete("/api/v1/stats")
    assert response.status == 405 and (await response.json())["error"]
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("given", ["a b", "x" * 129, "ü", "id\tx"])
async def test_an_unsafe_request_id_is_replaced(api: Api, given: str) -> None:
    response = await api.client.get("/api/v1/sender", headers={"X-Request-Id": given})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])


# --- the dashboard ----------------------------------------------------------------------------------------------


async def test_the_dashboard_page_and_its_assets_are_served(api: Api) -> None:
    page = await api.client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assets = re.findall(r'(?:src|href)="(static/dashboard/[^"]+)"', html)
    assert sorted(assets) == ["static/dashboard/dashboard.css", "static/dashboard/dashboard.js"]
    types = {".js": {"application/javascript", "text/javascript"}, ".css": {"text/css"}}
    for asset in assets:
        response = await api.client.get("/" + asset)
        assert response.status == 200
        assert response.content_type in types[asset[asset.rindex(".") :]]


def test_the_dashboard_loads_nothing_from_elsewhere() -> None:
    files = sorted(STATIC_DIR.iterdir())
    assert {f.name for f in files} == {"index.html", "dashboard.js", "dashboard.css"}
    for f in files:
        text = f.read_text()
        assert not re.search(r"(?i)\b(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), f"{f.name} refers to another host"
        assert "innerHTML" not in text  # data is shown with textContent only


@pytest.mark.parametrize(
    ("method", "path", "headers", "level"),
    [
        ("GET", "/healthz", {}, "debug"),
        ("GET", "/readyz", {}, "debug"),
        ("GET", "/metrics", {}, "debug"),
        ("GET", "/api/v1/stats", {"X-Insider-Refresh": "1"}, "debug"),  # the dashboard's refresh
        ("GET", "/api/v1/messages", {"X-Insider-Refresh": "1"}, "debug"),
        ("GET", "/api/v1/messages", {}, "info"),  # anyone else's read
        ("GET", "/api/v1/stats", {}, "info"),
        ("POST", "/api/v1/messages/stop", {"X-Insider-Refresh": "1"}, "info"),  # a command is never routine
        ("GET", "/api/v1/messages/stop", {"X-Insider-Refresh": "1"}, "info"),  # GET stop changes state
        ("GET", "/", {}, "info"),
    ],
)
async def test_routine_polling_logs_at_debug_and_everything_else_at_info(
    api: Api, method: str, path: str, headers: dict[str, str], level: str
) -> None:
    with capture_logs() as logs:
        await api.client.request(method, path, headers=headers)
    [event] = [e for e in logs if e.get("event") == "request"]
    assert event["log_level"] == level


def test_the_dashboard_marks_its_refresh() -> None:
    script = (STATIC_DIR / "dashboard.js").read_text()
    assert 'headers["X-Insider-Refresh"] = "1"' in script
