"""The suppressions command: the suppression list imported from CSV (the good lines in one transaction), or exported."""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from insider.cli.process import EXIT_FAILED, database_down, say, schema_refused
from insider.config import Settings
from insider.container import Container, open_repository
from insider.domain import InvalidMessage, parse_rfc3339
from insider.file_records import BadFile, FileReader, FileSource
from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused
from insider.suppressions import DEFAULT_REASON, DEFAULT_SCOPE, NewSuppression, check_suppression

# What an export writes and an import reads back (an import needs only ``to``).
COLUMNS: Final = ("to", "scope", "reason", "source", "createdAt")
REQUIRED: Final = ("to",)
SOURCE: Final = "import"  # an imported entry's source when its line names none
PAGE: Final = 500


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``suppressions import FILE`` or ``suppressions export [FILE]``; the exit code (usage errors exit with 2)."""
    if args.suppressions_command == "import":
        return asyncio.run(import_file(settings, args.file))
    if args.suppressions_command != "export":
        usage: argparse.ArgumentParser = args.suppressions_parser
        usage.error("say import FILE or export [FILE]")  # exits
    return asyncio.run(export_file(settings, args.file))


def _entry(record: dict[str, Any], region: str, now: datetime) -> NewSuppression:
    """One line's entry, checked as the API checks one; InvalidMessage names the bad field."""
    values = {name: value.strip() for name, value in record.items()}
    created_at = None
    if values.get("createdAt"):
        try:
            created_at = parse_rfc3339(values["createdAt"])
        except ValueError as exc:
            raise InvalidMessage("createdAt", f"createdAt {exc}") from None
    return check_suppression(
        values["to"],
        scope=values.get("scope") or DEFAULT_SCOPE,
        reason=values.get("reason") or DEFAULT_REASON,
        source=values.get("source") or SOURCE,
        region=region,
        created_at=created_at,
        now=now,
    )


def read_entries(stream: TextIO, region: str, now: datetime) -> tuple[list[NewSuppression], list[str], int]:
    """The good entries of a CSV file, one readable line per bad one (``line N: why``), and the lines read.

    Raises BadFile, before any entry, for a header that does not name the columns.
    """
    reader = FileReader(stream, columns=COLUMNS, required=REQUIRED, json_lines=False)
    entries: list[NewSuppression] = []
    rejected: list[str] = []
    for (number, record, _), _text in reader:
        if isinstance(record, str):
            rejected.append(f"line {number}: {record}")
            continue
        try:
            entries.append(_entry(record, region, now))
        except InvalidMessage as exc:
            rejected.append(f"line {number}: {exc}")
    return entries, rejected, reader.lines


async def import_file(settings: Settings, path: str) -> int:
    """Store every good line of the file in one transaction, printing each rejected line; 1 if any was rejected."""
    try:
        source = FileSource.open(path)
    except OSError as exc:
        say(f"insider: error: cannot read {path}: {exc.strerror or exc}")
        return EXIT_FAILED
    with source:
        try:
            entries, rejected, _ = await asyncio.to_thread(
                read_entries, source.text, settings.default_region, datetime.now(UTC)
            )
        except BadFile as exc:
            say(f"insider: error: {path}: {exc}")
            return EXIT_FAILED
    for line in rejected:
        print(f"rejected {line}", flush=True)
    async with open_repository(Container(settings=settings)) as repository:
        try:
            await repository.migrate()
            result = await repository.suppress_many(entries)
        except RepositoryUnavailable as exc:
            say(f"insider: error: database unavailable, nothing of {path} was stored: {exc}")
            return EXIT_FAILED
        except SchemaUpgradeRefused as exc:
            return schema_refused(exc)
    stored = result.added + result.updated
    print(f"stored {stored} numbers ({result.added} added, {result.updated} updated), rejected {len(rejected)} lines")
    return EXIT_FAILED if rejected else 0


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _output(path: str) -> AbstractContextManager[TextIO]:
    if path == "-":
        return nullcontext(sys.stdout)
    return open(path, "w", encoding="utf-8", newline="")


async def _pages(settings: Settings) -> tuple[list[list[str]], int | None]:
    """Every entry of the list as an export row (most recent first); or the exit code of a failure."""
    rows: list[list[str]] = []
    async with open_repository(Container(settings=settings)) as repository:
        try:
            await repository.migrate()
            cursor = None
            while True:
                page = await repository.list_suppressions(PAGE, cursor)
                rows += [[s.phone, s.scope.value, s.reason, s.source, s.created_at.isoformat()] for s in page.items]
                if page.next_cursor is None:
                    return rows, None
                cursor = page.next_cursor
        except RepositoryUnavailable as exc:
            return rows, database_down(settings.database_url, exc)
        except SchemaUpgradeRefused as exc:
            return rows, schema_refused(exc)


async def export_file(settings: Settings, path: str) -> int:
    """Write the whole list as CSV (header ``to,scope,reason,source,createdAt``) to ``path`` (``-``: stdout)."""
    rows, failed = await _pages(settings)
    if failed is not None:
        return failed
    try:
        with _output(path) as out:
            _write(out, rows)
    except OSError as exc:
        say(f"insider: error: cannot write {path}: {exc.strerror or exc}")
        return EXIT_FAILED
    say(f"insider: exported {_count(len(rows), 'number')}" + ("" if path == "-" else f" to {path}"))
    return 0


def _write(out: TextIO, rows: list[list[str]]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    out.flush()
