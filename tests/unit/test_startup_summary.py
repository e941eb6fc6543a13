"""The block `python -m insider` prints at start: what it uses, where it listens, how to give it work."""

from __future__ import annotations

from pathlib import Path

import pytest

from insider.cli.summary import startup_summary
from insider.config import Settings, load_settings

BASE = "http://127.0.0.1:8080"


def settings(**environ: str) -> Settings:
    return load_settings({f"INSIDER_{k.upper()}": v for k, v in environ.items()}, env_file=None)


def test_the_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    text = startup_summary(settings(), base_url=BASE, running=True, pending=0)

    assert text.splitlines() == [
        "insider 0.1.0 is up",
        f"  API       {BASE}/api/v1/messages",
        f"  Dashboard {BASE}/",
        f"  Swagger   {BASE}/swagger",
        f"  Database  SQLite sqlite:///insider.db ({tmp_path.resolve() / 'insider.db'})",
        "  Cache     in-process (INSIDER_REDIS_URL is empty)",
        "  Provider  built-in simulator — nothing leaves this machine",
        "  Batches   2 messages every 2m",
        "  Sending   running",
        "Nothing is waiting to be sent. Add a message with either of:",
        f"  curl -X POST {BASE}/api/v1/messages -H 'Content-Type: application/json'"
        ' -d \'{"to": "+15555550100", "content": "Hello from insider"}\'',
        "  python -m insider enqueue --to +15555550100 --content 'Hello from insider'",
        "It goes out with the next batch, at most 2m from now.",
        "Stop with Ctrl+C.",
    ]


def test_production_settings_with_passwords_masked() -> None:
    text = startup_summary(
        settings(
            database_url="postgresql://app:hunter2@db:5432/insider",
            redis_url="redis://:r3dis@cache:6379/0",
            webhook_url="https://user:pw@provider.test/hook",
            webhook_auth_key="s3cret",
            batch_size="1",
            send_interval="0",
            autostart="false",
        ),
        base_url=BASE,
        running=False,
        pending=3,
        python=".venv/bin/python",
    )

    for secret in ("hunter2", "r3dis", ":pw@", "s3cret"):
        assert secret not in text
    assert "  Database  PostgreSQL postgresql://app:***@db:5432/insider" in text
    assert "  Cache     Redis redis://:***@cache:6379/0" in text
    assert "  Provider  https://user:***@provider.test/hook" in text
    assert "  Batches   1 message back to back (INSIDER_SEND_INTERVAL=0)" in text
    assert "  Sending   stopped (start it: POST /api/v1/messages/start)" in text
    assert "Nothing is waiting" not in text  # three are pending


def test_an_api_token_shows_in_the_curl_line_by_name_only() -> None:
    text = startup_summary(settings(api_token="t0ken"), base_url=BASE, running=True, pending=0, python="py")

    assert "t0ken" not in text
    assert '-H "Authorization: Bearer $INSIDER_API_TOKEN"' in text
    assert "  py -m insider enqueue" in text


def test_a_database_that_does_not_answer_yet_is_said_so() -> None:
    text = startup_summary(settings(), base_url=BASE, running=True, pending=None)

    assert "(not answering yet; sending starts once it does)" in text
    assert "Nothing is waiting" not in text


def test_the_enqueue_command_carries_the_settings_it_needs() -> None:
    """Pasted in another terminal, it must queue into the same database, checked against the same limit."""
    text = startup_summary(
        settings(database_url="postgresql://app:hunter2@db:5432/insider", content_max_length="70"),
        base_url=BASE,
        running=True,
        pending=0,
        python=".venv/bin/python",
    )

    assert (
        "  INSIDER_DATABASE_URL='postgresql://app:***@db:5432/insider' INSIDER_CONTENT_MAX_LENGTH=70 "
        ".venv/bin/python -m insider enqueue --to +15555550100 --content 'Hello from insider'"
    ) in text.splitlines()
    assert "  (put the database password back in place of *** in INSIDER_DATABASE_URL)" in text.splitlines()
    assert "hunter2" not in text


def test_a_database_without_a_password_is_given_whole() -> None:
    text = startup_summary(
        settings(database_url="sqlite:////var/lib/insider/queue.db"), base_url=BASE, running=True, pending=0
    )

    assert "  INSIDER_DATABASE_URL=sqlite:////var/lib/insider/queue.db python -m insider enqueue" in text
    assert "put the database password back" not in text


def test_sending_hours_are_named_when_set() -> None:
    text = startup_summary(
        settings(sending_hours="08:00-21:00", default_timezone="Europe/Istanbul"),
        base_url=BASE,
        running=True,
        pending=1,
    )
    assert (
        "  Hours     08:00-21:00 at the recipient's local time for commercial messages "
        "(a number with no known zone: Europe/Istanbul)"
    ) in text.splitlines()
    assert "Hours" not in startup_summary(settings(), base_url=BASE, running=True, pending=1)
