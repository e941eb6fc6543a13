"""Several providers through the real service: failover, breakers, ambiguous outcomes, on real local webhooks;
an SMPP provider on an SMSC of smpp34's server (not our simulator): bind, submits, throttling, deliver_sm receipts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import smpp34
from aiohttp import web
from aiohttp.test_utils import TestServer

from insider.config import load_settings
from insider.container import Container, open_service, resolve
from insider.domain import MessageStatus
from insider.ports import MessageRepository
from insider.providers.breaker import BreakerState
from tests.conftest import eventually
from tests.integration.smsc_peer import SmscPeer

PHONE = "+905301234001"


@dataclass
class Stub:
    """A provider's webhook on a real local port: answers ``status``, or hangs while ``hang`` is set."""

    server: TestServer
    keys: list[str] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    status: int = 202
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/send"))


@pytest.fixture
async def stubs() -> AsyncIterator[Callable[[], Any]]:
    made: list[Stub] = []

    async def make() -> Stub:
        app = web.Application()
        stub = Stub(TestServer(app))

        async def send(request: web.Request) -> web.Response:
            body = await request.json()
            stub.keys.append(request.headers["Idempotency-Key"])
            stub.contents.append(body["content"])
            if stub.hang:
                await stub.release.wait()
            if stub.status >= 300:
                return web.json_response({"error": "down"}, status=stub.status)
            return web.json_response({"message": "Accepted", "messageId": str(uuid.uuid4())}, status=202)

        app.router.add_post("/send", send)
        await stub.server.start_server()
        made.append(stub)
        return stub

    yield make
    for stub in made:
        stub.release.set()
        await stub.server.close()


def providers_file(tmp_path: Path, alpha: Stub, beta: Stub, *, route: str = "", failures: int = 2) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
[[providers]]
name = "alpha"
url = "{alpha.url}"
timeout = "0.5s"
price = 0.02
breaker_failures = {failures}
breaker_cooldown = "0.5s"

[[providers]]
name = "beta"
url = "{beta.url}"
price = 0.01

[[routes]]
providers = ["alpha", "beta"]
{route}
"""
    )
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Path], Any]:
    """The service's settings with a providers file, on each database."""
    if request.param == "postgres":
        database_url: str = request.getfixturevalue("fresh_postgres_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'insider.db'}"

    def settings_for(path: Path) -> Any:
        return load_settings(
            {
                "INSIDER_DATABASE_URL": database_url,
                "INSIDER_PROVIDERS_FILE": str(path),
                "INSIDER_SEND_INTERVAL": "0",
                "INSIDER_BATCH_SIZE": "1",
                "INSIDER_SEND_CONCURRENCY": "1",
                "INSIDER_RETRY_BACKOFF": "0.1s",
                "INSIDER_RETRY_BACKOFF_MAX": "0.2s",
                "INSIDER_AUTOSTART": "false",
            },
            env_file=None,
        )

    return settings_for


async def test_a_failing_provider_is_passed_over_its_breaker_opens_and_closes_once_it_is_back(
    stubs: Any, service: Any, tmp_path: Path
) -> None:
    alpha, beta = await stubs(), await stubs()
    alpha.status = 503
    container = Container(settings=service(providers_file(tmp_path, alpha, beta)))
    async with open_service(container) as supervisor:
        repository: MessageRepository = await resolve(container.repository)
        first = [(await repository.enqueue(PHONE, f"m{i}")).id for i in range(6)]
        await supervisor.start()
        await eventually(lambda: len(beta.keys) == 6, what="every message through beta")
        await eventually(lambda: _all_status(repository, first, MessageStatus.SENT), what="every outcome recorded")

        assert len(alpha.keys) == 2  # its breaker opened after two failures: not asked again
        sent = [await repository.get(i) for i in first]
        assert all(m is not None and (m.status, m.provider, m.cost) == (MessageStatus.SENT, "beta", 0.01) for m in sent)
        history = await repository.events(first[0])
        assert [(e.outcome, e.provider, e.status_code) for e in history] == [
            ("failover", "alpha", 503),
            ("sent", "beta", 202),
        ]
        assert beta.keys[0] == alpha.keys[0]  # the same message, the same key, at both
        totals = {t.provider: t for t in await repository.provider_totals()}
        assert totals["beta"].sent == 6 and totals["beta"].cost == pytest.approx(0.06)
        assert totals["alpha"].failed == 2

        alpha.status = 202  # back; after the cool-down a probe goes, succeeds, and closes the breaker
        dispatcher = await resolve(container.dispatcher)
        await eventually(
            lambda: dispatcher.providers["alpha"].breaker_state is BreakerState.HALF_OPEN, what="the cool-down"
        )
        later = [(await repository.enqueue(PHONE, f"later{i}")).id for i in range(3)]
        await eventually(lambda: len(alpha.keys) == 5, what="alpha taking the traffic again")
        await eventually(lambda: _all_status(repository, later, MessageStatus.SENT), what="their outcomes recorded")
        assert [m.provider for m in [await repository.get(i) for i in later] if m is not None] == ["alpha"] * 3
        await supervisor.stop()


async def test_an_ambiguous_outcome_goes_again_to_the_same_provider_with_the_same_key(
    stubs: Any, service: Any, tmp_path: Path
) -> None:
    alpha, beta = await stubs(), await stubs()
    alpha.hang = True  # it takes the request and never answers within the timeout
    container = Container(settings=service(providers_file(tmp_path, alpha, beta, failures=9)))
    async with open_service(container) as supervisor:
        repository: MessageRepository = await resolve(container.repository)
        message = await repository.enqueue(PHONE, "maybe")
        await supervisor.start()
        await eventually(lambda: len(alpha.keys) == 2, what="a second request to alpha")
        alpha.hang = False
        alpha.release.set()
        await eventually(
            lambda: _status_is(repository, message.id, MessageStatus.SENT), what="sent by alpha after the timeouts"
        )
        assert beta.keys == []  # never to another provider: alpha may have had it
        assert len(set(alpha.keys)) == 1  # always the same key
        got = await repository.get(message.id)
        assert got is not None and (got.provider, got.provider_pin) == ("alpha", None)
        history = await repository.events(message.id)
        assert {e.provider for e in history} == {"alpha"}
        assert history[0].outcome == "retry" and history[0].error is not None and "outcome unknown" in history[0].error
        await supervisor.stop()


async def _status_is(repository: MessageRepository, message_id: int, status: MessageStatus) -> bool:
    got = await repository.get(message_id)
    return got is not None and got.status is status


async def test_a_route_that_fails_over_on_ambiguous_outcomes_marks_a_possible_duplicate(
    stubs: Any, service: Any, tmp_path: Path
) -> None:
    alpha, beta = await stubs(), await stubs()
    alpha.hang = True
    path = providers_file(tmp_path, alpha, beta, route="failover_on_ambiguous = true")
    container = Container(settings=service(path))
    async with open_service(container) as supervisor:
        repository: MessageRepository = await resolve(container.repository)
        message = await repository.enqueue(PHONE, "maybe twice")
        await supervisor.start()
        await eventually(lambda: _status_is(repository, message.id, MessageStatus.SENT), what="sent by beta")
        got = await repository.get(message.id)
        assert got is not None and got.provider == "beta"
        history = await repository.events(message.id)
        assert [(e.outcome, e.provider) for e in history] == [("failover", "alpha"), ("sent", "beta")]
        assert history[0].error is not None and history[0].error.startswith("possible duplicate")
        assert alpha.keys == beta.keys
        await supervisor.stop()


def test_a_malformed_providers_file_stops_the_start_with_one_line_and_exit_2(tmp_path: Path) -> None:
    from tests.acceptance.conftest import service_env

    path = tmp_path / "providers.toml"
    path.write_text('[[providers]]\nname = "alpha"\nurl = "https://a.example"\nrate = -1\n')
    done = subprocess.run(
        [sys.executable, "-m", "insider"],
        cwd=tmp_path,
        env=service_env(providers_file=str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        f"insider: error: INSIDER_PROVIDERS_FILE: {path}:4: providers[0].rate: expected messages per second, "
        "a number > 0, got -1"
    ]


ESME_RTHROTTLED = 0x58


async def test_an_smpp_provider_binds_submits_slows_down_when_throttled_and_applies_deliver_sm_receipts(
    service: Any, tmp_path: Path
) -> None:
    submitted_at: list[float] = []

    def throttle_the_first_two(event: smpp34.SubmitSmEvent) -> int:
        submitted_at.append(time.monotonic())
        return ESME_RTHROTTLED if len(submitted_at) <= 2 else 0

    path = tmp_path / "providers.toml"
    async with SmscPeer(policy=throttle_the_first_two) as smsc:
        path.write_text(
            f"""
[[providers]]
name = "carrier"
kind = "smpp"
host = "127.0.0.1"
port = {smsc.port}
system_id = "insider"
password = "secret"
source = "INSIDER"
price = 0.01
"""
        )
        container = Container(settings=service(path))
        async with open_service(container) as supervisor:
            repository: MessageRepository = await resolve(container.repository)
            ids = [(await repository.enqueue(PHONE, f"m{i}")).id for i in range(3)]
            await supervisor.start()
            await eventually(lambda: [s.status for s in smsc.submits].count(0) == 3, what="three accepted")

            assert [e.system_id for e in smsc.sessions.values()] == ["insider"]  # one bind, ours
            # Throttled twice: the provider was left alone 1 s, then 2 s, before submitting again.
            assert submitted_at[1] - submitted_at[0] >= 0.9 and submitted_at[2] - submitted_at[1] >= 1.9
            await eventually(
                lambda: _all_status(repository, ids, MessageStatus.SENT), what="every message sent, none failed"
            )
            given = {s.message_id for s in smsc.submits if s.status == 0}
            messages = [m for m in [await repository.get(i) for i in ids] if m is not None]
            assert {m.message_id for m in messages} == given  # the ids of the SMSC's submit_sm_resp
            assert {(m.provider, m.cost) for m in messages} == {("carrier", 0.01)}
            refused = [e for i in ids for e in await repository.events(i) if e.outcome == "throttled"]
            assert len(refused) == 2 and all("ESME_RTHROTTLED" in (e.error or "") for e in refused)

            delivered, undelivered = messages[0].message_id, messages[1].message_id
            assert delivered is not None and undelivered is not None
            answers = [
                await smsc.deliver(
                    f"id:{delivered} sub:001 dlvrd:001 submit date:2612050930 done date:2612050931 "
                    "stat:DELIVRD err:000 text:m0".encode(),
                    esm_class=0x04,
                ),
                await smsc.deliver(
                    b"",
                    esm_class=0x04,
                    tlvs=[smpp34.Tlv(0x001E, undelivered.encode() + b"\x00"), smpp34.Tlv(0x0427, bytes([5]))],
                ),
            ]
            assert answers == [0, 0]  # deliver_sm_resp OK

            async def both_applied() -> bool:
                first = await _all_status(repository, ids[:1], MessageStatus.DELIVERED)
                return first and await _all_status(repository, ids[1:2], MessageStatus.UNDELIVERED)

            await eventually(both_applied, what="both receipts applied")
            for message_id, outcome in ((ids[0], "delivered"), (ids[1], "undelivered")):
                history = await repository.events(message_id)
                assert [(e.kind, e.outcome) for e in history][-2:] == [("attempt", "sent"), ("receipt", outcome)]
            got = await repository.get(ids[0])
            assert got is not None and got.delivered_at is not None
            await supervisor.stop()
        assert smsc.unbound  # the bind was let go on the way out


async def _all_status(repository: MessageRepository, ids: list[int], status: MessageStatus) -> bool:
    got = [await repository.get(i) for i in ids]
    assert all(m is not None and m.status is not MessageStatus.FAILED for m in got)
    return all(m is not None and m.status is status for m in got)
