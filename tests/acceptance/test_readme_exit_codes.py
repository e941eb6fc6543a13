"""The exit codes and error lines the README names, read from the README and produced by the CLI."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from insider.cli.process import EXIT_FAILED, EXIT_SCHEMA, EXIT_USAGE
from tests.acceptance.conftest import service_env
from tests.original_service import build_original_database
from tests.readme_text import code_spans, section

Run = Callable[[Path, pytest.FixtureRequest], subprocess.CompletedProcess[str]]


def run(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insider", *args],
        cwd=cwd,
        env=service_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


UNOPENABLE = "sqlite:///no/such/directory/insider.db"  # "a SQLite file that cannot be opened" = database down


def _port_taken(cwd: Path, request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        return run(cwd=cwd, port=str(taken.getsockname()[1]), host="127.0.0.1")


def _unupgradable(cwd: Path, request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    """The original Go service's table with a row insider cannot take (no content), on PostgreSQL."""
    database_url = request.getfixturevalue("fresh_postgres_url")
    build_original_database(database_url, pending=1, sent=0, failed=0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE messages ALTER COLUMN content DROP NOT NULL")
        conn.execute("INSERT INTO messages (recipient_phone, content) VALUES ('+15555550100', NULL)")
    return run("migrate", cwd=cwd, database_url=database_url)


# The README's exit code -> each reason it gives for it -> how the CLI gets there.
EXIT_RECIPES: dict[int, dict[str, Run]] = {
    0: {"done": lambda cwd, _: run("migrate", cwd=cwd)},
    1: {
        "database unavailable": lambda cwd, _: run("migrate", cwd=cwd, database_url=UNOPENABLE),
        "port taken": _port_taken,
        "invalid message": lambda cwd, _: run("enqueue", "--to", "12", "--content", "x", cwd=cwd),
    },
    2: {
        "bad usage": lambda cwd, _: run("enqueue", "--to", "+15555550100", cwd=cwd),
        "a bad setting": lambda cwd, _: run("migrate", cwd=cwd, send_interval="soon"),
    },
    3: {"a database that cannot be upgraded": _unupgradable},
}


def documented_exit_codes() -> dict[int, str]:
    text = " ".join(section("Commands").split())
    listed = re.search(r"Exit codes: (.*?)\.(?: |$)", text)
    assert listed is not None, "README's Commands section no longer lists the exit codes"
    codes = {}
    for part in listed.group(1).split("; "):
        match = re.fullmatch(r"(\d+) (.+)", part.strip())
        assert match is not None, f"cannot read an exit code in {part!r}"
        codes[int(match.group(1))] = match.group(2)
    return codes


def test_the_readme_lists_the_exit_codes_the_cli_uses() -> None:
    documented = documented_exit_codes()
    assert set(documented) == set(EXIT_RECIPES) == {0, EXIT_FAILED, EXIT_USAGE, EXIT_SCHEMA}
    for code, reasons in EXIT_RECIPES.items():
        for reason in reasons:
            assert reason in documented[code], f"README gives exit {code} for {documented[code]!r}, not {reason!r}"


CASES = [(code, reason) for code, reasons in EXIT_RECIPES.items() for reason in reasons]


@pytest.mark.parametrize(("code", "reason"), CASES, ids=[f"{c}-{r}" for c, r in CASES])
def test_each_exit_code_for_each_documented_reason(
    code: int, reason: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    result = EXIT_RECIPES[code][reason](tmp_path, request)

    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if code == EXIT_USAGE and reason == "bad usage":
        assert "usage: python -m insider" in result.stderr  # "with a usage line"
    elif code != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("insider: error: ")]
        assert len(errors) == 1, result.stderr  # one readable line


def test_the_bad_setting_line_is_the_one_the_readme_shows(tmp_path: Path) -> None:
    text = " ".join(section("Configuration").split())
    shown = re.search(r"one line naming the variable \((`[^`]+`)\) and exit code (\d)", text)
    assert shown is not None, "README's Configuration section no longer shows the bad-setting line"
    [line] = code_spans(shown.group(1))
    variable, value = re.fullmatch(r"insider: error: (INSIDER_\w+): .*got '(.*)'", line).groups()  # type: ignore[union-attr]

    result = run("migrate", cwd=tmp_path, **{variable.removeprefix("INSIDER_").lower(): value})

    assert result.returncode == int(shown.group(2))
    assert result.stderr.strip() == line


def test_enqueue_errors_are_one_line_with_the_code_the_readme_gives(tmp_path: Path) -> None:
    text = " ".join(section("Commands").split())
    said = re.search(
        r"An invalid message .*?or a database that does not answer: one line on stderr.*?, exit code (\d)", text
    )
    assert said is not None, "README's enqueue paragraph changed: update this test"
    for result in (
        run("enqueue", "--to", "+15555550100", "--content", "", cwd=tmp_path),
        run("enqueue", "--to", "+15555550100", "--content", "x", cwd=tmp_path, database_url=UNOPENABLE),
    ):
        assert result.returncode == int(said.group(1))
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
