"""``python -m insider enqueue --file`` as a subprocess: CSV and JSON Lines, stdin, large files, on SQLite
and on PostgreSQL (COPY)."""

from __future__ import annotations

import contextlib
import re
import signal
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
    progress = [line for line in result.stderr.splitlines() if " ready, " in line]
    assert progress[-1].startswith("insider: 99,998 ready, 2 rejected (")
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
        (b"phone,text\n+905301234001,x\n", "the CSV header must name the columns to,content"),
        (b"to,caf\xe9\n+905301234001,x\n", "the CSV header is not valid UTF-8 text (byte 0xe9 at character 7)"),
    ],
)
def test_an_unreadable_file_is_one_line_and_exit_1(content: bytes, complaint: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
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


# --- Bad lines anywhere, a load killed half-way, the same file twice, the rejected lines fixed -------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'insider.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


def count(database_url: str, sql: str = "SELECT count(*), count(DISTINCT content) FROM messages") -> tuple[int, ...]:
    if database_url.startswith("sqlite:///"):
        db = Path(database_url.removeprefix("sqlite:///"))
        if not db.exists():
            return (0, 0)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return tuple(conn.execute(sql).fetchone())
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return tuple(row)


def campaign(path: Path, lines: int, bad: dict[int, bytes] | None = None) -> int:
    """A CSV of ``lines`` messages (line numbers from 2), with the ``bad`` lines in place of some; how many are good."""
    bad = bad or {}
    with path.open("wb") as f:
        f.write(b"to,content,sendAt\n")
        for number in range(2, lines + 2):
            f.write(bad.get(number, b"+9053%08d,Kampanya %d,\n" % (number, number)))
    return lines - len(bad)


def test_bad_lines_scattered_in_a_large_file_are_each_rejected_and_the_rest_is_stored_once(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "campaign.csv"
    good = campaign(
        path,
        60_000,
        {
            2: b"+905300000002,first line,9999-12-31T23:59:59-14:00\n",
            10_000: b'+905300010000,"an unclosed quote,\n',
            20_000: b"+905300020000,caf\xe9,\n",
            30_000: b"+905300030000,early,0001-01-01T00:00:00+14:00\n",
            40_000: b'+905300040000,"a ""stray"" quote"here,\n',
            50_002: b"+905300050002," + b"x" * 200_000 + b",\n",
            60_001: b'+905300060001,"the last line opens a quote',  # and the file ends in it
        },
    )
    result = run("--file", str(path), cwd=tmp_path, database_url=database_url)

    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "rejected line 2: sendAt must be from 1000-01-01T00:00:00Z to 9999-12-31T23:59:59Z in UTC",
        "rejected line 10000: a quoted field runs over 4,370 lines to more than 131,072 characters: "
        "is a quote not closed?",
        "rejected line 20000: not valid UTF-8 text (byte 0xe9 at character 18)",
        "rejected line 30000: sendAt must be from 1000-01-01T00:00:00Z to 9999-12-31T23:59:59Z in UTC",
        "rejected line 40000: a quoted field must end with a quote before the next comma "
        '(a quote inside it is written "")',
        "rejected line 50002: a field is longer than 131,072 characters",
        "rejected line 60001: a quoted field opens here and is not closed before the end of the file",
        f"stored {good} messages, rejected 7 lines",
    ]
    assert count(database_url) == (good, good)


def test_json_lines_with_bad_lines_scattered(tmp_path: Path, database_url: str) -> None:
    lines = [b'{"to": "+9053%08d", "content": "m%d"}\n' % (i, i) for i in range(1, 5001)]
    lines[0] = b'{"to": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"  # nested far too deep
    lines[2499] = b'{"to": "+905300002500", "content": "caf\xe9"}\n'
    lines[2500] = b'{"to": "+905300002501", "content": "x", "validUntil": "9999-12-31T23:59:59-14:00"}\n'
    lines[4999] = b'{"to": "+905300005000", "content": "unterminated'
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(lines))
    result = run("--file", str(path), cwd=tmp_path, database_url=database_url)

    assert result.returncode == 1, result.stderr
    rejected = [line.split(": ", 1) for line in result.stdout.splitlines()[:-1]]
    assert [number for number, _ in rejected] == [
        "rejected line 1",
        "rejected line 2500",
        "rejected line 2501",
        "rejected line 5000",
    ]
    assert rejected[0][1].startswith("not valid JSON (depth limit exceeded")
    assert rejected[1][1] == "not valid UTF-8 text (byte 0xe9 at character 40)"
    assert rejected[2][1] == "validUntil must be from 1000-01-01T00:00:00Z to 9999-12-31T23:59:59Z in UTC"
    assert rejected[3][1].startswith("not valid JSON")
    assert result.stdout.splitlines()[-1] == "stored 4996 messages, rejected 4 lines"
    assert count(database_url) == (4996, 4996)


def test_a_load_killed_half_way_stores_nothing_and_the_same_command_then_stores_every_line_once(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "campaign.csv"
    good = campaign(path, 120_000)
    command = [sys.executable, "-m", "insider", "enqueue", "--file", str(path), "--chunk-size", "5000"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=service_env(database_url=database_url), stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # a progress line per chunk; the test's own timeout bounds the wait
            found = re.match(r"insider: ([\d,]+) (?:ready|stored)", line)
            if found and int(found.group(1).replace(",", "")) >= 40_000:
                break
        else:
            pytest.fail(f"the load ended before it was killed: {process.wait()}")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    assert count(database_url)[0] == 0  # all or nothing: nothing of the killed load
    result = run("--file", str(path), cwd=tmp_path, database_url=database_url)
    assert (result.returncode, result.stdout.strip()) == (0, f"stored {good} messages, rejected 0 lines")
    assert count(database_url) == (good, good)


def test_the_same_file_twice_is_refused_with_one_line_unless_again(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "campaign.csv"
    good = campaign(path, 3000)
    first = run("--file", str(path), cwd=tmp_path, database_url=database_url)
    assert (first.returncode, first.stdout.strip()) == (0, f"stored {good} messages, rejected 0 lines")

    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())
    for again in (
        run("--file", str(path), cwd=tmp_path, database_url=database_url),
        run("--file", "-", cwd=tmp_path, stdin=path.read_text(), database_url=database_url),
        run("--file", str(copy), cwd=tmp_path, database_url=database_url),
    ):
        assert again.returncode == 1
        [line] = [line for line in again.stderr.splitlines() if line.startswith("insider: error: ")]
        assert re.fullmatch(
            r"insider: error: .+ was loaded on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC( as .+campaign\.csv)? "
            r"\(3,000 stored, 0 rejected\), so nothing was stored now; to queue its messages once more, add --again",
            line,
        ), line
    assert count(database_url)[0] == good

    forced = run("--file", str(copy), "--again", cwd=tmp_path, database_url=database_url)
    assert (forced.returncode, forced.stdout.strip()) == (0, f"stored {good} messages, rejected 0 lines")
    assert count(database_url) == (2 * good, good)
    assert count(database_url, "SELECT loads FROM insider_file_loads") == (2,)


def test_the_rejected_lines_written_fixed_and_loaded_alone_complete_the_file_once(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "campaign.csv"
    lines = 10_000
    campaign(
        path,
        lines,
        {
            3: b"nope,Kampanya 3,\n",
            500: b'+905300000500,"Kampanya\n',  # an unclosed quote: line 501 is read on its own
            7000: b"+905300007000,Kampanya 7000,9999-12-31T23:59:59-14:00\n",
            9000: b"+905300009000,Kampanya 9000\n",
        },
    )
    rejects = tmp_path / "rejected.csv"
    first = run("--file", str(path), "--rejects", str(rejects), cwd=tmp_path, database_url=database_url)
    assert first.returncode == 1
    assert first.stdout.splitlines()[-1] == f"stored {lines - 4} messages, rejected 4 lines"
    assert f"insider: the 4 rejected lines are in {rejects}: fix them there and load that file alone" in first.stderr
    assert rejects.read_bytes() == (
        b"to,content,sendAt\n"
        b"nope,Kampanya 3,\n"
        b'+905300000500,"Kampanya\n'
        b"+905300007000,Kampanya 7000,9999-12-31T23:59:59-14:00\n"
        b"+905300009000,Kampanya 9000\n"
    )

    fixed = (
        rejects.read_bytes()
        .replace(b"nope", b"+905300000003")
        .replace(b'"Kampanya\n', b"Kampanya 500,\n")
        .replace(b"9999-12-31T23:59:59-14:00", b"")
        .replace(b"Kampanya 9000\n", b"Kampanya 9000,\n")
    )
    rejects.write_bytes(fixed)
    second = run("--file", str(rejects), cwd=tmp_path, database_url=database_url)
    assert (second.returncode, second.stdout.strip()) == (0, "stored 4 messages, rejected 0 lines")
    assert count(database_url) == (lines, lines)


def test_check_writes_the_rejected_lines_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "campaign.csv"
    campaign(path, 100, {50: b"nope,x,\n"})
    rejects = tmp_path / "rejected.csv"
    result = run("--file", str(path), "--check", "--rejects", str(rejects), cwd=tmp_path)
    assert result.stdout.splitlines() == [
        "rejected line 50: to is not a possible phone number (not a phone number)",
        "checked 99 messages (nothing stored), rejected 1 lines",
    ]
    assert rejects.read_bytes() == b"to,content,sendAt\nnope,x,\n"
    assert not (tmp_path / "insider.db").exists()
