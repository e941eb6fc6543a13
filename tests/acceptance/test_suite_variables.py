"""The suite's own INSIDER_TEST_* variables, set in the shell or in .env, do not stop the service."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.acceptance.conftest import free_port, wait_answering

# The variables README's Tests section describes, exported as a developer or CI would.
SUITE_VARIABLES = {
    "INSIDER_TEST_REQUIRE_SERVICES": "1",
    "INSIDER_TEST_DATABASE_URL": "postgresql://root@127.0.0.1:5432/postgres",
    "INSIDER_TEST_REDIS_URL": "redis://127.0.0.1:6379/13",
}


def whole_environment(**settings: str) -> dict[str, str]:
    """The test run's own environment, not stripped of anything, with the suite's variables and these settings."""
    return os.environ | SUITE_VARIABLES | {f"INSIDER_{k.upper()}": v for k, v in settings.items()}


def test_enqueue_and_migrate_ignore_them_in_the_environment(tmp_path: Path) -> None:
    env = whole_environment(database_url="sqlite:///queue.db", log_format="json")
    for args in (["migrate"], ["enqueue", "--to", "+15555550100", "--content", "hi"]):
        result = subprocess.run(
            [sys.executable, "-m", "insider", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "unknown setting" not in result.stderr
    with sqlite3.connect(tmp_path / "queue.db") as db:
        assert db.execute("SELECT content FROM messages").fetchall() == [("hi",)]


def spawn(*, cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "insider"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def test_the_service_starts_with_them_in_the_environment_and_in_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("INSIDER_TEST_REQUIRE_SERVICES=1\nINSIDER_TEST_DASHBOARD_SCREENSHOT=/tmp/x.png\n")
    port = free_port()
    env = whole_environment(database_url="sqlite:///queue.db", port=str(port), autostart="false", log_format="json")
    log_path = tmp_path / "service.log"
    process = spawn(cwd=tmp_path, env=env, log_path=log_path)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_answering(session, process, log_path.read_text, f"http://127.0.0.1:{port}/healthz")
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log_path.read_text()
    assert "unknown setting" not in log_path.read_text()
