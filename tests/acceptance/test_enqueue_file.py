"""``python -m insider enqueue --file`` as a subprocess: CSV and JSON Lines, stdin, large files, on SQLite
and on PostgreSQL (COPY)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.conftest import service_env


def run(*args: str, cwd: Path, stdin: str | None = None, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insider", "enqueue", *args],
        cwd=cwd,
        env=service_env(**settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
    )


def rows(db: Path) -> list[tuple[str, str, int, str | None]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT recipient_phone, content, priority, send_at FROM messages ORDER BY id").fetchall()


def test_a_csv_of_100000_rows_with_rejected_lines_reported_by_number(tmp_path: Path) -> None:
    path = tmp_path / "campaign.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("to,content,sendAt,priority,validUntil\n")
        for i in range(100_000):
            if i in (10, 54_321):
                f.write(f"not-a-number,Kampanya {i},,,\n")
            else:
                f.write(f"+90530{i:07d},Kampanya {i}: %20 indirim,,{i % 10},\n")
    result = run("--file", str(path), cwd=tmp_path)

    assert result.returncode == 1  # some lines were rejected
    assert result.stdout.splitlines() == [
        "rejected line 12: to is not a possible phone number (not a phone number)",
        "rejected line 54323: to is not a possible phone number (not a phone number)",
        "stored 99998 messages, rejected 2 lines",
    ]
    progress = result.stderr.strip().splitlines()
    assert progress and progress[-1].startswith("insider: 99,998 stored, 2 rejected (")
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT recipient_phone) FROM messages").fetchone() == (
            99_998,
            99_998,
        )


def test_checked_in_worker_processes_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    lines = [f"+90530{i:07d},m{i}" if i % 1000 else f"bad{i},m{i}" for i in range(1, 5001)]
    path.write_text("to,content\n" + "\n".join(lines) + "\n", encoding="utf-8")
    result = run("--file", str(path), "--workers", "2", "--chunk-size", "700", cwd=tmp_path)

    assert result.returncode == 1
    rejected = [line for line in result.stdout.splitlines() if line.startswith("rejected")]
    assert [line.split(":")[0] for line in rejected] == [f"rejected line {i + 1}" for i in range(1000, 5001, 1000)]
    assert result.stdout.splitlines()[-1] == "stored 4995 messages, rejected 5 lines"
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (4995,)


def test_json_lines_from_stdin_with_national_numbers(tmp_path: Path) -> None:
    lines = [
        '{"to": "0530 123 40 01", "content": "Merhaba", "priority": 9, "sendAt": "2030-01-01T09:00:00+03:00"}',
        '{"to": "+15555550100", "content": "Hello 😀"}',
    ]
    result = run("--file", "-", cwd=tmp_path, stdin="\n".join(lines) + "\n", default_region="TR")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stored 2 messages, rejected 0 lines"
    assert rows(tmp_path / "insider.db") == [
        ("+905301234001", "Merhaba", 9, "2030-01-01T06:00:00.000000Z"),
        ("+15555550100", "Hello 😀", 5, None),
    ]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("phone,text\n+905301234001,x\n", "the CSV header must name the columns to,content"),
        (b"to,content\n+905301234001,caf\xe9\n", "is not UTF-8 text"),
    ],
)
def test_an_unreadable_file_is_one_line_and_exit_1(content: str | bytes, complaint: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    result = run("--file", str(path), cwd=tmp_path)

    assert result.returncode == 1
    assert complaint in result.stderr.strip().splitlines()[-1]


def test_a_missing_file(tmp_path: Path) -> None:
    result = run("--file", str(tmp_path / "none.csv"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"insider: error: cannot read {tmp_path / 'none.csv'}: No such file or directory"


@pytest.mark.postgres
def test_into_postgresql_with_copy(fresh_postgres_url: str, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "to,content,priority\n" + "".join(f"+90530{i:07d},m{i},{i % 10}\n" for i in range(30_000)), encoding="utf-8"
    )
    result = run("--file", str(path), "--chunk-size", "7000", cwd=tmp_path, database_url=fresh_postgres_url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stored 30000 messages, rejected 0 lines"
    with psycopg.connect(fresh_postgres_url) as conn:
        row = conn.execute("SELECT count(*), min(priority), max(priority), count(segments) FROM messages").fetchone()
    assert row == (30_000, 0, 9, 30_000)
