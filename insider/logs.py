"""structlog set-up: JSON or console lines on stderr, with secrets and phone numbers kept out."""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog

from insider.domain import mask_phone

_SECRET_KEYS = frozenset({"auth_key", "webhook_auth_key", "api_token", "token", "password", "authorization"})
_PHONE_KEYS = frozenset({"to", "recipient_phone", "phone"})
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


# Keys seen to hold neither a secret nor a phone number; they come from code, so this stays
# small (and is capped). Most events then cost one set difference.
_PLAIN_KEYS: set[str] = set()


def scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: drop secrets and mask phone numbers under well-known keys."""
    for key in event.keys() - _PLAIN_KEYS:
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif key in _PHONE_KEYS:
            if isinstance(event[key], str) and "*" not in event[key]:
                event[key] = mask_phone(event[key])
        elif len(_PLAIN_KEYS) < 10_000:
            _PLAIN_KEYS.add(key)
    return event


# A secret in a query string (the receipts endpoint takes its token as ?token=): masked in access logs.
_QUERY_SECRET = re.compile(r"(?i)([?&](?:token|auth_key|api_token)=)[^&\s\"']*")


def mask_query_secrets(text: str) -> str:
    """``text`` with the values of ``token=`` (and the like) query parameters replaced by ``***``."""
    return _QUERY_SECRET.sub(r"\1***", text)


class QuerySecretFilter(logging.Filter):
    """Masks query-string secrets in the lines of aiohttp's access log (an embedding program may keep it on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = mask_query_secrets(record.msg)
        if record.args:
            record.args = tuple(mask_query_secrets(a) if isinstance(a, str) else a for a in record.args)
        return True


_QUERY_SECRET_FILTER = QuerySecretFilter()


def mask_access_log_secrets() -> None:
    """Install :class:`QuerySecretFilter` on aiohttp's access logger, once (it is the process's logger)."""
    access = logging.getLogger("aiohttp.access")
    if _QUERY_SECRET_FILTER not in access.filters:
        access.addFilter(_QUERY_SECRET_FILTER)


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


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog (and the standard library's logging) to ``stream`` in one format.

    ``fmt`` is ``json``, ``console``, or ``auto``: console on a terminal, JSON otherwise.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcStamper(),
        scrub,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info if fmt == "json" else _noop, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: BufferedLogger(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library land in the same stream and format.
    handler = _InOrderStreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.INFO) if level != "debug" else logging.DEBUG)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # we log requests ourselves
    # While PostgreSQL is down, psycopg_pool warns twice a second about each reconnection
    # attempt; the supervisor already logs one line per failed tick and one when it is back.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class BufferedLogger:
    """Writes log lines in batches: at most ``FLUSH_AFTER_S`` late, and at once from warning up.

    A line per send is most of what the service writes while it drains a backlog, and a
    write (and flush) per line cost about a seventh of its throughput. Lines of the same
    event-loop turn go out together; warnings and errors flush everything at once, in
    order, and so does ``flush_logs()`` (called on the way out). Outside a running event
    loop every line is written directly.

    Each event loop has a buffer and a flush timer of its own: a loop that ends with a
    flush pending leaves no state behind that could hold back another loop's lines (its
    own lines go out with the next flush of any loop, a warning, or the process exit).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        _buffer(self._stream, message)

    info = debug = msg

    def warning(self, message: str) -> None:
        _buffer(self._stream, message)
        flush_logs()

    warn = error = critical = exception = fatal = failure = err = warning


class _InOrderStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's lines, after the buffered lines logged before them."""

    def emit(self, record: logging.LogRecord) -> None:
        flush_logs()
        super().emit(record)


FLUSH_AFTER_S = 0.05


class _LoopBuffer:
    """The lines one event loop logged and has not written yet, and its pending flush."""

    __slots__ = ("flush", "lines")

    def __init__(self) -> None:
        self.lines: list[tuple[TextIO, str]] = []
        self.flush: asyncio.TimerHandle | None = None


# Per event loop. A loop that ended with lines in its buffer (its flush timer never fired)
# is swept as soon as another loop starts logging, or at the next flush: none are lost.
_buffers: dict[asyncio.AbstractEventLoop, _LoopBuffer] = {}
_lock = threading.Lock()  # loops in other threads (an embedding program's) log too


def _buffer(stream: TextIO, line: str) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush_logs()
        _write([(stream, line)])
        return
    with _lock:
        buffer = _buffers.get(loop)
        if buffer is None:
            left = _sweep_closed_loops()
            buffer = _buffers[loop] = _LoopBuffer()
        else:
            left = []
        buffer.lines.append((stream, line))
        if buffer.flush is None:
            buffer.flush = loop.call_later(FLUSH_AFTER_S, _flush_loop, buffer)
    if left:
        _write(left)


def _sweep_closed_loops() -> list[tuple[TextIO, str]]:
    """The lines of loops that have closed, which are forgotten (call with the lock held)."""
    left: list[tuple[TextIO, str]] = []
    for loop in [loop for loop in _buffers if loop.is_closed()]:
        left.extend(_buffers.pop(loop).lines)
    return left


def _flush_loop(buffer: _LoopBuffer) -> None:
    with _lock:
        buffer.flush = None
        lines, buffer.lines = buffer.lines, []
    _write(lines)


def flush_logs() -> None:
    """Write out every buffered log line now, of every event loop."""
    with _lock:
        lines = [line for buffer in _buffers.values() for line in buffer.lines]
        for buffer in _buffers.values():
            buffer.lines = []
        _sweep_closed_loops()
    _write(lines)


def _write(lines: list[tuple[TextIO, str]]) -> None:
    """Write ``lines`` in order, one write and one flush per run of lines to the same stream."""
    start = 0
    while start < len(lines):
        stream = lines[start][0]
        end = start
        while end < len(lines) and lines[end][0] is stream:
            end += 1
        try:
            stream.write("\n".join(line for _, line in lines[start:end]) + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed stream: nothing left to tell
            pass
        start = end


atexit.register(flush_logs)


def _json(event: Any, **_: Any) -> str:
    # orjson: a third of the standard library's time for one log line, and there is one per send.
    return orjson.dumps(event, default=str).decode()


def _noop(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event
