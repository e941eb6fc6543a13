"""The service as a subprocess reaching a provider through an egress proxy from the environment,
and recording webhook.site's answer (its id in the ``x-request-id`` header)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.acceptance.conftest import Service, log_events
from tests.conftest import eventually


@dataclass
class WebhookSite:
    """Answers like webhook.site by default: 200, a text body, a fresh id in ``x-request-id``."""

    server: TestServer
    ids: list[str] = field(default_factory=list)


@pytest.fixture
async def webhook_site() -> AsyncIterator[WebhookSite]:
    app = web.Application()
    state = WebhookSite(server=TestServer(app))

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        state.ids.append(str(uuid.uuid4()))
        return web.Response(text="This URL has no default content configured.", headers={"x-request-id": state.ids[-1]})

    app.router.add_post("/{token}", hook)
    await state.server.start_server()
    try:
        yield state
    finally:
        await state.server.close()


@dataclass
class ForwardProxy:
    """A plain HTTP forward proxy that records request lines and sends everything to one upstream port."""

    upstream_port: int
    request_lines: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.request_lines.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(head)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        # Later requests on a kept-alive connection pass through too.
                        if data.startswith(b"POST "):
                            self.request_lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxy(webhook_site: WebhookSite) -> AsyncIterator[ForwardProxy]:
    assert webhook_site.server.port is not None
    forward = ForwardProxy(webhook_site.server.port)
    server = await asyncio.start_server(forward.handle, "127.0.0.1", 0)
    forward.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield forward
    finally:
        server.close()
        await server.wait_closed()


async def test_the_service_sends_through_the_proxy_and_records_the_x_request_id(
    webhook_site: WebhookSite, proxy: ForwardProxy, start_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    # A name only the proxy can reach, and an international one: it must go out in punycode.
    webhook = f"http://webhook.örnek.invalid:{webhook_site.server.port}/0f8e2c6a"
    service: Service = start_service(webhook_url=webhook, send_interval="0.3s", webhook_client="lean")
    async with aiohttp.ClientSession() as session:
        await service.wait_answering(session)
        for i in range(2):
            async with session.post(
                service.base_url + "/api/v1/messages", json={"to": "+905301234001", "content": f"Merhaba {i}"}
            ) as response:
                assert response.status == 201

        async def listed() -> list[dict[str, Any]]:
            async with session.get(service.base_url + "/api/v1/messages") as response:
                return list((await response.json())["data"])

        async def both_sent() -> bool:
            return len(await listed()) == 2

        await eventually(both_sent, timeout_s=20, what="two sent messages listed")
        items = await listed()

    assert sorted(item["messageId"] for item in items) == sorted(webhook_site.ids)
    assert (
        proxy.request_lines
        == [f"POST http://webhook.xn--rnek-4qa.invalid:{webhook_site.server.port}/0f8e2c6a HTTP/1.1"] * 2
    )

    def sends() -> list[dict[str, Any]]:
        return [e for e in log_events(service.log()) if e["event"] == "send"]

    await eventually(lambda: len(sends()) == 2, what="two send events logged")  # logs are written in bursts
    assert {e["provider_message_id"] for e in sends()} == set(webhook_site.ids)
    # The old setting in the environment did not stop it; it was named once.
    events = log_events(service.log())
    [warning] = [e for e in events if e.get("setting") == "INSIDER_WEBHOOK_CLIENT"]
    assert warning["level"] == "warning"
