"""The HTTP server's edges on a real local port: parser errors as JSON, slow clients dropped, big bodies refused.

The app runs on the unit tests' adapters behind the service's own runner (ServiceRunner, as
``python -m insider`` serves it), with 1 s deadlines; clients are raw sockets on the loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from insider.web.app import create_app
from insider.web.server import MAX_BODY_BYTES, ServiceRunner
from tests.conftest import eventually
from tests.unit.web_support import in_memory_container

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


@dataclass
class Served:
    port: int

    async def exchange(self, data: bytes, *, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """Send raw bytes on a fresh connection; the status, headers and body of the (first) answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(timeout_s):
                return await read_answer(reader)
        finally:
            writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length (every answer of the service has one)."""
    status, headers, _ = parse_answer(await reader.readuntil(b"\r\n\r\n"))
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    container = in_memory_container(http_header_timeout="1s", http_body_timeout="1s")
    runner = ServiceRunner(create_app(container))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Served(int(runner.addresses[0][1]))
    finally:
        await runner.cleanup()
        await container.repository().close()


PARSER_ERRORS = {
    "request line over 8 KB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "header over 8 KB": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "over 100 headers": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
    + b"\r\n",
    "method FOO": b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "non-ASCII path": "GET /çö HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
    "TLS on the HTTP port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    "HTTP/9.9": b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    "Content-Length not a number": b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
    "Content-Length and chunked": b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
async def test_what_the_parser_refuses_is_a_short_json_400(served: Served, request_bytes: bytes) -> None:
    status, headers, body = await served.exchange(request_bytes)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error.startswith("not a valid HTTP request: ")
    assert len(body) < 200 and b"aaaa" not in body and b"FOO" not in body  # nothing of the request echoed


@pytest.mark.parametrize(
    "path", ["/static/nope", "/static/dashboard/nope.js", "/static/swagger/nope.css", "/nope", "/api/v1/nope"]
)
async def test_missing_files_and_routes_are_json_404(served: Served, path: str) -> None:
    status, headers, body = await served.exchange(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert (status, json.loads(body)) == (404, {"error": "not found"})
    assert headers["content-type"].startswith("application/json")


async def test_wrong_method_is_json_405_with_allow(served: Served) -> None:
    status, headers, body = await served.exchange(
        b"DELETE /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert (status, json.loads(body), headers["allow"]) == (405, {"error": "method not allowed"}, "GET")


async def test_a_declared_body_over_the_limit_is_413_at_once(served: Served) -> None:
    for path in ("/api/v1/messages", "/api/v1/messages/start"):
        started = time.monotonic()
        status, headers, body = await served.exchange(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode(),
            timeout_s=HEADER_TIMEOUT_S + BODY_TIMEOUT_S,  # well before any deadline: no body was ever sent
        )
        assert status == 413 and "larger than" in json.loads(body)["error"]
        assert headers["connection"] == "close"
        assert time.monotonic() - started < BODY_TIMEOUT_S


async def test_a_chunked_body_over_the_limit_is_413(served: Served) -> None:
    chunk = b"x" * 16384
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 1))
    status, _, body = await served.exchange(
        b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    assert status == 413 and "error" in json.loads(body)


async def test_a_slow_body_is_408_json_and_dropped(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        async with asyncio.timeout(BODY_TIMEOUT_S + 5):
            status, _, body = await read_answer(reader)
            assert await reader.read() == b""  # and the connection is closed
    finally:
        writer.close()
    assert status == 408 and "INSIDER_HTTP_BODY_TIMEOUT" in json.loads(body)["error"]


async def test_200_trickling_clients_are_dropped_within_seconds_and_others_still_served(served: Served) -> None:
    """A slowloris: 200 connections that send their headers a few bytes at a time and never finish."""
    connections = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(200)]
    dropped: set[int] = set()

    async def trickle() -> None:
        for step in range(100):  # bounded: 100 steps of 0.1 s at most, well past the 1 s deadline
            for i, (_, writer) in enumerate(connections):
                if i not in dropped and not writer.is_closing():
                    writer.write(b"GET / HTTP/1.1\r\n" if step == 0 else b"X-Slow: 1\r\n")
            await asyncio.sleep(0.1)  # the client's pace (what is tested), not a synchronisation

    async def watch(i: int, reader: asyncio.StreamReader) -> None:
        try:
            data = await reader.read()
        except ConnectionError:
            data = b""
        dropped.add(i)
        if data:  # a client that had begun a request is told why
            assert parse_answer(data)[0] == 408

    started = time.monotonic()
    trickler = asyncio.create_task(trickle())
    watchers = [asyncio.create_task(watch(i, reader)) for i, (reader, _) in enumerate(connections)]
    try:
        # Meanwhile a normal client is served at once.
        status, _, _ = await served.exchange(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status == 200
        await eventually(
            lambda: len(dropped) == 200, timeout_s=HEADER_TIMEOUT_S + 8, what="every trickling client dropped"
        )
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 8  # seconds, not the 75 s of aiohttp's keep-alive
        await asyncio.gather(*watchers)
    finally:
        trickler.cancel()
        for task in watchers:
            task.cancel()
        for _, writer in connections:
            writer.close()


async def test_a_connection_that_sends_nothing_is_dropped(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S + 3):
            assert await reader.read() == b""  # closed, with nothing to say
    finally:
        writer.close()


async def test_keep_alive_requests_on_one_connection_still_work(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _, body = await read_answer(reader)
            assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        writer.close()


async def test_an_unknown_expectation_is_json_417(served: Served) -> None:
    """aiohttp refuses it before any middleware runs."""
    status, headers, body = await served.exchange(
        b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert (status, json.loads(body)) == (417, {"error": "expectation failed"})
    assert headers["content-type"].startswith("application/json")


async def test_a_refused_body_still_arriving_gets_no_second_answer(served: Served) -> None:
    """After a 413 the rest of the body is read away for a while; the header deadline must not answer 408 then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        with capture_logs() as logs:
            writer.write(
                b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 104857600\r\n\r\n"
            )
            status, _, _ = await read_answer(reader)
            assert status == 413
            for _ in range(12):  # 1.8 s of a body nobody wants, past the 1 s header deadline
                if writer.is_closing():
                    break
                writer.write(b"x" * 1024)
                await asyncio.sleep(0.15)  # the client's pace (what is tested), not a synchronisation
            try:
                async with asyncio.timeout(5):
                    await reader.read()
            except ConnectionError:
                pass
        assert [e for e in logs if e.get("reason") == "headers too slow"] == []
    finally:
        writer.close()


async def test_expect_100_continue_with_a_body_over_the_limit_is_refused_before_the_100(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 104857600\r\n\r\n"
        )
        async with asyncio.timeout(2):
            status, _, body = await read_answer(reader)  # the first thing said is the refusal
        assert status == 413 and "larger than" in json.loads(body)["error"]
    finally:
        writer.close()


async def test_expect_100_continue_within_the_limit_goes_on(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    payload = b'{"to": "+905301234001", "content": "Merhaba"}'
    try:
        writer.write(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(payload)
        )
        async with asyncio.timeout(5):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(payload)
            status, _, body = await read_answer(reader)
        assert status == 201 and json.loads(body)["status"] == "pending"
    finally:
        writer.close()


API_TOKEN = "api-secret-token"
DLR_TOKEN = "dlr-secret-token"
MESSAGES_LIMIT = 64 * 1024
BATCH_LIMIT = 4 * 1024 * 1024


@pytest.fixture
async def guarded() -> AsyncIterator[Served]:
    """The service with both tokens set and a body deadline far beyond the tests' own (refusals come before it)."""
    container = in_memory_container(api_token=API_TOKEN, dlr_token=DLR_TOKEN, http_body_timeout="30s")
    # A refused body's connection lingers (reading nothing) before it closes, and cleanup waits for it: short here.
    runner = ServiceRunner(create_app(container), lingering_time=0.3)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Served(int(runner.addresses[0][1]))
    finally:
        await runner.cleanup()
        await container.repository().close()


LOCAL = "Host: 127.0.0.1\r\n"
BEARER = f"Authorization: Bearer {API_TOKEN}\r\n"
DLR = f"x-ins-auth-key: {DLR_TOKEN}\r\n"
JSON = "Content-Type: application/json\r\n"
# A request's head, and what the service answers it with before a byte of its body arrives.
REFUSED_BEFORE_THE_BODY = {
    "unknown route": ("POST /api/v1/nope", LOCAL + BEARER + JSON, 404),
    "unknown route, no token needed": ("POST /nope", LOCAL + JSON, 404),
    "wrong method": ("PUT /api/v1/messages", LOCAL + BEARER + JSON, 405),
    "a Host not answered to": ("POST /api/v1/messages", "Host: evil.example\r\n" + BEARER + JSON, 421),
    "cross-site": ("POST /api/v1/messages", LOCAL + BEARER + JSON + "Origin: http://evil.example\r\n", 403),
    "no API token": ("POST /api/v1/messages", LOCAL + JSON, 401),
    "wrong API token": ("POST /api/v1/messages/batch", LOCAL + "Authorization: Bearer nope\r\n" + JSON, 401),
    "no receipts token": ("POST /api/v1/delivery-reports", LOCAL + JSON, 401),
    "wrong receipts token": ("POST /api/v1/delivery-reports", LOCAL + "x-ins-auth-key: nope\r\n" + JSON, 401),
    "wrong receipts token in the query": ("POST /api/v1/delivery-reports?token=nope", LOCAL + JSON, 401),
    "not JSON": ("POST /api/v1/messages", LOCAL + BEARER + "Content-Type: text/plain\r\n", 415),
    "receipts neither JSON nor a form": (
        "POST /api/v1/delivery-reports",
        LOCAL + DLR + "Content-Type: text/plain\r\n",
        415,
    ),
}


@pytest.mark.parametrize("framing", ["Content-Length: 100\r\n", "Transfer-Encoding: chunked\r\n"])
@pytest.mark.parametrize(
    ("request_line", "headers", "status"), REFUSED_BEFORE_THE_BODY.values(), ids=REFUSED_BEFORE_THE_BODY.keys()
)
async def test_a_refused_request_is_answered_before_its_body_is_sent(
    guarded: Served, request_line: str, headers: str, status: int, framing: str
) -> None:
    """The head alone decides: the answer comes while the client still withholds every byte of the body."""
    head = f"{request_line} HTTP/1.1\r\n{headers}{framing}\r\n"
    got, answer_headers, body = await guarded.exchange(head.encode(), timeout_s=3)
    assert got == status, body
    assert answer_headers["content-type"].startswith("application/json")
    assert "error" in json.loads(body)
    assert answer_headers["connection"] == "close"  # its body never came: the connection closes after the answer


ROUTE_LIMITS = {
    "messages": ("/api/v1/messages", BEARER, MESSAGES_LIMIT),
    "batch": ("/api/v1/messages/batch", BEARER, BATCH_LIMIT),
    "receipts": ("/api/v1/delivery-reports", DLR, MESSAGES_LIMIT),
}


@pytest.mark.parametrize(("path", "headers", "limit"), ROUTE_LIMITS.values(), ids=ROUTE_LIMITS.keys())
async def test_a_declared_length_over_the_routes_limit_is_413_before_the_body(
    guarded: Served, path: str, headers: str, limit: int
) -> None:
    head = f"POST {path} HTTP/1.1\r\n{LOCAL}{headers}{JSON}Content-Length: {limit + 1}\r\n\r\n"
    status, answer_headers, body = await guarded.exchange(head.encode(), timeout_s=3)
    assert (status, json.loads(body)) == (413, {"error": f"the body is larger than {limit} bytes"})
    assert answer_headers["connection"] == "close"


@pytest.mark.parametrize(("path", "headers", "limit"), ROUTE_LIMITS.values(), ids=ROUTE_LIMITS.keys())
async def test_a_chunked_body_is_cut_with_413_as_soon_as_it_passes_the_routes_limit(
    guarded: Served, path: str, headers: str, limit: int
) -> None:
    """The client goes on sending (up to twice the limit plus 1 MiB, never the last chunk); the 413 comes meanwhile."""
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    answer = asyncio.create_task(read_answer(reader))
    chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
    sent, sent_when_answered = 0, None
    try:
        writer.write(f"POST {path} HTTP/1.1\r\n{LOCAL}{headers}{JSON}Transfer-Encoding: chunked\r\n\r\n".encode())
        async with asyncio.timeout(20):
            try:
                while not answer.done() and sent < 2 * limit + 1024 * 1024:
                    writer.write(chunk)
                    sent += 16384
                    await writer.drain()
                    await asyncio.sleep(0)  # the client's pace: a chunk per turn of the loop it shares with the server
            except ConnectionError:
                pass  # the server closed after its answer while this client was still writing
            if answer.done():
                sent_when_answered = sent
            status, _, body = await answer
    finally:
        answer.cancel()
        writer.close()
    assert (status, json.loads(body)) == (413, {"error": f"the body is larger than {limit} bytes"})
    assert sent_when_answered is not None, "the answer came only after the client stopped sending"
    assert sent_when_answered <= limit + 1024 * 1024  # cut at this route's limit, not at a larger one


async def test_expect_100_continue_is_refused_before_the_100_for_any_refusal(guarded: Served) -> None:
    """No token: the first thing said is the 401, never the 100 that would invite the body."""
    status, headers, body = await guarded.exchange(
        f"POST /api/v1/messages HTTP/1.1\r\n{LOCAL}{JSON}Expect: 100-continue\r\nContent-Length: 100\r\n\r\n".encode(),
        timeout_s=3,
    )
    assert status == 401 and "Authorization" in json.loads(body)["error"]
    assert headers["connection"] == "close"  # the body never came: the connection is not reused


async def test_a_refused_request_whose_body_arrived_whole_keeps_its_connection(guarded: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    payload = b'{"to": "+905301234001", "content": "Merhaba"}'
    try:
        async with asyncio.timeout(5):
            writer.write(
                f"POST /api/v1/messages HTTP/1.1\r\n{LOCAL}{JSON}Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            status, headers, _ = await read_answer(reader)
            assert status == 401 and headers.get("connection", "").lower() != "close"
            writer.write(f"GET /healthz HTTP/1.1\r\n{LOCAL}\r\n".encode())
            status, _, _ = await read_answer(reader)
            assert status == 200
    finally:
        writer.close()
