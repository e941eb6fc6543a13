"""Log lines: the command line's JSON or console lines, in order and none lost; insider's events through the
standard library where nobody configured structlog; secrets and phone numbers kept out either way."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from insider.logs import get_logger, process_logging
from tests.conftest import eventually


class Stream(io.StringIO):
    """A stream that counts its writes; ``hold`` makes the next write wait until it is cleared."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.writes = 0
        self.tty = tty
        self.hold = threading.Event()
        self.hold.set()
        self.writing = threading.Event()

    def write(self, s: str) -> int:
        self.writing.set()
        assert self.hold.wait(10), "the test never let the write go on"
        self.writes += 1
        return super().write(s)

    def isatty(self) -> bool:
        return self.tty


def lines(stream: Stream) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog as an embedding program that does not use it leaves it (tests before may have configured it)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# --- the command line's lines --------------------------------------------------------------------------------------


def test_json_lines_with_secrets_and_phone_numbers_kept_out() -> None:
    out = Stream()
    with process_logging("info", "json", out):
        log = get_logger("t")
        log.info("send", to="+905301234567", auth_key="s3cret", token="t0ken", n=1)
        for _ in range(2):
            log.info("send", to="+905301234567", Authorization="Bearer abc", API_TOKEN="t0ken")
    text = out.getvalue()
    assert "s3cret" not in text and "t0ken" not in text and "abc" not in text and "+905301234567" not in text
    events = lines(out)
    assert [(e["to"], e["level"], e["event"]) for e in events] == [("+905*******67", "info", "send")] * 3
    assert [(e["Authorization"], e["API_TOKEN"]) for e in events[1:]] == [("***", "***")] * 2


def test_timestamps_are_iso_utc_with_microseconds() -> None:
    out = Stream()
    with process_logging("info", "json", out):
        before = datetime.now(UTC)
        get_logger("t").info("hello")
        after = datetime.now(UTC)
    stamp = str(lines(out)[0]["timestamp"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before - timedelta(microseconds=1) <= datetime.fromisoformat(stamp) <= after


def test_levels_below_the_setting_are_left_out_for_structlog_and_the_standard_library() -> None:
    out = Stream()
    with process_logging("warning", "json", out):
        get_logger("t").info("an info")
        get_logger("t").warning("a warning")
        logging.getLogger("lib").info("a library's info")
        logging.getLogger("lib").error("a library's error")
    assert [(e["event"], e["level"]) for e in lines(out)] == [("a warning", "warning"), ("a library's error", "error")]


def test_lines_come_out_in_the_order_they_were_logged_structlog_and_standard_library_alike() -> None:
    out = Stream()

    async def main() -> None:
        log = get_logger("t")
        for i in range(50):
            log.info("send", n=i)
        log.warning("slow", n=50)
        log.info("later", n=51)
        logging.getLogger("lib").warning("from the standard library")

    with process_logging("info", "json", out):
        asyncio.run(main())
    events = lines(out)
    assert [e.get("n") for e in events[:52]] == list(range(52))
    assert events[-1]["event"] == "from the standard library"
    assert events[-1]["logger"] == "lib" and events[-1]["level"] == "warning"


def test_lines_waiting_together_are_written_together() -> None:
    out = Stream()
    with process_logging("info", "json", out):
        out.hold.clear()  # the first line's write waits: the next 99 lines queue up meanwhile
        log = get_logger("t")
        log.info("send", n=0)
        assert out.writing.wait(10)
        for i in range(1, 100):
            log.info("send", n=i)
        out.hold.set()
    assert [e["n"] for e in lines(out)] == list(range(100))
    assert out.writes == 2  # the first line, then the 99 that waited for it, in one write


async def test_an_info_line_is_written_soon_without_anything_after_it() -> None:
    out = Stream()
    with process_logging("info", "json", out):
        get_logger("t").info("sent one")
        # Nothing else is logged and the block has not ended: the line must still go out.
        await eventually(lambda: "sent one" in out.getvalue(), timeout_s=5, what="the line")


@pytest.mark.parametrize("standard_library", [False, True])
async def test_a_warning_goes_out_at_once_with_the_lines_before_it(
    standard_library: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("insider.logs.FLUSH_AFTER_S", 600.0)  # info lines would wait ten minutes
    out = Stream()
    with process_logging("info", "json", out):
        for i in range(10):
            get_logger("t").info("send", n=i)
        if standard_library:
            logging.getLogger("psycopg.pool").error("the database does not answer")
        else:
            get_logger("t").warning("the database does not answer")
        await eventually(lambda: "the database does not answer" in out.getvalue(), timeout_s=5, what="the warning")
        assert [e.get("n") for e in lines(out)] == [*range(10), None]
    # The end of the block does not wait for the window either (the test's timeout would say so).


def test_every_line_is_written_by_the_end_of_the_block() -> None:
    out = Stream()
    with process_logging("info", "json", out):
        log = get_logger("t")
        for i in range(5000):
            log.info("send", n=i)
    assert [e["n"] for e in lines(out)] == list(range(5000))


def test_closing_the_handler_as_logging_shutdown_does_writes_every_line_before_it_returns() -> None:
    # What a process that must end at once (os._exit) relies on: logging.shutdown() closes it.
    out = Stream()
    with process_logging("info", "json", out):
        log = get_logger("t")
        for i in range(2000):
            log.info("send", n=i)
        [handler] = logging.getLogger().handlers
        handler.close()
        assert [e["n"] for e in lines(out)] == list(range(2000))
    assert len(lines(out)) == 2000  # and the end of the block finds the writer stopped already


def test_lines_of_several_event_loops_in_several_threads_all_come_out_each_in_order() -> None:
    out = Stream()

    async def run(name: str) -> None:
        log = get_logger("t")
        for i in range(200):
            log.info(name, n=i)
            await asyncio.sleep(0)

    with process_logging("info", "json", out):
        asyncio.run(run("main thread, first loop"))
        threads = [threading.Thread(target=asyncio.run, args=(run(name),)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        asyncio.run(run("main thread, second loop"))
    for name in ("main thread, first loop", "a", "b", "main thread, second loop"):
        assert [e["n"] for e in lines(out) if e["event"] == name] == list(range(200))


def test_an_exception_comes_with_its_traceback() -> None:
    out = Stream()
    with process_logging("info", "json", out):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            get_logger("t").exception("request failed")
            logging.getLogger("lib").exception("a library's failure")
    [ours, theirs] = lines(out)
    assert ours["level"] == "error" and "RuntimeError: boom" in ours["exception"]
    assert theirs["level"] == "error" and "RuntimeError: boom" in theirs["exception"]


def test_console_lines_on_a_terminal() -> None:
    out = Stream(tty=True)
    with process_logging("info", "auto", out):
        get_logger("t").info("send", message_id=7, to="+905301234567")
    [line] = out.getvalue().splitlines()
    assert not line.startswith("{")
    assert "send" in line and "message_id" in line and "+905*******67" in line and "+905301234567" not in line


def test_the_block_puts_the_process_logging_back_as_it_was(unconfigured: None) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access, pool = logging.getLogger("aiohttp.access").level, logging.getLogger("psycopg.pool").level
    with process_logging("debug", "json", Stream()):
        assert structlog.is_configured()
        assert root.handlers != handlers and root.level == logging.DEBUG
    assert not structlog.is_configured()
    assert (root.handlers, root.level) == (handlers, level)
    assert (logging.getLogger("aiohttp.access").level, logging.getLogger("psycopg.pool").level) == (access, pool)


# --- insider as a library: through the standard library ---------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def host_handler(unconfigured: None) -> Iterator[Records]:
    """A handler of the embedding program's on the root logger, at info."""
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_where_nobody_configured_structlog_events_go_through_the_standard_library(host_handler: Records) -> None:
    log = get_logger("insider.sender")
    with structlog.contextvars.bound_contextvars(request_id="r-1"):
        log.info("send", message_id=12, to="+905301234567", auth_key="s3cret", error="the provider said no")
    log.debug("not at info")
    [record] = host_handler.records
    assert (record.name, record.levelname) == ("insider.sender", "INFO")
    assert record.getMessage() == (
        'send message_id=12 to=+905*******67 auth_key=*** error="the provider said no" request_id=r-1'
    )


def test_through_the_standard_library_its_levels_decide_and_exceptions_reach_the_handler(
    host_handler: Records,
) -> None:
    logging.getLogger("insider.quiet").setLevel(logging.ERROR)
    try:
        get_logger("insider.quiet").warning("left out by the program's level for insider.quiet")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            get_logger("insider.quiet").exception("request failed")
    finally:
        logging.getLogger("insider.quiet").setLevel(logging.NOTSET)
    [record] = host_handler.records
    assert record.getMessage() == "request failed" and record.levelname == "ERROR"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def test_a_program_that_configures_structlog_gets_insiders_events_its_way(host_handler: Records) -> None:
    log = get_logger("insider.sender")  # made before structlog is configured
    with structlog.testing.capture_logs() as captured:
        log.info("send", message_id=12, to="+905301234567")
    assert captured == [{"event": "send", "message_id": 12, "to": "+905*******67", "log_level": "info"}]
    assert host_handler.records == []


# --- nothing but the command line's set-up touches the process's logging ----------------------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "insider"
# What changes the logging of the whole process (levels, handlers, filters, structlog's configuration).
PROCESS_WIDE = frozenset(
    {
        "setLevel",
        "addHandler",
        "removeHandler",
        "addFilter",
        "removeFilter",
        "basicConfig",
        "dictConfig",
        "fileConfig",
        "captureWarnings",
        "disable",
        "configure",
        "configure_once",
        "reset_defaults",
        "setLoggerClass",
        "setLogRecordFactory",
    }
)


def _process_wide_calls(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PROCESS_WIDE:
            yield node
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and t.value.attr == "handlers"
            for t in node.targets
        ):
            yield node  # root.handlers[:] = [...]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "get_logger"
            and ast.unparse(node) == "structlog.get_logger"
        ):
            yield node  # insider's modules log through insider.logs.get_logger


def test_only_process_logging_changes_the_logging_of_the_process() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        allowed: set[ast.AST] = set()
        if path.name == "logs.py" and path.parent == PACKAGE:
            allowed = {
                node
                for function in ast.walk(tree)
                if isinstance(function, ast.FunctionDef) and function.name in ("process_logging", "_put_back")
                for node in ast.walk(function)
            }
            allowed |= {n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "get_logger"}
        found += [
            f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}: {ast.unparse(node)[:80]}"
            for node in _process_wide_calls(tree)
            if node not in allowed
        ]
    assert found == []
