"""aiohttp's access log line for the app, with secrets in query strings (the receipts endpoint's ``?token=``) masked."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from aiohttp.web_log import AccessLogger

from insider.logs import mask_query_secrets


class QuerySecretsMasked(AbstractAccessLogger):
    """aiohttp's own access log line (``access_log_format`` and all), its query-string secrets masked.

    The app names it in its ``handler_args``, so it is used wherever the app runs: a runner
    with an access log (an embedding program's ``web.run_app(app)``) logs to its own logger
    (``aiohttp.access`` by default), in its own format, and nothing of the process's logging
    is changed. A runner with ``access_log=None`` (the command line's) logs no access at all.
    """

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        masked = _MaskedLogger(logger)
        super().__init__(masked, log_format)  # type: ignore[arg-type]  # a LoggerAdapter logs as a Logger does
        self._line = AccessLogger(masked, log_format)  # type: ignore[arg-type]

    @property
    def enabled(self) -> bool:
        return self._line.enabled

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self._line.log(request, response, time)


class _MaskedLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The access logger, its messages and their ``extra`` fields (``first_request_line``, headers) masked."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        if extra:
            kwargs["extra"] = {key: _masked(value) for key, value in extra.items()}
        return _masked(msg), kwargs


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_query_secrets(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return value
