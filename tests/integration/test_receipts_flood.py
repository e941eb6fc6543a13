"""A flood of delivery receipts racing a drain, on SQLite and PostgreSQL: each message keeps its first final receipt.

The service drains a few thousand messages with no rate while the provider posts each
message's receipts one after another, a final one and then a contrary one, the first often
before its `202` is even answered: some wait for the send to be recorded, some are applied
at once, some by the next receipt or the periodic pass. However they meet, every message
must end in the state of its first final receipt, with the later one kept in its history.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from insider.adapters.memory import InMemorySmsClient, Request
from insider.adapters.postgres import PostgresMessageRepository, open_postgres_pool
from insider.clock import SystemClock
from insider.config import load_settings
from insider.container import Container, open_service, resolve
from insider.domain import MessageStatus, NewMessage, Outcome, SendResult
from insider.receipt_parsing import Receipt, ReceiptOutcome
from insider.receipt_writer import ReceiptWriter
from tests.conftest import eventually

log = structlog.get_logger("tests.flood")

MESSAGES = 3000
PHONE = "+905301234001"
FINAL = {"DELIVRD": MessageStatus.DELIVERED, "UNDELIV": MessageStatus.UNDELIVERED}
CONTRARY = {"DELIVRD": "UNDELIV", "UNDELIV": "DELIVRD"}


@dataclass
class Flood:
    database_url: str
    processes: int  # 2: the second receipt of each message goes to another process's writer


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-two-processes", marks=pytest.mark.postgres),
    ]
)
def flood(request: pytest.FixtureRequest, tmp_path: Path) -> Flood:
    if request.param == "sqlite":
        return Flood(f"sqlite:///{tmp_path / 'flood.db'}", 1)
    url: str = request.getfixturevalue("fresh_postgres_url")
    return Flood(url, 2 if request.param.endswith("two-processes") else 1)


async def other_process_writer(stack: AsyncExitStack, flood: Flood) -> ReceiptWriter | None:
    """The receipt writer of a second process on the same database (its own pool), or None."""
    if flood.processes == 1:
        return None
    pool = await stack.enter_async_context(open_postgres_pool(flood.database_url, min_size=1, max_size=4))
    writer = ReceiptWriter(PostgresMessageRepository(pool), None, SystemClock())
    return await stack.enter_async_context(writer.running())


async def test_a_flood_of_receipts_racing_the_sends_keeps_every_messages_first_final_receipt(flood: Flood) -> None:
    settings = load_settings(
        {
            "INSIDER_DATABASE_URL": flood.database_url,
            "INSIDER_REDIS_URL": "",
            "INSIDER_SEND_INTERVAL": "0",
            "INSIDER_BATCH_SIZE": "250",
            "INSIDER_SEND_CONCURRENCY": "50",
            "INSIDER_AUTOSTART": "false",
        },
        env_file=None,
    )
    container = Container(settings=settings)
    sms = InMemorySmsClient()
    container.sms_client.override(sms)
    posting: list[asyncio.Task[list[ReceiptOutcome]]] = []
    first_of: dict[str, str] = {}  # provider id -> its first receipt's status
    rng = random.Random(19)

    async def post_receipts(
        first_to: ReceiptWriter, then_to: ReceiptWriter, provider_id: str, first: str
    ) -> list[ReceiptOutcome]:
        # One request after the other, each once the last is answered, as a provider posts
        # them; a spread of timings (not a wait for anything): the first often before this
        # send is recorded, the second before or after. Both carry the same received_at (a
        # tie only the order of arrival can break).
        pause_s = rng.choice([0.0, 0.0, rng.uniform(0.0, 0.2)])
        gap_s = rng.choice([0.0, rng.uniform(0.0, 0.05)])
        received_at = datetime.now(UTC)
        await asyncio.sleep(pause_s)
        outcomes = await first_to.submit([Receipt(provider_id, first, received_at)])
        await asyncio.sleep(gap_s)
        outcomes += await then_to.submit([Receipt(provider_id, CONTRARY[first], received_at)])
        return outcomes

    started = time.monotonic()
    async with AsyncExitStack() as stack:
        supervisor = await stack.enter_async_context(open_service(container))
        repository = await resolve(container.repository)
        writer = await resolve(container.receipts)
        other = await other_process_writer(stack, flood)

        def accept(request: Request) -> SendResult:
            index = int(request.content.removeprefix("m"))
            provider_id, first = f"p-{index}", "DELIVRD" if index % 2 == 0 else "UNDELIV"
            first_of[provider_id] = first
            # The receipts race the send: the first may come before this 202 is even answered.
            posting.append(asyncio.ensure_future(post_receipts(writer, other or writer, provider_id, first)))
            return SendResult(Outcome.SENT, status_code=202, provider_message_id=provider_id)

        sms.responder = accept
        await repository.load([NewMessage(PHONE, f"m{i}") for i in range(MESSAGES)])
        await supervisor.start()

        async def drained() -> bool:
            counts = await repository.counts()
            return bool(counts[MessageStatus.PENDING] + counts[MessageStatus.SENDING] == 0)

        await eventually(drained, timeout_s=40.0, what="the drain")
        assert len(posting) == MESSAGES
        answers = await asyncio.wait_for(asyncio.gather(*posting), timeout=30.0)
        applied_later = len((await repository.apply_waiting(86400.0)).applied)  # the periodic pass
        elapsed_s = time.monotonic() - started

        page = await repository.list_messages(None, MESSAGES + 1)
        assert len(page.items) == MESSAGES
        wrong = [m for m in page.items if m.status is not FINAL[first_of[m.message_id or ""]]]
        # How the receipts met their messages (first, then second): they must have raced.
        ways = Counter(f"{a[0].result.value}, then {a[1].result.value}" for a in answers)
        log.info(
            "flood",
            messages=MESSAGES,
            receipts=2 * MESSAGES,
            processes=flood.processes,
            elapsed_s=round(elapsed_s, 1),
            applied_by_the_periodic_pass=applied_later,
            ways=dict(ways),
            wrong=len(wrong),
        )
        assert [(m.message_id, first_of[m.message_id or ""], m.status.value) for m in wrong] == []
        assert {way.split(",")[0] for way in ways} >= {"waiting", "applied"}, "no race between receipts and sends"
        # The later, contrary receipt is kept in the history, after the first.
        for message in page.items[:: MESSAGES // 50]:
            history = [e.receipt_status for e in await repository.events(message.id) if e.kind == "receipt"]
            first = first_of[message.message_id or ""]
            assert history == [first, CONTRARY[first]]
