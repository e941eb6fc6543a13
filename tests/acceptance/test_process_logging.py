"""``python -m insider``'s log lines: JSON, one event a line, and none lost when SIGTERM ends a drain."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.acceptance.conftest import Service, log_events, service_env
from tests.conftest import eventually

MESSAGES = 3000


async def test_every_send_is_logged_when_sigterm_ends_a_drain(tmp_path: Path, start_service: Any) -> None:
    database = tmp_path / "drain.db"
    rows = tmp_path / "messages.csv"
    with rows.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["to", "content"])
        writer.writerows([f"+90530{i:07d}", f"message {i}"] for i in range(MESSAGES))
    loaded = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "insider", "enqueue", "--file", str(rows)],
        env=service_env(database_url=f"sqlite:///{database}"),
        capture_output=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr

    # Back to back, a line per send, through the built-in simulated provider.
    service: Service = start_service(database_url=f"sqlite:///{database}", send_interval="0", batch_size="200")
    await eventually(lambda: service.log().count('"event":"send"') >= 500, timeout_s=60, what="500 sends logged")
    service.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(service.process.wait, 30) == 0

    text = service.log()
    events = log_events(text)
    assert len(events) == text.count('{"'), "a line that is not one whole JSON event"
    with sqlite3.connect(database) as db:
        # Sent, and perhaps delivered since: the simulated provider posts its receipts.
        accepted = "('sent', 'delivered', 'undelivered')"
        sent = {row[0] for row in db.execute(f"SELECT id FROM messages WHERE status IN {accepted}")}
    logged = {e["message_id"] for e in events if e["event"] == "send" and e["outcome"] == "sent"}
    assert 0 < len(sent) < MESSAGES  # stopped mid-drain
    assert logged == sent  # every send the database has, the log has
    assert re.search(r"\+90530\d{7}", text) is None  # phone numbers masked
    # What the shutdown itself logged came out too, to the last line.
    names = [e["event"] for e in events]
    assert "shutting down" in names[:-1], names[-5:]
    assert text.endswith("\n") and json.loads(text.splitlines()[-1]) == events[-1]
