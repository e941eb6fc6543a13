"""Bulk enqueue from a file: CSV with a header, or JSON Lines; each line checked as the API checks a message.

A file is loaded whole or not at all (see :func:`load_file`); a bad line is rejected with its
number and why, and the load goes on.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import multiprocessing
import re
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final, TextIO

import orjson

from insider.domain import DEFAULT_PRIORITY, Category, InvalidMessage, NewMessage, build_message, parse_rfc3339
from insider.ports import FileLoads, LoadedFile

COLUMNS: Final = ("to", "content", "sendAt", "priority", "validUntil", "category")
REQUIRED: Final = ("to", "content")

# What the decoder (errors="surrogateescape") makes of each byte that is not UTF-8.
_UNDECODED: Final = re.compile("[\udc80-\udcff]")


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
    footer: str = ""  # INSIDER_COMMERCIAL_FOOTER, counted in commercial messages


# (the record's first line, its fields or why it cannot be read, whether it came from CSV)
Record = tuple[int, "dict[str, Any] | str", bool]
Checked = tuple[list[NewMessage], list[Rejected]]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Records of a file in file order, with the text of each as the file has it (by first line)."""

    records: list[Record]
    texts: dict[int, str]


class FileSource:
    """A file's bytes read as UTF-8 text and hashed on the way: :meth:`digest` names what was read.

    A byte sequence that is not UTF-8 does not stop the reading: it comes through as lone
    surrogates (``surrogateescape``), and the line holding it is rejected, not the file.
    Closing it closes the file (never standard input).
    """

    def __init__(self, raw: BinaryIO, *, close_raw: bool = True) -> None:
        self._hashing = _Hashing(raw, close_raw=close_raw)
        self.text: TextIO = io.TextIOWrapper(
            io.BufferedReader(self._hashing), encoding="utf-8-sig", errors="surrogateescape", newline=""
        )

    @classmethod
    def open(cls, path: str) -> FileSource:
        """The file at ``path``; ``-`` is standard input. OSError if it cannot be opened."""
        if path == "-":
            return cls(sys.stdin.buffer, close_raw=False)
        return cls(open(path, "rb"))

    @classmethod
    def of_bytes(cls, data: bytes) -> FileSource:
        return cls(io.BytesIO(data))

    def digest(self) -> str:
        """SHA-256 (hex) of the bytes read so far: of the whole file once it was read to its end."""
        return self._hashing.sha256.hexdigest()

    def close(self) -> None:
        self.text.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Hashing(io.RawIOBase):
    """A binary stream that hashes what is read through it."""

    def __init__(self, raw: BinaryIO, *, close_raw: bool) -> None:
        self._raw = raw
        self._close_raw = close_raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        return len(data)

    def close(self) -> None:
        if self._close_raw and not self.closed:
            self._raw.close()
        super().close()


def file_digest(path: str) -> str | None:
    """SHA-256 (hex) of a regular file's bytes, read once before loading it; None for standard input."""
    if path == "-":
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Lines:
    """The physical lines of a text stream, numbered from 1; lines given back are read again first.

    What the csv reader consumes: after a record that could not be parsed, the lines it took
    after its first are given back, so that an unclosed quote cannot swallow them.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._again: deque[tuple[int, str]] = deque()
        self.count = 0  # lines read from the stream
        self.taken: list[tuple[int, str]] = []  # since the last take()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._again:
            item = self._again.popleft()
        else:
            line = self._stream.readline()
            if not line:
                raise StopIteration
            self.count += 1
            item = (self.count, line)
        self.taken.append(item)
        return item[1]

    def take(self) -> list[tuple[int, str]]:
        taken, self.taken = self.taken, []
        return taken

    def give_back(self, lines: list[tuple[int, str]]) -> None:
        self._again.extendleft(reversed(lines))


def _undecoded(lines: list[tuple[int, str]]) -> str | None:
    """Why the first of ``lines`` holding bytes that are not UTF-8 cannot be read, or None."""
    for number, line in lines:
        if line.isascii():
            continue
        found = _UNDECODED.search(line)
        if found is not None:
            byte = ord(found.group()) - 0xDC00
            where = f"line {number}, " if len(lines) > 1 else ""
            return f"not valid UTF-8 text (byte 0x{byte:02x} at {where}character {found.start() + 1})"
    return None


def _text(lines: list[tuple[int, str]]) -> str:
    return lines[0][1] if len(lines) == 1 else "".join(line for _, line in lines)


def _csv_problem(exc: csv.Error, lines: list[tuple[int, str]]) -> str:
    """A readable reason for what the csv module refused, in a record that started with ``lines[0]``."""
    text = str(exc)
    if "field larger than field limit" in text:
        limit = csv.field_size_limit()
        if len(lines) > 1:
            runs = f"a quoted field runs over {len(lines):,} lines to more than {limit:,} characters"
            return f"{runs}: is a quote not closed?"
        return f"a field is longer than {limit:,} characters"
    if "unexpected end of data" in text:
        return "a quoted field opens here and is not closed before the end of the file"
    if "expected after" in text:
        if len(lines) > 1:
            return (
                f"a quoted field opens here and does not close properly (line {lines[-1][0]}): is a quote not closed?"
            )
        return 'a quoted field must end with a quote before the next comma (a quote inside it is written "")'
    return f"not valid CSV ({text})"


class FileReader:
    """The records of one file in file order: CSV with a header, or JSON Lines (the first
    non-blank line starting with ``{``).

    Every record comes out, readable or not: one that cannot be parsed (bad quoting, a field
    over the csv module's limit, bytes that are not UTF-8, JSON that does not parse or nests
    too deep) as the reason why, with the number of its first line. After a CSV record that
    cannot be parsed, reading starts again at the line after its first, so the lines an
    unclosed quote would swallow are read as their own. Iterating raises BadFile, before
    any record, when the CSV header is not usable.
    """

    def __init__(self, stream: TextIO) -> None:
        self._lines = _Lines(stream)
        self.header = ""  # the CSV header's text as in the file ("" for JSON Lines): a rejects file starts with it

    @property
    def lines(self) -> int:
        """Physical lines read so far (all of them, once the records are exhausted)."""
        return self._lines.count

    def __iter__(self) -> Iterator[tuple[Record, str]]:
        """(record, its text as in the file), in file order."""
        lines = self._lines
        for line in lines:
            if line.strip():
                lines.give_back(lines.take())
                break
            lines.take()
        else:
            return
        if line.lstrip().startswith("{"):
            yield from self._json_lines()
        else:
            yield from self._csv()

    def _json_lines(self) -> Iterator[tuple[Record, str]]:
        lines = self._lines
        for line in lines:
            taken = lines.take()
            number = taken[0][0]
            if not line.strip():
                continue
            problem = _undecoded(taken)
            if problem is not None:
                yield (number, problem, False), line
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:  # nesting deeper than 1,024 levels included
                yield (number, f"not valid JSON ({exc})", False), line
                continue
            if not isinstance(record, dict):
                yield (number, "not a JSON object", False), line
                continue
            yield (number, record, False), line

    def _csv(self) -> Iterator[tuple[Record, str]]:
        lines = self._lines
        reader = csv.reader(lines, strict=True)
        try:
            header = next(reader)
        except csv.Error as exc:
            raise BadFile(f"the CSV header cannot be read: {_csv_problem(exc, lines.take())}") from None
        taken = lines.take()
        problem = _undecoded(taken)
        if problem is not None:
            raise BadFile(f"the CSV header is {problem}")
        header = [name.strip() for name in header]
        unknown = [name for name in header if name not in COLUMNS]
        missing = [name for name in REQUIRED if name not in header]
        if unknown or missing or len(set(header)) != len(header):
            raise BadFile(
                f"the CSV header must name the columns to,content[,sendAt,priority,validUntil,category]; "
                f"got {','.join(header)}"
            )
        self.header = _text(taken)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                taken = lines.take()
                if not taken:  # nothing read: nothing to reject
                    return
                # Read on from the line after this record's first: the lines an unclosed quote
                # took are read again as their own, in a reader of their own.
                lines.give_back(taken[1:])
                reader = csv.reader(lines, strict=True)
                first = taken[:1]
                yield (first[0][0], _undecoded(first) or _csv_problem(exc, taken), True), first[0][1]
                continue
            taken = lines.take()
            number = taken[0][0]
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            problem = _undecoded(taken)
            if problem is not None:
                yield (number, problem, True), _text(taken)
            elif len(row) != len(header):
                yield (number, f"expected {len(header)} fields, got {len(row)}", True), _text(taken)
            else:
                yield (number, dict(zip(header, row, strict=True)), True), _text(taken)


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
    )


def read_chunks(reader: FileReader, *, chunk_size: int = 10_000) -> Iterator[Chunk]:
    """The file's records in chunks of up to ``chunk_size``, unchecked. Raises BadFile as FileReader does."""
    records: list[Record] = []
    texts: dict[int, str] = {}
    for record, text in reader:
        records.append(record)
        texts[record[0]] = text
        if len(records) >= chunk_size:
            yield Chunk(records, texts)
            records, texts = [], {}
    if records:
        yield Chunk(records, texts)


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
