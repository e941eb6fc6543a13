"""structlog set-up: JSON or console lines on stderr, with secrets and phone numbers kept out."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from insider.domain import mask_phone

_SECRET_KEYS = frozenset({"auth_key", "webhook_auth_key", "api_token", "token", "password", "authorization"})
_PHONE_KEYS = frozenset({"to", "recipient_phone", "phone"})
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: drop secrets and mask phone numbers under well-known keys."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif key in _PHONE_KEYS and isinstance(event[key], str) and "*" not in event[key]:
            event[key] = mask_phone(event[key])
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
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info if fmt == "json" else _noop, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library land in the same stream and format.
    handler = logging.StreamHandler(stream)
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


def _noop(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event
