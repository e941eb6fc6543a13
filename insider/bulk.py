"""Bulk enqueue from a file: CSV with a header, or JSON Lines; each line checked as the API checks a message."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import multiprocessing
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from insider.domain import DEFAULT_PRIORITY, InvalidMessage, NewMessage, build_message, parse_rfc3339
from insider.ports import Intake

COLUMNS: Final = ("to", "content", "sendAt", "priority", "validUntil")
REQUIRED: Final = ("to", "content")


class BadFile(ValueError):
    """A file that cannot be read as messages at all (no header, unknown columns)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """One line that was not stored, and why."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What a message is checked against (the INSIDER_* settings)."""

    max_length: int
    region: str = ""
    max_segments: int = 0


def _records(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str, bool]]:
    """(line number, fields, from CSV) per record, or (line number, why it cannot be read, ...)."""
    first = stream.readline()
    while first and not first.strip():
        first = stream.readline()
    if not first:
        return
    if first.lstrip().startswith("{"):
        for number, record in _json_lines(first, stream):
            yield number, record, False
    else:
        for number, record in _csv(first, stream):
            yield number, record, True


def _json_lines(first: str, stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    number = 0
    for line in _chain(first, stream):
        number += 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield number, f"not valid JSON ({exc})"
            continue
        if not isinstance(record, dict):
            yield number, "not a JSON object"
            continue
        yield number, record


def _chain(first: str, stream: TextIO) -> Iterator[str]:
    yield first
    yield from stream


def _csv(first: str, stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    header = next(csv.reader([first]))
    header = [name.strip() for name in header]
    unknown = [name for name in header if name not in COLUMNS]
    missing = [name for name in REQUIRED if name not in header]
    if unknown or missing or len(set(header)) != len(header):
        raise BadFile(
            f"the CSV header must name the columns to,content[,sendAt,priority,validUntil]; got {','.join(header)}"
        )
    reader = csv.reader(_chain(first, stream))
    next(reader)  # the header again, so that line_num counts from the file's first line
    lines_before = reader.line_num
    for row in reader:
        number = lines_before + 1  # the record's first physical line
        lines_before = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            yield number, f"expected {len(header)} fields, got {len(row)}"
            continue
        yield number, dict(zip(header, row, strict=True))


def _message(record: dict[str, Any], limits: Limits, now: datetime, csv_text: bool) -> NewMessage:
    unknown = [name for name in record if name not in COLUMNS]
    if unknown:
        raise InvalidMessage(unknown[0], f"{unknown[0]} is not a field (to, content, sendAt, priority, validUntil)")
    for name in REQUIRED:
        if not isinstance(record.get(name), str):
            raise InvalidMessage(name, f"{name} is missing" if record.get(name) is None else f"{name} must be a string")
    times: dict[str, datetime | None] = {}
    for name in ("sendAt", "validUntil"):
        value = record.get(name)
        if value is None or (csv_text and value == ""):
            times[name] = None
            continue
        try:
            times[name] = parse_rfc3339(value)
        except ValueError as exc:
            raise InvalidMessage(name, f"{name} {exc}") from None
    priority: Any = record.get("priority")
    if priority is None or (csv_text and priority == ""):
        priority = DEFAULT_PRIORITY
    elif csv_text:
        try:
            priority = int(priority.strip())
        except ValueError:
            raise InvalidMessage("priority", "priority must be a whole number from 0 to 9") from None
    return build_message(
        record["to"],
        record["content"],
        send_at=times["sendAt"],
        priority=priority,
        valid_until=times["validUntil"],
        now=now,
        max_length=limits.max_length,
        region=limits.region,
        max_segments=limits.max_segments,
    )


Record = tuple[int, "dict[str, Any] | str", bool]
Checked = tuple[list[NewMessage], list[Rejected]]


def read_records(stream: TextIO, *, chunk_size: int = 10_000) -> Iterator[list[Record]]:
    """The file's records (line number, fields or why unreadable, from CSV), in chunks, unchecked.

    Raises BadFile before anything when the CSV header is not usable.
    """
    chunk: list[Record] = []
    for record in _records(stream):
        chunk.append(record)
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_records(records: list[Record], limits: Limits, now: datetime) -> Checked:
    """The messages of ``records`` checked as the API checks them, and the lines rejected."""
    messages: list[NewMessage] = []
    rejected: list[Rejected] = []
    for number, record, from_csv in records:
        if isinstance(record, str):
            rejected.append(Rejected(number, "line", record))
            continue
        try:
            messages.append(_message(record, limits, now, csv_text=from_csv))
        except InvalidMessage as exc:
            rejected.append(Rejected(number, exc.field, str(exc).replace("recipient_phone", "to")))
    return messages, rejected


def read_messages(
    stream: TextIO, limits: Limits, *, chunk_size: int = 10_000, now: datetime | None = None
) -> Iterator[Checked]:
    """The file's messages in chunks of up to ``chunk_size`` lines, each with the lines rejected in it.

    Raises BadFile before anything when the CSV header is not usable.
    """
    when = now or datetime.now(UTC)
    for records in read_records(stream, chunk_size=chunk_size):
        yield check_records(records, limits, when)


async def _checked_chunks(stream: TextIO, limits: Limits, chunk_size: int, workers: int) -> AsyncIterator[Checked]:
    """The checked chunks of ``stream`` in file order, read (and checked) off the event loop."""
    now = datetime.now(UTC)
    records = read_records(stream, chunk_size=chunk_size)
    if workers <= 0:
        while (chunk := await asyncio.to_thread(next, records, None)) is not None:
            yield await asyncio.to_thread(check_records, chunk, limits, now)
        return
    loop = asyncio.get_running_loop()
    # spawn, not fork: the parent has threads (the reader, the database's) that fork would copy half-way.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[asyncio.Future[Checked]] = deque()
        while True:
            while len(pending) < 2 * workers:
                chunk = await asyncio.to_thread(next, records, None)
                if chunk is None:
                    break
                pending.append(loop.run_in_executor(pool, check_records, chunk, limits, now))
            if not pending:
                return
            yield await pending.popleft()


def open_text(path: str) -> TextIO:
    """The file at ``path`` (``-``: standard input) as UTF-8 text; a BOM is skipped."""
    import sys

    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a load is: stored so far, and the lines rejected in the last chunk."""

    stored: int
    rejected: list[Rejected]


async def load_file(
    repository: Intake,
    stream: TextIO,
    limits: Limits,
    *,
    chunk_size: int = 10_000,
    in_flight: int = 2,
    workers: int = 0,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[int, int]:
    """Store every valid message of ``stream``; returns (stored, rejected).

    Lines are read on a worker thread and checked there (``workers`` 0) or in that many
    processes (libphonenumber is pure Python: the check is most of the work), while up to
    ``in_flight`` chunks are being stored (each one COPY on PostgreSQL, in its own
    transaction). Chunks are reported in file order. A chunk is stored whole or not at
    all; on a database error the chunks not yet stored are not tried.
    """
    checked = _checked_chunks(stream, limits, chunk_size, workers)
    slots = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[int]] = set()
    stored = rejected = 0
    failure: BaseException | None = None

    def stored_one(task: asyncio.Task[int]) -> None:
        nonlocal stored, failure
        slots.release()
        tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            failure = failure or task.exception()
            return
        stored += task.result()
        if on_progress is not None:
            on_progress(Progress(stored, []))

    try:
        while failure is None:
            item = await anext(checked, None)
            if item is None:
                break
            chunk, bad = item
            rejected += len(bad)
            if bad and on_progress is not None:
                on_progress(Progress(stored, bad))
            if not chunk:
                continue
            await slots.acquire()
            task = asyncio.create_task(repository.load(chunk))
            tasks.add(task)
            task.add_done_callback(stored_one)
        if tasks:
            await asyncio.wait(set(tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    if failure is not None:
        raise failure
    return stored, rejected
