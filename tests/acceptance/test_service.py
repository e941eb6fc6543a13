"""The service as a subprocess on the real PostgreSQL and Redis, sending to a real HTTP provider."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import psycopg
import pytest
import redis.asyncio as aioredis

from tests.acceptance.conftest import Service, log_events, service_env
from tests.conftest import Provider, eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_sends_pending_messages_end_to_end(
    fresh_postgres_url: str, redis_url: str, redis_prefix: str, provider: Provider, start_service: Any
) -> None:
    service: Service = start_service(
        database_url=fresh_postgres_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        webhook_url=provider.url,
        webhook_auth_key="s3cret-key",
        batch_size="2",
        send_interval="0.3s",
        # One request at a time, so that the provider sees the messages in the order sent
        # (with more, the requests of one batch race each other).
        send_concurrency="1",
    )
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as session:
        await service.wait_answering(session)
        # The original Go service's users insert rows like this; it must keep working.
        async with await psycopg.AsyncConnection.connect(fresh_postgres_url, autocommit=True) as conn:
            for i in range(1, 4):
                await conn.execute(
                    "INSERT INTO messages (recipient_phone, content, status) VALUES (%s, %s, 'pending')",
                    (f"+90530123400{i}", f"Message content {i}"),
                )
        async with session.post(
            service.base_url + "/api/v1/messages", json={"to": "+905301234009", "content": "Şimdi gönder"}
        ) as response:
            assert response.status == 201

        await eventually(lambda: len(provider.received) == 4, timeout_s=20, what="four sends")
        # Oldest first, each exactly once, with the contract's body and headers.
        assert [r["body"] for r in provider.received] == [
            {"to": "+905301234001", "content": "Message content 1"},
            {"to": "+905301234002", "content": "Message content 2"},
            {"to": "+905301234003", "content": "Message content 3"},
            {"to": "+905301234009", "content": "Şimdi gönder"},
        ]
        for r in provider.received:
            assert r["headers"]["x-ins-auth-key"] == "s3cret-key"
            assert r["headers"]["Content-Type"].startswith("application/json")

        async def listed() -> list[dict[str, Any]]:
            async with session.get(service.base_url + "/api/v1/messages") as response:
                return list((await response.json())["data"])

        async def all_listed() -> bool:
            return len(await listed()) == 4

        await eventually(all_listed, timeout_s=10, what="four sent messages listed")
        items = await listed()
        assert [m["content"] for m in items][-1] == "Message content 1"  # most recently sent first
        for item in items:
            cached = await redis.hgetall(f"{redis_prefix}:sent:{item['messageId']}")
            assert cached == {"messageId": item["messageId"], "sentAt": cached["sentAt"], "id": str(item["id"])}
            assert 0 < await redis.ttl(f"{redis_prefix}:sent:{item['messageId']}") <= 7 * 86400

        async with session.post(service.base_url + "/api/v1/messages/stop") as response:
            assert await response.json() == {
                "running": False,
                "result": "stopped",
                "previousState": "running",
                "state": "idle",
            }
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=20) == 0
    log = service.log()
    assert "s3cret-key" not in log
    assert "+905301234001" not in log  # phone numbers are masked
    assert any(e["event"] == "send" for e in log_events(log))
    for key in await redis.keys(f"{redis_prefix}:*"):
        await redis.delete(key)
    await redis.aclose()


def test_bad_setting_stops_start_up_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "insider"],
        env=service_env(batch_size="many"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "insider: error: INSIDER_BATCH_SIZE: expected a whole number, got 'many'"
    ]


def test_migrate_command_applies_the_schema(fresh_postgres_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "insider", "migrate"],
        env=service_env(database_url=fresh_postgres_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(fresh_postgres_url) as conn:
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status) "
            "VALUES ('+905301234001', 'Message content 1', 'pending')"
        )
        assert conn.execute("SELECT status FROM messages").fetchone() == ("pending",)


async def test_sigterm_during_a_slow_send_exits_zero_and_records(
    fresh_postgres_url: str, provider: Provider, start_service: Any
) -> None:
    provider.gate = asyncio.Event()
    migrated = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "insider", "migrate"],
        env=service_env(database_url=fresh_postgres_url),
        capture_output=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(fresh_postgres_url) as conn:
        row = conn.execute(
            "INSERT INTO messages (recipient_phone, content) VALUES ('+905301234001', 'slow') RETURNING id"
        ).fetchone()
        assert row is not None
        message_id = row[0]
    service: Service = start_service(
        database_url=fresh_postgres_url,
        redis_url="",
        webhook_url=provider.url,
        send_interval="1h",
        shutdown_timeout="20s",
    )
    await eventually(lambda: len(provider.received) == 1, timeout_s=20, what="the slow send to start")
    service.process.send_signal(signal.SIGTERM)
    # The request is in flight; let the provider answer only after the signal arrived.
    await eventually(lambda: "shutting down" in service.log(), timeout_s=10, what="shutdown to begin")
    provider.gate.set()
    assert await asyncio.to_thread(service.process.wait, 30) == 0
    with psycopg.connect(fresh_postgres_url) as conn:
        row = conn.execute("SELECT status, message_id FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None and row[0] == "sent" and row[1]


async def test_without_a_webhook_url_the_built_in_simulator_takes_the_messages(
    fresh_postgres_url: str, start_service: Any
) -> None:
    service: Service = start_service(database_url=fresh_postgres_url, send_interval="0.2s")
    async with aiohttp.ClientSession() as session:
        await service.wait_answering(session)
        async with session.post(
            service.base_url + "/api/v1/messages", json={"to": "+905301234001", "content": "to the simulator"}
        ) as response:
            assert response.status == 201
            message_id = (await response.json())["id"]

        async def sent() -> bool:
            async with session.get(f"{service.base_url}/api/v1/messages/{message_id}") as response:
                body = await response.json()
                return bool(body["status"] == "sent" and body["messageId"])

        await eventually(sent, timeout_s=20, what="the message to be sent through the simulator")
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=20) == 0
    log = service.log()
    assert "NOTHING LEAVES THIS MACHINE" in log  # the start-up warning
    assert "Provider  built-in simulator — nothing leaves this machine" in log  # the summary
    assert "Database  PostgreSQL " in log
