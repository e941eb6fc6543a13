"""What insider.web.aiohttp_seam relies on in aiohttp's server is still there, as it was.

The seam uses what aiohttp offers no public hook for (see its docstring). Each test here names one of those
things, so that an aiohttp upgrade that moves one fails by name, before any behaviour test has to be read;
the behaviour itself is shown by tests/integration/test_http_server.py and tests/acceptance/test_http_edges.py,
and that nothing else in insider uses aiohttp's private API by tests/unit/test_aiohttp_public_api.py.
"""

from __future__ import annotations

import asyncio
import configparser
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import http_exceptions, web, web_protocol
from packaging.requirements import Requirement

from insider.web import aiohttp_seam

ROOT = Path(__file__).resolve().parents[2]


def _aiohttp_requirement() -> Requirement:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines()]
    [line] = [line for line in lines if line.startswith("aiohttp") and not line.startswith("aiohttp-")]
    return Requirement(line)


def test_aiohttp_is_pinned_to_the_minor_version_the_seam_was_checked_on() -> None:
    requirement = _aiohttp_requirement()
    assert aiohttp.__version__ in requirement.specifier
    # One minor version: a release that may change the internals needs this module read again.
    assert {spec.operator for spec in requirement.specifier} == {">=", "<"}
    low = next(spec.version for spec in requirement.specifier if spec.operator == ">=")
    high = next(spec.version for spec in requirement.specifier if spec.operator == "<")
    major, minor = (int(part) for part in low.split(".")[:2])
    assert high == f"{major}.{minor + 1}"


def test_the_runner_makes_its_server_in_a_coroutine_taking_no_argument() -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    assert list(inspect.signature(web.AppRunner._make_server).parameters) == ["self"]


async def _handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


async def test_a_server_keeps_what_it_was_made_with_and_makes_plain_request_handlers() -> None:
    server = web.Server(_handler, handler_cancellation=True, keepalive_timeout=3.0, max_headers=7)
    assert server._kwargs == {"keepalive_timeout": 3.0, "max_headers": 7}
    assert (server.request_handler, server.handler_cancellation) == (_handler, True)
    assert callable(server.request_factory)
    assert list(inspect.signature(server.request_factory).parameters) == [
        "message",
        "payload",
        "protocol",
        "writer",
        "task",
    ]
    assert type(server()) is web.RequestHandler


def test_the_request_handler_takes_what_the_seam_passes_it() -> None:
    parameters = inspect.signature(web.RequestHandler.__init__).parameters
    assert list(parameters)[:2] == ["self", "manager"]
    assert parameters["loop"].kind is inspect.Parameter.KEYWORD_ONLY
    passed = ("keepalive_timeout", "lingering_time", "max_line_size", "max_field_size", "max_headers", "access_log")
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in passed)


@pytest.mark.parametrize(
    ("name", "parameters", "is_coroutine"),
    [
        ("handle_error", ["self", "request", "status", "exc", "message"], False),
        ("finish_response", ["self", "request", "resp", "start_time"], True),
        ("data_received", ["self", "data"], False),
        ("connection_made", ["self", "transport"], False),
        ("connection_lost", ["self", "exc"], False),
        ("force_close", ["self"], False),
    ],
)
def test_the_methods_the_seam_overrides_or_calls_keep_their_signatures(
    name: str, parameters: list[str], is_coroutine: bool
) -> None:
    method = getattr(web.RequestHandler, name)
    assert list(inspect.signature(method).parameters) == parameters
    assert inspect.iscoroutinefunction(method) is is_coroutine


def test_the_parser_errors_the_seam_tells_apart_are_where_they_were() -> None:
    assert issubclass(http_exceptions.LineTooLong, http_exceptions.HttpProcessingError)
    assert issubclass(http_exceptions.BadHttpMethod, http_exceptions.HttpProcessingError)
    assert issubclass(http_exceptions.InvalidURLError, http_exceptions.HttpProcessingError)
    assert issubclass(web.RequestPayloadError, Exception)


def test_the_state_the_seam_reads_is_where_it_was() -> None:
    slots = web.RequestHandler.__slots__
    assert "_waiter" in slots and "_messages" in slots
    assert [field.name for field in web_protocol._ErrInfo.__attrs_attrs__] == ["status", "exc", "message"]


class _Transport(asyncio.Transport):
    """Just enough of a transport for a connection handler fed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.written = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _answer(status: int, exc: BaseException | None) -> web.Response:
    return web.json_response({"error": str(status)}, status=status)


@pytest.fixture
async def connection() -> AsyncIterator[tuple[aiohttp_seam._Connection, _Transport]]:
    server = aiohttp_seam._Server(web.Server(_handler), header_timeout_s=30, answer=_answer)
    protocol = server()
    transport = _Transport()
    protocol.connection_made(transport)
    await asyncio.sleep(0)  # one turn of the loop: aiohttp's start() now waits for a request head
    try:
        yield protocol, transport
    finally:
        protocol.connection_lost(None)


async def test_a_connection_waiting_for_a_head_has_a_pending_waiter(
    connection: tuple[aiohttp_seam._Connection, _Transport],
) -> None:
    protocol, _ = connection
    assert isinstance(protocol._waiter, asyncio.Future) and not protocol._waiter.done()
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert protocol._waiter is None or protocol._waiter.done()


async def test_a_head_the_parser_refuses_is_queued_as_an_err_info_and_then_nothing_is_read(
    connection: tuple[aiohttp_seam._Connection, _Transport],
) -> None:
    protocol, transport = connection
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nnot a header\r\n")
    [(refused, _)] = protocol._messages
    assert isinstance(refused, web_protocol._ErrInfo) and refused.status == 400
    assert not transport.reading
    protocol.data_received(b"more of the same\r\n" * 1000)
    assert len(protocol._messages) == 1  # aiohttp alone would queue one more error per read


async def test_the_seams_own_attributes_shadow_none_of_aiohttps(
    connection: tuple[aiohttp_seam._Connection, _Transport],
) -> None:
    protocol, _ = connection
    own = set(vars(protocol)) | {name for name in vars(aiohttp_seam._Connection) if not name.startswith("__")}
    ours = {name for name in own if name.startswith("_seam_")}
    assert ours and ours.isdisjoint(dir(web.RequestHandler))
    assert own - ours <= set(dir(web.RequestHandler))  # everything else is an override
