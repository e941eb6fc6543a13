"""Reading messages from CSV and JSON Lines for ``enqueue --file``: every line checked as the API checks it."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from insider.bulk import BadFile, Limits, load_file, read_messages
from insider.clock import FakeClock
from insider.domain import MessageStatus
from tests.unit.support import ProbedRepository

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits(max_length=160, region="TR")


def read(text: str, chunk_size: int = 1000) -> tuple[list[tuple[str, int]], list[str]]:
    stored, rejected = [], []
    for chunk, bad in read_messages(io.StringIO(text), LIMITS, chunk_size=chunk_size, now=NOW):
        stored += [(m.recipient_phone, m.priority) for m in chunk]
        rejected += [str(r) for r in bad]
    return stored, rejected


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


@pytest.mark.parametrize("header", ["phone,text", "to", "to,content,colour", "to,content,to"])
def test_a_bad_header_stops_before_anything(header: str) -> None:
    with pytest.raises(BadFile, match="to,content"):
        read(header + "\n+905301234001,x\n")


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
    sizes = [len(chunk) for chunk, _ in read_messages(io.StringIO(text), LIMITS, chunk_size=10, now=NOW)]
    assert sizes == [10, 10, 5]


async def test_load_file_stores_every_valid_line_in_chunks() -> None:
    repository = ProbedRepository(FakeClock())
    try:
        text = "to,content\n" + "".join(f"+9053012{i:05d},m{i}\n" for i in range(2500)) + "bad,x\n"
        seen: list[int] = []
        stored, rejected = await load_file(
            repository, io.StringIO(text), LIMITS, chunk_size=1000, on_progress=lambda p: seen.append(p.stored)
        )
        assert (stored, rejected) == (2500, 1)
        assert (await repository.counts())[MessageStatus.PENDING] == 2500
        assert seen[-1] == 2500
    finally:
        await repository.close()
