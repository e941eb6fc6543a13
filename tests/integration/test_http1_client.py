"""The lean HTTP/1.1 client against real local servers: aiohttp's, and raw sockets for the odd answers."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from insider.adapters import http1
from insider.adapters.http1 import MAX_BODY_BYTES, Http1Client, HttpAnswer, HttpTransportError
from tests.conftest import eventually

HEADERS = {"Content-Type": "application/json", "x-ins-auth-key": "k-123", "Idempotency-Key": "idem-1"}
AiohttpServer = Callable[..., Awaitable[TestServer]]


@dataclass
class Seen:
    """What an aiohttp server saw: requests, and the client ports they came from (one per connection)."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def served(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def accept(request: web.Request) -> web.StreamResponse:
        seen.requests.append((request.path_qs, dict(request.headers), await request.read()))
        assert request.transport is not None
        seen.ports.append(request.transport.get_extra_info("peername")[1])
        return web.json_response({"message": "Accepted", "messageId": f"m-{len(seen.requests)}"}, status=202)

    async def hold(request: web.Request) -> web.StreamResponse:
        seen.in_flight += 1
        seen.most_in_flight = max(seen.most_in_flight, seen.in_flight)
        try:
            await seen.release.wait()
        finally:
            seen.in_flight -= 1
        return web.json_response({"messageId": "late"}, status=202)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=202)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"message": "Accepted", ', b'"messageId": ', b'"chunked-1"}'):
            await response.write(part)
        await response.write_eof()
        return response

    async def gzipped(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(b'{"messageId": "gz-1"}')
        return web.Response(status=202, body=body, headers={"Content-Encoding": "gzip"})

    async def huge(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, body=b"x" * (MAX_BODY_BYTES + 4096))

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=202)
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"messageId": ')
        await seen.release.wait()
        return response

    async def closing(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        seen.ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(status=202, text="{}", headers={"Connection": "close"})

    app = web.Application()
    for path, handler in [
        ("/hook", accept),
        ("/hold", hold),
        ("/chunked", chunked),
        ("/gzip", gzipped),
        ("/huge", huge),
        ("/stall", stall),
        ("/closing", closing),
    ]:
        app.router.add_post(path, handler)
    server = await aiohttp_server(app)
    try:
        yield str(server.make_url("")).rstrip("/"), seen
    finally:
        seen.release.set()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Http1Client]]:
    made: list[Http1Client] = []

    def make(url: str, limit: int = 4, **kwargs: object) -> Http1Client:
        made.append(Http1Client(url, limit=limit, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """A server written with sockets, for answers aiohttp's server would never give."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/raw"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


async def test_posts_the_body_and_headers_and_reads_the_answer(
    served: tuple[str, Seen], clients: Callable[..., Http1Client]
) -> None:
    base, seen = served
    client = clients(base + "/hook?tenant=7")

    answer = await client.post(b'{"to": "+905551234567", "content": "Merhaba"}', HEADERS, 5)

    assert answer.status == 202 and answer.complete
    assert json.loads(answer.body) == {"message": "Accepted", "messageId": "m-1"}
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    [(path_qs, headers, body)] = seen.requests
    assert path_qs == "/hook?tenant=7"
    assert body == b'{"to": "+905551234567", "content": "Merhaba"}'
    assert headers["Content-Length"] == str(len(body))
    assert headers["x-ins-auth-key"] == "k-123"
    assert headers["Idempotency-Key"] == "idem-1"
    assert headers["Host"] == base.removeprefix("http://")
    assert headers["User-Agent"].startswith("insider/")


@pytest.mark.parametrize(
    ("path", "keepalive_s", "connections"),
    [
        ("/hook", http1.KEEPALIVE_S, 1),  # one connection carries them all
        ("/closing", http1.KEEPALIVE_S, 3),  # the server said Connection: close every time
        ("/hook", 0.0, 3),  # an idle connection past the keep-alive is closed, not reused
    ],
    ids=["keep-alive", "connection-close", "stale"],
)
async def test_which_connections_are_reused(
    served: tuple[str, Seen],
    clients: Callable[..., Http1Client],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    keepalive_s: float,
    connections: int,
) -> None:
    base, seen = served
    monkeypatch.setattr(http1, "KEEPALIVE_S", keepalive_s)
    client = clients(base + path)

    for _ in range(3):
        assert (await client.post(b"{}", HEADERS, 5)).status == 202

    assert len(set(seen.ports)) == connections
    assert client.open_connections == (0 if path == "/closing" else 1)


async def test_never_opens_more_connections_than_the_limit(
    served: tuple[str, Seen], clients: Callable[..., Http1Client]
) -> None:
    base, seen = served
    client = clients(base + "/hold", limit=3)

    posts = [asyncio.create_task(client.post(b"{}", HEADERS, 10)) for _ in range(10)]
    await wait_for(lambda: seen.in_flight == 3)
    seen.release.set()
    answers = await asyncio.gather(*posts)

    assert [a.status for a in answers] == [202] * 10
    assert seen.most_in_flight == 3
    assert client.open_connections <= 3


async def test_reads_a_chunked_body(served: tuple[str, Seen], clients: Callable[..., Http1Client]) -> None:
    base, _ = served
    client = clients(base + "/chunked")

    answer = await client.post(b"{}", HEADERS, 5)

    assert json.loads(answer.body) == {"message": "Accepted", "messageId": "chunked-1"}
    assert (await client.post(b"{}", HEADERS, 5)).complete  # and the connection stays in step


async def test_decodes_a_gzip_body(served: tuple[str, Seen], clients: Callable[..., Http1Client]) -> None:
    base, _ = served

    answer = await clients(base + "/gzip").post(b"{}", HEADERS, 5)

    assert answer.body == b'{"messageId": "gz-1"}'


async def test_keeps_at_most_the_cap_of_a_huge_body_and_stays_in_step(
    served: tuple[str, Seen], clients: Callable[..., Http1Client]
) -> None:
    base, _ = served
    client = clients(base + "/huge", limit=1)

    for _ in range(2):
        answer = await client.post(b"{}", HEADERS, 10)
        assert answer.status == 500 and answer.complete
        assert len(answer.body) == MAX_BODY_BYTES


async def test_no_status_line_in_time_is_a_timeout_and_frees_the_slot(
    served: tuple[str, Seen], clients: Callable[..., Http1Client]
) -> None:
    base, seen = served
    client = clients(base + "/hold", limit=1)

    with pytest.raises(TimeoutError):
        await client.post(b"{}", HEADERS, 0.2)

    seen.release.set()
    assert client.open_connections == 0  # a connection in an unknown state is not reused
    assert (await client.post(b"{}", HEADERS, 5)).status == 202


async def test_a_body_cut_short_keeps_the_status(served: tuple[str, Seen], clients: Callable[..., Http1Client]) -> None:
    base, _ = served
    client = clients(base + "/stall")

    answer = await client.post(b"{}", HEADERS, 0.3)

    assert answer == HttpAnswer(202, answer.headers, b'{"messageId": ', complete=False)
    assert client.open_connections == 0


async def test_cancellation_propagates_and_frees_the_slot(
    served: tuple[str, Seen], clients: Callable[..., Http1Client]
) -> None:
    base, seen = served
    client = clients(base + "/hold", limit=1)
    task = asyncio.create_task(client.post(b"{}", HEADERS, 30))
    await wait_for(lambda: seen.in_flight == 1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.open_connections == 0
    seen.release.set()
    assert (await client.post(b"{}", HEADERS, 5)).status == 202


async def test_connection_refused_is_a_transport_error(clients: Callable[..., Http1Client]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    with pytest.raises(HttpTransportError):
        await clients(f"http://127.0.0.1:{port}/hook").post(b"{}", HEADERS, 5)


async def test_a_server_that_closed_an_idle_connection_costs_nothing(
    raw_server: Callable[[RawHandler], Awaitable[str]], clients: Callable[..., Http1Client]
) -> None:
    connections = 0

    # No Connection: close header: the client only learns from the socket.
    answer = answering(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")

    async def answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer(reader, writer)

    client = clients(await raw_server(answer_once_then_close))
    assert (await client.post(b"{}", HEADERS, 5)).status == 202
    await wait_for(lambda: client.open_connections == 0)

    assert (await client.post(b"{}", HEADERS, 5)).status == 202
    assert connections == 2


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        # HTTP/1.0 style: no length, the body ends when the server closes.
        (
            b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\r\n" + b'{"messageId": "eof-1"}',
            b'{"messageId": "eof-1"}',
        ),
        # An informational answer first: the client waits for the real one.
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}", b"{}"),
    ],
    ids=["read-until-close", "100-continue"],
)
async def test_odd_but_valid_answers(
    raw_server: Callable[[RawHandler], Awaitable[str]], clients: Callable[..., Http1Client], answer: bytes, body: bytes
) -> None:
    result = await clients(await raw_server(answering(answer))).post(b"{}", HEADERS, 5)

    assert (result.status, result.body, result.complete) == (202, body, True)


def answering(answer: bytes) -> RawHandler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize("answer", [b"NOT HTTP AT ALL\r\n\r\n", b""], ids=["garbage", "closed-silently"])
async def test_no_status_line_is_a_transport_error(
    raw_server: Callable[[RawHandler], Awaitable[str]], clients: Callable[..., Http1Client], answer: bytes
) -> None:
    client = clients(await raw_server(answering(answer)))

    with pytest.raises(HttpTransportError):
        await client.post(b"{}", HEADERS, 5)
    assert client.open_connections == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\n{}",
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nnot-a-size\r\n",
    ],
    ids=["closed-mid-body", "broken-chunks"],
)
async def test_a_body_broken_after_the_status_line_keeps_the_status(
    raw_server: Callable[[RawHandler], Awaitable[str]], clients: Callable[..., Http1Client], answer: bytes
) -> None:
    # The provider said 202: a retry could send the SMS twice, so the answer stands, marked incomplete.
    client = clients(await raw_server(answering(answer)))

    result = await client.post(b"{}", HEADERS, 5)

    assert (result.status, result.body, result.complete) == (202, b"{}", False)
    assert client.open_connections == 0


async def test_unasked_bytes_on_an_idle_connection_drop_it(
    raw_server: Callable[[RawHandler], Awaitable[str]], clients: Callable[..., Http1Client]
) -> None:
    connections = 0

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            asked = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}"
            writer.write(asked + b"HTTP/1.1 500 Surprise\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    client = clients(await raw_server(chatty))
    assert (await client.post(b"{}", HEADERS, 5)).status == 202
    assert (await client.post(b"{}", HEADERS, 5)).status == 202
    assert connections == 2  # the first connection was out of step, so it was not reused


async def test_credentials_in_the_url_are_sent_as_basic_auth(
    served: tuple[str, Seen], clients: Callable[..., Http1Client]
) -> None:
    base, seen = served

    await clients(base.replace("http://", "http://user:p%40ss@") + "/hook").post(b"{}", HEADERS, 5)

    [(_, headers, _)] = seen.requests
    assert headers["Authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss


def test_a_line_break_in_a_header_is_refused() -> None:
    client = Http1Client("http://127.0.0.1:9/hook", limit=1)

    with pytest.raises(ValueError, match="line break"):
        asyncio.run(client.post(b"{}", {"Idempotency-Key": "a\r\nInjected: yes"}, 1))


@pytest.mark.parametrize("url", ["ftp://example.com/", "http:///nohost", "not a url"])
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(ValueError):
        Http1Client(url, limit=1)


@pytest.fixture(scope="module")
def tls() -> tuple[trustme.CA, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    return ca, server_context


async def test_https_with_a_trusted_certificate(
    aiohttp_server: AiohttpServer, clients: Callable[..., Http1Client], tls: tuple[trustme.CA, ssl.SSLContext]
) -> None:
    ca, server_context = tls

    async def accept(request: web.Request) -> web.StreamResponse:
        return web.json_response({"messageId": "tls-1", "secure": request.secure}, status=202)

    app = web.Application()
    app.router.add_post("/hook", accept)
    server = await aiohttp_server(app, ssl=server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    url = f"https://localhost:{server.port}/hook"

    answer = await clients(url, ssl_context=trusting).post(b"{}", HEADERS, 5)
    assert json.loads(answer.body) == {"messageId": "tls-1", "secure": True}

    with pytest.raises(HttpTransportError, match="CERTIFICATE_VERIFY_FAILED"):
        await clients(url).post(b"{}", HEADERS, 5)  # the system's trust store does not know this CA


def test_works_on_uvloop(served_uvloop_port: int) -> None:
    async def main() -> list[int]:
        client = Http1Client(f"http://127.0.0.1:{served_uvloop_port}/hook", limit=2)
        try:
            statuses = [(await client.post(b"{}", HEADERS, 5)).status for _ in range(3)]
            return [*statuses, client.open_connections]
        finally:
            await client.aclose()

    assert uvloop.run(main()) == [202, 202, 202, 1]


@pytest.fixture
def served_uvloop_port() -> Iterator[int]:
    """A plain keep-alive server on a thread of its own, for a test that brings its own event loop."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(202)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


async def wait_for(condition: Callable[[], bool]) -> None:
    await eventually(condition, timeout_s=5.0, what="the server to see it")
