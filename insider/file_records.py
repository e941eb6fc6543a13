"""A file's records in file order: CSV with a header, or JSON Lines; every record out, readable or not.

Reading only: each record is the fields of one message or why its lines cannot be read (see
:class:`FileReader`); checking them as messages and storing them is :mod:`insider.bulk`'s.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, TextIO

import orjson

COLUMNS: Final = ("to", "content", "sendAt", "priority", "validUntil", "category", "respectSendingHours")
REQUIRED: Final = ("to", "content")

# What the decoder (errors="surrogateescape") makes of each byte that is not UTF-8.
_UNDECODED: Final = re.compile("[\udc80-\udcff]")


class BadFile(ValueError):
    """A file that cannot be read as messages at all (no header, unknown columns)."""


# (the record's first line, its fields or why it cannot be read, whether it came from CSV)
Record = tuple[int, "dict[str, Any] | str", bool]


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

    def __init__(
        self,
        stream: TextIO,
        *,
        columns: tuple[str, ...] = COLUMNS,
        required: tuple[str, ...] = REQUIRED,
        json_lines: bool = True,
    ) -> None:
        self._lines = _Lines(stream)
        # The CSV columns a header may name (``required`` among them), and whether JSON Lines are read too.
        self._columns, self._required, self._json_lines = columns, required, json_lines
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
        if self._json_lines and line.lstrip().startswith("{"):
            yield from self._json_lines_records()
        else:
            yield from self._csv()

    def _json_lines_records(self) -> Iterator[tuple[Record, str]]:
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
        unknown = [name for name in header if name not in self._columns]
        missing = [name for name in self._required if name not in header]
        if unknown or missing or len(set(header)) != len(header):
            optional = [name for name in self._columns if name not in self._required]
            wanted = ",".join(self._required) + (f"[,{','.join(optional)}]" if optional else "")
            raise BadFile(f"the CSV header must name the columns {wanted}; got {','.join(header)}")
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
