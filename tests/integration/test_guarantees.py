"""Delivery guarantees (issue 3) on the real PostgreSQL and Redis, with real HTTP providers.

Each test is the specification of one promise: retries, idempotency keys, leases, stop,
several processes sharing one rate, database and Redis outages, and start-up with the
database down. Nothing sleeps to synchronise: tests wait on conditions with deadlines,
on events, or for at most a tiny interval when something must *not* happen.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from dependency_injector import providers
from structlog.testing import capture_logs

from insider.adapters.postgres import Pool, PostgresMessageRepository, open_postgres_pool
from insider.adapters.webhook import IDEMPOTENCY_HEADER, WebhookSmsClient, open_http_session
from insider.clock import SystemClock
from insider.config import Settings, load_settings
from insider.container import Container, open_service
from insider.domain import Message, MessageStatus, Resolution, SendOrder, slot_tolerance_s
from insider.ports import RepositoryUnavailable
from insider.receipt_parsing import ReceiptOutcome
from insider.sender import BatchSender, SenderOptions
from insider.supervisor import STOP_MARGIN_S, Supervisor
from insider.web.app import create_app
from tests.conftest import eventually
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

PHONE = "+905301234567"
# How long a pool waits for a connection before the call fails as RepositoryUnavailable;
# short, so that outage tests fail their ticks quickly.
QUICK_POOL_TIMEOUT_S = 0.5
# How far the host's clock and PostgreSQL's now() may disagree about one instant (same host).
CLOCK_SLACK = timedelta(milliseconds=50)


# --- a provider that answers as scripted ---------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One answer of the provider: a status (with headers); ``hang`` holds it until ``release`` is set."""

    status: int = 202
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True)
class Hit:
    """One request as the provider received it."""

    at: float  # time.monotonic()
    wall: datetime
    key: str
    content: str
    message_id: str | None  # the provider's, when it accepted


@dataclass
class ScriptedProvider:
    """A webhook on a real local port. Requests get ``replies[content]`` in turn, then a 202."""

    server: TestServer
    hits: list[Hit] = field(default_factory=list)
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends hanging requests (at teardown)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/webhook"))

    def keys(self) -> list[str]:
        return [hit.key for hit in self.hits]

    def of(self, content: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.content == content]


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedProvider]:
    app = web.Application()
    state = ScriptedProvider(server=TestServer(app))

    async def webhook(request: web.Request) -> web.Response:
        body = await request.json()
        at, wall = time.monotonic(), datetime.now(UTC)
        script = state.replies.get(body["content"])
        reply = script.pop(0) if script else Reply()
        accepted_id = str(uuid.uuid4()) if 200 <= reply.status < 300 else None
        state.hits.append(Hit(at, wall, request.headers[IDEMPOTENCY_HEADER], body["content"], accepted_id))
        if reply.hang:
            await state.release.wait()
        if accepted_id is None:
            return web.json_response({"error": "nope"}, status=reply.status, headers=dict(reply.headers))
        return web.json_response({"message": "Accepted", "messageId": accepted_id}, status=reply.status)

    app.router.add_post("/webhook", webhook)
    await state.server.start_server()
    try:
        yield state
    finally:
        state.release.set()
        await state.server.close()


# --- one process's worth of the service -----------------------------------------------------------


class RecordingRepository(PostgresMessageRepository):
    """The PostgreSQL repository, keeping each row as it stood right after each outcome write.

    That shows the states a message went through (pending with a retry time, then sent)
    without racing the sender to observe them. ``hold_claims`` / ``hold_resolves``, when
    set, make a claim (after it committed) or an outcome write (before it starts) wait
    for the event, as a slow database would.
    """

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self.written: list[Message] = []
        self.hold_claims: asyncio.Event | None = None
        self.hold_resolves: asyncio.Event | None = None
        self.claiming = asyncio.Event()
        self.resolving = asyncio.Event()
        self.resolved = 0

    async def claim(self, limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        claimed = await super().claim(limit, lease_s, order)
        if claimed and self.hold_claims is not None:
            self.claiming.set()
            await self.hold_claims.wait()
        return claimed

    async def resolve(self, resolutions: Sequence[Resolution]) -> Sequence[ReceiptOutcome]:
        if self.hold_resolves is not None:
            self.resolving.set()
            await self.hold_resolves.wait()
        applied = await super().resolve(resolutions)
        self.resolved += 1
        for r in resolutions:
            row = await self.get(r.id)
            assert row is not None
            self.written.append(row)
        return applied

    def states(self, message_id: int) -> list[Message]:
        return [m for m in self.written if m.id == message_id]


@dataclass
class Instance:
    pool: Pool
    repository: RecordingRepository
    sender: BatchSender
    supervisor: Supervisor


@asynccontextmanager
async def instance(
    database_url: str,
    provider_url: str,
    *,
    interval_s: float,
    batch_size: int = 2,
    timeout_s: float = 2.0,
    max_attempts: int = 5,
    backoff_s: float = 30.0,
) -> AsyncIterator[Instance]:
    """What one process runs: its own pool, repository, HTTP client, sender and supervisor.

    Jitter is off (the full backoff), so retry times are exact.
    """
    async with (
        open_postgres_pool(database_url) as pool,
        open_http_session(concurrency_limit=8) as http,
    ):
        repository = RecordingRepository(pool)
        client = WebhookSmsClient(http, provider_url, "guarantees-key", timeout_s)
        options = SenderOptions(
            batch_size=batch_size,
            lease_s=timeout_s + 30.0,
            max_attempts=max_attempts,
            retry_backoff_s=backoff_s,
            retry_backoff_max_s=max(backoff_s, 3600.0),
        )
        sender = BatchSender(repository, client, None, SystemClock(), options, jitter=lambda: 1.0)
        supervisor = Supervisor(sender, repository, interval_s=interval_s)
        try:
            yield Instance(pool, repository, sender, supervisor)
        finally:
            await supervisor.stop()


async def add(repository: PostgresMessageRepository, count: int, prefix: str = "m") -> list[Message]:
    """``count`` pending messages, oldest first, with contents ``<prefix>0``, ``<prefix>1``, ..."""
    return [await repository.enqueue(PHONE, f"{prefix}{i}") for i in range(count)]


async def row(repository: PostgresMessageRepository, message: Message) -> Message:
    got = await repository.get(message.id)
    assert got is not None
    return got


async def status_is(repository: PostgresMessageRepository, message: Message, status: MessageStatus) -> bool:
    return (await row(repository, message)).status is status


async def all_sent(repository: PostgresMessageRepository, messages: Sequence[Message]) -> bool:
    return all([await status_is(repository, m, MessageStatus.SENT) for m in messages])


async def ends_within(task: asyncio.Task[Any], seconds: float = 0.2) -> bool:
    """Whether ``task`` ends within ``seconds``: a short bounded wait, for what must *not* happen yet."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return bool(done)


# --- transient and permanent failures -------------------------------------------------------------


async def test_a_provider_that_fails_then_succeeds_gets_the_message_again_with_the_same_key(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    [message] = await add(pg_repository, 1)
    scripted.replies["m0"] = [Reply(503)]
    before = datetime.now(UTC)
    async with instance(postgres_url, scripted.url, interval_s=0.05, backoff_s=0.3) as service:
        await service.supervisor.start()
        await eventually(lambda: status_is(pg_repository, message, MessageStatus.SENT), what="the retry to succeed")

    retried, sent = service.repository.states(message.id)
    assert retried.status is MessageStatus.PENDING
    assert retried.attempts == 1
    assert retried.last_error is not None and retried.last_error.startswith("HTTP 503")
    assert retried.next_attempt_at is not None and retried.next_attempt_at >= before + timedelta(seconds=0.3)
    assert sent.status is MessageStatus.SENT and sent.attempts == 2 and sent.sent_at is not None
    first, second = scripted.hits
    assert sent.message_id == second.message_id
    # The same key on both attempts, the row's own; the retry waited for its backoff.
    assert first.key == second.key == message.idempotency_key
    assert second.at - first.at >= 0.3


async def test_a_provider_that_answers_400_fails_the_message_at_once(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    [message] = await add(pg_repository, 1)
    scripted.replies["m0"] = [Reply(400)]
    async with instance(postgres_url, scripted.url, interval_s=0.05, backoff_s=0.01) as service:
        await service.supervisor.start()
        await eventually(lambda: status_is(pg_repository, message, MessageStatus.FAILED), what="the failure")

    failed = await row(pg_repository, message)
    assert failed.attempts == 1
    assert failed.last_error is not None and "HTTP 400" in failed.last_error
    assert failed.next_attempt_at is None and failed.sent_at is None
    assert [m.status for m in service.repository.states(message.id)] == [MessageStatus.FAILED]
    assert len(scripted.hits) == 1


async def test_a_provider_that_hangs_past_the_timeout_is_retried_not_left_sending(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    [message] = await add(pg_repository, 1)
    scripted.replies["m0"] = [Reply(hang=True)]  # answers only when the test ends
    async with instance(postgres_url, scripted.url, interval_s=0.05, timeout_s=0.2, backoff_s=0.05) as service:
        await service.supervisor.start()
        await eventually(lambda: status_is(pg_repository, message, MessageStatus.SENT), what="the retry to succeed")

    timed_out, sent = service.repository.states(message.id)
    assert timed_out.status is MessageStatus.PENDING and timed_out.attempts == 1
    assert timed_out.last_error == "outcome unknown: timeout after 0.2s"  # no status came
    assert timed_out.lease_expires_at is None and timed_out.claim_token is None
    assert sent.attempts == 2
    first, second = scripted.hits
    assert first.key == second.key == message.idempotency_key
    assert second.at - first.at >= 0.2


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_from_the_provider_sets_the_next_attempt(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider, status: int
) -> None:
    [message] = await add(pg_repository, 1)
    # Delta-seconds for the 429, an HTTP-date for the 503; both far from the 1 s backoff.
    retry_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=90)
    retry_after = "120" if status == 429 else format_datetime(retry_at, usegmt=True)
    scripted.replies["m0"] = [Reply(status, {"Retry-After": retry_after})]
    async with instance(postgres_url, scripted.url, interval_s=0.05, backoff_s=1.0) as service:
        before = datetime.now(UTC)
        report = await service.sender.run_batch()
        after = datetime.now(UTC)
        assert report.retried == 1
        assert (await service.sender.run_batch()).claimed == 0  # not due before its time

    waiting = await row(pg_repository, message)
    # The provider asked to slow down: a throttled try, in the history, not counted as an attempt.
    assert waiting.status is MessageStatus.PENDING and waiting.attempts == 0
    assert [e.outcome for e in await pg_repository.events(message.id)] == ["throttled"]
    assert waiting.last_error is not None and waiting.last_error.startswith(f"HTTP {status}")
    assert waiting.next_attempt_at is not None
    if status == 429:
        low, high = before + timedelta(seconds=120), after + timedelta(seconds=120)
    else:  # a date: the next attempt is at that moment, give or take the host's and the database's clocks
        low, high = retry_at - timedelta(seconds=1), retry_at + timedelta(seconds=1)
    assert low - CLOCK_SLACK <= waiting.next_attempt_at <= high + CLOCK_SLACK


async def test_a_message_out_of_attempts_fails_and_keeps_its_attempts(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    [message] = await add(pg_repository, 1)
    scripted.replies["m0"] = [Reply(503)] * 3  # a fourth request would be accepted
    async with instance(postgres_url, scripted.url, interval_s=0.02, max_attempts=3, backoff_s=0.01) as service:
        await service.supervisor.start()
        await eventually(lambda: status_is(pg_repository, message, MessageStatus.FAILED), what="giving up")

    failed = await row(pg_repository, message)
    assert failed.attempts == 3
    assert failed.last_error is not None and failed.last_error.startswith("gave up after 3 attempts: HTTP 503")
    assert [m.status for m in service.repository.states(message.id)] == [
        MessageStatus.PENDING,
        MessageStatus.PENDING,
        MessageStatus.FAILED,
    ]
    assert scripted.keys() == [message.idempotency_key] * 3


async def test_a_message_waiting_for_its_retry_does_not_hold_back_the_ones_behind_it(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    oldest, *behind = await add(pg_repository, 3)
    scripted.replies["m0"] = [Reply(503)]
    async with instance(postgres_url, scripted.url, interval_s=0.05, batch_size=1, backoff_s=3600) as service:
        await service.supervisor.start()
        await eventually(lambda: all_sent(pg_repository, behind), what="the newer messages to be sent")

    waiting = await row(pg_repository, oldest)
    assert waiting.status is MessageStatus.PENDING and waiting.next_attempt_at is not None
    assert waiting.next_attempt_at > datetime.now(UTC) + timedelta(minutes=59)
    assert [hit.content for hit in scripted.hits] == ["m0", "m1", "m2"]


# --- leases, stop and start -----------------------------------------------------------------------


async def test_a_claim_whose_process_died_is_sent_after_its_lease_with_the_same_key(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    messages = await add(pg_repository, 2)
    # A process claims them and dies before sending: they are "sending" with a short lease.
    dead = await pg_repository.claim(2, lease_s=0.3)
    assert {m.id for m in dead} == {m.id for m in messages}
    async with instance(postgres_url, scripted.url, interval_s=0.05) as service:
        await service.supervisor.start()
        await eventually(lambda: all_sent(pg_repository, messages), what="the abandoned claims to be sent")

    assert sorted(scripted.keys()) == sorted(m.idempotency_key for m in messages)
    for claim, hit in zip(dead, sorted(scripted.hits, key=lambda h: h.content), strict=True):
        assert claim.lease_expires_at is not None
        assert hit.wall >= claim.lease_expires_at - CLOCK_SLACK  # not before the lease ran out
        assert (await row(pg_repository, claim)).attempts == 2
    # The "dead" process wakes up and writes its stale outcome: its claim no longer holds.
    await pg_repository.resolve(
        [Resolution(m.id, m.claim_token, MessageStatus.FAILED, last_error="stale writer") for m in dead]
    )
    assert await all_sent(pg_repository, messages)


async def test_stop_during_a_request_puts_the_message_back_and_a_later_start_sends_it_with_the_same_key(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    [message] = await add(pg_repository, 1)
    scripted.replies["m0"] = [Reply(hang=True)]
    interval_s = 0.4
    async with instance(postgres_url, scripted.url, interval_s=interval_s) as service:
        await service.supervisor.start()
        await eventually(lambda: len(scripted.hits) == 1, what="the request to be in flight")
        await service.supervisor.stop()

        back = await row(pg_repository, message)
        assert back.status is MessageStatus.PENDING
        assert back.attempts == 0  # the interrupted attempt does not count
        assert back.last_error is None and back.claim_token is None and back.lease_expires_at is None
        assert back.next_attempt_at is not None and back.next_attempt_at <= datetime.now(UTC) + CLOCK_SLACK
        assert back.idempotency_key == message.idempotency_key

        await service.supervisor.start()
        await eventually(lambda: status_is(pg_repository, message, MessageStatus.SENT), what="the send after start")

    first, second = scripted.hits
    assert first.key == second.key == message.idempotency_key
    # The restart waited for the deployment's slot: one interval after the first batch. The
    # hits trail the slots by a claim each; the first claim on a fresh connection (catalog
    # caches cold, and the claim reads one index range per priority) may trail by more, hence
    # the extra allowance. Without the wait the hits would be milliseconds apart.
    claim_jitter_s = 0.1
    assert second.at - first.at >= interval_s - slot_tolerance_s(interval_s) - claim_jitter_s
    assert [m.status for m in service.repository.states(message.id)] == [MessageStatus.PENDING, MessageStatus.SENT]
    # The history keeps the request the stop cut short, then the send.
    assert [(e.kind, e.outcome) for e in await pg_repository.events(message.id)] == [
        ("attempt", "interrupted"),
        ("attempt", "sent"),
    ]


async def test_a_graceful_stop_lets_the_request_in_flight_finish_and_records_it(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    [message] = await add(pg_repository, 1)
    scripted.replies["m0"] = [Reply(hang=True)]
    async with instance(postgres_url, scripted.url, interval_s=3600) as service:
        await service.supervisor.start()
        await eventually(lambda: len(scripted.hits) == 1, what="the request to be in flight")
        stopping = asyncio.create_task(service.supervisor.stop(grace_s=10))
        assert not await ends_within(stopping), "a graceful stop did not wait for the request in flight"
        scripted.release.set()  # the provider answers now
        await stopping

    after = await row(pg_repository, message)
    assert after.status is MessageStatus.SENT and after.attempts == 1
    assert after.message_id == scripted.hits[0].message_id


async def test_stop_waits_for_the_outcome_write_before_it_returns(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    """The container closes the pool right after stop(): a write still running then would be lost."""
    [message] = await add(pg_repository, 1)
    async with instance(postgres_url, scripted.url, interval_s=3600) as service:
        service.repository.hold_resolves = hold = asyncio.Event()
        await service.supervisor.start()
        async with asyncio.timeout(10):
            await service.repository.resolving.wait()  # sent; the write of its outcome is about to start
        stopping = asyncio.create_task(service.supervisor.stop())
        assert not await ends_within(stopping), "stop() returned while the outcome write was still to run"
        hold.set()
        await stopping
        assert service.repository.resolved == 1
    # The pool is closed now; the outcome was written before that.
    assert await status_is(pg_repository, message, MessageStatus.SENT)


async def test_stop_while_a_claim_is_returning_puts_the_claimed_messages_back(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    messages = await add(pg_repository, 2)
    async with instance(postgres_url, scripted.url, interval_s=3600) as service:
        service.repository.hold_claims = hold = asyncio.Event()
        await service.supervisor.start()
        async with asyncio.timeout(10):
            await service.repository.claiming.wait()  # committed in the database, not yet returned
        stopping = asyncio.create_task(service.supervisor.stop())
        assert not await ends_within(stopping), "stop() returned before the claim it interrupted came back"
        hold.set()
        await stopping

    for message in messages:
        back = await row(pg_repository, message)
        assert back.status is MessageStatus.PENDING and back.attempts == 0
    assert scripted.hits == []


async def test_toggling_stop_and_start_within_one_interval_sends_at_most_one_batch(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    await add(pg_repository, 10)
    interval_s = 0.5
    async with instance(postgres_url, scripted.url, interval_s=interval_s, batch_size=1) as service:
        await service.supervisor.start()
        await eventually(lambda: len(scripted.hits) == 1, what="the first batch")
        for _ in range(20):
            await service.supervisor.stop()
            await service.supervisor.start()
        toggled_at = time.monotonic()
        await eventually(lambda: len(scripted.hits) == 2, what="the next batch, one interval later")

    first, second = scripted.hits
    assert toggled_at - first.at < interval_s, "toggling took a whole interval: the test proves nothing"
    assert second.at - first.at >= interval_s - slot_tolerance_s(interval_s)


# --- several processes on one database ------------------------------------------------------------


async def migrated(url: str) -> None:
    async with open_postgres_pool(url) as pool:
        await PostgresMessageRepository(pool).migrate()


@asynccontextmanager
async def instances(count: int, url: str, provider_url: str, **options: Any) -> AsyncIterator[list[Instance]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(instance(url, provider_url, **options)) for _ in range(count)]


async def test_three_processes_send_each_message_once_at_the_rate_of_one(
    fresh_postgres_url: str, scripted: ScriptedProvider
) -> None:
    await migrated(fresh_postgres_url)
    interval_s, batch_size = 0.5, 2
    async with instances(3, fresh_postgres_url, scripted.url, interval_s=interval_s, batch_size=batch_size) as running:
        messages = await add(running[0].repository, 30)
        await asyncio.gather(*(i.supervisor.start() for i in running))
        await eventually(lambda: len(scripted.hits) >= 4 * batch_size, what="four batches")
        for i in running:
            await i.supervisor.stop()
        rows = [await row(running[0].repository, m) for m in messages]

    keys = scripted.keys()
    assert len(keys) == len(set(keys)), "a message was sent twice"
    sent = {m.idempotency_key for m in rows if m.status is MessageStatus.SENT}
    assert sent <= set(keys) and len(sent) >= 2 * batch_size
    # A batch in flight when the stops came was abandoned: back to pending, never lost.
    assert all(m.status is MessageStatus.PENDING for m in rows if m.idempotency_key in set(keys) - sent)
    # The requests of one batch reach the provider within milliseconds of each other;
    # batches are an interval apart.
    batches: list[list[float]] = []
    for at in sorted(hit.at for hit in scripted.hits):
        if batches and at - batches[-1][0] < interval_s / 2:
            batches[-1].append(at)
        else:
            batches.append([at])
    assert all(len(batch) <= batch_size for batch in batches), batches
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(batches)]
    # batch_size per interval for the whole deployment, less the slot's tolerance. Requests
    # reach the provider some milliseconds after their batch took the slot, more when a claim
    # is slow on a busy machine, so one late batch shortens the gap after it: each gap allows
    # for that lag, and the span of all the batches holds the rate exactly ...
    step_s = interval_s - slot_tolerance_s(interval_s)
    assert min(gaps) >= step_s - 0.15, gaps
    assert batches[-1][0] - batches[0][0] >= (len(batches) - 1) * step_s - 0.05, gaps
    # ... and the rate is used, not only respected: no slot went by without a batch.
    assert max(gaps) <= interval_s + 0.25, gaps


async def test_three_processes_draining_together_send_everything_once(
    fresh_postgres_url: str, scripted: ScriptedProvider
) -> None:
    await migrated(fresh_postgres_url)
    async with instances(3, fresh_postgres_url, scripted.url, interval_s=0, batch_size=3) as running:
        messages = await add(running[0].repository, 60)
        await asyncio.gather(*(i.supervisor.start() for i in running))
        await eventually(lambda: all_sent(running[0].repository, messages), what="everything sent")
        claimers = sum(1 for i in running if i.repository.written)

    keys = scripted.keys()
    assert len(keys) == len(messages) == len(set(keys))
    assert set(keys) == {m.idempotency_key for m in messages}
    assert claimers >= 2, "one process did all the work: the test shows no concurrency"


# --- outages --------------------------------------------------------------------------------------


def through(url: str, proxy: TcpProxy) -> str:
    """The same database URL, reached through the proxy."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}"))


@pytest.fixture
async def db_proxy(postgres_admin_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(postgres_admin_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


def settings_for(database_url: str, webhook_url: str, **overrides: str) -> Settings:
    environ = {
        "INSIDER_DATABASE_URL": database_url,
        "INSIDER_REDIS_URL": "",
        "INSIDER_WEBHOOK_URL": webhook_url,
        "INSIDER_SEND_INTERVAL": "0.1s",
        "INSIDER_BATCH_SIZE": "2",
        "INSIDER_WEBHOOK_TIMEOUT": "2s",
        "INSIDER_SHUTDOWN_TIMEOUT": "0",
    }
    environ.update({f"INSIDER_{name.upper()}": value for name, value in overrides.items()})
    return load_settings(environ, env_file=None)


async def _quick_pool(url: str) -> AsyncIterator[Pool]:
    async with open_postgres_pool(url, timeout_s=QUICK_POOL_TIMEOUT_S) as pool:
        yield pool


def container_for(settings: Settings) -> Container:
    """The production container, with a pool that gives up on a connection sooner."""
    container = Container(settings=settings)
    container.database_pool.override(providers.Resource(_quick_pool, url=settings.database_url))
    return container


@asynccontextmanager
async def api_client(container: Container) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
    await client.start_server()  # the app's lifespan: pools, migrations, the sender
    try:
        yield client
    finally:
        await client.close()


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_database_cut_fails_ticks_keeps_the_api_up_and_sending_resumes_on_its_own(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider, db_proxy: TcpProxy
) -> None:
    container = container_for(settings_for(through(postgres_url, db_proxy), scripted.url))
    with capture_logs() as logs:
        async with api_client(container) as client:
            first = await add(pg_repository, 2, prefix="before")
            await eventually(lambda: all_sent(pg_repository, first), what="sending through the proxy")

            db_proxy.cut()
            later = await add(pg_repository, 2, prefix="during")  # written directly: only the service is cut off
            await eventually(lambda: len(events(logs, "tick failed: database unavailable")) >= 2, what="failed ticks")
            response = await client.get("/api/v1/sender")
            assert response.status == 200 and (await response.json())["running"] is True
            response = await client.get("/api/v1/messages")
            assert response.status == 503
            assert response.content_type == "application/json" and "error" in await response.json()
            assert not scripted.of("during0")

            db_proxy.restore()
            await eventually(lambda: all_sent(pg_repository, later), what="sending to resume by itself")
            response = await client.get("/api/v1/messages")
            assert response.status == 200 and len((await response.json())["data"]) == 4

    failed = events(logs, "tick failed: database unavailable")
    assert all(entry["log_level"] == "error" and entry["error"] for entry in failed)
    assert sorted(hit.content for hit in scripted.hits) == ["before0", "before1", "during0", "during1"]


async def test_an_unreachable_redis_does_not_stop_sending(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    settings = settings_for(postgres_url, scripted.url, redis_url=f"redis://127.0.0.1:{closed_port}/0")
    with capture_logs() as logs:
        async with open_service(container_for(settings)):
            messages = await add(pg_repository, 3)
            await eventually(lambda: all_sent(pg_repository, messages), what="sending without Redis")
            await eventually(lambda: len(events(logs, "cache write skipped")) >= 2, what="the skipped cache writes")

    skipped = events(logs, "cache write skipped")
    assert all(entry["log_level"] == "warning" and "Connection" in entry["error"] for entry in skipped)
    assert sum(entry["count"] for entry in skipped) == 3
    assert len(scripted.hits) == 3


async def test_start_up_with_the_database_down_migrates_and_sends_once_it_answers(
    fresh_postgres_url: str, scripted: ScriptedProvider, db_proxy: TcpProxy
) -> None:
    db_proxy.cut()
    container = container_for(settings_for(through(fresh_postgres_url, db_proxy), scripted.url))
    with capture_logs() as logs:
        async with api_client(container) as client:
            # The API listens at once; the schema is the supervisor's to apply, in the background.
            await eventually(
                lambda: bool(
                    events(logs, "database unavailable at start-up; the schema will be applied once it answers")
                ),
                what="the start-up line about the schema",
            )
            response = await client.get("/api/v1/messages")
            assert response.status == 503
            assert (await client.get("/api/v1/sender")).status == 200

            db_proxy.restore()
            async with open_postgres_pool(fresh_postgres_url) as pool:
                direct = PostgresMessageRepository(pool)

                async def schema_applied() -> bool:
                    try:
                        await direct.counts()
                    except RepositoryUnavailable:
                        return False
                    return True

                await eventually(schema_applied, what="the migrations")
                messages = await add(direct, 2)
                await eventually(lambda: all_sent(direct, messages), what="the first sends")
            response = await client.get("/api/v1/messages")
            assert response.status == 200
    assert sorted(hit.content for hit in scripted.hits) == ["m0", "m1"]


async def test_start_up_with_the_database_down_and_no_autostart_still_applies_the_schema(
    fresh_postgres_url: str, scripted: ScriptedProvider, db_proxy: TcpProxy
) -> None:
    db_proxy.cut()
    container = container_for(settings_for(through(fresh_postgres_url, db_proxy), scripted.url, autostart="false"))
    async with api_client(container) as client:
        assert (await client.get("/api/v1/messages")).status == 503
        db_proxy.restore()

        async def listed() -> bool:
            return (await client.get("/api/v1/messages")).status == 200

        await eventually(listed, what="the schema to be applied without the sender running")
        assert (await (await client.get("/api/v1/sender")).json())["running"] is False


async def test_a_database_without_the_schema_is_unavailable_not_an_error(fresh_postgres_url: str) -> None:
    async with open_postgres_pool(fresh_postgres_url) as pool:
        repository = PostgresMessageRepository(pool)
        with pytest.raises(RepositoryUnavailable, match="schema"):
            await repository.list_messages(MessageStatus.SENT, 10)
        with pytest.raises(RepositoryUnavailable, match="schema"):
            await repository.acquire_slot("sender", 1.0)
        with pytest.raises(RepositoryUnavailable, match="schema"):
            await repository.claim(2, 30.0)


# --- deadlines: stops and probes during a database cut -------------------------------------------


async def timed(client: TestClient[Any, Any], method: str, path: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await client.request(method, path)
    body = await response.json()
    return response.status, body, time.monotonic() - started


async def test_a_stop_during_a_database_cut_answers_within_its_bound(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider, db_proxy: TcpProxy
) -> None:
    message = await pg_repository.enqueue("+905301234567", "held")
    scripted.replies["held"] = [Reply(hang=True)]
    # The production container: its own pool settings, nothing shortened for the test.
    container = Container(settings=settings_for(through(postgres_url, db_proxy), scripted.url, send_interval="1h"))
    async with api_client(container) as client:
        await eventually(lambda: len(scripted.hits) == 1, what="the request in flight")
        db_proxy.cut()

        status, body, took_s = await timed(client, "POST", "/api/v1/messages/stop")

        assert (status, body["running"], body["result"]) == (200, False, "stopped")
        assert took_s < STOP_MARGIN_S + 0.5, f"the stop took {took_s:.1f}s"
        db_proxy.restore()
    # What could not be recorded stays claimed: its lease puts it back (same idempotency key).
    current = await pg_repository.get(message.id)
    assert current is not None and current.status is MessageStatus.SENDING
    assert current.lease_expires_at is not None


async def test_probes_and_database_endpoints_answer_503_within_a_second_while_the_database_is_cut(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider, db_proxy: TcpProxy
) -> None:
    container = Container(settings=settings_for(through(postgres_url, db_proxy), scripted.url, send_interval="1h"))
    async with api_client(container) as client:
        status, _, _ = await timed(client, "GET", "/readyz")
        assert status == 200
        db_proxy.cut()
        for _ in range(3):
            for path in ("/readyz", "/api/v1/messages", "/api/v1/stats", "/api/v1/messages/1"):
                status, body, took_s = await timed(client, "GET", path)
                assert status == 503 and "error" in body, (path, status, body)
                assert took_s < 1.0, f"{path} took {took_s:.2f}s"
        status, _, took_s = await timed(client, "GET", "/api/v1/sender")
        assert status == 200 and took_s < 1.0
        db_proxy.restore()

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await eventually(ready, what="ready again once the database answers")


async def test_connections_carry_the_statement_timeout_and_keepalives(
    pg_repository: PostgresMessageRepository, postgres_url: str, scripted: ScriptedProvider
) -> None:
    container = Container(
        settings=settings_for(
            postgres_url, scripted.url, database_statement_timeout="1500ms", database_keepalives_idle="7s"
        )
    )
    pool = await container.database_pool()  # type: ignore[misc]
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute("SHOW statement_timeout")).fetchone()
            assert row == ("1500ms",)
            params = conn.info.get_parameters()
            assert (params["keepalives"], params["keepalives_idle"]) == ("1", "7")
            assert params["keepalives_interval"] == "10" and params["keepalives_count"] == "3"
            with pytest.raises(Exception, match="statement timeout"):
                await conn.execute("SELECT pg_sleep(3)")
    finally:
        await container.shutdown_resources()  # type: ignore[misc]
