"""Sending hours from outside: the service and the simulator as subprocesses, the window set around
Turkey's clock now, so that Turkey is inside it and the UK and the US are outside; ``enqueue``
and its files."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from insider.adapters.webhook import open_http_session
from tests.acceptance.conftest import Service, service_env, start_simulator
from tests.conftest import eventually

TURKEY = "+905301234001"
UK = "+447911123456"
NEW_YORK = "+12125550123"
TOLL_FREE = "+18005550123"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session() as opened:
        yield opened


def window_around_turkey(now: datetime) -> tuple[str, int]:
    """Three hours from Turkey's hour now, and its start (minutes of the day).

    Istanbul is UTC+3 all year; London is 2 or 3 hours behind it and New York 7 or 8, so
    both stay outside for an hour at least, whichever the date and minute.
    """
    hour = now.astimezone(ZoneInfo("Europe/Istanbul")).hour
    start, end = hour, (hour + 3) % 24
    return f"{start:02d}:00-{end:02d}:00", start * 60


def next_opening(zone: str, start_min: int, after: datetime) -> datetime:
    """The first moment after ``after`` at which the clock of ``zone`` shows ``start_min``."""
    tz = ZoneInfo(zone)
    day = after.astimezone(tz).date()
    for k in range(3):
        moment = datetime.combine(day + timedelta(days=k), datetime.min.time(), tz) + timedelta(minutes=start_min)
        if moment.astimezone(UTC) > after:
            return moment.astimezone(UTC)
    raise AssertionError("no opening within three days")


async def post(session: aiohttp.ClientSession, service: Service, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(service.base_url + "/api/v1/messages", json=body) as response:
        return response.status, await response.json()


async def item(session: aiohttp.ClientSession, service: Service, message_id: int) -> dict[str, Any]:
    async with session.get(f"{service.base_url}/api/v1/messages/{message_id}") as response:
        assert response.status == 200
        return dict(await response.json())


async def received(session: aiohttp.ClientSession, simulator: Service) -> list[str]:
    async with session.get(simulator.base_url + "/messages") as response:
        return [m["content"] for m in (await response.json())["data"]]


async def test_turkey_inside_its_hours_is_sent_the_uk_and_the_us_outside_wait(
    start_service: Callable[..., Service], session: aiohttp.ClientSession
) -> None:
    simulator = await start_simulator(start_service, session)
    started = datetime.now(UTC)
    window, start_min = window_around_turkey(started)
    service = start_service(
        webhook_url=simulator.base_url + "/webhook",
        sending_hours=window,
        send_interval="0.05s",
        batch_size="10",
    )
    await service.wait_answering(session)

    ids: dict[str, int] = {}
    for name, to in (("us", NEW_YORK), ("uk", UK), ("toll-free", TOLL_FREE), ("tr", TURKEY)):
        status, body = await post(session, service, {"to": to, "content": name, "category": "commercial"})
        assert status == 201, body
        ids[name] = body["id"]
    # Transactional messages keep no hours (INSIDER_SENDING_HOURS_FOR is commercial by default).
    status, body = await post(session, service, {"to": NEW_YORK, "content": "code", "respectSendingHours": False})
    assert status == 201, body
    # Only a transactional message may opt out.
    status, body = await post(
        session, service, {"to": NEW_YORK, "content": "x", "category": "commercial", "respectSendingHours": False}
    )
    assert status == 422
    assert list(body["fields"]) == ["respectSendingHours"]

    async def turkey_and_the_code_sent() -> bool:
        return sorted(await received(session, simulator)) == ["code", "tr"]

    await eventually(turkey_and_the_code_sent, timeout_s=20, what="Turkey's message and the code to reach the provider")
    # One more batch after them: what waits is still not claimed.
    status, body = await post(session, service, {"to": TURKEY, "content": "tr2", "category": "commercial"})
    assert status == 201

    async def second_sent() -> bool:
        return "tr2" in await received(session, simulator)

    await eventually(second_sent, timeout_s=20, what="the second message to Turkey to reach the provider")
    assert sorted(await received(session, simulator)) == ["code", "tr", "tr2"]

    assert (await item(session, service, ids["tr"]))["status"] in ("sent", "delivered")
    for name, zone in (("us", "America/New_York"), ("uk", "Europe/London")):
        waiting = await item(session, service, ids[name])
        assert waiting["status"] == "pending", waiting
        assert waiting["waitReason"] == "sending-hours"
        assert waiting["attempts"] == 0
        until = datetime.fromisoformat(waiting["waitingUntil"].replace("Z", "+00:00"))
        assert until == next_opening(zone, start_min, started), (name, until)
    toll_free = await item(session, service, ids["toll-free"])
    assert toll_free["status"] == "pending"
    assert toll_free["waitReason"] == "sending-hours"
    async with session.get(f"{service.base_url}/api/v1/messages/{ids['us']}/events") as response:
        assert response.status == 200
        assert [e for e in (await response.json())["data"] if e["outcome"] in ("sent", "retry")] == []


def enqueue(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insider", "enqueue", *args],
        cwd=cwd,
        env=service_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(db: Path) -> list[tuple[str, str | None, str | None, int]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT content, wait_reason, next_attempt_at, respect_sending_hours FROM messages ORDER BY id"
        ).fetchall()


def test_enqueue_marks_a_message_due_outside_its_hours(tmp_path: Path) -> None:
    started = datetime.now(UTC)
    window, start_min = window_around_turkey(started)
    hours = {"sending_hours": window, "sending_hours_for": "transactional,commercial"}
    outside = enqueue("--to", NEW_YORK, "--content", "sale", "--category", "commercial", cwd=tmp_path, **hours)
    inside = enqueue("--to", TURKEY, "--content", "sale", "--category", "commercial", cwd=tmp_path, **hours)
    urgent = enqueue("--to", NEW_YORK, "--content", "code", "--ignore-sending-hours", cwd=tmp_path, **hours)
    refused = enqueue(
        "--to", NEW_YORK, "--content", "x", "--category", "commercial", "--ignore-sending-hours", cwd=tmp_path, **hours
    )

    assert [r.returncode for r in (outside, inside, urgent)] == [0, 0, 0], (outside.stderr, urgent.stderr)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "insider: error: invalid message: --ignore-sending-hours is for transactional messages only: "
        "commercial ones keep the sending hours"
    ]
    sale, tr, code = rows(tmp_path / "insider.db")
    assert sale[0:2] == ("sale", "sending-hours") and sale[2] is not None
    assert datetime.fromisoformat(sale[2].replace("Z", "+00:00")) == next_opening(
        "America/New_York", start_min, started
    )
    assert tr[1:] == (None, None, 1)
    assert code[1:] == (None, None, 0)


def test_a_file_line_that_opts_a_commercial_message_out_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "to,content,category,respectSendingHours\n"
        f"{NEW_YORK},a,transactional,false\n"
        f"{NEW_YORK},b,commercial,false\n"
        f"{NEW_YORK},c,commercial,\n",
        encoding="utf-8",
    )
    result = enqueue("--file", str(path), cwd=tmp_path, sending_hours=window_around_turkey(datetime.now(UTC))[0])

    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [
        "rejected line 3: respectSendingHours may be false only for transactional messages",
        "stored 2 messages, rejected 1 lines",
    ]
    assert [(c, reason, respect) for c, reason, _, respect in rows(tmp_path / "insider.db")] == [
        ("a", None, 0),
        ("c", "sending-hours", 1),
    ]


def test_a_bad_time_zone_is_one_line_at_start_up(tmp_path: Path) -> None:
    result = enqueue("--to", TURKEY, "--content", "x", cwd=tmp_path, default_timezone="Mars/Olympus_Mons")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "insider: error: INSIDER_DEFAULT_TIMEZONE: expected an IANA time zone such as Europe/Istanbul, "
        "America/New_York or UTC, got 'Mars/Olympus_Mons'"
    ]
