"""Browsers cannot be turned against the service: foreign Host (DNS rebinding) is 421, cross-site is 403."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from insider.config import ConfigError, load_settings
from insider.web.app import create_app
from insider.web.guard import BrowserGuard, browser_checks_exempt, cross_site_allowed
from tests.unit.web_support import BASE_SETTINGS, Api, in_memory_container

MakeApi = Callable[..., Awaitable[Api]]
TOKEN = "s3cret"
CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1"},  # Sec-Fetch-Site wins
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # a sandboxed frame, a data: URL
    {"Origin": "https://evil.example", "Referer": "http://127.0.0.1/"},  # Origin before Referer
    {"Referer": "http://evil.example/page.html"},
]
# Every route that reads data or changes state, with the methods a browser's page could use on it.
GUARDED = [
    ("GET", "/api/v1/messages/stop"),
    ("POST", "/api/v1/messages/stop"),
    ("GET", "/api/v1/messages/start"),
    ("POST", "/api/v1/messages/start"),
    ("GET", "/api/v1/messages?status=pending"),
    ("GET", "/api/v1/messages/1"),
    ("POST", "/api/v1/messages/1/retry"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/sender"),
    ("GET", "/api/v1/providers"),
    ("POST", "/api/v1/providers/webhook/disable"),
    ("POST", "/api/v1/providers/webhook/enable"),
    ("GET", "/metrics"),
    # The original Go service's routes.
    ("GET", "/messages"),
    ("GET", "/messages/start"),
    ("GET", "/messages/stop/"),
]


async def _running(api: Api, **headers: str) -> bool:
    body = await (await api.client.get("/api/v1/sender", headers=headers)).json()
    return bool(body["running"])


@pytest.mark.parametrize(
    ("token", "headers", "method", "path"),
    [("", h, m, p) for h in CROSS_SITE for m, p in GUARDED] + [(TOKEN, h, *GUARDED[0]) for h in CROSS_SITE],
)
async def test_cross_site_requests_are_403_json(
    make_api: MakeApi, token: str, headers: dict[str, str], method: str, path: str
) -> None:
    api = await make_api(api_token=token)
    auth = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    response = await api.client.request(method, path, headers=headers | auth)
    assert response.status == 403
    assert response.content_type == "application/json"
    assert "cross-site" in (await response.json())["error"]


@pytest.mark.parametrize("token", ["", TOKEN], ids=["no token", "token"])
async def test_a_cross_site_form_changes_nothing(make_api: MakeApi, token: str) -> None:
    """The attack of the issue: <img src=.../stop>, a text/plain form POST to start, a queued message."""
    api = await make_api(api_token=token)
    auth = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    evil = {"Origin": "http://evil.example"}
    await api.client.post("/api/v1/messages/start", headers=auth)
    assert (await api.client.get("/api/v1/messages/stop", headers=evil | auth)).status == 403
    assert await _running(api, **auth)
    await api.client.post("/api/v1/messages/stop", headers=auth)
    form = await api.client.post(
        "/api/v1/messages/start", data="x=1", headers=evil | auth | {"Content-Type": "text/plain"}
    )
    assert form.status == 403
    assert not await _running(api, **auth)
    queued = await api.client.post(
        "/api/v1/messages",
        data='{"to": "+905301234001", "content": "x"}',
        headers=evil | auth | {"Content-Type": "text/plain"},
    )
    assert queued.status == 403
    listed = await (await api.client.get("/api/v1/messages?status=pending", headers=auth)).json()
    assert listed["data"] == []


FOREIGN_HOSTS = ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "", "[::2]:1"]
ALL_ROUTES = [*GUARDED, ("GET", "/"), ("GET", "/swagger"), ("GET", "/healthz"), ("GET", "/static/dashboard/x")]


@pytest.mark.parametrize(
    ("token", "host", "method", "path"),
    [("", "evil.example", m, p) for m, p in ALL_ROUTES]
    + [("", h, *GUARDED[0]) for h in FOREIGN_HOSTS]
    + [(TOKEN, h, *GUARDED[0]) for h in FOREIGN_HOSTS],
)
async def test_a_foreign_host_is_421_json(make_api: MakeApi, token: str, host: str, method: str, path: str) -> None:
    """DNS rebinding: the attacker's name resolves to us, and the browser sends its name as Host."""
    api = await make_api(api_token=token)
    auth = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    response = await api.client.request(method, path, headers={"Host": host} | auth)
    assert response.status == 421
    body = await response.json()
    assert "INSIDER_ALLOWED_HOSTS" in body["error"] and body["host"] == host


async def test_foreign_host_stops_nothing(api: Api) -> None:
    await api.client.post("/api/v1/messages/start")
    assert (await api.client.get("/api/v1/messages/stop", headers={"Host": "evil.example"})).status == 421
    assert await _running(api)


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, programs: no browser headers at all
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed in the address bar, a bookmark
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},  # the browser's word wins
        {"Origin": "http://{host}"},
        {"Referer": "http://{host}/swagger"},
        {"Host": "localhost:{port}"},
        {"Host": "LOCALHOST.:1234"},
        {"Host": "[::1]:{port}"},
        {"Host": "127.0.0.1"},
    ],
)
@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_same_origin_and_programs_pass(api: Api, headers: dict[str, str], method: str, path: str) -> None:
    host = f"127.0.0.1:{api.client.port}"
    filled = {k: v.format(host=host, port=api.client.port) for k, v in headers.items()}
    response = await api.client.request(method, path, headers=filled)
    assert response.status not in (403, 421), await response.text()


@pytest.mark.parametrize("headers", CROSS_SITE)
@pytest.mark.parametrize("path", ["/", "/static/dashboard/dashboard.js", "/swagger"])
async def test_pages_open_from_a_link_elsewhere(api: Api, headers: dict[str, str], path: str) -> None:
    """The dashboard and Swagger UI hold no data themselves; what they fetch is checked."""
    response = await api.client.get(path, headers=headers)
    assert response.status == 200


@pytest.mark.parametrize(
    ("allowed", "host", "status"),
    [
        ("sms.example.com", "sms.example.com", 200),
        ("sms.example.com", "SMS.example.com:8443", 200),
        ("sms.example.com", "localhost", 421),  # an explicit list replaces the local names
        ("sms.example.com", "127.0.0.1", 200),  # the address the connection came in on, always
        (".example.com", "a.b.example.com", 200),
        (".example.com", "example.com", 200),
        (".example.com", "badexample.com", 421),
        ("sms.example.com, 10.0.0.5", "10.0.0.5:80", 200),
        ("*", "anything.example", 200),
        ("[::1]", "[::1]:8080", 200),
    ],
)
async def test_allowed_hosts_setting(make_api: MakeApi, allowed: str, host: str, status: int) -> None:
    api = await make_api(allowed_hosts=allowed)
    response = await api.client.get("/api/v1/sender", headers={"Host": host})
    assert response.status == status


@pytest.mark.parametrize("value", ["example.com:8080", "http://example.com", "exa mple.com", "a..b", "-bad-.com"])
def test_a_bad_allowed_hosts_entry_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^INSIDER_ALLOWED_HOSTS: expected host names"):
        load_settings(BASE_SETTINGS | {"INSIDER_ALLOWED_HOSTS": value}, env_file=None)


async def test_a_listen_address_is_allowed_by_default() -> None:
    container = in_memory_container(host="insider.internal")
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
    await client.start_server()
    try:
        ok = await client.get("/api/v1/sender", headers={"Host": "insider.internal:8080"})
        other = await client.get("/api/v1/sender", headers={"Host": "other.internal:8080"})
        assert (ok.status, other.status) == (200, 421)
    finally:
        await client.close()
        await container.repository().close()


async def test_routes_opt_out_per_handler() -> None:
    """How a page (cross-site allowed) and a server-to-server endpoint (exempt from both checks) plug in."""

    @cross_site_allowed
    async def page(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @browser_checks_exempt
    async def receipts(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    container = in_memory_container()
    app = create_app(container)
    app.router.add_get("/page", page)
    app.router.add_post("/api/v1/receipts", receipts)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert (await client.get("/page", headers={"Origin": "http://elsewhere.example"})).status == 200
        assert (await client.get("/page", headers={"Host": "evil.example"})).status == 421
        provider = {"Origin": "http://provider.example", "Host": "sms.example.com"}
        assert (await client.post("/api/v1/receipts", headers=provider)).status == 200
    finally:
        await client.close()
        await container.repository().close()


@pytest.mark.parametrize(
    ("sockname", "host", "allowed"),
    [
        (("10.0.0.5", 8080), "10.0.0.5:8080", True),  # a probe or scraper dialling the pod's address
        (("::ffff:10.0.0.5", 8080, 0, 0), "10.0.0.5:8080", True),  # the same on a dual-stack listener (::)
        (("fd00::5", 8080, 0, 0), "[fd00::5]:8080", True),
        (("10.0.0.5", 8080), "10.0.0.6:8080", False),
        (("10.0.0.5", 8080), "rebind.example:8080", False),
        (("10.0.0.5", 8080), "None", False),
        (("fd00::5", 8080, 0, 0), "None", False),
    ],
)
def test_the_address_a_connection_came_in_on_is_always_answered(
    sockname: tuple[object, ...], host: str, allowed: bool
) -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: sockname if name == "sockname" else default
    request = make_mocked_request("GET", "/healthz", headers={"Host": host}, transport=transport)
    guard = BrowserGuard.for_service((), "0.0.0.0")
    assert guard.host_allowed(request) is allowed


@pytest.mark.parametrize("path", ["/messages/stop", "/messages", "/messages/start/"])
async def test_the_original_routes_refuse_in_the_original_envelope(api: Api, path: str) -> None:
    cross_site = await api.client.get(path, headers={"Origin": "http://evil.example"})
    assert cross_site.status == 403
    assert (await cross_site.json())["success"] is False
    foreign = await api.client.get(path, headers={"Host": "evil.example"})
    assert foreign.status == 421
    assert (await foreign.json())["success"] is False
    assert await _running(api) is False  # neither start nor stop ran


async def test_the_421s_body_is_the_documented_error(api: Api) -> None:
    response = await api.client.get("/api/v1/messages", headers={"Host": "evil.example"})
    body = await response.json()
    spec = await (await api.client.get("/api/docs/swagger.json")).json()
    documented = spec["definitions"]["Error"]["properties"]
    assert response.status == 421 and set(body) <= set(documented), (set(body), set(documented))
