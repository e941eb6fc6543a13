"""The webhook SMS client against real local servers: aiohttp's, raw sockets for the odd answers, and a proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from insider.adapters.webhook import KEEPALIVE_S, WebhookSmsClient, open_http_session
from insider.domain import Outcome, SendResult
from tests.conftest import eventually

AUTH_KEY = "integration-auth-key-7f3a"
TO = "+905551234567"
# Every Turkish letter that differs from ASCII, both cases, plus an emoji outside the BMP.
TURKISH = "Çağrı İstanbul'dan: ÇĞİÖŞÜ çğıöşü — 👋"


@dataclass
class Received:
    """One request as the provider saw it."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Provider:
    """A fake SMS provider: records requests and answers with ``reply``."""

    server: TestServer
    requests: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    reply: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("/webhook"))


AiohttpServer = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def provider(aiohttp_server: AiohttpServer) -> AsyncIterator[Provider]:
    state: list[Provider] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        p = state[0]
        p.requests.append(Received(request.path, dict(request.headers), await request.read()))
        if p.reply is not None:
            return await p.reply(request)
        return web.json_response({"message": "Accepted", "messageId": f"prov-{len(p.requests)}"}, status=202)

    app = web.Application()
    app.router.add_post("/webhook", handle)
    p = Provider(server=await aiohttp_server(app))
    state.append(p)
    try:
        yield p
    finally:
        # Let any handler still waiting finish before the server shuts down.
        p.release.set()


ClientFactory = Callable[..., WebhookSmsClient]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Webhook clients sharing one session, as in the service."""
    async with open_http_session(concurrency_limit=10) as session:

        def make(url: str, timeout_s: float = 5.0) -> WebhookSmsClient:
            return WebhookSmsClient(session, url, AUTH_KEY, timeout_s=timeout_s)

        yield make


async def test_sends_exact_json_body_and_headers(provider: Provider, make_client: ClientFactory) -> None:
    client = make_client(provider.url)

    result = await client.send(TO, "Hello", "idem-abc")

    assert result == SendResult(Outcome.SENT, status_code=202, provider_message_id="prov-1")
    [received] = provider.requests
    assert received.path == "/webhook"
    assert json.loads(received.body) == {"to": TO, "content": "Hello"}
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["x-ins-auth-key"] == AUTH_KEY
    assert received.headers["Idempotency-Key"] == "idem-abc"


async def test_unicode_content_arrives_intact(provider: Provider, make_client: ClientFactory) -> None:
    client = make_client(provider.url)

    result = await client.send(TO, TURKISH, "idem-tr")

    assert result.outcome is Outcome.SENT
    [received] = provider.requests
    assert json.loads(received.body.decode("utf-8")) == {"to": TO, "content": TURKISH}


async def test_hanging_provider_times_out(provider: Provider, make_client: ClientFactory) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await provider.release.wait()
        return web.json_response({"messageId": "too-late"})

    provider.reply = hang
    client = make_client(provider.url, timeout_s=0.2)

    result = await client.send(TO, "Hello", "idem-slow")

    # No status came: the provider may have the message or not.
    assert result == SendResult(Outcome.RETRY, error="outcome unknown: timeout after 0.2s", ambiguous=True)
    assert len(provider.requests) == 1


async def test_cancellation_propagates_mid_request(provider: Provider, make_client: ClientFactory) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await provider.release.wait()
        return web.json_response({"messageId": "never-read"})

    provider.reply = hang
    client = make_client(provider.url, timeout_s=30)
    task = asyncio.create_task(client.send(TO, "Hello", "idem-cancel"))
    await eventually(lambda: len(provider.requests) == 1, what="the request to reach the provider")

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_429_with_retry_after(provider: Provider, make_client: ClientFactory) -> None:
    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, text="rate limited", headers={"Retry-After": "3"})

    provider.reply = busy
    client = make_client(provider.url)

    result = await client.send(TO, "Hello", "idem-429")

    assert result == SendResult(
        Outcome.RETRY, status_code=429, error="HTTP 429: rate limited", retry_after_s=3.0, throttled=True
    )


@pytest.mark.parametrize(("status", "outcome"), [(500, Outcome.RETRY), (400, Outcome.FAILED), (302, Outcome.FAILED)])
async def test_status_mapping(provider: Provider, make_client: ClientFactory, status: int, outcome: Outcome) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        headers = {"Location": "/elsewhere"} if status == 302 else None
        return web.Response(status=status, text=f"status {status}", headers=headers)

    provider.reply = answer
    client = make_client(provider.url)

    result = await client.send(TO, "Hello", "idem-status")

    assert result == SendResult(outcome, status_code=status, error=f"HTTP {status}: status {status}")
    assert len(provider.requests) == 1  # a redirect is not followed


async def test_connection_refused_retries(make_client: ClientFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    client = make_client(f"http://127.0.0.1:{port}/webhook")

    result = await client.send(TO, "Hello", "idem-refused")

    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("connection error: ")
    assert AUTH_KEY not in result.error


async def test_accepted_with_a_body_cut_short_is_still_sent(provider: Provider, make_client: ClientFactory) -> None:
    async def stall_after_headers(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=202, headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"messageId": ')
        await provider.release.wait()
        return response

    provider.reply = stall_after_headers
    client = make_client(provider.url, timeout_s=0.2)

    result = await client.send(TO, "Hello", "idem-partial")

    # The provider took it; a retry could send it twice.
    assert result == SendResult(
        Outcome.SENT,
        status_code=202,
        provider_message_id=None,
        warning="the answer after its 202 status line could not be read: timeout after 0.2s",
    )


async def test_webhook_site_answer_gives_the_x_request_id_as_message_id(
    provider: Provider, make_client: ClientFactory
) -> None:
    async def webhook_site(request: web.Request) -> web.StreamResponse:
        # webhook.site's default answer, which the original Go service relied on.
        return web.Response(
            status=200,
            text="This URL has no default content configured.",
            headers={"x-request-id": "0f8e2c6a-5b1d-4e8f-9a7b-3c2d1e0f9a8b"},
        )

    provider.reply = webhook_site
    result = await make_client(provider.url).send(TO, "Hello", "idem-site")

    assert result == SendResult(
        Outcome.SENT, status_code=200, provider_message_id="0f8e2c6a-5b1d-4e8f-9a7b-3c2d1e0f9a8b"
    )


# ---------------------------------------------------------------------------------------
# Raw-socket providers: answers aiohttp's server would never give.

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RawServer = Callable[[RawHandler], Awaitable[str]]


@dataclass
class RawRequest:
    head: bytes
    body: bytes
    connection: int  # the raw server's number for the connection it came on

    @property
    def idempotency_key(self) -> str:
        for line in self.head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"idempotency-key":
                return value.strip().decode()
        raise AssertionError("no Idempotency-Key")


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    """A server written with sockets; each handler runs once per connection."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/raw"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


def answering(*parts: bytes, seen: list[RawRequest] | None = None) -> RawHandler:
    """Read one request (noted in ``seen``), write ``parts`` (each flushed on its own: separate packets), close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        if seen is not None:
            seen.append(RawRequest(head, body, len(seen) + 1))
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.02)  # not synchronisation: lets the parts arrive apart
            writer.write(part)
            await writer.drain()

    return handler


# The rule for odd answers. A status is known once aiohttp hands over the response
# (``session.post`` returns after the status line and the headers): from then on a 2xx is a
# send, and whatever is wrong with the body (cut, mis-framed, oversized, slow) is a warning.
# Where aiohttp raises before that (it cannot parse the head, the connection drops, the
# timeout comes), the outcome is unknown: the provider may have the message or not, so it is
# a retry with the same Idempotency-Key, whose error says "outcome unknown", never a failure.
# aiohttp parses each packet whole, so bytes that break the parser in the answer's own packet
# (past its Content-Length, a bad chunk size) raise before the status is handed over.

CUT = "the answer after its 202 status line could not be read: "
UNKNOWN = "outcome unknown: "
JSON_202 = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("parts", "message_id", "warning"),
    [
        pytest.param(
            [JSON_202 + b'Content-Length: 20\r\n\r\n{"messageId": "m-1"}', b"and more bytes nobody asked for"],
            "m-1",
            None,
            id="extra-bytes-in-a-later-packet",
        ),
        pytest.param(
            [JSON_202 + b"X-Big: " + b"a" * 100_000 + b'\r\nContent-Length: 20\r\n\r\n{"messageId": "m-2"}'],
            "m-2",
            "",
            id="100-KB-header",
        ),
        pytest.param(
            [
                JSON_202
                + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
                + b'Content-Length: 20\r\n\r\n{"messageId": "m-4"}'
            ],
            "m-4",
            "",
            id="500-headers",
        ),
        pytest.param(
            [JSON_202 + b"Content-Length: 100\r\n\r\n", b'{"messageId": '],
            None,
            "Response payload is not completed",
            id="connection-cut-mid-body",
        ),
        pytest.param(
            [JSON_202 + b'Content-Length: 100\r\n\r\n{"messageId": '],
            None,
            "Response payload is not completed",
            id="connection-cut-mid-body-in-the-same-packet",
        ),
        pytest.param(
            [b"HTTP/1.1 202 Accepted\r\nx-request-id: r-5\r\nContent-Length: 9\r\n\r\nnot json!"],
            "r-5",
            None,
            id="non-json-body",
        ),
        pytest.param(
            [b"HTTP/1.1 202 Accepted\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello"],
            None,
            "400, message: Can not decode content-encoding: gzip",
            id="bad-gzip",
        ),
        pytest.param(
            [b"HTTP/1.1 202 Accepted\r\nContent-Length: 9999999\r\n\r\n" + b"x" * 1000],
            None,
            "a body of 9999999 bytes, over 65536, was not read",
            id="oversized-body",
        ),
        pytest.param(
            [b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"],
            None,
            None,
            id="empty-body",
        ),
    ],
)
async def test_a_2xx_status_is_a_send_whatever_follows_it(
    raw_server: RawServer, make_client: ClientFactory, parts: list[bytes], message_id: str | None, warning: str | None
) -> None:
    result = await make_client(await raw_server(answering(*parts)), timeout_s=5).send(TO, "Hello", "idem-odd")

    assert (result.outcome, result.status_code, result.provider_message_id) == (Outcome.SENT, 202, message_id)
    if warning is None:
        assert result.warning is None
    elif warning == "":  # read whole, but unusual
        assert result.warning is not None and result.warning.startswith("the answer's headers were oversized: ")
    else:
        assert result.warning is not None
        assert result.warning.startswith(CUT + warning), result.warning
        assert len(result.warning) < 300  # one line, not a dump of the answer
        assert "\n" not in result.warning


async def test_a_2xx_whose_body_never_ends_is_sent_when_the_timeout_comes(
    raw_server: RawServer, make_client: ClientFactory
) -> None:
    # The chunk size in the second packet is broken: aiohttp closes the connection but leaves
    # the body's reader waiting, so the timeout ends it. The status had come: a send.
    answer = answering(
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nx-request-id: r-4\r\n\r\n", b"zz\r\n{}\r\n"
    )

    result = await make_client(await raw_server(answer), timeout_s=0.3).send(TO, "Hello", "idem-chunks")

    assert result == SendResult(
        Outcome.SENT, status_code=202, provider_message_id="r-4", warning=CUT + "timeout after 0.3s"
    )


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        pytest.param(
            [JSON_202 + b'Content-Length: 20\r\n\r\n{"messageId": "m-1"}, "extra": "bytes past the length"}'],
            "malformed answer: Bad status line",
            id="body-longer-than-content-length-in-its-own-packet",
        ),
        pytest.param(
            [JSON_202 + b"X-Huge: " + b"a" * 1_000_000 + b'\r\nContent-Length: 20\r\n\r\n{"messageId": "m-3"}'],
            "malformed answer: Got more than 262144 bytes",
            id="1-MB-header",
        ),
        pytest.param(
            [JSON_202 + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"Content-Length: 2\r\n\r\n{}"],
            "malformed answer: Too many headers received",
            id="2000-headers",
        ),
        pytest.param(
            [b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nnot-a-size\r\n"],
            "malformed answer: Invalid character in chunk size",
            id="broken-chunks-in-its-own-packet",
        ),
        pytest.param(
            [b"HTTP/1.1 202 Accepted\r\nBad Header\x01: x\r\n\r\n"],
            "malformed answer: Invalid header token",
            id="invalid-header",
        ),
        pytest.param(
            [b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"],
            "malformed answer: Transfer-Encoding can't be present with Content-Length",
            id="length-and-chunked",
        ),
        pytest.param(
            [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 99\r\nX-Bad\x00: y\r\n\r\n"],
            "malformed answer: Invalid header token",
            id="broken-after-100-continue",
        ),
        pytest.param([b"HTTP/1.1 202 Accepted\r\n"], "the server closed the connection", id="status-line-only"),
        pytest.param([b"HTTP/1.1 202 "], "the server closed the connection", id="status-code-then-close"),
        pytest.param([b"NOT HTTP AT ALL\r\n\r\n"], "malformed answer: Bad status line", id="garbage"),
        pytest.param([b""], "the server closed the connection", id="closed-silently"),
        pytest.param([b"HTTP/1.1 20"], "the server closed the connection", id="status-code-cut"),
        pytest.param([b"HTTP/1.1 2020 Accepted\r\n\r\n"], "malformed answer: Bad status line", id="four-digit-status"),
        pytest.param([b"HTTP/1.1 100 Continue\r\n\r\n"], "the server closed the connection", id="only-100-continue"),
        pytest.param([b"<html>202 Accepted</html>\r\n"], "malformed answer: Bad status line", id="html-without-status"),
    ],
)
async def test_an_answer_aiohttp_gives_no_status_for_is_an_unknown_outcome_worth_a_retry(
    raw_server: RawServer, make_client: ClientFactory, parts: list[bytes], error: str
) -> None:
    seen: list[RawRequest] = []

    result = await make_client(await raw_server(answering(*parts, seen=seen)), timeout_s=5).send(
        TO, "Hello", "idem-none"
    )

    assert (result.outcome, result.status_code, result.provider_message_id) == (Outcome.RETRY, None, None)
    assert result.error is not None and result.error.startswith(UNKNOWN + error), result.error
    assert "\n" not in result.error and len(result.error) < 300  # one line, not a dump of the answer
    assert [r.idempotency_key for r in seen] == [
        "idem-none"
    ]  # a fresh connection: not again at once, the backoff decides


@pytest.mark.parametrize("status", [400, 429, 500])
async def test_a_non_2xx_answer_aiohttp_cannot_parse_is_an_unknown_outcome_never_a_failure(
    raw_server: RawServer, make_client: ClientFactory, status: int
) -> None:
    # The bytes past Content-Length in the answer's own packet break aiohttp's parser before it
    # hands over the status: even a 400 is not known to be one, so it is not failed.
    answer = b"HTTP/1.1 %d Oops\r\nContent-Length: 2\r\n\r\n{}and garbage" % status

    result = await make_client(await raw_server(answering(answer))).send(TO, "Hello", "idem-bad")

    assert (result.outcome, result.status_code) == (Outcome.RETRY, None)
    assert result.error is not None and result.error.startswith(UNKNOWN + "malformed answer: Bad status line")


@pytest.mark.parametrize(("status", "outcome"), [(500, Outcome.RETRY), (400, Outcome.FAILED), (429, Outcome.RETRY)])
async def test_a_non_2xx_status_decides_when_what_breaks_comes_after_it(
    raw_server: RawServer, make_client: ClientFactory, status: int, outcome: Outcome
) -> None:
    parts = (b"HTTP/1.1 %d Oops\r\nContent-Length: 2\r\n\r\n{}" % status, b"and garbage")

    result = await make_client(await raw_server(answering(*parts))).send(TO, "Hello", "idem-bad")

    assert result == SendResult(outcome, status_code=status, error=f"HTTP {status}: {{}}", throttled=status == 429)


class KeepAliveServer:
    """A raw keep-alive provider; ``drop`` decides, per request, to close without answering.

    A dropped connection gets ``last_words`` first, and is reset rather than closed with ``reset``.
    """

    def __init__(self, drop: Callable[[RawRequest], bool], last_words: bytes = b"", reset: bool = False) -> None:
        self.drop = drop
        self.last_words = last_words
        self.reset = reset
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.ended = 0  # connections closed, by either side

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._serve(self.connections, reader, writer)
        finally:
            self.ended += 1

    async def _serve(self, connection: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            request = RawRequest(head, body, connection)
            self.requests.append(request)
            if self.drop(request):  # unanswered, as at the end of an idle timeout
                if self.last_words:
                    writer.write(self.last_words)
                    await writer.drain()
                if self.reset:  # the close sends RST, not FIN
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                return
            answer = b'{"messageId": "ka-%d"}' % len(self.requests)
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
            await writer.drain()


@pytest.mark.parametrize(
    ("last_words", "reset"),
    [
        pytest.param(b"", False, id="closed"),
        pytest.param(b"", True, id="reset"),
        # Part of a status line, then the close: aiohttp hands over no status, so for the
        # client this is the race too (the same key makes a second copy harmless).
        pytest.param(b"HTTP/1.1 20", False, id="closed-mid-status-line"),
    ],
)
async def test_a_request_lost_on_a_reused_connection_is_sent_again_at_once_with_the_same_key(
    raw_server: RawServer, make_client: ClientFactory, last_words: bytes, reset: bool
) -> None:
    # The second request on the first connection meets a server that has just closed it; the
    # client knows the connection was reused: aiohttp made no new socket for it.
    server = KeepAliveServer(
        drop=lambda r: r.connection == 1 and len(server.requests) == 2, last_words=last_words, reset=reset
    )
    client = make_client(await raw_server(server))

    first = await client.send(TO, "one", "idem-1")
    with capture_logs() as logs:
        second = await client.send(TO, "two", "idem-2")

    assert first.outcome is Outcome.SENT and first.provider_message_id == "ka-1"
    assert second == SendResult(Outcome.SENT, status_code=202, provider_message_id="ka-3")
    assert [(r.connection, r.idempotency_key) for r in server.requests] == [(1, "idem-1"), (1, "idem-2"), (2, "idem-2")]
    [lost] = logs
    assert lost["log_level"] == "info" and lost["idempotency_key"] == "idem-2"
    assert lost["error"] in (
        "outcome unknown: the server closed the connection",
        "outcome unknown: [Errno 104] Connection reset by peer",
    )
    assert lost["event"].startswith("webhook request lost on a reused keep-alive connection")


async def test_a_lost_request_is_sent_again_only_once(raw_server: RawServer, make_client: ClientFactory) -> None:
    def drop(request: RawRequest) -> bool:
        return len(server.requests) > 2  # after the first two, every request goes unanswered

    server = KeepAliveServer(drop=drop)

    client = make_client(await raw_server(server))
    # Two messages at once open two connections, both pooled once answered.
    firsts = await asyncio.gather(client.send(TO, "a", "idem-a"), client.send(TO, "b", "idem-b"))
    assert [r.outcome for r in firsts] == [Outcome.SENT, Outcome.SENT]
    assert server.connections == 2

    result = await client.send(TO, "c", "idem-c")

    # Lost on one reused connection, sent again at once on the other, lost again: a retry
    # with backoff, not a third request now.
    assert result == SendResult(
        Outcome.RETRY, error="outcome unknown: the server closed the connection", ambiguous=True
    )
    assert [(r.connection, r.idempotency_key) for r in server.requests[2:]] in (
        [(1, "idem-c"), (2, "idem-c")],
        [(2, "idem-c"), (1, "idem-c")],
    )


async def test_a_request_lost_on_a_fresh_connection_is_not_sent_again_at_once(
    raw_server: RawServer, make_client: ClientFactory
) -> None:
    server = KeepAliveServer(drop=lambda r: True)

    result = await make_client(await raw_server(server)).send(TO, "Hello", "idem-fresh")

    assert result.outcome is Outcome.RETRY  # the provider may have taken it: the backoff decides
    assert result.error == "outcome unknown: the server closed the connection"
    assert len(server.requests) == 1


def test_the_keep_alive_race_is_told_apart_on_uvloop_too() -> None:
    """The service runs on uvloop: its connections are made from the same sockets."""

    async def main() -> tuple[list[Outcome], list[tuple[int, str]]]:
        server = KeepAliveServer(drop=lambda r: len(server.requests) in (2, 4))  # both on reused connections

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await server(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        listening = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/hook"
        try:
            async with open_http_session(concurrency_limit=2) as session:
                client = WebhookSmsClient(session, url, AUTH_KEY, timeout_s=5)
                outcomes = [(await client.send(TO, "x", f"idem-{i}")).outcome for i in (1, 2, 3)]
        finally:
            listening.close()
            await listening.wait_closed()
        return outcomes, [(r.connection, r.idempotency_key) for r in server.requests]

    outcomes, requests = uvloop.run(main())

    # idem-2: lost on connection 1 (reused), sent again at once on a new one, 2, and answered.
    # idem-3: lost on connection 2 (now reused), sent again at once on 3 and answered.
    assert outcomes == [Outcome.SENT, Outcome.SENT, Outcome.SENT]
    assert requests == [(1, "idem-1"), (1, "idem-2"), (2, "idem-2"), (2, "idem-3"), (3, "idem-3")]


async def test_a_request_lost_on_a_new_connection_after_reused_ones_is_not_sent_again_at_once(
    raw_server: RawServer,
) -> None:
    # The client has made connections before (so it knows its sockets); this request gets a new
    # one, as the idle one was closed, and the server drops it: the provider may have it.
    server = KeepAliveServer(drop=lambda r: r.connection == 2)
    url = await raw_server(server)
    async with open_http_session(concurrency_limit=4, keepalive_s=0.05) as session:
        client = WebhookSmsClient(session, url, AUTH_KEY, timeout_s=5)
        assert (await client.send(TO, "one", "idem-1")).outcome is Outcome.SENT
        await eventually(lambda: server.ended == 1, what="the client to close the idle connection")

        result = await client.send(TO, "two", "idem-2")

    assert result == SendResult(
        Outcome.RETRY, error="outcome unknown: the server closed the connection", ambiguous=True
    )
    assert [(r.connection, r.idempotency_key) for r in server.requests] == [(1, "idem-1"), (2, "idem-2")]


# ---------------------------------------------------------------------------------------
# Keep-alive: idle connections are closed before common servers close them.


@dataclass
class Connections:
    """The server side of each connection a provider saw, in order."""

    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    def note(self, request: web.Request) -> None:
        assert request.transport is not None
        if request.transport not in self.transports:
            self.transports.append(request.transport)


async def counting_provider(aiohttp_server: AiohttpServer, **server_kwargs: float) -> tuple[str, Connections]:
    seen = Connections()

    async def accept(request: web.Request) -> web.StreamResponse:
        seen.note(request)
        await request.read()
        return web.json_response({"messageId": f"c-{len(seen.transports)}"}, status=202)

    app = web.Application()
    app.router.add_post("/webhook", accept)
    server = await aiohttp_server(app, **server_kwargs)
    return str(server.make_url("/webhook")), seen


async def test_one_connection_carries_requests_that_follow_each_other(aiohttp_server: AiohttpServer) -> None:
    url, seen = await counting_provider(aiohttp_server)
    async with open_http_session(concurrency_limit=4) as session:
        client = WebhookSmsClient(session, url, AUTH_KEY, timeout_s=5)
        for _ in range(3):
            assert (await client.send(TO, "Hello", "idem-ka")).outcome is Outcome.SENT

    assert len(seen.transports) == 1


async def test_an_idle_connection_is_closed_by_the_client_after_its_keepalive(aiohttp_server: AiohttpServer) -> None:
    url, seen = await counting_provider(aiohttp_server)  # aiohttp's server keeps idle connections 75 s
    async with open_http_session(concurrency_limit=4, keepalive_s=0.2) as session:
        client = WebhookSmsClient(session, url, AUTH_KEY, timeout_s=5)
        assert (await client.send(TO, "Hello", "idem-1")).outcome is Outcome.SENT
        # The client, not the server, closes the idle connection.
        await eventually(lambda: seen.transports[0].is_closing(), what="the client to close the idle connection")
        assert (await client.send(TO, "Hello", "idem-2")).outcome is Outcome.SENT

    assert len(seen.transports) == 2


async def test_a_server_that_closes_idle_connections_costs_no_retry(aiohttp_server: AiohttpServer) -> None:
    # A server stricter than the client's keep-alive: it closes idle connections after 50 ms.
    url, seen = await counting_provider(aiohttp_server, keepalive_timeout=0.05)
    async with open_http_session(concurrency_limit=4) as session:
        client = WebhookSmsClient(session, url, AUTH_KEY, timeout_s=5)
        for i in range(3):
            result = await client.send(TO, "Hello", f"idem-{i}")
            assert result.outcome is Outcome.SENT, result
            last = seen.transports[-1]
            await eventually(last.is_closing, what="the server to close the idle connection")

    assert len(seen.transports) == 3


def test_the_keepalive_is_below_common_servers_idle_timeouts() -> None:
    # Apache, Node.js and uvicorn close idle keep-alive connections after 5 s.
    assert 0 < KEEPALIVE_S < 5


# ---------------------------------------------------------------------------------------
# Proxies from the environment, and international host names.


@dataclass
class Proxy:
    """A forward proxy: records each connection's first request line and Host, then pipes it to ``upstream_port``."""

    upstream_port: int
    first_lines: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)  # Proxy-Authorization values

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.first_lines.append(lines[0])
        self.hosts.extend(line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:"))
        self.credentials.extend(
            line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("proxy-authorization:")
        )
        if lines[0].startswith("CONNECT "):
            return  # no tunnels here: the client sees the proxy close
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def proxied(raw_server: RawServer, provider: Provider) -> Proxy:
    assert provider.server.port is not None
    proxy = Proxy(provider.server.port)
    proxy.url = (await raw_server(proxy)).removesuffix("/raw")  # type: ignore[attr-defined]
    return proxy


async def test_http_proxy_from_the_environment_carries_the_webhook(
    raw_server: RawServer, provider: Provider, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await proxied(raw_server, provider)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # type: ignore[attr-defined]
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    # A name only the proxy knows how to reach (here: it sends everything to the provider).
    url = f"http://provider.invalid:{provider.server.port}/webhook"

    result = await make_client(url).send(TO, "Hello", "idem-proxy")

    assert result == SendResult(Outcome.SENT, status_code=202, provider_message_id="prov-1")
    assert proxy.first_lines == [f"POST {url} HTTP/1.1"]
    [received] = provider.requests
    assert received.headers["Idempotency-Key"] == "idem-proxy"


async def test_no_proxy_sends_straight_to_the_provider(
    raw_server: RawServer, provider: Provider, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await proxied(raw_server, provider)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    result = await make_client(provider.url).send(TO, "Hello", "idem-direct")

    assert result.outcome is Outcome.SENT
    assert proxy.first_lines == []
    assert len(provider.requests) == 1


async def test_https_proxy_from_the_environment_is_asked_for_a_tunnel(
    raw_server: RawServer, provider: Provider, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await proxied(raw_server, provider)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)  # type: ignore[attr-defined]
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    result = await make_client("https://provider.invalid/webhook").send(TO, "Hello", "idem-tls")

    assert proxy.first_lines == ["CONNECT provider.invalid:443 HTTP/1.1"]
    assert result.outcome is Outcome.RETRY  # this proxy refuses tunnels


def clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_credentials_in_the_proxy_url_go_to_the_proxy_only(
    raw_server: RawServer,
    provider: Provider,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    proxy = await proxied(raw_server, provider)
    clear_proxy_environment(monkeypatch)
    monkeypatch.setenv(f"{scheme.upper()}_PROXY", proxy.url.replace("http://", "http://user:p%40ss@"))  # type: ignore[attr-defined]
    port = provider.server.port

    result = await make_client(f"{scheme}://provider.invalid:{port}/webhook").send(TO, "Hello", "idem-auth")

    # On the request itself (http: a proxy drops Proxy-* headers as it forwards), or on the
    # CONNECT that asks for a tunnel (https: the request inside it must not carry them).
    assert proxy.credentials == ["Basic dXNlcjpwQHNz"]  # user:p@ss
    if scheme == "http":
        assert result.outcome is Outcome.SENT
        [received] = provider.requests
        assert "Authorization" not in received.headers  # not the provider's credentials


async def test_netrc_gives_the_credentials_of_a_proxy_whose_url_has_none(
    raw_server: RawServer,
    provider: Provider,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    proxy = await proxied(raw_server, provider)
    clear_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # type: ignore[attr-defined]
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pass\n")
    monkeypatch.setenv("NETRC", str(netrc))

    result = await make_client(f"http://provider.invalid:{provider.server.port}/webhook").send(TO, "Hello", "idem-n")

    assert result.outcome is Outcome.SENT
    assert proxy.credentials == ["Basic bmV0cmMtdXNlcjpuZXRyYy1wYXNz"]  # netrc-user:netrc-pass


async def test_an_international_host_name_goes_out_in_punycode(
    raw_server: RawServer, provider: Provider, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await proxied(raw_server, provider)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # type: ignore[attr-defined]
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    port = provider.server.port

    result = await make_client(f"http://sms-sağlayıcı.örnek.tr:{port}/webhook").send(TO, "Hello", "idem-idn")

    assert result.outcome is Outcome.SENT
    ascii_host = f"xn--sms-salayc-fpb3tb.xn--rnek-4qa.tr:{port}"
    assert proxy.first_lines == [f"POST http://{ascii_host}/webhook HTTP/1.1"]
    assert proxy.hosts == [ascii_host]


async def test_a_2xx_whose_headers_never_end_is_an_unknown_outcome_when_the_timeout_comes(
    raw_server: RawServer, make_client: ClientFactory
) -> None:
    # aiohttp hands over no response before the end of the headers: no status is known.
    release = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
        await writer.drain()
        await release.wait()

    client = make_client(await raw_server(trickle), timeout_s=0.3)
    try:
        result = await client.send(TO, "Hello", "idem-slow-head")
    finally:
        release.set()

    assert result == SendResult(Outcome.RETRY, error="outcome unknown: timeout after 0.3s", ambiguous=True)


async def test_credentials_in_the_webhook_url_are_sent_as_basic_auth(
    provider: Provider, make_client: ClientFactory
) -> None:
    url = provider.url.replace("http://", "http://user:p%40ss@")

    result = await make_client(url).send(TO, "Hello", "idem-basic")

    assert result.outcome is Outcome.SENT
    [received] = provider.requests
    assert received.headers["Authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss


def test_the_rule_holds_on_uvloop_too() -> None:
    """The service runs on uvloop, whose transports deliver bytes their own way."""
    answers = {
        "body-longer-than-its-length": b'HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}, "more"}',
        "cut-mid-body": b"HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\n{}",
        "fine": b'HTTP/1.1 202 Accepted\r\nContent-Length: 17\r\n\r\n{"messageId": 42}',
        "garbage": b"NOT HTTP\r\n\r\n",
    }

    async def main() -> dict[str, tuple[Outcome, int | None, str | None]]:
        results = {}
        async with open_http_session(concurrency_limit=2) as session:
            for name, answer in answers.items():

                async def handle(
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes = answer
                ) -> None:
                    await read_request(reader)
                    writer.write(answer)
                    await writer.drain()
                    writer.close()

                server = await asyncio.start_server(handle, "127.0.0.1", 0)
                url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
                result = await WebhookSmsClient(session, url, AUTH_KEY, timeout_s=5).send(TO, "Hello", "idem-uv")
                results[name] = (result.outcome, result.status_code, result.provider_message_id)
                server.close()
                await server.wait_closed()
        return results

    assert uvloop.run(main()) == {
        "body-longer-than-its-length": (Outcome.RETRY, None, None),  # in its own packet: no status handed over
        "cut-mid-body": (Outcome.SENT, 202, None),
        "fine": (Outcome.SENT, 202, "42"),
        "garbage": (Outcome.RETRY, None, None),
    }


async def test_a_provider_certificate_the_system_does_not_trust_is_a_retry_not_a_send(
    aiohttp_server: AiohttpServer, make_client: ClientFactory
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    seen: list[str] = []

    async def accept(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return web.json_response({"messageId": "tls-1"}, status=202)

    app = web.Application()
    app.router.add_post("/webhook", accept)
    server = await aiohttp_server(app, ssl=server_context)

    result = await make_client(f"https://localhost:{server.port}/webhook").send(TO, "Hello", "idem-tls")

    assert result.outcome is Outcome.RETRY and result.status_code is None
    assert result.error is not None and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert seen == []  # nothing reached the provider over a connection we could not trust
