"""Log events: structlog loggers that keep secrets and phone numbers out, and the command line's log lines.

insider is a library first: its modules log through :func:`get_logger` and never configure
logging. Where structlog has been configured (by the command line, or by an embedding
program), their events follow that configuration; otherwise they go through the standard
library's ``logging.getLogger(name)`` to whatever handlers the embedding program set up.
Only ``python -m insider`` sets up the process's logging, with :func:`process_logging`:
JSON or console lines on stderr, written by a thread of its own.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, TextIO

import orjson
import structlog

from insider.domain import mask_phone

SECRET_KEYS: Final = frozenset({"auth_key", "webhook_auth_key", "api_token", "token", "password", "authorization"})
PHONE_KEYS: Final = frozenset({"to", "recipient_phone", "phone"})
LEVELS: Final = MappingProxyType(
    {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
)


def scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: drop secrets and mask phone numbers under well-known keys."""
    for key in event:
        if key in PHONE_KEYS:
            if isinstance(event[key], str) and "*" not in event[key]:
                event[key] = mask_phone(event[key])
        elif key.lower() in SECRET_KEYS:
            event[key] = "***"
    return event


# A secret in a query string (the receipts endpoint takes its token as ?token=): masked in access logs.
_QUERY_SECRET = re.compile(r"(?i)([?&](?:token|auth_key|api_token)=)[^&\s\"']*")


def mask_query_secrets(text: str) -> str:
    """``text`` with the values of ``token=`` (and the like) query parameters replaced by ``***``."""
    return _QUERY_SECRET.sub(r"\1***", text)


class UtcStamper:
    """Adds ``timestamp``: ISO 8601 UTC with microseconds, as ``2026-01-01T12:00:00.123456Z``.

    What structlog's ``TimeStamper(fmt="iso", utc=True)`` writes, in a third of its time
    (there is a line per send): the part up to the seconds is formatted once a second.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        event["timestamp"] = "%s.%06dZ" % (self._prefix, (now - second) * 1_000_000)  # noqa: UP031 (the fastest here)
        return event


# --- insider's loggers -------------------------------------------------------------------------------------------

_LOGFMT: Final = structlog.processors.LogfmtRenderer(bool_as_flag=False)


def _to_standard_library(_: Any, __: str, event: MutableMapping[str, Any]) -> tuple[tuple[str], dict[str, Any]]:
    """The event as the arguments of a standard library call: ``send message_id=12 outcome=sent ...``,
    readable in any formatter, with its exception (if any) for the handler to format."""
    kwargs = {key: event.pop(key) for key in ("exc_info", "stack_info") if key in event}
    name = str(event.pop("event", ""))
    rest = _LOGFMT(None, "", event) if event else ""
    return (f"{name} {rest}" if rest else name,), kwargs


# Where structlog is not configured: the standard library's loggers, their levels and handlers.
_STANDARD_LIBRARY_CHAIN: Final = (
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    _to_standard_library,
)


class Logger:
    """One of insider's loggers: structlog's as configured, or the standard library's when nobody configured it.

    Which one is decided at each call, so a program that configures structlog after importing
    insider gets insider's events its way too. Either way an event's fields are scrubbed
    first (:func:`scrub`): a secret or a phone number never leaves insider in one.
    """

    __slots__ = ("_configured", "_standard")

    def __init__(self, name: str) -> None:
        self._configured = structlog.get_logger(name)  # lazy: follows structlog.configure() whenever it comes
        self._standard = structlog.stdlib.BoundLogger(logging.getLogger(name), list(_STANDARD_LIBRARY_CHAIN), {})

    def _logger(self) -> Any:
        return self._configured if structlog.is_configured() else self._standard

    def debug(self, event: str, **fields: Any) -> None:
        self._logger().debug(event, **scrub(None, "", fields))

    def info(self, event: str, **fields: Any) -> None:
        self._logger().info(event, **scrub(None, "", fields))

    def warning(self, event: str, **fields: Any) -> None:
        self._logger().warning(event, **scrub(None, "", fields))

    def error(self, event: str, **fields: Any) -> None:
        self._logger().error(event, **scrub(None, "", fields))

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback) attached."""
        self._logger().exception(event, **scrub(None, "", fields))


def get_logger(name: str) -> Logger:
    """The logger insider's module ``name`` logs with (see :class:`Logger`)."""
    return Logger(name)


# --- the command line's logging ----------------------------------------------------------------------------------

# An info line may wait this long for the lines after it, to go out in the same write; a
# warning or an error goes at once, and takes the lines before it along.
FLUSH_AFTER_S = 0.05
# ...and the writer writes what is waiting in one go, up to this many lines at a time.
MAX_LINES_PER_WRITE = 1000


class LineWriter(logging.handlers.QueueListener):
    """Writes the log lines put on its queue to a stream, from a thread of its own, in the order they came.

    A line per send is most of what the service writes while it drains a backlog: a write (and a
    flush) per line cost about a seventh of its throughput, and waking this thread for every line
    cost as much again. So the first line after a quiet spell wakes the thread, which lets the
    lines of the next ``FLUSH_AFTER_S`` gather (a warning or an error cuts that short: ``urgent``)
    and writes all that is waiting in one go. ``stop()`` writes every line queued before it.
    """

    def __init__(self, stream: TextIO) -> None:
        self.lines: queue.SimpleQueue[Any] = queue.SimpleQueue()
        super().__init__(self.lines)
        self.urgent = threading.Event()
        self._stream = stream
        self._pending: list[str] = []
        self._running = False

    def start(self) -> None:
        super().start()
        self._running = True

    def dequeue(self, block: bool) -> Any:
        try:
            return self.lines.get_nowait()
        except queue.Empty:
            self.write()  # the queue ran dry: out with what came, before waiting for more
            first = self.lines.get(block)
            self.urgent.wait(FLUSH_AFTER_S)  # the lines logged next go out with it, unless one is urgent
            self.urgent.clear()
            return first

    def enqueue_sentinel(self) -> None:
        super().enqueue_sentinel()
        self.urgent.set()  # a stop waits for no window

    def handle(self, record: Any) -> None:
        self._pending.append(record)
        if len(self._pending) >= MAX_LINES_PER_WRITE:
            self.write()

    def stop(self) -> None:
        if not self._running:  # stopped already (by logging.shutdown(), say)
            return
        self._running = False
        super().stop()
        self.write()  # what the thread took with the stop, after its last write

    def write(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending = []
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed stream: nothing left to tell
            pass


class QueueLogger:
    """structlog's logger for the command line: each rendered line goes onto the writer's queue."""

    __slots__ = ("_put", "_urgent")

    def __init__(self, writer: LineWriter) -> None:
        self._put = writer.lines.put_nowait
        self._urgent = writer.urgent.set

    def msg(self, line: str) -> None:
        self._put(line)

    def warning(self, line: str) -> None:
        self._put(line)
        self._urgent()

    debug = info = msg
    warn = error = err = critical = fatal = exception = failure = warning


class FormattedQueueHandler(logging.handlers.QueueHandler):
    """The standard library's records (aiohttp's, psycopg's, ...), rendered as lines onto the writer's queue.

    Closing it stops the writer, every line queued written: ``logging.shutdown()``, which the
    standard library runs at exit (and a process that must end at once calls first), leaves
    no line behind.
    """

    def __init__(self, writer: LineWriter) -> None:
        super().__init__(writer.lines)
        self.writer = writer

    def prepare(self, record: logging.LogRecord) -> Any:
        return self.format(record)

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.writer.urgent.set()

    def close(self) -> None:
        self.writer.stop()
        super().close()


@contextmanager
def process_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> Iterator[None]:
    """The command line's logging, for the length of the block: every event as a line on ``stream`` (stderr).

    ``fmt`` is ``json``, ``console``, or ``auto``: console on a terminal, JSON otherwise. structlog's
    events and the standard library's records (other libraries') come out in the same format and
    in the order they were logged. Only ``python -m insider`` calls this: it sets up the process
    (structlog's configuration, the root logger's handler and level, the levels of
    ``aiohttp.access`` and ``psycopg.pool``) and puts all of it back on the way out, once every
    line logged has been written.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, UtcStamper()]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    exceptions = [structlog.processors.format_exc_info] if fmt == "json" else []
    writer = LineWriter(stream)
    handler = FormattedQueueHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exceptions, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, scrub],  # insider's own are scrubbed already
        )
    )
    writer.start()
    try:
        with _put_back():
            structlog.configure(
                processors=[*shared, *exceptions, renderer],
                wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
                logger_factory=lambda *_: QueueLogger(writer),
                cache_logger_on_first_use=False,
            )
            root = logging.getLogger()
            root.handlers[:] = [handler]
            root.setLevel(LEVELS[level])
            logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the service logs its requests itself
            # While PostgreSQL is down, psycopg_pool warns twice a second about each reconnection
            # attempt; the supervisor already logs one line per failed tick and one when it is back.
            logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
            yield
    finally:
        # The set-up is put back first, so that a line logged from now on goes where lines went
        # before (not onto a queue nobody reads); then every line queued so far is written.
        handler.close()


@contextmanager
def _put_back() -> Iterator[None]:
    """The process's logging set-up as it was before the block, once the block ends."""
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    others = {name: logging.getLogger(name).level for name in ("aiohttp.access", "psycopg.pool")}
    configured, config = structlog.is_configured(), structlog.get_config()
    try:
        yield
    finally:
        if configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(root_level)
        for name, level in others.items():
            logging.getLogger(name).setLevel(level)


def _json(event: Any, **_: Any) -> str:
    # orjson: a third of the standard library's time for one log line, and there is one per send.
    return orjson.dumps(event, default=str).decode()
