"""Bulk enqueue from a file: CSV with a header, or JSON Lines; each line checked as the API checks a message.

A file is loaded whole or not at all (see :func:`load_file`); a bad line is rejected with its
number and why, and the load goes on.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

from insider.domain import DEFAULT_PRIORITY, Category, InvalidMessage, NewMessage, build_message, parse_rfc3339
from insider.file_records import (
    COLUMNS,
    REQUIRED,
    Chunk,
    FileReader,
    FileSource,
    Record,
    read_chunks,
)
from insider.ports import FileLoads, LoadedFile
from insider.sending_hours import SendingHoursPolicy


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
    footer: str = ""  # INSIDER_COMMERCIAL_FOOTER, counted in commercial messages
    # INSIDER_SENDING_HOURS: a line due outside them is stored waiting (None: any hour).
    sending_hours: SendingHoursPolicy | None = None


Checked = tuple[list[NewMessage], list[Rejected]]


def _message(record: dict[str, Any], limits: Limits, now: datetime, csv_text: bool) -> NewMessage:
    unknown = [name for name in record if name not in COLUMNS]
    if unknown:
        raise InvalidMessage(unknown[0], f"{unknown[0]} is not a field ({', '.join(COLUMNS)})")
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
    category: Any = record.get("category")
    if category is None or (csv_text and category.strip() == ""):
        category = Category.TRANSACTIONAL
    elif csv_text:
        category = category.strip()
    respect: Any = record.get("respectSendingHours")
    if respect is None or (csv_text and respect.strip() == ""):
        respect = True
    elif csv_text:
        respect = {"true": True, "false": False}.get(respect.strip().lower(), respect)
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
        category=category,
        footer=limits.footer,
        respect_sending_hours=respect,
        sending_hours=limits.sending_hours,
    )


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
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a line no check foresaw
            rejected.append(Rejected(number, "line", f"cannot be checked ({type(exc).__name__}: {exc})"))
    return messages, rejected


def read_messages(
    stream: TextIO, limits: Limits, *, chunk_size: int = 10_000, now: datetime | None = None
) -> Iterator[Checked]:
    """The file's messages in chunks of up to ``chunk_size`` records, each with the lines rejected in it.

    Raises BadFile before anything when the CSV header is not usable.
    """
    when = now or datetime.now(UTC)
    for chunk in read_chunks(FileReader(stream), chunk_size=chunk_size):
        yield check_records(chunk.records, limits, when)


async def _checked_chunks(
    reader: FileReader, limits: Limits, chunk_size: int, workers: int
) -> AsyncIterator[tuple[Chunk, Checked]]:
    """The chunks of ``reader``, checked, in file order, read (and checked) off the event loop."""
    now = datetime.now(UTC)
    chunks = read_chunks(reader, chunk_size=chunk_size)
    if workers <= 0:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk, await asyncio.to_thread(check_records, chunk.records, limits, now)
        return
    loop = asyncio.get_running_loop()
    # spawn, not fork: the parent has threads (the reader, the database's) that fork would copy half-way.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[tuple[Chunk, asyncio.Future[Checked]]] = deque()
        while True:
            while len(pending) < 2 * workers:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                pending.append((chunk, loop.run_in_executor(pool, check_records, chunk.records, limits, now)))
            if not pending:
                return
            chunk, checked = pending.popleft()
            yield chunk, await checked


@dataclass(slots=True)
class Rejects:
    """Where the rejected lines go, as the file had them (with the CSV header first), to be
    fixed and loaded on their own; ``close`` writes the header even when none was rejected."""

    out: BinaryIO
    _header: str | None = field(default=None, init=False)

    @classmethod
    def open(cls, path: str) -> Rejects:
        """A rejects file at ``path`` (emptied); OSError if it cannot be written."""
        return cls(open(path, "wb"))

    def close(self) -> None:
        self.out.close()

    def __enter__(self) -> Rejects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, header: str, text: str) -> None:
        if self._header is None:
            self._header = header
            self._put(header)
        self._put(text)

    def finish(self, header: str) -> None:
        if self._header is None:
            self._header = header
            self._put(header)
        self.out.flush()

    def _put(self, text: str) -> None:
        if text:
            # surrogateescape: bytes that were not UTF-8 go back as they came.
            self.out.write(text.encode("utf-8", "surrogateescape"))
            if not text.endswith(("\n", "\r")):
                self.out.write(b"\n")


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a load is: messages checked and staged so far, and the lines rejected in the last chunk."""

    staged: int
    rejected: list[Rejected]


async def load_file(
    loads: FileLoads | None,
    source: FileSource,
    limits: Limits,
    *,
    name: str = "-",
    again: bool = False,
    chunk_size: int = 10_000,
    workers: int = 0,
    rejects: Rejects | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> LoadedFile:
    """Store every valid message of ``source`` with a record of the file, all at once or none.

    Lines are read on a worker thread and checked there (``workers`` 0) or in that many
    processes (libphonenumber is pure Python: the check is most of the work). The valid
    messages are staged chunk by chunk as they come (nothing is visible to the queue yet);
    after the last line they are stored, in file order, in one transaction with the file's
    record (its SHA-256 digest, name, lines, stored and rejected). Anything that ends the
    load before (a database error, a cancel, a killed process) leaves nothing stored.

    Raises FileAlreadyLoaded, storing nothing, when a file with the same bytes was stored
    before and ``again`` is false; BadFile (nothing read) for an unusable CSV header. A
    file with no valid message is not recorded. Returns the record (``loaded_at`` None
    when nothing was stored). ``loads`` None checks every line and stores nothing.
    """
    reader = FileReader(source.text)
    staged = rejected = 0
    async with loads.file_load() if loads is not None else nullcontext() as load:
        async for chunk, (messages, bad) in _checked_chunks(reader, limits, chunk_size, workers):
            rejected += len(bad)
            if rejects is not None:
                for line in bad:
                    rejects.write(reader.header, chunk.texts[line.line])
            if messages and load is not None:
                await load.add(messages)
            staged += len(messages)
            if on_progress is not None:
                on_progress(Progress(staged, bad))
        if rejects is not None:
            rejects.finish(reader.header)
        record = LoadedFile(source.digest(), name, reader.lines, staged, rejected)
        if load is None or not staged:
            return record
        return await load.publish(record, again=again)


def already_loaded(path: str, previous: LoadedFile) -> str:
    """One line for a file refused because the same bytes were loaded before."""
    when = f"{previous.loaded_at:%Y-%m-%d %H:%M:%S} UTC" if previous.loaded_at is not None else "before"
    name = "" if previous.name == path else f" as {previous.name}"
    times = f", {previous.loads} times" if previous.loads > 1 else ""
    what = "the file on standard input" if path == "-" else path
    return (
        f"{what} was loaded on {when}{name}{times} ({previous.stored:,} stored, {previous.rejected:,} rejected), "
        "so nothing was stored now; to queue its messages once more, add --again"
    )


def fix_rejects(rejected: int, rejects_path: str | None) -> str:
    """What to do about the lines rejected from a load (the others are stored)."""
    lines = f"{rejected:,} rejected line{'s' if rejected != 1 else ''}"
    if rejects_path is not None:
        return f"the {lines} are in {rejects_path}: fix them there and load that file alone"
    return f"to fix and load only the {lines}: --check --rejects FILE writes them to FILE (storing nothing)"
