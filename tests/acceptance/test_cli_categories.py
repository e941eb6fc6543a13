"""A message's category from the command line as a subprocess: ``enqueue --category`` and the
``category`` column of ``enqueue --file`` (CSV and JSON Lines; SQLite and PostgreSQL's COPY)."""

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
        timeout=120,
    )


def categories(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT content, category FROM messages ORDER BY id").fetchall()


def test_enqueue_takes_a_category_transactional_by_default(tmp_path: Path) -> None:
    sale = run("--to", "+905301234001", "--content", "Sale", "--category", "commercial", cwd=tmp_path)
    code = run("--to", "+905301234001", "--content", "Code 1234", cwd=tmp_path)

    assert (sale.returncode, sale.stdout, sale.stderr) == (0, "1\n", "")
    assert (code.returncode, code.stdout) == (0, "2\n")
    assert categories(tmp_path / "insider.db") == [("Sale", "commercial"), ("Code 1234", "transactional")]


def test_enqueue_with_a_bad_category_is_one_line(tmp_path: Path) -> None:
    result = run("--to", "+905301234001", "--content", "x", "--category", "promo", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "insider: error: invalid message: category must be transactional or commercial"
    ]
    assert not (tmp_path / "insider.db").exists()  # refused before the database is touched


def test_the_help_names_the_category(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert "--category" in result.stdout and "commercial" in result.stdout
    assert "sendAt,priority,validUntil,category" in " ".join(result.stdout.split())


def test_a_csv_column_category_with_a_bad_line_rejected_by_number(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "to,content,category\n"
        "+905301234001,a,commercial\n"
        "+905301234001,b,\n"
        "+905301234001,c,promo\n"
        "+905301234001,d, transactional \n",
        encoding="utf-8",
    )
    result = run("--file", str(path), cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [
        "rejected line 4: category must be transactional or commercial",
        "stored 3 messages, rejected 1 lines",
    ]
    assert categories(tmp_path / "insider.db") == [("a", "commercial"), ("b", "transactional"), ("d", "transactional")]


def test_json_lines_take_a_category(tmp_path: Path) -> None:
    lines = [
        '{"to": "+905301234001", "content": "a", "category": "commercial"}',
        '{"to": "+905301234001", "content": "b"}',
        '{"to": "+905301234001", "content": "c", "category": 7}',
    ]
    result = run("--file", "-", cwd=tmp_path, stdin="\n".join(lines) + "\n")

    assert result.returncode == 1
    assert "rejected line 3: category must be transactional or commercial" in result.stdout
    assert categories(tmp_path / "insider.db") == [("a", "commercial"), ("b", "transactional")]


@pytest.mark.postgres
def test_into_postgresql_with_copy_keeps_the_category(fresh_postgres_url: str, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "to,content,category\n"
        + "".join(f"+90530{i:07d},m{i},{'commercial' if i % 3 else 'transactional'}\n" for i in range(3000)),
        encoding="utf-8",
    )
    result = run("--file", str(path), "--chunk-size", "700", cwd=tmp_path, database_url=fresh_postgres_url)

    assert result.returncode == 0, result.stderr
    with psycopg.connect(fresh_postgres_url) as conn:
        found: dict[str, int] = dict(
            conn.execute("SELECT category, count(*) FROM messages GROUP BY category").fetchall()
        )
        counted: dict[str, int] = dict(
            conn.execute("SELECT category, n FROM insider_category_counts WHERE n > 0").fetchall()
        )
    assert found == counted == {"commercial": 2000, "transactional": 1000}


def test_enqueue_and_a_file_count_the_commercial_footer(tmp_path: Path) -> None:
    footer = {"commercial_footer": "Reply STOP to opt out"}  # 22 septets with its line break
    # 70 euro signs: 140 septets (an extension character takes two), 162 with the footer: two segments
    one = run("--to", "+905301234001", "--content", "€" * 70, "--category", "commercial", cwd=tmp_path, **footer)
    too_long = run("--to", "+905301234001", "--content", "a" * 140, "--category", "commercial", cwd=tmp_path, **footer)
    path = tmp_path / "m.csv"
    path.write_text(f"to,content,category\n+905301234001,{'a' * 130},commercial\n", encoding="utf-8")
    loaded = run("--file", str(path), cwd=tmp_path, **footer)

    assert one.returncode == 0, one.stderr
    assert too_long.returncode == 1
    assert too_long.stderr.strip().splitlines() == [
        "insider: error: invalid message: content is 162 characters, over the limit of 160 "
        "(with the commercial footer) (INSIDER_CONTENT_MAX_LENGTH)"
    ]
    assert loaded.returncode == 0, loaded.stdout
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn:
        stored = conn.execute("SELECT length(content), encoding, segments FROM messages ORDER BY id").fetchall()
    assert stored == [(70, "GSM-7", 2), (130, "GSM-7", 1)]
