"""Receipts matched by provider and provider id together, on SQLite and PostgreSQL (ids are unique only per provider).

Two providers may hand out the same id: a receipt naming its provider goes to that
provider's message alone; one naming none goes to the id's message while only one
provider's messages have the id, and to none (``ambiguous``) when two providers' have it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from insider.adapters.postgres import PostgresMessageRepository
from insider.adapters.sqlite import SqliteMessageRepository, open_sqlite
from insider.clock import FakeClock
from insider.domain import Attempt, Message, MessageStatus, Resolution
from insider.receipt_parsing import WAITING_MAX_AGE_S, Receipt
from tests.integration import test_delivery_contract as contract
from tests.integration.test_delivery_contract import Backend

# The delivery contract's backends: SQLite on a fake clock, and the real PostgreSQL.
sqlite_backend = contract.sqlite_backend
backend = contract.backend

PHONE = "+905301234001"


async def claimed(backend: Backend, content: str) -> Message:
    message = await backend.repository.enqueue(PHONE, content)
    [taken] = await backend.repository.claim(1, 30.0)
    assert taken.id == message.id
    return taken


async def record_sent(backend: Backend, message: Message, provider_id: str, provider: str | None) -> list[str]:
    """The send's outcome written as ``provider``'s ``provider_id``: the results of the receipts it applied."""
    at = backend.now()
    applied = await backend.repository.resolve(
        [
            Resolution(
                message.id,
                message.claim_token,
                MessageStatus.SENT,
                sent_at=at,
                message_id=provider_id,
                attempt=Attempt(at, "sent", 1, 202, 3.0, provider_message_id=provider_id, provider=provider),
                provider=provider,
            )
        ]
    )
    return [o.result.value for o in applied]


async def sent(backend: Backend, provider_id: str, provider: str | None, content: str = "hello") -> Message:
    message = await claimed(backend, content)
    assert await record_sent(backend, message, provider_id, provider) == []
    return message


def receipt(backend: Backend, provider_id: str, status: str, provider: str | None = None, **kwargs: object) -> Receipt:
    received_at = kwargs.pop("received_at", None) or backend.now()
    return Receipt(provider_id, status, received_at, provider=provider, **kwargs)  # type: ignore[arg-type]


async def apply(backend: Backend, *receipts: Receipt, hints: list[int | None] | None = None) -> list[str]:
    outcomes = await backend.repository.apply_receipts(receipts, hints or [None] * len(receipts))
    return [o.result.value for o in outcomes]


async def state(backend: Backend, message: Message) -> tuple[str, str | None, list[str | None]]:
    """A message's status, delivery status, and the statuses of the receipts in its history."""
    got = await backend.repository.get(message.id)
    assert got is not None
    history = [e.receipt_status for e in await backend.repository.events(message.id) if e.kind == "receipt"]
    return got.status.value, got.delivery_status, history


async def test_the_same_id_from_two_providers_each_receipt_goes_to_its_own_message(backend: Backend) -> None:
    alpha = await sent(backend, "42", "alpha")
    carrier = await sent(backend, "42", "carrier")

    assert await apply(backend, receipt(backend, "42", "DELIVRD", "carrier")) == ["applied"]
    assert await state(backend, carrier) == ("delivered", "delivered", ["DELIVRD"])
    assert await state(backend, alpha) == ("sent", None, [])

    assert await apply(backend, receipt(backend, "42", "UNDELIV", "alpha", error_code="34")) == ["applied"]
    assert await state(backend, alpha) == ("undelivered", "undelivered", ["UNDELIV"])
    assert await state(backend, carrier) == ("delivered", "delivered", ["DELIVRD"])


async def test_the_same_receipt_from_two_providers_in_one_write_is_two_receipts(backend: Backend) -> None:
    alpha = await sent(backend, "42", "alpha")
    carrier = await sent(backend, "42", "carrier")
    done_at = backend.now() - timedelta(seconds=2)

    results = await apply(
        backend,
        receipt(backend, "42", "DELIVRD", "alpha", done_at=done_at),
        receipt(backend, "42", "DELIVRD", "carrier", done_at=done_at),
        receipt(backend, "42", "delivrd", "carrier", done_at=done_at),  # carrier's again: a duplicate of its own
    )

    assert results == ["applied", "applied", "duplicate"]
    assert await state(backend, alpha) == ("delivered", "delivered", ["DELIVRD"])
    assert await state(backend, carrier) == ("delivered", "delivered", ["DELIVRD"])


async def test_a_cache_hint_at_the_other_providers_message_is_not_trusted(backend: Backend) -> None:
    # The cache keeps one entry per provider id: the later send of "42" took it over.
    alpha = await sent(backend, "42", "alpha")
    carrier = await sent(backend, "42", "carrier")

    assert await apply(backend, receipt(backend, "42", "DELIVRD", "alpha"), hints=[carrier.id]) == ["applied"]

    assert await state(backend, alpha) == ("delivered", "delivered", ["DELIVRD"])
    assert await state(backend, carrier) == ("sent", None, [])


async def test_a_receipt_before_the_send_waits_for_its_own_providers_message(backend: Backend) -> None:
    alpha = await claimed(backend, "through alpha")
    carrier = await claimed(backend, "through carrier")

    assert await apply(backend, receipt(backend, "42", "DELIVRD", "carrier")) == ["waiting"]

    # alpha's message gets "42" first: not the receipt's message, which keeps waiting.
    assert await record_sent(backend, alpha, "42", "alpha") == []
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)
    assert (report.applied, report.dropped) == ([], [])
    assert await state(backend, alpha) == ("sent", None, [])

    assert await record_sent(backend, carrier, "42", "carrier") == ["applied"]
    assert await state(backend, carrier) == ("delivered", "delivered", ["DELIVRD"])
    assert await state(backend, alpha) == ("sent", None, [])


async def test_the_same_waiting_receipt_from_two_providers_waits_twice_and_each_meets_its_message(
    backend: Backend,
) -> None:
    alpha = await claimed(backend, "through alpha")
    carrier = await claimed(backend, "through carrier")
    done_at = backend.now() - timedelta(seconds=2)

    assert await apply(backend, receipt(backend, "42", "UNDELIV", "alpha", done_at=done_at)) == ["waiting"]
    assert await apply(backend, receipt(backend, "42", "UNDELIV", "carrier", done_at=done_at)) == ["waiting"]

    assert await record_sent(backend, carrier, "42", "carrier") == ["applied"]
    assert await record_sent(backend, alpha, "42", "alpha") == ["applied"]
    assert await state(backend, alpha) == ("undelivered", "undelivered", ["UNDELIV"])
    assert await state(backend, carrier) == ("undelivered", "undelivered", ["UNDELIV"])


async def test_the_periodic_pass_applies_a_waiting_receipt_to_its_own_providers_message(
    backend: Backend,
) -> None:
    assert await apply(backend, receipt(backend, "42", "DELIVRD", "carrier")) == ["waiting"]
    alpha = await sent(backend, "42", "alpha")
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)
    assert (report.applied, report.dropped) == ([], [])  # alpha's "42" is not carrier's

    carrier = await sent(backend, "x", "carrier")
    # carrier's message got the id in a write that raced the receipt's, so that neither saw the other.
    await backend.execute("UPDATE messages SET message_id = %s WHERE id = %s", ("42", carrier.id))
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)

    assert [(o.result.value, o.message_id) for o in report.applied] == [("applied", carrier.id)]
    assert await state(backend, carrier) == ("delivered", "delivered", ["DELIVRD"])
    assert await state(backend, alpha) == ("sent", None, [])


async def test_an_unnamed_receipt_with_one_provider_is_matched_by_the_id_as_before(backend: Backend) -> None:
    message = await sent(backend, "p-1", "webhook")
    older = await sent(backend, "p-legacy", None)  # recorded before insider kept the provider

    assert await apply(backend, receipt(backend, "p-1", "DELIVRD"), receipt(backend, "p-legacy", "REJECTD")) == [
        "applied",
        "applied",
    ]
    assert await state(backend, message) == ("delivered", "delivered", ["DELIVRD"])
    assert await state(backend, older) == ("undelivered", "rejected", ["REJECTD"])

    # One provider's two messages with one id (a provider that reuses ids): the first, as before.
    first = await sent(backend, "p-2", "webhook")
    second = await sent(backend, "p-2", "webhook")
    assert await apply(backend, receipt(backend, "p-2", "UNDELIV")) == ["applied"]
    assert await state(backend, first) == ("undelivered", "undelivered", ["UNDELIV"])
    assert await state(backend, second) == ("sent", None, [])

    # Before its send, it waits and is applied as before.
    early = await claimed(backend, "fast network")
    assert await apply(backend, receipt(backend, "p-3", "DELIVRD")) == ["waiting"]
    assert await record_sent(backend, early, "p-3", "webhook") == ["applied"]


async def test_an_unnamed_receipt_for_an_id_two_providers_hold_touches_neither(backend: Backend) -> None:
    alpha = await sent(backend, "42", "alpha")
    carrier = await sent(backend, "42", "carrier")

    results = await apply(backend, receipt(backend, "42", "DELIVRD"), hints=[alpha.id])

    assert results == ["ambiguous"]
    assert await state(backend, alpha) == ("sent", None, [])
    assert await state(backend, carrier) == ("sent", None, [])
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)  # not kept: it would stay ambiguous
    assert (report.applied, report.dropped) == ([], [])
    # Named, the same receipt goes where it belongs.
    assert await apply(backend, receipt(backend, "42", "DELIVRD", "alpha")) == ["applied"]
    assert await state(backend, carrier) == ("sent", None, [])


async def test_an_unnamed_waiting_receipt_that_two_providers_ids_meet_at_once_touches_neither(
    backend: Backend,
) -> None:
    alpha = await claimed(backend, "through alpha")
    carrier = await claimed(backend, "through carrier")
    assert await apply(backend, receipt(backend, "42", "DELIVRD")) == ["waiting"]

    at = backend.now()
    applied = await backend.repository.resolve(
        [
            Resolution(m.id, m.claim_token, MessageStatus.SENT, sent_at=at, message_id="42", provider=name)
            for m, name in ((alpha, "alpha"), (carrier, "carrier"))
        ]
    )

    assert [o.result.value for o in applied] == ["ambiguous"]
    assert await state(backend, alpha) == ("sent", None, [])
    assert await state(backend, carrier) == ("sent", None, [])
    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)
    assert (report.applied, report.dropped) == ([], [])


async def test_a_named_receipt_never_meets_a_message_recorded_without_a_provider(backend: Backend) -> None:
    older = await sent(backend, "42", None)

    assert await apply(backend, receipt(backend, "42", "DELIVRD", "carrier")) == ["waiting"]
    assert await state(backend, older) == ("sent", None, [])


async def test_a_named_waiting_receipt_older_than_a_day_is_dropped_naming_its_provider(backend: Backend) -> None:
    old = receipt(backend, "42", "DELIVRD", "carrier", received_at=backend.now() - timedelta(hours=25))
    assert await apply(backend, old) == ["waiting"]

    report = await backend.repository.apply_waiting(WAITING_MAX_AGE_S)

    assert [(r.provider_message_id, r.provider, r.status) for r in report.dropped] == [("42", "carrier", "DELIVRD")]


async def waiting_before_0011_then_migrated(repository: Any, older_versions: Any) -> list[str]:
    """Receipts waiting before migration 0011 keep waiting, naming no provider, and meet their message after it."""
    await older_versions()
    await repository.migrate()
    message = await repository.enqueue(PHONE, "x")
    [claimed_one] = await repository.claim(1, 30.0)
    applied = await repository.resolve(
        [
            Resolution(
                claimed_one.id,
                claimed_one.claim_token,
                MessageStatus.SENT,
                sent_at=datetime.now(UTC),
                message_id="p-1",
                provider="webhook",
            )
        ]
    )
    got = await repository.get(message.id)
    assert got is not None and got.delivery_status == "undelivered"
    return [o.result.value for o in applied]


async def test_migration_0011_keeps_the_receipts_waiting_on_sqlite(tmp_path: Path) -> None:
    from insider.adapters.sqlite import load_migrations, split_statements

    path = tmp_path / "older.db"

    async def older_versions() -> None:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(
                "CREATE TABLE insider_schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            for version, _, text in load_migrations():
                if version >= 11:
                    break
                for statement in split_statements(text):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO insider_schema_migrations VALUES (?, '2026-01-01T00:00:00.000000Z')", (version,)
                )
            for status, final in [("UNDELIV", "undelivered"), ("ENROUTE", None)]:
                conn.execute(
                    "INSERT INTO insider_pending_receipts (provider_message_id, dedupe_key, receipt_status, "
                    "delivery_status, final_status, received_at) VALUES ('p-1', ?, ?, ?, ?, ?)",
                    (status, status, final, final, "2026-01-01T00:00:01.000000Z"),
                )

    async with open_sqlite(f"sqlite:///{path}") as database:
        results = await waiting_before_0011_then_migrated(SqliteMessageRepository(database), older_versions)
    assert results == ["applied", "recorded"]


@pytest.mark.postgres
async def test_migration_0011_keeps_the_receipts_waiting_on_postgres(fresh_postgres_url: str) -> None:
    from insider.adapters.postgres import load_migrations, open_postgres_pool

    async with open_postgres_pool(fresh_postgres_url) as pool:

        async def older_versions() -> None:
            async with pool.connection() as conn:
                for version, _name, text in load_migrations():
                    if version < 11:
                        await conn.execute(text)
                await conn.execute(
                    "CREATE TABLE insider_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz"
                    " NOT NULL DEFAULT now()); INSERT INTO insider_schema_migrations (version)"
                    " SELECT v FROM generate_series(1, 10) AS v"
                )
                for status, final in [("UNDELIV", "undelivered"), ("ENROUTE", None)]:
                    await conn.execute(
                        "INSERT INTO insider_pending_receipts (provider_message_id, dedupe_key, receipt_status,"
                        " delivery_status, final_status, received_at) VALUES ('p-1', %s, %s, %s, %s, now())",
                        (status, status, final, final),
                    )

        results = await waiting_before_0011_then_migrated(PostgresMessageRepository(pool), older_versions)
    assert results == ["applied", "recorded"]


@pytest.fixture
async def one_provider_sqlite(tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_sqlite(f"sqlite:///{tmp_path / 'insider.db'}") as database:
        clock = FakeClock()
        repository = SqliteMessageRepository(database, clock, several_providers=False)
        await repository.migrate()
        yield Backend(repository, clock)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def one_provider(request: pytest.FixtureRequest) -> Backend:
    """A repository of a deployment with one provider configured."""
    if request.param == "sqlite":
        backend: Backend = request.getfixturevalue("one_provider_sqlite")
        return backend
    request.getfixturevalue("pg_repository")  # a clean, migrated database
    pool = request.getfixturevalue("pg_pool")
    return Backend(PostgresMessageRepository(pool, several_providers=False), pool=pool)


async def test_with_one_provider_configured_an_unnamed_receipt_is_matched_by_the_id_alone_as_always(
    one_provider: Backend,
) -> None:
    # Messages another provider (no longer configured) accepted with the same id.
    first = await sent(one_provider, "42", "retired")
    second = await sent(one_provider, "42", "webhook")

    assert await apply(one_provider, receipt(one_provider, "42", "DELIVRD")) == ["applied"]
    assert await apply(one_provider, receipt(one_provider, "42", "UNDELIV"), hints=[second.id]) == ["applied"]

    assert await state(one_provider, first) == ("delivered", "delivered", ["DELIVRD"])
    assert await state(one_provider, second) == ("undelivered", "undelivered", ["UNDELIV"])
    # A named one is still matched by provider and id together.
    third = await sent(one_provider, "43", "retired")
    assert await apply(one_provider, receipt(one_provider, "43", "DELIVRD", "webhook")) == ["waiting"]
    assert await state(one_provider, third) == ("sent", None, [])
