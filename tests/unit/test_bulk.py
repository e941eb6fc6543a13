"""Reading messages from CSV and JSON Lines for ``enqueue --file``: every line checked as the API checks it,
every bad line rejected with its number and why, and the reading going on after it."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from insider.bulk import Limits, Progress, Rejects, load_file, read_messages
from insider.cli import enqueue
from insider.cli.arguments import parser
from insider.clock import FakeClock
from insider.config import load_settings
from insider.domain import TIME_RANGE, MessageStatus
from insider.file_records import BadFile, FileReader, FileSource
from insider.ports import FileAlreadyLoaded, RepositoryUnavailable
from tests.unit.support import ProbedRepository

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits(max_length=160, region="TR")


def read(text: str | bytes, chunk_size: int = 1000) -> tuple[list[tuple[str, int]], list[str]]:
    data = text.encode() if isinstance(text, str) else text
    stored, rejected = [], []
    for chunk, bad in read_messages(FileSource.of_bytes(data).text, LIMITS, chunk_size=chunk_size, now=NOW):
        stored += [(m.recipient_phone, m.priority) for m in chunk]
        rejected += [str(r) for r in bad]
    return stored, rejected


def phones(text: str | bytes) -> tuple[list[str], list[str]]:
    stored, rejected = read(text)
    return [phone for phone, _ in stored], rejected


def test_csv_with_every_column_and_line_numbers_of_rejected_lines() -> None:
    text = (
        "to,content,sendAt,priority,validUntil\n"
        "+905301234001,plain,,,\n"
        '0530 123 40 02,"two\nlines",2026-01-02T09:00:00+03:00,9,2026-01-03T00:00:00Z\n'
        "\n"
        "nope,x,,,\n"
        "+905301234003,x,,10,\n"
        "+905301234004,x,tomorrow,,\n"
        "+905301234005,x,2026-01-02T00:00:00Z,,2026-01-01T12:00:00Z\n"
        "+905301234006,,,,\n"
        "+905301234007,x,,\n"
    )
    stored, rejected = read(text)
    assert stored == [("+905301234001", 5), ("+905301234002", 9)]
    assert rejected == [
        "line 6: to is not a possible phone number (not a phone number)",
        "line 7: priority must be a whole number from 0 to 9",
        "line 8: sendAt must be an RFC 3339 date-time with an offset (2026-12-01T09:00:00+03:00 or ...Z)",
        "line 9: validUntil must be after sendAt",
        "line 10: content is empty",
        "line 11: expected 5 fields, got 4",
    ]


def test_csv_with_only_to_and_content() -> None:
    stored, rejected = read("to,content\n+905301234001,hi\n")
    assert (stored, rejected) == ([("+905301234001", 5)], [])


@pytest.mark.parametrize("header", ["phone,text", "to", "to,content,colour", "to,content,to", '"to,content'])
def test_a_bad_header_stops_before_anything(header: str) -> None:
    with pytest.raises(BadFile, match="the CSV header"):
        read(header + "\n+905301234001,x\n")


def test_a_header_that_is_not_utf8_stops_before_anything() -> None:
    with pytest.raises(BadFile, match=r"the CSV header is not valid UTF-8 text \(byte 0xff"):
        read(b"to,content\xff\n+905301234001,x\n")


def test_json_lines() -> None:
    text = (
        '{"to": "+905301234001", "content": "a", "priority": 7, "sendAt": "2026-01-02T00:00:00Z"}\n'
        "\n"
        "not json\n"
        '["a list"]\n'
        '{"to": "+905301234002", "content": "b", "priority": "7"}\n'
        '{"to": "+905301234003", "content": "c", "colour": "red"}\n'
        '{"to": "+905301234004"}\n'
        '{"to": "+905301234005", "content": "e", "priority": true}\n'
    )
    stored, rejected = read(text)
    assert stored == [("+905301234001", 7)]
    assert [r.split(":")[0] for r in rejected] == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "not valid JSON" in rejected[0] and "not a JSON object" in rejected[1]
    assert "priority must be a whole number" in rejected[2] and "colour is not a field" in rejected[3]
    assert "content is missing" in rejected[4] and "priority must be a whole number" in rejected[5]


def test_chunks() -> None:
    text = "to,content\n" + "".join(f"+9053012340{i:02d},m{i}\n" for i in range(25))
    data = FileSource.of_bytes(text.encode()).text
    sizes = [len(chunk) for chunk, _ in read_messages(data, LIMITS, chunk_size=10, now=NOW)]
    assert sizes == [10, 10, 5]


# --- Every kind of bad line, anywhere: rejected with its number, the others read -------------------------

LONG = "a" * 140_000  # over the csv module's field limit of 131,072 characters
BAD_CSV_LINES: dict[str, tuple[bytes, str]] = {
    "a field over the csv module's limit": (
        f"+905309999999,{LONG},".encode(),
        "a field is longer than 131,072 characters",
    ),
    "a time past the end of the calendar": (
        b"+905309999999,late,9999-12-31T23:59:59-14:00",
        f"sendAt must be {TIME_RANGE}",
    ),
    "a time before year 1 in UTC": (b"+905309999999,early,0001-01-01T00:00:00+14:00", f"sendAt must be {TIME_RANGE}"),
    "a stray quote": (b'+905309999999,"bad"quote,', "a quoted field must end with a quote before the next comma"),
    "bytes that are not UTF-8": (b"+905309999999,caf\xe9,", "not valid UTF-8 text (byte 0xe9 at character 18)"),
    "a truncated UTF-8 sequence": (b"+905309999999,\xc3,", "not valid UTF-8 text (byte 0xc3 at character 15)"),
    "a NUL character": (b"+905309999999,a\x00b,", "content must not contain NUL characters"),
    "too few fields": (b"+905309999999", "expected 3 fields, got 1"),
    "an unclosed quote": (b'+905309999999,"never closed,', "is not closed before the end of the file"),
}
HEADER = b"to,content,sendAt\n"
GOOD = [f"+9053012340{i:02d}".encode() for i in range(10)]


def good_line(phone: bytes) -> bytes:
    return phone + b",m,\n"


@pytest.mark.parametrize("kind", BAD_CSV_LINES)
@pytest.mark.parametrize("where", ["first", "middle", "last", "last, no line break", "after a multi-line record"])
def test_a_bad_csv_line_anywhere_is_rejected_with_its_number_and_the_rest_is_read(kind: str, where: str) -> None:
    bad, reason = BAD_CSV_LINES[kind]
    lines = [good_line(p) for p in GOOD]
    index = {"first": 0, "middle": 5, "last": 10, "last, no line break": 10, "after a multi-line record": 4}[where]
    if where == "after a multi-line record":
        lines[3] = GOOD[3] + b',"two\nlines, ""quoted"",\nthree",\n'  # lines 5 to 7 of the file
    lines.insert(index, bad + (b"" if where == "last, no line break" else b"\n"))
    number = 2 + index + (2 if where == "after a multi-line record" else 0)

    stored, rejected = phones(HEADER + b"".join(lines))

    assert stored == [p.decode() for p in GOOD]
    assert len(rejected) == 1 and rejected[0].startswith(f"line {number}: "), rejected
    assert reason in rejected[0]


def test_an_unclosed_quote_does_not_swallow_the_lines_after_it() -> None:
    lines = [f"+90530{i:07d},message {i}" for i in range(20_000)]
    lines[4] = '+905300000004,"unclosed message 4'
    stored, rejected = phones(("to,content\n" + "\n".join(lines) + "\n").encode())

    assert len(stored) == 19_999 and "+905300000005" in stored and "+905300000004" not in stored
    assert rejected == [
        "line 6: a quoted field runs over 4,896 lines to more than 131,072 characters: is a quote not closed?"
    ]


def test_an_unclosed_quote_closed_by_a_later_quote_is_rejected_alone() -> None:
    text = 'to,content\n+905301234001,"unclosed\n+905301234002,"quoted"\n+905301234003,plain\n'
    assert phones(text) == (
        ["+905301234002", "+905301234003"],
        ["line 2: a quoted field opens here and does not close properly (line 3): is a quote not closed?"],
    )


def test_a_file_ending_inside_a_quoted_field() -> None:
    text = 'to,content\n+905301234001,one\n+905301234002,"open to the end\n+905301234003,three\n'
    assert phones(text) == (
        ["+905301234001", "+905301234003"],
        ["line 3: a quoted field opens here and is not closed before the end of the file"],
    )


def test_well_formed_multi_line_fields_stay_accepted() -> None:
    text = 'to,content\r\n+905301234001,"first\r\nsecond"\r\n+905301234002,"a ""quote""\n\nand a blank line"\r\n'
    stored, rejected = read(text)
    assert (stored, rejected) == ([("+905301234001", 5), ("+905301234002", 5)], [])


def test_a_multi_line_record_with_bytes_that_are_not_utf8_is_rejected_whole() -> None:
    text = b'to,content\n+905301234001,"first\nsec\xffond"\n+905301234002,next\n'
    assert phones(text) == (
        ["+905301234002"],
        ["line 2: not valid UTF-8 text (byte 0xff at line 3, character 4)"],
    )


def test_line_numbers_count_blank_lines_before_the_header() -> None:
    assert phones("\n\nto,content\nbad,x\n") == ([], ["line 4: to is not a possible phone number (not a phone number)"])


BAD_JSON_LINES: dict[str, tuple[bytes, str]] = {
    "nested too deep": (b'{"to": ' + b"[" * 2000 + b"]" * 2000 + b"}", "not valid JSON (depth limit exceeded"),
    "bytes that are not UTF-8": (b'{"to": "+905309999999", "content": "caf\xe9"}', "not valid UTF-8 text (byte 0xe9"),
    "a lone surrogate": (b'{"to": "+905309999999", "content": "\\ud800"}', "not valid JSON"),
    "a time past the end of the calendar": (
        b'{"to": "+905309999999", "content": "x", "validUntil": "9999-12-31T23:59:59-14:00"}',
        f"validUntil must be {TIME_RANGE}",
    ),
    "a number where a time goes": (b'{"to": "+905309999999", "content": "x", "sendAt": 1e400}', "not valid JSON"),
    "a huge number": (b'{"to": "+905309999999", "content": "x", "priority": 1' + b"0" * 400 + b"}", "not valid JSON"),
    "not JSON": (b"{nope", "not valid JSON"),
    "an array": (b"[1, 2]", "not a JSON object"),
    "an unclosed string": (b'{"to": "+905309999999", "content": "x', "not valid JSON"),
}


@pytest.mark.parametrize("kind", BAD_JSON_LINES)
@pytest.mark.parametrize("where", ["second", "middle", "last", "last, no line break"])
def test_a_bad_json_line_anywhere_is_rejected_with_its_number_and_the_rest_is_read(kind: str, where: str) -> None:
    bad, reason = BAD_JSON_LINES[kind]
    lines = [b'{"to": "%s", "content": "m"}\n' % p for p in GOOD]
    index = {"second": 1, "middle": 5, "last": 10, "last, no line break": 10}[where]
    lines.insert(index, bad + (b"" if where == "last, no line break" else b"\n"))

    stored, rejected = phones(b"".join(lines))

    assert stored == [p.decode() for p in GOOD]
    assert len(rejected) == 1 and rejected[0].startswith(f"line {index + 1}: "), rejected
    assert reason in rejected[0]


def test_the_reader_counts_every_physical_line_and_keeps_the_header_text() -> None:
    reader = FileReader(FileSource.of_bytes(b'\r\nto,content\r\n+905301234001,"a\r\nb"\r\nbad').text)
    records = [(record[0], text) for record, text in reader]
    assert records == [(3, '+905301234001,"a\r\nb"\r\n'), (5, "bad")]
    assert (reader.header, reader.lines) == ("to,content\r\n", 5)


# --- load_file: all or nothing, once per file, the rejected lines written back -------------------------------


async def test_load_file_stores_every_valid_line_in_file_order_at_the_end() -> None:
    repository = ProbedRepository(FakeClock())
    try:
        text = "to,content\n" + "".join(f"+9053012{i:05d},m{i}\n" for i in range(2500)) + "bad,x\n"
        seen: list[tuple[int, int]] = []

        def progress(step: Progress) -> None:
            seen.append((step.staged, len(step.rejected)))

        source = FileSource.of_bytes(text.encode())
        loaded = await load_file(repository, source, LIMITS, name="m.csv", chunk_size=1000, on_progress=progress)

        assert (loaded.stored, loaded.rejected, loaded.lines, loaded.name) == (2500, 1, 2502, "m.csv")
        assert loaded.loaded_at is not None and loaded.loads == 1
        assert seen == [(1000, 0), (2000, 0), (2500, 1)]
        assert (await repository.counts())[MessageStatus.PENDING] == 2500
        page = await repository.list_messages(MessageStatus.PENDING, 500)
        assert all(m.content == f"m{m.id - 1}" for m in page.items)  # ids follow the lines
        assert await repository.loaded_file(source.digest()) == loaded
    finally:
        await repository.close()


async def test_nothing_is_stored_when_the_database_fails_before_the_end() -> None:
    repository = ProbedRepository(FakeClock())
    try:
        text = "to,content\n" + "".join(f"+9053012{i:05d},m{i}\n" for i in range(2500))
        calls = 0

        def cut_after_two_chunks(step: Progress) -> None:
            nonlocal calls
            calls += 1
            repository.available = calls < 2

        with pytest.raises(RepositoryUnavailable):
            await load_file(
                repository,
                FileSource.of_bytes(text.encode()),
                LIMITS,
                chunk_size=1000,
                on_progress=cut_after_two_chunks,
            )
        repository.available = True
        assert (await repository.counts())[MessageStatus.PENDING] == 0
        # and the same file again stores it whole
        loaded = await load_file(repository, FileSource.of_bytes(text.encode()), LIMITS, chunk_size=1000)
        assert loaded.stored == (await repository.counts())[MessageStatus.PENDING] == 2500
    finally:
        await repository.close()


async def test_the_same_bytes_twice_are_refused_unless_again() -> None:
    repository = ProbedRepository(FakeClock())
    try:
        text = b"to,content\n+905301234001,one\n+905301234002,two\n"
        first = await load_file(repository, FileSource.of_bytes(text), LIMITS, name="a.csv")
        with pytest.raises(FileAlreadyLoaded) as refused:
            await load_file(repository, FileSource.of_bytes(text), LIMITS, name="b.csv")
        assert refused.value.previous == first
        assert (await repository.counts())[MessageStatus.PENDING] == 2

        again = await load_file(repository, FileSource.of_bytes(text), LIMITS, name="b.csv", again=True)
        assert (again.name, again.loads, again.stored) == ("b.csv", 2, 2)
        assert (await repository.counts())[MessageStatus.PENDING] == 4

        other = await load_file(repository, FileSource.of_bytes(text + b"+905301234003,three\n"), LIMITS)
        assert other.stored == 3  # other bytes, another file
    finally:
        await repository.close()


async def test_rejected_lines_are_written_as_the_file_had_them_and_load_on_their_own() -> None:
    repository = ProbedRepository(FakeClock())
    try:
        text = (
            b"to,content,priority\r\n"
            b"+905301234001,one,1\r\n"
            b'nope,"two\r\nlines",2\r\n'
            b'+905301234003,"unclosed,3\r\n'
            b"+905301234004,caf\xe9,4\r\n"
            b"+905301234005,five,5\r\n"
            b"+905301234006,six,12"  # no line break at the end
        )
        out = io.BytesIO()
        rejects = Rejects(out)
        loaded = await load_file(repository, FileSource.of_bytes(text), LIMITS, rejects=rejects)
        assert (loaded.stored, loaded.rejected) == (2, 4)
        assert out.getvalue() == (
            b"to,content,priority\r\n"
            b'nope,"two\r\nlines",2\r\n'
            b'+905301234003,"unclosed,3\r\n'
            b"+905301234004,caf\xe9,4\r\n"
            b"+905301234006,six,12\n"
        )
        fixed = out.getvalue().replace(b"nope", b"+905301234002").replace(b'"unclosed', b"closed")
        fixed = fixed.replace(b"caf\xe9", "café".encode()).replace(b"12\n", b"6\n")
        loaded = await load_file(repository, FileSource.of_bytes(fixed), LIMITS)
        assert (loaded.stored, loaded.rejected) == (4, 0)
        page = await repository.list_messages(MessageStatus.PENDING, 10)
        assert sorted(m.priority for m in page.items) == [1, 2, 3, 4, 5, 6]
    finally:
        await repository.close()


async def test_a_file_with_nothing_valid_is_not_remembered_and_check_only_stores_nothing() -> None:
    repository = ProbedRepository(FakeClock())
    try:
        text = b"to,content\nbad,x\n+905301234001,ok\n"
        checked = await load_file(None, FileSource.of_bytes(text), LIMITS)
        assert (checked.stored, checked.rejected, checked.loaded_at) == (1, 1, None)
        assert (await repository.counts())[MessageStatus.PENDING] == 0

        source = FileSource.of_bytes(b"to,content\nbad,x\n")
        nothing = await load_file(repository, source, LIMITS)
        assert (nothing.stored, nothing.loaded_at, nothing.digest) == (0, None, source.digest())
        assert await repository.loaded_file(source.digest()) is None
        assert (await load_file(repository, FileSource.of_bytes(b"to,content\nbad,x\n"), LIMITS)).rejected == 1
    finally:
        await repository.close()


# --- The command's report: every rejected line by number, then the summary, whatever the line ------------


@pytest.mark.parametrize("kind", BAD_CSV_LINES)
@pytest.mark.parametrize("where", ["first", "last, no line break"])
def test_the_command_reports_each_bad_line_and_always_ends_with_its_summary(
    kind: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, reason = BAD_CSV_LINES[kind]
    lines = [good_line(p) for p in GOOD]
    index = 0 if where == "first" else 10
    lines.insert(index, bad + (b"" if where == "last, no line break" else b"\n"))
    path = tmp_path / "campaign.csv"
    path.write_bytes(HEADER + b"".join(lines))
    env = {"INSIDER_DATABASE_URL": f"sqlite:///{tmp_path / 'insider.db'}", "INSIDER_REDIS_URL": ""}
    args = parser().parse_args(["enqueue", "--file", str(path)])

    code = enqueue.run(load_settings(env, env_file=None), args)

    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert len(out) == 2 and out[0].startswith(f"rejected line {index + 2}: ") and reason in out[0], out
    assert out[1] == "stored 10 messages, rejected 1 lines"
