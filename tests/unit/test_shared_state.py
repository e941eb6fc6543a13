"""Building apps changes nothing the process shares: the route handlers (module functions every app uses),
webargs' parser, the standard library's loggers; and aiohttp's access log still never shows a ``?token=``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import webargs.aiohttpparser
from aiohttp import web
from aiohttp_apispec import AiohttpApiSpec

from insider.clock import FakeClock
from insider.web.app import create_app
from tests.unit.web_support import in_memory_container


def _shape(value: Any, keep: list[Any]) -> Any:
    """``value``'s dicts and lists as nested tuples, anything else by identity (kept alive in ``keep``)."""
    if isinstance(value, dict):
        return ("dict", tuple((key, _shape(item, keep)) for key, item in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_shape(item, keep) for item in value))
    keep.append(value)
    return ("object", id(value))


def _module_function(handler: Any) -> bool:
    """Whether ``handler`` is a function of a module (shared by every app that routes to it)."""
    module = sys.modules.get(getattr(handler, "__module__", ""))
    return module is not None and getattr(module, getattr(handler, "__name__", ""), None) is handler


def test_two_apps_leave_the_route_handlers_attributes_as_they_were() -> None:
    handlers = {
        id(route.handler): route.handler
        for route in create_app(in_memory_container(FakeClock())).router.routes()
        if _module_function(route.handler)
    }
    keep: list[Any] = []
    before = {key: _shape(dict(vars(handler)), keep) for key, handler in handlers.items()}
    assert any("__apispec__" in vars(handler) for handler in handlers.values())
    for _ in range(2):
        create_app(in_memory_container(FakeClock()))
    assert {key: _shape(dict(vars(handler)), keep) for key, handler in handlers.items()} == before


def test_aiohttp_apispec_never_reads_a_shared_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp-apispec edits the docs of the handlers it reads: it must only ever be given copies.
    read: list[Any] = []
    register = AiohttpApiSpec.register

    def spy(self: AiohttpApiSpec, app: web.Application, in_place: bool = False) -> None:
        read.extend(route.handler for route in app.router.routes() if hasattr(route.handler, "__apispec__"))
        register(self, app, in_place)

    monkeypatch.setattr(AiohttpApiSpec, "register", spy)
    create_app(in_memory_container(FakeClock()))
    assert read, "aiohttp-apispec read no documented handler at all"
    assert [handler for handler in read if _module_function(handler)] == []


def test_webargs_process_wide_parser_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = webargs.aiohttpparser.parser  # an embedding program's own routes may validate with it
    monkeypatch.setattr(parser, "error_callback", None)  # as a fresh process has it
    create_app(in_memory_container(FakeClock()))
    assert parser.error_callback is None


@pytest.fixture
def access_logger() -> Iterator[tuple[logging.Logger, list[str]]]:
    logger = logging.getLogger("tests.access")
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage() + " " + str(getattr(record, "first_request_line", "")))

    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, lines
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


async def test_an_access_log_masks_query_string_secrets_in_the_runners_own_format(
    access_logger: tuple[logging.Logger, list[str]],
) -> None:
    logger, lines = access_logger
    access, filters = logging.getLogger("aiohttp.access"), list(logging.getLogger("aiohttp.access").filters)
    container = in_memory_container(FakeClock())
    # Served by a runner of an embedding program's own, with its own access logger and format.
    runner = web.AppRunner(create_app(container), access_log=logger, access_log_format='"%r" %s')
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz?token=s3cret&x=1") as response,
        ):
            assert response.status == 200
    finally:
        await runner.cleanup()
        await container.repository().close()
    assert lines == ['"GET /healthz?token=***&x=1 HTTP/1.1" 200 GET /healthz?token=***&x=1 HTTP/1.1']
    assert access.filters == filters  # the process's aiohttp.access logger was not touched
