"""Failover watched from outside: the service on two `simulate` subprocesses, one told to refuse, answer 503 and hang.

Everything is observed as an operator would: what each simulator lists (by content and
Idempotency-Key), the API's message status, the service's one log event per attempt, and
the history the service keeps in its database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from insider.adapters.webhook import open_http_session
from tests.acceptance.conftest import Service, free_port, log_events, start_simulator, stop_gracefully
from tests.conftest import eventually

PHONE = "+905301234001"
COOLDOWN_S = 5.0  # long enough that new messages reach beta before a half-open probe goes to alpha


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_http_session() as opened:
        yield opened


@dataclass
class Deployment:
    """Two simulators (alpha with a control port) and the service routing +90 to alpha, then beta."""

    session: aiohttp.ClientSession
    service: Service
    alpha: Service
    beta: Service
    control_url: str
    database_url: str
    ids: dict[str, int]

    async def listing(self, simulator: Service) -> list[dict[str, Any]]:
        # Alpha's through its control port: its webhook's port is closed while it is down.
        url = self.control_url if simulator is self.alpha else simulator.base_url
        async with self.session.get(url + "/messages") as response:
            return list((await response.json())["data"])

    async def counts(self) -> dict[str, int]:
        async with self.session.get(self.control_url + "/simulator") as response:
            return dict((await response.json())["counts"])

    async def where(self, content: str) -> list[str]:
        """The providers that list ``content`` as accepted."""
        found = []
        for name, simulator in (("alpha", self.alpha), ("beta", self.beta)):
            found += [name for m in await self.listing(simulator) if m["content"] == content]
        return found

    async def switch(self, body: dict[str, Any]) -> None:
        async with self.session.post(self.control_url + "/simulator/mode", json=body) as response:
            assert response.status == 200, await response.text()

    async def enqueue(self, content: str) -> None:
        async with self.session.post(
            self.service.base_url + "/api/v1/messages", json={"to": PHONE, "content": content}
        ) as response:
            assert response.status == 201, await response.text()
            self.ids[content] = (await response.json())["id"]

    async def status(self, content: str) -> str:
        async with self.session.get(f"{self.service.base_url}/api/v1/messages/{self.ids[content]}") as response:
            return str((await response.json())["status"])

    async def landed(self, *contents: str) -> list[str]:
        """Wait until each of ``contents`` is sent and listed by one simulator; which one, in order."""

        async def all_listed() -> bool:
            for content in contents:
                if await self.status(content) != "sent" or not await self.where(content):
                    return False
            return True

        await eventually(all_listed, timeout_s=20, what=f"{contents} sent")
        return [(await self.where(content))[0] for content in contents]

    async def send_one(self, content: str) -> str:
        await self.enqueue(content)
        [provider] = await self.landed(content)
        return provider

    async def back_to_alpha(self, prefix: str) -> None:
        """After alpha is back, once its breaker's cool-down has passed, messages go to it again."""
        for i in range(100):
            if await self.send_one(f"{prefix}-{i}") == "alpha":
                break
        else:
            raise AssertionError("traffic never went back to alpha")
        assert [await self.send_one(f"{prefix}-then-{i}") for i in range(3)] == ["alpha"] * 3

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """A query on the service's database (``%s`` placeholders), read-only."""
        if self.database_url.startswith("sqlite:///"):
            path = self.database_url.removeprefix("sqlite:///")
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                return db.execute(sql.replace("%s", "?"), params).fetchall()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def history(self, content: str) -> list[tuple[str, str]]:
        """The attempts of a message in the service's database: (outcome, provider), oldest first."""
        rows = self.rows(
            "SELECT outcome, provider FROM insider_message_events WHERE message_id = %s AND kind = 'attempt' "
            "ORDER BY at, id",
            self.ids[content],
        )
        return [(str(outcome), str(provider)) for outcome, provider in rows]

    def accepted_by(self, content: str) -> str | None:
        rows = self.rows("SELECT provider FROM messages WHERE id = %s", self.ids[content])
        return None if not rows else rows[0][0]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def deployment(
    request: pytest.FixtureRequest,
    start_service: Callable[..., Service],
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> AsyncIterator[Deployment]:
    if request.param == "postgres":
        database_url: str = request.getfixturevalue("fresh_postgres_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'insider.db'}"
    control_port = free_port()
    alpha = await start_simulator(start_service, session, control_port=control_port)
    beta = await start_simulator(start_service, session)
    providers = tmp_path / "providers.toml"
    providers.write_text(
        f"""
[[providers]]
name = "alpha"
url = "{alpha.base_url}/webhook"
timeout = "1s"
breaker_failures = 2
breaker_cooldown = "{COOLDOWN_S:g}s"

[[providers]]
name = "beta"
url = "{beta.base_url}/webhook"
timeout = "1s"

[[routes]]
match = {{ prefix = ["+90"] }}
strategy = "failover"
providers = ["alpha", "beta"]
"""
    )
    service = start_service(
        providers_file=str(providers),
        database_url=database_url,
        send_interval="0.1s",
        batch_size="1",
        send_concurrency="1",
        retry_backoff="0.1s",
        retry_backoff_max="0.2s",
        max_attempts="100",
    )
    await service.wait_answering(session)
    yield Deployment(session, service, alpha, beta, f"http://127.0.0.1:{control_port}", database_url, ids={})
    stop_gracefully([service])


async def test_traffic_moves_off_a_provider_that_refuses_answers_503_or_hangs_and_comes_back(
    deployment: Deployment,
) -> None:
    d = deployment
    assert await d.send_one("up") == "alpha"

    # Refused connections: certainly not taken, so each message moves on to beta at once.
    await d.switch({"mode": "down"})
    assert [await d.send_one(f"down-{i}") for i in range(4)] == ["beta"] * 4
    assert d.history("down-0") == [("failover", "alpha"), ("sent", "beta")]
    # Its breaker opened after two refusals: the later messages did not try alpha at all.
    assert d.history("down-3") == [("sent", "beta")]
    await d.switch({"mode": "up"})
    await d.back_to_alpha("back-from-down")

    # 503: answered, not taken; the same.
    failed_before = (await d.counts())["failed"]
    await d.switch({"mode": "error", "status": 503})
    assert [await d.send_one(f"error-{i}") for i in range(4)] == ["beta"] * 4
    assert d.history("error-0") == [("failover", "alpha"), ("sent", "beta")]
    assert (await d.counts())["failed"] - failed_before == 2  # then the breaker was open
    await d.switch({"mode": "up"})
    await d.back_to_alpha("back-from-error")

    # Hang: alpha may have the message (a timeout is ambiguous), so it waits for alpha with its
    # key; once two timeouts have opened the breaker, new messages go to beta.
    await d.switch({"mode": "hang"})
    await d.enqueue("hang-0")
    await d.enqueue("hang-1")

    def timeouts_at_alpha() -> int:
        return sum(
            1
            for e in log_events(d.service.log())
            if e.get("event") == "send" and e.get("provider") == "alpha" and "outcome unknown" in str(e.get("error"))
        )

    await eventually(lambda: timeouts_at_alpha() >= 2, timeout_s=20, what="two timeouts at alpha")
    for i in (2, 3, 4):
        await d.enqueue(f"hang-{i}")
    assert await d.landed("hang-2", "hang-3", "hang-4") == ["beta"] * 3
    assert await d.where("hang-0") == [] and await d.where("hang-1") == []  # held at alpha, not sent elsewhere
    assert {await d.status("hang-0"), await d.status("hang-1")} == {"pending"}
    await d.switch({"mode": "up"})
    assert await d.landed("hang-0", "hang-1") == ["alpha", "alpha"]
    # Its first attempt timed out (outcome unknown): it went again to alpha only, with its one key.
    history = d.history("hang-0")
    assert history[0] == ("retry", "alpha") and history[-1] == ("sent", "alpha"), history
    assert {provider for _, provider in history} == {"alpha"}
    await d.back_to_alpha("back-from-hang")

    # Nothing lost, nothing sent twice: every message listed once, by the provider the service recorded.
    alpha_listed, beta_listed = await d.listing(d.alpha), await d.listing(d.beta)
    contents = [m["content"] for m in alpha_listed + beta_listed]
    assert sorted(contents) == sorted(d.ids), "a message was lost or sent twice"
    keys = [m["idempotencyKey"] for m in alpha_listed + beta_listed]
    assert len(keys) == len(set(keys)) == len(d.ids)
    for listed, name in ((alpha_listed, "alpha"), (beta_listed, "beta")):
        assert all(d.accepted_by(m["content"]) == name for m in listed)
    assert {await d.status(content) for content in d.ids} == {"sent"}
