"""The command line as a subprocess: help for every command, usage errors, enqueue and migrate on SQLite."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import service_env

COMMANDS = ("serve", "migrate", "enqueue", "simulate")


def run(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insider", *args],
        cwd=cwd,
        env=service_env(**settings),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m insider")
    for command in COMMANDS:
        assert f"    {command} " in result.stdout
    assert "(the default)" in result.stdout
    assert list(tmp_path.iterdir()) == []  # help touches nothing


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, tmp_path: Path) -> None:
    result = run(command, "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m insider {command}")


def test_simulate_help_names_its_options(tmp_path: Path) -> None:
    out = run("simulate", "--help", cwd=tmp_path).stdout
    for option in ("--port", "--host", "--fail-rate", "--latency", "--rate-limit-rate", "--retry-after", "--auth-key"):
        assert option in out
    for option in ("--dlr-url", "--dlr-token", "--dlr-delay", "--undelivered-rate"):
        assert option in out
    for option in ("--smpp-port", "--smpp-system-id", "/smsc/down"):
        assert option in out


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("bogus",), "invalid choice: 'bogus'"),
        (("--bogus",), "unrecognized arguments: --bogus"),
        (("enqueue", "--to", "+905301234001"), "--to and --content are required (or --file)"),
        (("enqueue", "--file", "x.csv", "--to", "+905301234001"), "--file goes without --to and --content"),
        (("enqueue", "--priority", "high"), "argument --priority: invalid int value"),
        (("enqueue",), "--to and --content are required (or --file)"),
        (("simulate", "--fail-rate", "2"), "expected a fraction from 0 to 1, got '2'"),
        (("simulate", "--latency", "soon"), "argument --latency"),
        (("simulate", "--port", "99999"), "expected a port from 0 to 65535"),
        (("simulate", "--dlr-url", "ftp://x/y"), "expected an http:// or https:// URL, got 'ftp://x/y'"),
        (("simulate", "--dlr-url", "app:8080"), "argument --dlr-url"),
        (("simulate", "--undelivered-rate", "1.5"), "expected a fraction from 0 to 1, got '1.5'"),
        (("simulate", "--dlr-delay", "5s-1s"), "expected SHORTEST-LONGEST, got '5s-1s'"),
        (("simulate", "--dlr-delay", "later"), "argument --dlr-delay"),
        (("simulate", "--smpp-port", "0"), "the SMSC cannot report a port chosen for it"),
        (("migrate", "extra"), "unrecognized arguments: extra"),
    ],
)
def test_bad_arguments_give_a_usage_line_and_exit_2(args: tuple[str, ...], complaint: str, tmp_path: Path) -> None:
    result = run(*args, cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage: python -m insider")
    assert lines[-1].startswith("python -m insider") and complaint in lines[-1]
    assert result.stdout == ""


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "insider 0.1.0")


def test_enqueue_stores_a_pending_message_and_prints_its_id(tmp_path: Path) -> None:
    first = run("enqueue", "--to", "+905301234001", "--content", "Merhaba dünya", cwd=tmp_path)
    second = run("enqueue", "--to", "+905301234002", "--content", "İkinci", cwd=tmp_path)

    assert (first.returncode, first.stdout, first.stderr) == (0, "1\n", "")
    assert (second.returncode, second.stdout) == (0, "2\n")
    # The default database: a SQLite file in the working directory.
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn:
        rows = conn.execute(
            "SELECT id, recipient_phone, content, status, attempts FROM messages ORDER BY id"
        ).fetchall()
    assert rows == [(1, "+905301234001", "Merhaba dünya", "pending", 0), (2, "+905301234002", "İkinci", "pending", 0)]


def test_enqueue_goes_to_the_configured_database(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    result = run("enqueue", "--to", "+905301234001", "--content", "x", cwd=tmp_path, database_url=f"sqlite:///{target}")

    assert result.returncode == 0, result.stderr
    assert target.is_file() and not (tmp_path / "insider.db").exists()


NO_COUNTRY_CODE = "(no country code: write it as +<country code>...)"


@pytest.mark.parametrize(
    ("to", "content", "error"),
    [
        (
            "12345",
            "x",
            "insider: error: invalid message: to is not a possible phone number " + NO_COUNTRY_CODE,
        ),
        ("+905301234001", "   ", "insider: error: invalid message: content is empty"),
        (
            "+905301234001",
            "é" * 161,
            "insider: error: invalid message: content is 161 characters, over the limit of 160"
            " (INSIDER_CONTENT_MAX_LENGTH)",
        ),
    ],
)
def test_enqueue_validates_like_the_api(to: str, content: str, error: str, tmp_path: Path) -> None:
    result = run("enqueue", "--to", to, "--content", content, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [error]
    assert result.stdout == ""
    assert not (tmp_path / "insider.db").exists()  # refused before the database is touched


def test_enqueue_follows_the_content_limit_setting(tmp_path: Path) -> None:
    result = run("enqueue", "--to", "+905301234001", "--content", "123456", cwd=tmp_path, content_max_length="5")

    assert result.returncode == 1
    assert "over the limit of 5" in result.stderr


def test_enqueue_to_a_database_that_cannot_be_opened_fails_with_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'insider.db'}"
    result = run("enqueue", "--to", "+905301234001", "--content", "x", cwd=tmp_path, database_url=url)

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"insider: error: the database does not answer (INSIDER_DATABASE_URL={url}): ")
    assert "unable to open database file" in line


def test_a_bad_setting_stops_any_command_with_exit_2(tmp_path: Path) -> None:
    result = run("enqueue", "--to", "+905301234001", "--content", "x", cwd=tmp_path, database_url="mysql://db/x")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "insider: error: INSIDER_DATABASE_URL: expected a URL starting with postgresql:// or postgres:// or sqlite://"
    ]


def test_migrate_creates_the_sqlite_schema(tmp_path: Path) -> None:
    result = run("migrate", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stderr
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # The statement the original Go service's users run works on it.
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status) "
            "VALUES ('+905301234001', 'Message content 1', 'pending')"
        )
    assert {"messages", "insider_slots", "insider_schema_migrations"} <= tables
    assert run("migrate", cwd=tmp_path).returncode == 0  # again: nothing to do


def run_bytes(args: list[bytes], cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The command with raw bytes for arguments and stdin, as a shell would pass them."""
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"insider", *args],
        cwd=cwd,
        env=service_env(),
        input=stdin,
        capture_output=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "stdin", "complaint"),
    [
        ([b"--to", b"+905301234001", b"--content", b"caf\xe9"], b"", b"content is not valid UTF-8 text"),
        ([b"--to", b"+90530\xff1234001", b"--content", b"x"], b"", b"to is not valid UTF-8 text"),
        ([b"--to", b"+905301234001", b"--content", b"-"], b"\xff\xfe broken\n", b"stdin is not valid UTF-8"),
        ([b"--to", b"+905301234001", b"--content", b"-"], b"a\x00b", b"content must not contain NUL"),
    ],
)
def test_enqueue_with_text_that_is_not_utf8_says_so_in_one_line(
    tmp_path: Path, args: list[bytes], stdin: bytes, complaint: bytes
) -> None:
    result = run_bytes([b"enqueue", *args], tmp_path, stdin)

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(b"insider: error: invalid message: ") and complaint in line
    assert result.stdout == b""


def test_enqueue_reads_the_content_from_stdin(tmp_path: Path) -> None:
    result = run_bytes(
        [b"enqueue", b"--to", b"+905301234001", b"--content", b"-"], tmp_path, "Merhaba dünya\n".encode()
    )

    assert result.returncode == 0, result.stderr
    with contextlib.closing(sqlite3.connect(tmp_path / "insider.db")) as conn:
        [(content,)] = conn.execute("SELECT content FROM messages").fetchall()
    assert content == "Merhaba dünya"


def test_a_content_over_the_limit_names_the_setting(tmp_path: Path) -> None:
    result = run("enqueue", "--to", "+905301234001", "--content", "x" * 200, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().endswith("(INSIDER_CONTENT_MAX_LENGTH)")


@pytest.mark.parametrize("value", ["lean", "aiohttp"])
def test_the_removed_webhook_client_setting_gives_one_warning_and_does_not_stop(value: str, tmp_path: Path) -> None:
    result = run("migrate", cwd=tmp_path, webhook_client=value)

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "INSIDER_WEBHOOK_CLIENT" in line]
    assert len(warnings) == 1
    assert "INSIDER_WEBHOOK_CLIENT is ignored: the setting was removed" in warnings[0]


def test_a_proxy_aiohttp_cannot_use_stops_serve_with_one_line(tmp_path: Path) -> None:
    env = service_env(webhook_url="https://provider.test/hook")
    env.update(HTTPS_PROXY="https://proxy.internal:3128")
    for name in ("https_proxy", "NO_PROXY", "no_proxy"):
        env.pop(name, None)

    result = subprocess.run(
        [sys.executable, "-m", "insider"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "insider: error: HTTPS_PROXY: expected a proxy URL like http://host:3128, got 'https://proxy.internal:3128'"
    ]
