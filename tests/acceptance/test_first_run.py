"""A first run: `python -m insider` in an empty directory with no settings at all (only a free port).

Embedded defaults: a SQLite file in the working directory, the in-process cache, the
built-in simulated provider. Nothing else is installed or running.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from insider.adapters.sqlite import format_timestamp
from tests.acceptance.conftest import free_port, log_events, service_env
from tests.conftest import eventually

PHONE = "+905301234001"


class FirstRun:
    """Starts the service in one directory with nothing but INSIDER_PORT set; stops what it started."""

    def __init__(self, workdir: Path, logs: Path) -> None:
        self.workdir = workdir
        self.logs = logs
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = service_env()
        env.pop("INSIDER_LOG_FORMAT")  # not even that: the defaults decide
        env["INSIDER_PORT"] = str(self.port)
        # No setting but the port (the suite's own INSIDER_TEST_* may be there: they are not settings).
        assert [k for k in env if k.startswith("INSIDER_") and not k.startswith("INSIDER_TEST_")] == ["INSIDER_PORT"]
        log_path = self.logs / f"run-{len(self.processes)}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "insider"], cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append((process, log_path))
        return process

    def log(self, run: int = -1) -> str:
        return self.processes[run][1].read_text(errors="replace")

    def stop(self) -> None:
        process, _ = self.processes[-1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, self.log()

    async def wait_until_up(self, session: aiohttp.ClientSession) -> None:
        async def up() -> bool:
            process, _ = self.processes[-1]
            if process.poll() is not None:
                raise AssertionError(f"the service exited with {process.returncode}:\n{self.log()}")
            # The summary is printed once the API listens and the first look at the queue is done.
            return "Stop with Ctrl+C." in self.log()

        await eventually(up, timeout_s=30, what="the service to start")


@pytest.fixture
def first_run(tmp_path: Path) -> Iterator[FirstRun]:
    workdir = tmp_path / "empty"
    workdir.mkdir()
    run = FirstRun(workdir, tmp_path)
    try:
        yield run
    finally:
        for process, _ in run.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_first_run_sends_through_the_built_in_provider_and_remembers_after_a_restart(
    first_run: FirstRun,
) -> None:
    assert list(first_run.workdir.iterdir()) == []
    first_run.start()
    async with aiohttp.ClientSession() as session:
        await first_run.wait_until_up(session)

        summary = first_run.log()
        base = first_run.base_url
        for line in (
            "insider 0.1.0 is up",
            f"  API       {base}/api/v1/messages",
            f"  Dashboard {base}/",
            f"  Swagger   {base}/swagger",
            f"  Database  SQLite sqlite:///insider.db ({first_run.workdir.resolve() / 'insider.db'})",
            "  Cache     in-process (INSIDER_REDIS_URL is empty)",
            "  Provider  built-in simulator — nothing leaves this machine",
            "  Batches   2 messages every 2m",
            "  Sending   running",
            "Nothing is waiting to be sent. Add a message with either of:",
            f"  curl -X POST {base}/api/v1/messages -H 'Content-Type: application/json' -d '{{\"to\": ",
            " -m insider enqueue --to +15555550100 --content 'Hello from insider'",
        ):
            assert line in summary, f"{line!r} not in the start-up summary:\n{summary}"
        assert "NOTHING LEAVES THIS MACHINE" in summary  # the loud warning, at warning level
        assert any(e["level"] == "warning" for e in log_events(summary))
        assert (first_run.workdir / "insider.db").is_file()

        async with session.post(base + "/api/v1/messages", json={"to": PHONE, "content": "İlk mesaj"}) as response:
            assert response.status == 201
            message_id = (await response.json())["id"]
        assert (await _get(session, f"{base}/api/v1/messages/{message_id}"))["status"] == "pending"
        first_run.stop()

        # The first run's batch (at start, with nothing to send) holds the rate for 2 minutes.
        # Let those two minutes pass in the database instead of waiting for them.
        with contextlib.closing(sqlite3.connect(first_run.workdir / "insider.db")) as conn, conn:
            conn.execute(
                "UPDATE insider_slots SET last_at = ?", (format_timestamp(datetime.now(UTC) - timedelta(minutes=2)),)
            )

        first_run.start()
        await first_run.wait_until_up(session)

        async def sent() -> bool:
            message = await _get(session, f"{base}/api/v1/messages/{message_id}")
            return bool(message["status"] in ("sent", "delivered", "undelivered"))

        await eventually(sent, timeout_s=20, what="the message to be sent through the built-in provider")
        message = await _get(session, f"{base}/api/v1/messages/{message_id}")
        assert uuid.UUID(message["messageId"])  # the simulator's fresh id
        assert message["attempts"] == 1 and message["lastError"] is None

        # The built-in provider reports on it 1 to 5 s later, in process, with nothing set.
        async def reported() -> bool:
            message.update(await _get(session, f"{base}/api/v1/messages/{message_id}"))
            return bool(message["status"] in ("delivered", "undelivered"))

        await eventually(reported, timeout_s=20, what="the built-in provider's delivery receipt")
        assert message["deliveryStatus"] == message["status"] and message["deliveredAt"] is not None
        events = (await _get(session, f"{base}/api/v1/messages/{message_id}/events"))["data"]
        assert [e["kind"] for e in events] == ["attempt", "receipt"]
        first_run.stop()
        assert any(e.get("outcome") == "sent" and e.get("status_code") == 202 for e in log_events(first_run.log()))

        # Restarted in the same directory, it still lists the message as sent.
        first_run.start()
        await first_run.wait_until_up(session)
        listed = await _get(session, f"{base}/api/v1/messages")
        assert [(m["id"], m["status"], m["messageId"]) for m in listed["data"]] == [
            (message_id, message["status"], message["messageId"])
        ]
        assert "Nothing is waiting to be sent" in first_run.log()
        first_run.stop()

    assert sorted(p.name for p in first_run.workdir.iterdir() if not p.name.startswith("insider.db-")) == ["insider.db"]
