"""The README's API tables, read from the README: every route answers, every status code it names is
reached the way a client would reach it, errors are JSON shaped as the README says, and Swagger
declares each code. A code the README names without a way to reach it here fails loudly."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from insider.config import load_settings
from insider.container import Container
from insider.web.app import create_app
from insider.web.services import SERVICES
from tests.readme_text import code_spans, section, status_codes, tables

Client = TestClient[Any, Any]
TOKEN = "readme-token"
VALID = {"to": "+15555550100", "content": "Hello from insider"}
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Recipe:
    """How a client reaches one status code of one route: on which service, with which request."""

    send: Callable[[Client, Path], Awaitable[ClientResponse]]
    service: str = (
        "up"  # up | down (the database cannot be opened) | token (INSIDER_API_TOKEN set) | dlr (INSIDER_DLR_TOKEN set)
    )
    fields: bool = False  # whether the error carries "fields" (README, API)


async def _enqueue(client: Client) -> int:
    response = await client.post("/api/v1/messages", json=VALID)
    assert response.status == 201, await response.text()
    return int((await response.json())["id"])


async def _failed_message(client: Client, database: Path) -> int:
    message_id = await _enqueue(client)
    with sqlite3.connect(database) as db:  # as a refused send would leave it
        db.execute("UPDATE messages SET status = 'failed', last_error = 'HTTP 400' WHERE id = ?", (message_id,))
    return message_id


def get(path: str, **kwargs: Any) -> Callable[[Client, Path], Awaitable[ClientResponse]]:
    async def send(client: Client, database: Path) -> ClientResponse:
        return await client.get(path, **kwargs)

    return send


def post(path: str, **kwargs: Any) -> Callable[[Client, Path], Awaitable[ClientResponse]]:
    async def send(client: Client, database: Path) -> ClientResponse:
        return await client.post(path, **kwargs)

    return send


async def _get_one(client: Client, database: Path) -> ClientResponse:
    return await client.get(f"/api/v1/messages/{await _enqueue(client)}")


async def _retry_failed(client: Client, database: Path) -> ClientResponse:
    return await client.post(f"/api/v1/messages/{await _failed_message(client, database)}/retry")


async def _retry_pending(client: Client, database: Path) -> ClientResponse:
    return await client.post(f"/api/v1/messages/{await _enqueue(client)}/retry")


def _twice(
    first: Callable[[Client, Path], Awaitable[ClientResponse]],
    then: Callable[[Client, Path], Awaitable[ClientResponse]] | None = None,
) -> Callable[[Client, Path], Awaitable[ClientResponse]]:
    """``first``, then ``then`` (or ``first`` again); the second answer is the one checked."""

    async def send(client: Client, database: Path) -> ClientResponse:
        answer = await first(client, database)
        assert answer.status == 200, await answer.text()
        return await (then or first)(client, database)

    return send


def _twice_taken(
    send: Callable[[Client, Path], Awaitable[ClientResponse]],
) -> Callable[[Client, Path], Awaitable[ClientResponse]]:
    """``send`` taken (``201``), then again; the second answer is the one checked."""

    async def again(client: Client, database: Path) -> ClientResponse:
        first = await send(client, database)
        assert first.status == 201, await first.text()
        return await send(client, database)

    return again


def _while_shutting_down(
    send: Callable[[Client, Path], Awaitable[ClientResponse]],
) -> Callable[[Client, Path], Awaitable[ClientResponse]]:
    """``send`` once the supervisor has closed, as it does when the service shuts down (SIGTERM)."""

    async def shutting_down(client: Client, database: Path) -> ClientResponse:
        await client.app[SERVICES].get().supervisor.close()
        return await send(client, database)

    return shutting_down


async def _cancel_pending(client: Client, database: Path) -> ClientResponse:
    return await client.post(f"/api/v1/messages/{await _enqueue(client)}/cancel")


async def _cancel_failed(client: Client, database: Path) -> ClientResponse:
    return await client.post(f"/api/v1/messages/{await _failed_message(client, database)}/cancel")


async def _events_of_new(client: Client, database: Path) -> ClientResponse:
    return await client.get(f"/api/v1/messages/{await _enqueue(client)}/events")


SUPPRESSIONS = "/api/v1/suppressions"
SUPPRESSED = {"to": "+905301234001", "scope": "commercial", "reason": "asked by phone"}


async def _suppress_twice(client: Client, database: Path) -> ClientResponse:
    first = await client.post(SUPPRESSIONS, json=SUPPRESSED)
    assert first.status == 201, await first.text()
    return await client.post(SUPPRESSIONS, json=SUPPRESSED | {"scope": "all"})


def _suppressed_then(method: str) -> Callable[[Client, Path], Awaitable[ClientResponse]]:
    async def send(client: Client, database: Path) -> ClientResponse:
        first = await client.post(SUPPRESSIONS, json=SUPPRESSED)
        assert first.status == 201, await first.text()
        return await client.request(method, f"{SUPPRESSIONS}/%2B905301234001")

    return send


DLR_TOKEN = "readme-dlr-token"
REPORTS = "/api/v1/delivery-reports"
RECEIPT = {"messageId": "3f1c0e4e-8d7e-4a8a-9a35-2f3c8f5b2a10", "status": "DELIVRD"}

MESSAGES = "/api/v1/messages"
PROVIDERS = "/api/v1/providers"
INBOUND = "/api/v1/inbound"
REPLY = {"from": "+905301234567", "text": "STOP"}
DLR = {"x-ins-auth-key": DLR_TOKEN}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# (method, path as the README writes it) -> status code -> the ways to reach it.
RECIPES: dict[tuple[str, str], dict[int, list[Recipe]]] = {
    ("GET", MESSAGES): {
        200: [Recipe(get(MESSAGES)), Recipe(get(MESSAGES, params={"status": "pending", "limit": "1"}))],
        400: [Recipe(get(MESSAGES, params={"cursor": "bm90LWEtY3Vyc29y"}), fields=True)],
        422: [Recipe(get(MESSAGES, params={"limit": "0"}), fields=True)],
        503: [Recipe(get(MESSAGES), service="down")],
    },
    ("POST", MESSAGES): {
        201: [Recipe(post(MESSAGES, json=VALID))],
        400: [
            Recipe(post(MESSAGES, data=b'{"to": ', headers=JSON)),  # not JSON at all
            Recipe(post(MESSAGES, data=b'["+15555550100"]', headers=JSON), fields=True),  # JSON, not an object
        ],
        413: [Recipe(post(MESSAGES, json={"to": VALID["to"], "content": "x" * 70_000}))],
        415: [Recipe(post(MESSAGES, data=json.dumps(VALID).encode(), headers={"Content-Type": "text/plain"}))],
        422: [Recipe(post(MESSAGES, json={"to": "0530 123", "content": "x"}), fields=True)],
        503: [Recipe(post(MESSAGES, json=VALID), service="down")],
    },
    ("GET", "/api/v1/messages/{id}"): {
        200: [Recipe(_get_one)],
        404: [Recipe(get(f"{MESSAGES}/999999")), Recipe(get(f"{MESSAGES}/0"))],
    },
    ("POST", "/api/v1/messages/{id}/retry"): {
        200: [Recipe(_retry_failed)],
        404: [Recipe(post(f"{MESSAGES}/999999/retry"))],
        409: [Recipe(_retry_pending)],
    },
    ("POST", f"{MESSAGES}/batch"): {
        201: [Recipe(post(f"{MESSAGES}/batch", json={"messages": [VALID, VALID | {"priority": 9}]}))],
        422: [Recipe(post(f"{MESSAGES}/batch", json={"messages": [VALID, {"to": "12", "content": "x"}]}), fields=True)],
    },
    ("POST", f"{MESSAGES}/preview"): {
        200: [
            Recipe(post(f"{MESSAGES}/preview", json={"content": "Merhaba"})),
            Recipe(post(f"{MESSAGES}/preview", json={"content": "Merhaba", "to": VALID["to"], "priority": 9})),
        ],
        422: [Recipe(post(f"{MESSAGES}/preview", json={"content": "x", "category": "spam"}), fields=True)],
    },
    ("POST", "/api/v1/messages/{id}/cancel"): {
        200: [Recipe(_cancel_pending)],
        404: [Recipe(post(f"{MESSAGES}/999999/cancel"))],
        409: [Recipe(_cancel_failed)],
    },
    ("POST", "/api/v1/messages/start"): {
        200: [Recipe(post(f"{MESSAGES}/start"))],
        503: [Recipe(_while_shutting_down(post(f"{MESSAGES}/start")))],
    },
    ("GET", "/api/v1/messages/start"): {
        200: [Recipe(get(f"{MESSAGES}/start"))],
        503: [Recipe(_while_shutting_down(get(f"{MESSAGES}/start")))],
    },
    ("POST", "/api/v1/messages/stop"): {200: [Recipe(post(f"{MESSAGES}/stop"))]},
    ("GET", "/api/v1/messages/stop"): {200: [Recipe(get(f"{MESSAGES}/stop"))]},
    ("GET", "/api/v1/sender"): {
        200: [Recipe(get("/api/v1/sender")), Recipe(get("/api/v1/sender"), service="down")],
        403: [Recipe(get("/api/v1/sender", headers={"Sec-Fetch-Site": "cross-site"}))],  # from another site
        421: [Recipe(get("/api/v1/sender", headers={"Host": "rebinding.example"}))],  # a foreign Host
    },
    ("GET", "/api/v1/stats"): {
        200: [Recipe(get("/api/v1/stats"))],
        401: [
            Recipe(get("/api/v1/stats"), service="token"),
            Recipe(get("/api/v1/stats", headers={"Authorization": "Bearer nope"}), service="token"),
        ],
        503: [Recipe(get("/api/v1/stats"), service="down")],
    },
    ("GET", PROVIDERS): {
        200: [Recipe(get(PROVIDERS))],
        503: [Recipe(get(PROVIDERS), service="down")],
    },
    ("GET", f"{PROVIDERS}/{{name}}"): {
        200: [Recipe(get(f"{PROVIDERS}/simulator"))],
        404: [Recipe(get(f"{PROVIDERS}/nobody"))],
    },
    ("POST", f"{PROVIDERS}/{{name}}/disable"): {
        200: [Recipe(post(f"{PROVIDERS}/simulator/disable"))],
        404: [Recipe(post(f"{PROVIDERS}/nobody/disable"))],
    },
    ("POST", f"{PROVIDERS}/{{name}}/enable"): {
        200: [Recipe(_twice(post(f"{PROVIDERS}/simulator/disable"), post(f"{PROVIDERS}/simulator/enable")))],
        404: [Recipe(post(f"{PROVIDERS}/nobody/enable"))],
    },
    ("GET", SUPPRESSIONS): {
        200: [Recipe(get(SUPPRESSIONS)), Recipe(get(SUPPRESSIONS, params={"to": "+905301234001", "limit": "1"}))],
        400: [Recipe(get(SUPPRESSIONS, params={"cursor": "bm90LWEtY3Vyc29y"}), fields=True)],
        422: [
            Recipe(get(SUPPRESSIONS, params={"limit": "501"}), fields=True),
            Recipe(get(SUPPRESSIONS, params={"to": "0530 123"}), fields=True),
        ],
        503: [Recipe(get(SUPPRESSIONS), service="down")],
    },
    ("POST", SUPPRESSIONS): {
        201: [Recipe(post(SUPPRESSIONS, json=SUPPRESSED)), Recipe(post(SUPPRESSIONS, json={"to": "+15555550100"}))],
        200: [Recipe(_suppress_twice)],
        400: [
            Recipe(post(SUPPRESSIONS, data=b'{"to": ', headers=JSON)),
            Recipe(post(SUPPRESSIONS, data=b'["+15555550100"]', headers=JSON), fields=True),
        ],
        413: [Recipe(post(SUPPRESSIONS, json=SUPPRESSED | {"reason": "x" * 70_000}))],
        415: [Recipe(post(SUPPRESSIONS, data=json.dumps(SUPPRESSED).encode(), headers={"Content-Type": "text/plain"}))],
        422: [
            Recipe(post(SUPPRESSIONS, json={"to": "0530 123"}), fields=True),
            Recipe(post(SUPPRESSIONS, json=SUPPRESSED | {"scope": "ads"}), fields=True),
            Recipe(post(SUPPRESSIONS, json=SUPPRESSED | {"reason": "x" * 201}), fields=True),
            Recipe(post(SUPPRESSIONS, json=SUPPRESSED | {"source": "me"}), fields=True),
        ],
    },
    ("GET", f"{SUPPRESSIONS}/{{to}}"): {
        200: [Recipe(_suppressed_then("GET"))],
        404: [Recipe(get(f"{SUPPRESSIONS}/%2B905301234001"))],
        422: [Recipe(get(f"{SUPPRESSIONS}/hello"), fields=True)],
    },
    ("DELETE", f"{SUPPRESSIONS}/{{to}}"): {
        204: [Recipe(_suppressed_then("DELETE"))],
        404: [Recipe(lambda client, database: client.delete(f"{SUPPRESSIONS}/%2B905301234001"))],
        422: [Recipe(lambda client, database: client.delete(f"{SUPPRESSIONS}/hello"), fields=True)],
    },
    ("GET", "/"): {200: [Recipe(get("/")), Recipe(get("/"), service="token")]},
    ("GET", "/healthz"): {200: [Recipe(get("/healthz")), Recipe(get("/healthz"), service="down")]},
    ("GET", "/readyz"): {200: [Recipe(get("/readyz"))], 503: [Recipe(get("/readyz"), service="down")]},
    ("GET", "/metrics"): {200: [Recipe(get("/metrics")), Recipe(get("/metrics"), service="token")]},
    # The original Go service's routes, in its envelope.
    ("GET", "/messages"): {
        200: [Recipe(get("/messages")), Recipe(get("/messages/"))],
        401: [Recipe(get("/messages"), service="token")],
        500: [Recipe(get("/messages"), service="down")],
    },
    ("GET", "/messages/start"): {
        200: [Recipe(get("/messages/start")), Recipe(get("/messages/start/"))],
        500: [Recipe(_twice(get("/messages/start")))],
    },
    ("GET", "/messages/stop"): {
        200: [Recipe(_twice(get("/messages/start"), get("/messages/stop")))],
        500: [Recipe(get("/messages/stop"))],
    },
    ("GET", "/api/v1/messages/{id}/events"): {
        200: [Recipe(_events_of_new)],
        404: [Recipe(get(f"{MESSAGES}/999999/events"))],
    },
    ("POST", REPORTS): {
        200: [
            Recipe(post(REPORTS, json=RECEIPT, headers={"x-ins-auth-key": DLR_TOKEN}), service="dlr"),
            Recipe(post(REPORTS, json=[RECEIPT], params={"token": DLR_TOKEN}), service="dlr"),
        ],
        401: [Recipe(post(REPORTS, json=RECEIPT, headers={"x-ins-auth-key": "nope"}), service="dlr")],
        404: [Recipe(post(REPORTS, json=RECEIPT, headers={"x-ins-auth-key": DLR_TOKEN}))],  # no token set: off
        422: [
            Recipe(
                post(REPORTS, json=[RECEIPT, {"messageId": "x"}], headers={"x-ins-auth-key": DLR_TOKEN}),
                service="dlr",
                fields=True,
            )
        ],
    },
    ("POST", INBOUND): {
        201: [
            Recipe(post(INBOUND, json=REPLY, headers=DLR), service="dlr"),
            Recipe(
                post(INBOUND, data={"From": "+905301234567", "Body": "Başla"}, params={"token": DLR_TOKEN}),
                service="dlr",
            ),
        ],
        200: [Recipe(_twice_taken(post(INBOUND, json=REPLY | {"messageId": "SM1"}, headers=DLR)), service="dlr")],
        400: [
            Recipe(post(INBOUND, data=b'{"from": ', headers=DLR | JSON), service="dlr"),
            Recipe(post(INBOUND, data=b'["STOP"]', headers=DLR | JSON), service="dlr", fields=True),
        ],
        401: [Recipe(post(INBOUND, json=REPLY, headers={"x-ins-auth-key": "nope"}), service="dlr")],
        404: [Recipe(post(INBOUND, json=REPLY, headers=DLR))],  # no token set: off
        413: [Recipe(post(INBOUND, data=b"Body=" + b"x" * 70_000, headers=DLR | FORM), service="dlr")],
        415: [Recipe(post(INBOUND, data=b"STOP", headers=DLR | {"Content-Type": "text/plain"}), service="dlr")],
        422: [
            Recipe(post(INBOUND, json={"from": "nobody", "text": "STOP"}, headers=DLR), service="dlr", fields=True),
            Recipe(post(INBOUND, data={"From": "+905301234567"}, headers=DLR), service="dlr", fields=True),
        ],
    },
    ("GET", INBOUND): {
        200: [Recipe(get(INBOUND)), Recipe(get(INBOUND, params={"from": "+905301234567", "limit": "1"}))],
        400: [Recipe(get(INBOUND, params={"cursor": "bm90LWEtY3Vyc29y"}), fields=True)],
        401: [Recipe(get(INBOUND), service="token")],
        422: [Recipe(get(INBOUND, params={"from": "nobody"}), fields=True)],
        503: [Recipe(get(INBOUND), service="down")],
    },
    # Not rows of the tables: what the API section's prose says of every route.
    ("GET", "/api/v1/nowhere"): {404: [Recipe(get("/api/v1/nowhere")), Recipe(get("/nowhere"))]},
    ("DELETE", MESSAGES): {405: [Recipe(lambda client, database: client.delete(MESSAGES))]},
}


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    codes: frozenset[int]
    shapes: tuple[tuple[int | None, dict[str, Any]], ...]  # JSON objects the row shows, by status (None: success)
    line: int


def documented_routes() -> list[Row]:
    """Every route of the README's API tables, with the status codes and JSON its row names."""
    rows: list[Row] = []
    for table in tables("Method and path"):
        for cells in table.rows:
            route, what = cells[0], cells[1]
            methods = re.findall(r"\b(GET|POST|PUT|PATCH|DELETE|HEAD)\b", route)
            path = re.search(r"(/[^\s`?]*)", route)
            assert methods and path, f"README.md:{table.line}: cannot read a method and path in {route!r}"
            shapes: list[tuple[int | None, dict[str, Any]]] = []
            for span in code_spans(what):
                status = re.match(r"^(\d{3})\s+", span)
                try:
                    shape = json.loads(span[status.end() :] if status else span)
                except ValueError:
                    continue
                if isinstance(shape, dict):
                    shapes.append((int(status.group(1)) if status else None, shape))
            for method in methods:
                rows.append(Row(method, path.group(1), frozenset(status_codes(what)), tuple(shapes), table.line))
    return rows


ROUTES = documented_routes()


def _success(codes: frozenset[int]) -> int:
    named = sorted(c for c in codes if 200 <= c < 300)
    return named[0] if named else 200


ROWS = {(row.method, row.path): row for row in ROUTES}
CASES = [(method, path, code) for (method, path), codes in RECIPES.items() for code in sorted(codes)]


@asynccontextmanager
async def service(kind: str, directory: Path, name: str) -> AsyncIterator[tuple[Client, Path]]:
    """The app as `python -m insider` builds it, on a SQLite file of this test's own."""
    database = directory / ("missing-directory" if kind == "down" else "") / f"{name}.db"
    env = {
        "INSIDER_DATABASE_URL": f"sqlite:///{database}",
        "INSIDER_AUTOSTART": "false",
        "INSIDER_LOG_LEVEL": "error",
        "INSIDER_API_TOKEN": TOKEN if kind == "token" else "",
        "INSIDER_DLR_TOKEN": DLR_TOKEN if kind == "dlr" else "",
    }
    container = Container(settings=load_settings(env, env_file=None))
    client: Client = TestClient(TestServer(create_app(container)))
    await client.start_server()
    try:
        yield client, database
    finally:
        await client.close()


def test_every_route_of_the_tables_has_its_recipes() -> None:
    assert len(ROUTES) >= 10, "the README's API tables were not found"
    for row in ROUTES:
        known = RECIPES.get((row.method, row.path))
        assert known is not None, f"README.md:{row.line}: {row.method} {row.path} is new: add it to RECIPES"
        missing = (row.codes | {_success(row.codes)}) - set(known)
        assert not missing, f"README.md:{row.line}: {row.method} {row.path} names {missing}: add how to reach them"


# Codes of the HTTP edges that need a raw socket (a body that trickles, Expect: 100-continue):
# the tests that reach them, on the same server, in tests/integration/test_http_server.py.
REACHED_ELSEWHERE = {
    100: "test_expect_100_continue_within_the_limit_goes_on",
    408: "test_a_slow_body_is_408_json_and_dropped",
}


def test_every_status_code_the_api_section_names_is_reached_somewhere() -> None:
    named = status_codes(section("API"))
    server_tests = (Path(__file__).parents[1] / "integration" / "test_http_server.py").read_text(encoding="utf-8")
    for code, test in REACHED_ELSEWHERE.items():
        assert f"def {test}(" in server_tests, f"{code}: {test} is gone"
    reached = {code for codes in RECIPES.values() for code in codes} | set(REACHED_ELSEWHERE)
    assert named - reached == set(), f"README's API section names {named - reached}, which no recipe reaches"


@pytest.mark.parametrize(("method", "path", "code"), CASES, ids=[f"{m} {p} {c}" for m, p, c in CASES])
async def test_each_status_code_is_reached_json_and_declared(method: str, path: str, code: int, tmp_path: Path) -> None:
    row = ROWS.get((method, path))  # None for a route the tables do not list (an unknown path, a wrong method)
    for i, recipe in enumerate(RECIPES[(method, path)][code]):
        async with service(recipe.service, tmp_path, f"api-{i}") as (client, database):
            response = await recipe.send(client, database)
            body = await response.read()
            assert response.status == code, f"{method} {path} (recipe {i}): {response.status} {body[:300]!r}"
            if row is not None and response.content_type == "application/json":
                answer = json.loads(body)
                for status, shape in row.shapes:
                    if (status or _success(row.codes)) == code:
                        assert answer | shape == answer, f"README.md:{row.line}: shows {shape}, the service {answer}"
            if code >= 400:
                error = json.loads(body)
                assert response.content_type == "application/json" and isinstance(error["error"], str)
                assert ("fields" in error) is recipe.fields, f"README, API: which errors carry fields: {error}"
                if code == 401:
                    scheme = "ApiKey" if recipe.service == "dlr" else "Bearer"
                    assert response.headers["WWW-Authenticate"].startswith(scheme)
                if code == 405:
                    assert response.headers["Allow"]
            spec = await (await client.get("/api/docs/swagger.json")).json()
        if row is None:
            continue
        operation = spec["paths"].get(path, {}).get(method.lower())
        if path.startswith("/api/"):
            assert operation is not None, f"Swagger has no {method} {path}"
        if operation is not None:
            assert str(code) in operation["responses"], f"Swagger does not declare {code} for {method} {path}"
