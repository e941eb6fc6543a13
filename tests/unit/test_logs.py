"""Log lines: JSON with secrets and phones kept out, written in order, batched within the event loop."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from insider.logs import configure_logging, flush_logs


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    out = CountingStream()
    configure_logging("info", "json", out)
    yield out
    flush_logs()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(stream: CountingStream) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_info_lines_are_written_together_and_warnings_at_once(stream: CountingStream) -> None:
    log = structlog.get_logger("t")
    for i in range(50):
        log.info("send", n=i)
    assert stream.writes == 0  # buffered within the loop's turn
    log.warning("slow", n=50)  # flushes everything, in order
    assert stream.writes == 1
    assert [line["n"] for line in lines(stream)] == list(range(51))
    log.info("later")
    logging.getLogger("lib").warning("from the standard library")  # after what came before it
    events = [line["event"] for line in lines(stream)]
    assert events[-2:] == ["later", "from the standard library"]


def test_outside_an_event_loop_every_line_is_written_at_once(stream: CountingStream) -> None:
    structlog.get_logger("t").info("hello")
    assert [line["event"] for line in lines(stream)] == ["hello"]


async def test_secrets_and_phone_numbers_never_reach_the_stream(stream: CountingStream) -> None:
    structlog.get_logger("t").info("send", to="+905301234567", auth_key="s3cret", token="t0ken")
    flush_logs()
    text = stream.getvalue()
    assert "s3cret" not in text and "t0ken" not in text and "+905301234567" not in text
    assert lines(stream)[0]["to"] == "+905*******67"


async def test_scrubbing_holds_for_every_event_not_only_the_first(stream: CountingStream) -> None:
    log = structlog.get_logger("t")
    for _ in range(3):  # the scrubber remembers plain keys; secret ones must never join them
        log.info("send", to="+905301234567", Authorization="Bearer abc", API_TOKEN="t0ken", n=1)
    flush_logs()
    assert [(line["to"], line["Authorization"], line["API_TOKEN"]) for line in lines(stream)] == [
        ("+905*******67", "***", "***")
    ] * 3


def test_timestamps_are_iso_utc_with_microseconds(stream: CountingStream) -> None:
    before = datetime.now(UTC)
    structlog.get_logger("t").info("hello")
    after = datetime.now(UTC)

    stamp = str(lines(stream)[0]["timestamp"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before - timedelta(microseconds=1) <= datetime.fromisoformat(stamp) <= after


def test_a_loop_that_ends_with_a_flush_pending_holds_back_no_later_loop(stream: CountingStream) -> None:
    log = structlog.get_logger("t")

    async def first() -> None:
        log.info("from the first loop")  # its flush is still pending when the loop ends

    async def second() -> None:
        log.info("from the second loop")
        # No warning, no explicit flush: the second loop's own timer must write it.
        deadline = asyncio.get_running_loop().time() + 2.0
        while "from the second loop" not in stream.getvalue():
            assert asyncio.get_running_loop().time() < deadline, "the second loop's line never came"
            await asyncio.sleep(0.01)

    asyncio.run(first())
    asyncio.run(second())
    events = [line["event"] for line in lines(stream)]
    assert events == ["from the first loop", "from the second loop"]


def test_two_loops_in_two_threads_each_get_their_lines_out(stream: CountingStream) -> None:
    log = structlog.get_logger("t")

    async def run(name: str) -> None:
        for i in range(20):
            log.info(name, n=i)
            await asyncio.sleep(0)
        deadline = asyncio.get_running_loop().time() + 2.0
        while sum(1 for line in lines(stream) if line["event"] == name) < 20:
            assert asyncio.get_running_loop().time() < deadline, f"{name}'s lines never all came"
            await asyncio.sleep(0.01)

    threads = [threading.Thread(target=asyncio.run, args=(run(name),)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    for name in ("a", "b"):
        assert [line["n"] for line in lines(stream) if line["event"] == name] == list(range(20))
