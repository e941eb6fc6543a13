"""`python -m insider` as a subprocess at its HTTP edges: browser checks, parser errors, slow and big requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from tests.acceptance.conftest import Service, log_events
from tests.conftest import eventually


async def _raw(port: int, data: bytes, *, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes; the status and body of the answer (every answer of the service has a Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            length = next(int(line.split(":")[1]) for line in head if line.lower().startswith("content-length:"))
            return int(head[0].split()[1]), await reader.readexactly(length)
    finally:
        writer.close()


async def test_the_service_keeps_its_http_edges(start_service: Callable[..., Service]) -> None:
    service = start_service(http_header_timeout="1s", http_body_timeout="1s", log_level="info")
    port = int(urlsplit(service.base_url).port or 0)
    async with aiohttp.ClientSession() as session:
        await service.wait_answering(session)

        async def running() -> bool:
            async with session.get(service.base_url + "/api/v1/sender") as response:
                return bool((await response.json())["running"])

        # The service answers before its autostart has run: wait for it, so that the check
        # below shows that the refused stop did nothing.
        await eventually(running, timeout_s=10, what="autostart")
        async with session.get(
            service.base_url + "/api/v1/messages/stop", headers={"Origin": "http://evil.example"}
        ) as response:
            assert response.status == 403 and "cross-site" in (await response.json())["error"]
        async with session.get(service.base_url + "/api/v1/messages", headers={"Host": "evil.example"}) as response:
            assert response.status == 421 and "INSIDER_ALLOWED_HOSTS" in (await response.json())["error"]
        async with session.get(service.base_url + "/api/v1/sender") as response:
            assert (await response.json())["running"] is True  # the refused stop did nothing

        status, body = await _raw(port, b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 400 and json.loads(body)["error"].startswith("not a valid HTTP request")

        started = time.monotonic()
        status, body = await _raw(
            port,
            b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n",
        )
        assert status == 413 and time.monotonic() - started < 1.0

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the headers
            async with asyncio.timeout(5):
                dropped = await reader.read()
        finally:
            writer.close()
        assert dropped.startswith(b"HTTP/1.1 408 ")

        for _ in range(3):  # probes
            async with session.get(service.base_url + "/healthz") as response:
                assert response.status == 200

    def logged(path: str) -> bool:
        return any(e.get("event") == "request" and e.get("path") == path for e in log_events(service.log()))

    await eventually(lambda: logged("/api/v1/messages/stop"), what="the refused request in the log")
    assert not logged("/healthz")  # routine polling is at debug
