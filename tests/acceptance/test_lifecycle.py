"""Start-up and shut-down as an operator sees them: a taken port, a database that is down, a restart."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.acceptance.conftest import Service, free_port, log_events, service_env, wait_answering
from tests.conftest import Provider, eventually

PHONE = "+905301234001"


def enqueue(workdir: Path, **settings: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "insider", "enqueue", "--to", PHONE, "--content", "waiting"],
        cwd=workdir,
        env=service_env(**settings),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_a_start_on_a_taken_port_sends_nothing_takes_no_slot_and_says_which_setting(tmp_path: Path) -> None:
    enqueue(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "insider"],
            cwd=tmp_path,
            env=service_env(port=str(port), send_interval="10s"),
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 1
    errors = [line for line in done.stderr.decode().splitlines() if line.startswith("insider: error:")]
    assert len(errors) == 1, done.stderr
    assert f"127.0.0.1:{port}" in errors[0] and "INSIDER_PORT" in errors[0] and "INSIDER_HOST" in errors[0]
    events = [event["event"] for event in log_events(done.stderr.decode())]
    assert "sender started" not in events and "send" not in events
    with sqlite3.connect(tmp_path / "insider.db") as db:
        assert db.execute("SELECT status FROM messages").fetchall() == [("pending",)]
        assert db.execute("SELECT count(*) FROM insider_slots").fetchone() == (0,)


@pytest.fixture
def unused_port() -> int:
    return free_port()


async def test_with_the_database_down_it_listens_at_once_answers_503_quickly_and_logs_quietly(
    tmp_path: Path, unused_port: int
) -> None:
    port = free_port()
    log_path = tmp_path / "service.log"
    started = time.monotonic()
    with log_path.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 (started once; the test then waits on the API)
            [sys.executable, "-m", "insider"],
            cwd=tmp_path,
            env=service_env(
                port=str(port), database_url=f"postgresql://root@127.0.0.1:{unused_port}/insider", send_interval="1s"
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(up, timeout_s=20, what="the API to listen")
            # Python's own start-up takes most of this; the database is never waited for.
            assert time.monotonic() - started < 6.0
            for path in ("/readyz", "/api/v1/messages"):
                t0 = time.monotonic()
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 503
                    assert "error" in await response.json()
                assert time.monotonic() - t0 < 1.0, path

            def failed_ticks() -> list[dict[str, Any]]:
                events = log_events(log_path.read_text())
                return [e for e in events if e["event"] == "tick failed: database unavailable"]

            await eventually(lambda: len(failed_ticks()) >= 3, timeout_s=30, what="three failed ticks")
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
    events = log_events(log_path.read_text())
    pool_lines = [e for e in events if str(e.get("logger", "")).startswith("psycopg")]
    assert pool_lines == []  # psycopg_pool's per-attempt warnings are silenced
    failed = [e for e in events if e["event"] == "tick failed: database unavailable"]
    # One line per failed tick: a tick every second or so at most, never a burst.
    times = [e["timestamp"] for e in failed]
    assert len(times) == len(set(times))
    warnings = [e for e in events if e.get("level") in ("warning", "error") and e not in failed]
    assert all(e["event"] != "tick failed" for e in warnings)
    assert "database unavailable at start-up; the schema will be applied once it answers" in [
        e["event"] for e in events
    ]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("path", "why"), [("/insider_no_such_database", "does not exist"), ("/postgres?no_such_option=1", "no_such_option")]
)
def test_a_start_with_a_database_url_that_can_never_work_exits_with_one_line(
    tmp_path: Path, postgres_admin_url: str, path: str, why: str
) -> None:
    url = postgres_admin_url.rsplit("/", 1)[0] + path
    done = subprocess.run(
        [sys.executable, "-m", "insider"],
        cwd=tmp_path,
        env=service_env(port=str(free_port()), database_url=url),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.decode().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("insider: error: INSIDER_DATABASE_URL: "), done.stderr
    assert why in lines[0]


@pytest.mark.postgres
async def test_sigterm_during_a_database_cut_exits_within_the_shutdown_timeout_plus_the_margin(
    fresh_postgres_url: str, provider: Provider, start_service: Any, tmp_path: Path
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from tests.integration.tcp_proxy import TcpProxy

    provider.gate = asyncio.Event()  # the send hangs at the provider
    await asyncio.to_thread(enqueue, tmp_path, database_url=fresh_postgres_url)
    parts = urlsplit(fresh_postgres_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        through = urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}"))
        service: Service = start_service(
            database_url=through, redis_url="", webhook_url=provider.url, send_interval="1h", shutdown_timeout="2s"
        )
        await eventually(lambda: len(provider.received) == 1, timeout_s=20, what="the held send")
        proxy.cut()
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.process.wait, 30)
        took_s = time.monotonic() - started
    assert code == 0, service.log()
    assert took_s < 2 + 4 + 1.0, f"SIGTERM took {took_s:.1f}s"  # the grace, the margin, process exit
    with psycopg.connect(fresh_postgres_url) as conn:
        row = conn.execute("SELECT status FROM messages").fetchone()
    assert row == ("sending",)  # not recorded during the cut: its lease releases it


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")


# A service whose supervisor has one more child: one that ignores its cancellation (a bug), to show
# that it cannot hold a shutdown past its bound.
STUBBORN_SERVICE = """
import asyncio
import os
import sys

from dependency_injector import providers

from insider.cli import main
from insider.container import Container
from insider.supervisor import Child


async def stubborn() -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            # One write of a whole line: the service's log lines go to the same file from a thread of
            # their own, and print's text and its line break, written apart, could take one between them.
            os.write(2, b"stubborn: cancelled, and going on\\n")


Container.children.override(providers.Object([Child("stubborn", stubborn, close_timeout_s=1.0)]))
sys.exit(main(["serve"]))
"""


@pytest.mark.postgres
async def test_sigterm_with_a_stubborn_child_a_hung_provider_and_a_black_holed_database_exits_within_the_bound(
    fresh_postgres_url: str, provider: Provider, tmp_path: Path
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from tests.integration.tcp_proxy import TcpProxy

    provider.gate = asyncio.Event()  # the send hangs at the provider
    await asyncio.to_thread(enqueue, tmp_path, database_url=fresh_postgres_url)
    parts = urlsplit(fresh_postgres_url)
    log_path = tmp_path / "stubborn.log"
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        through = urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}"))
        env = service_env(
            port=str(free_port()),
            database_url=through,
            redis_url="",
            webhook_url=provider.url,
            send_interval="1h",
            shutdown_timeout="2s",
        )
        with log_path.open("wb") as out:
            process = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-c", STUBBORN_SERVICE],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            base_url = f"http://127.0.0.1:{env['INSIDER_PORT']}"
            async with aiohttp.ClientSession() as session:
                await wait_answering(session, process, lambda: read_log(log_path), base_url + "/readyz")
                await eventually(lambda: len(provider.received) == 1, timeout_s=20, what="the held send")
                proxy.black_hole()  # the database's packets vanish: its connections stay open, nothing answers
                # A request of the API that waits on the database when the signal comes.
                enqueueing = asyncio.ensure_future(
                    session.post(base_url + "/api/v1/messages", json={"to": PHONE, "content": "stuck"})
                )
                await eventually(lambda: proxy.swallowed > 0, what="the request's statement in the black hole")
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, 30)
                took_s = time.monotonic() - started
                await asyncio.wait({enqueueing})
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    log = read_log(log_path)
    assert code == 0, log
    assert took_s < 2 + 4 + 1.0, f"SIGTERM took {took_s:.1f}s\n{log}"  # the grace, the margin, process exit
    assert "stubborn: cancelled, and going on" in log
    events = log_events(log)
    abandoned = [e["child"] for e in events if e["event"].startswith("a child of the supervisor did not end")]
    # The stubborn child; and the batch too when psycopg's cancel of its write waits on the black hole.
    assert "stubborn" in abandoned and set(abandoned) <= {"stubborn", "batch"}, log
    assert any(e["event"] == "exiting without the tasks that ignored their cancellation" for e in events), log
