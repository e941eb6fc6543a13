"""`python -m insider` as a subprocess at its HTTP edges: browser checks, parser errors, slow and big requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
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


def rss_bytes(pid: int) -> int:
    """The resident memory of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


API_TOKEN = "api-secret-token"
DLR_TOKEN = "dlr-secret-token"
JSON_CHUNKED = "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
# Strangers' uploads: a head with no token or a wrong one, then a chunked body that never ends; and one whose
# headers never end (what it sends as chunks reads as header lines the parser refuses). What each is answered
# (0: the connection was reset before the answer was read; the service owes nothing to a client that is not HTTP).
STRANGERS = [
    ("POST /api/v1/messages/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n" + JSON_CHUNKED, {401}),
    ("POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer nope\r\n" + JSON_CHUNKED, {401}),
    ("POST /api/v1/delivery-reports HTTP/1.1\r\nHost: 127.0.0.1\r\n" + JSON_CHUNKED, {401}),
    (
        "POST /api/v1/delivery-reports?token=nope HTTP/1.1\r\nHost: 127.0.0.1\r\nx-ins-auth-key: nope\r\n"
        + JSON_CHUNKED,
        {401},
    ),
    ("POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n", {400, 0}),
]
CONNECTIONS = 200
FLOOD_BYTES = 3 * 1024 * 1024  # what each flooding client sends (a trickling one sends a chunk per 0.1 s)
MEMORY_BOUND = 50 * 1024 * 1024


async def test_memory_stays_flat_under_200_unauthenticated_chunked_uploads(
    start_service: Callable[..., Service],
) -> None:
    """Nothing is buffered for a stranger: 200 connections with no token or a wrong one upload chunked bodies (or
    headers that never end), three in four as fast as they can, one in four trickling; the service's resident
    memory stays within 50 MB of what it was, every upload is refused, and the service goes on answering."""
    service = start_service(api_token=API_TOKEN, dlr_token=DLR_TOKEN, http_body_timeout="30s")
    port = int(urlsplit(service.base_url).port or 0)
    async with aiohttp.ClientSession() as session:
        await service.wait_answering(session)
        for _ in range(20):  # warm up: the first requests import and allocate what every later one reuses
            async with session.get(
                service.base_url + "/api/v1/stats", headers={"Authorization": f"Bearer {API_TOKEN}"}
            ) as response:
                assert response.status == 200
        before = rss_bytes(service.process.pid)
        peak = before
        unexpected: list[tuple[int, int]] = []
        chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)]

        async def upload(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head, answers = STRANGERS[i % len(STRANGERS)]
            answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
            try:
                writer.write(head.encode())
                sent = 0
                while sent < FLOOD_BYTES:
                    if i % 4 == 3:  # trickling
                        writer.write(b"1\r\n[\r\n")
                        sent += FLOOD_BYTES // 20
                        await asyncio.sleep(0.1)  # the client's pace (what is tested), not a synchronisation
                    else:
                        writer.write(chunk)
                        sent += len(chunk)
                        await writer.drain()
            except ConnectionError:
                pass  # refused and closed while still sending: what a stranger should get
            try:
                async with asyncio.timeout(40):
                    status = int((await answer).split(b" ", 2)[1])
            except (asyncio.IncompleteReadError, ConnectionError):
                status = 0
            finally:
                writer.close()
            if status not in answers:
                unexpected.append((i, status))

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes(service.process.pid))
                await asyncio.sleep(0.01)  # the sampling rate, not a synchronisation

        sampler = asyncio.create_task(sample())
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(upload(i, r, w) for i, (r, w) in enumerate(connections)))
        finally:
            sampler.cancel()
        peak = max(peak, rss_bytes(service.process.pid))
        async with session.get(service.base_url + "/healthz") as response:
            assert response.status == 200
    print(f"RSS before {before / 2**20:.1f} MiB, peak under {CONNECTIONS} uploads {peak / 2**20:.1f} MiB")
    assert peak - before < MEMORY_BOUND, f"RSS grew from {before / 2**20:.0f} MiB to {peak / 2**20:.0f} MiB"
    assert unexpected == []
