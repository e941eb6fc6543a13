"""Acceptance fixtures: the service as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from insider.config import ORIGINAL_IGNORED, ORIGINAL_NAMES
from tests.conftest import eventually

ORIGINAL_VARIABLES = {name for names in ORIGINAL_NAMES.values() for name in names} | set(ORIGINAL_IGNORED)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(**settings: str) -> dict[str, str]:
    """The environment for a service subprocess: no INSIDER_* setting from outside, these settings.

    The suite's own INSIDER_TEST_* variables stay (CI sets INSIDER_TEST_REQUIRE_SERVICES=1): the
    service must ignore them, and every subprocess of the suite shows that it does. The original
    Go service's names (DB_HOST, SMS_HOST, ...), which insider reads too, are dropped.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("INSIDER_") or k.startswith("INSIDER_TEST_")) and k not in ORIGINAL_VARIABLES
    }
    env.update({f"INSIDER_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("INSIDER_LOG_FORMAT", "json")
    return env


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_answering(self, session: aiohttp.ClientSession, path: str = "/readyz") -> None:
        """Wait until the service answers ``path`` with 200 (by default: ready, its schema applied);
        fail at once if it exited."""
        await wait_answering(session, self.process, self.log, self.base_url + path)


async def wait_answering(
    session: aiohttp.ClientSession,
    process: subprocess.Popen[bytes],
    log: Callable[[], str],
    url: str,
    *,
    timeout_s: float = 30,
) -> None:
    """Wait until ``url`` answers 200, failing with the process's output if it exits first."""

    async def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode}:\n{log()}")
        try:
            async with session.get(url) as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await eventually(up, timeout_s=timeout_s, what=f"{url} to answer")


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Any]:
    """Start ``python -m insider`` with the given settings; stopped (SIGKILL if need be) after the test."""
    started: list[Service] = []

    def start(*args: str, cwd: Path | None = None, **settings: str) -> Service:
        port = settings.pop("port", None) or str(free_port())
        log_path = tmp_path / f"service-{len(started)}.log"
        env = service_env(port=port, **settings)
        with log_path.open("wb") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "insider", *args],
                cwd=cwd or tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Service(process, f"http://127.0.0.1:{port}", log_path)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
        service.process.wait(timeout=10)


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log events in a service's output (other lines, like the start-up summary, skipped)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


async def start_simulator(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, *args: str, control_port: int | None = None
) -> Service:
    """``python -m insider simulate`` on a free port (and ``control_port``, when given), answering; ``args``
    add to it (``--latency 0`` unless they say otherwise)."""
    port = free_port()
    latency = () if "--latency" in args else ("--latency", "0")
    control = () if control_port is None else ("--control-port", str(control_port))
    simulator = start_service("simulate", "--port", str(port), *control, *latency, *args, port=str(port))
    await wait_answering(session, simulator.process, simulator.log, simulator.base_url + "/healthz")
    return simulator


def senders_to(services: Iterable[Service], provider: str) -> int:
    """How many of ``services`` logged a send to ``provider``."""
    return sum(
        1
        for service in services
        if any(e.get("event") == "send" and e.get("provider") == provider for e in log_events(service.log()))
    )


def stop_gracefully(services: Iterable[Service]) -> None:
    """SIGTERM to each, then each must end with exit code 0."""
    services = list(services)
    for service in services:
        service.process.send_signal(signal.SIGTERM)
    for service in services:
        assert service.process.wait(timeout=20) == 0
