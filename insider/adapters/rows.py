"""Rows and domain objects, whichever the database: messages, outcomes, history events, receipts, loaded files."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Protocol, TypeVar, cast

from insider.domain import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Attempt,
    Category,
    Encoding,
    Message,
    MessageStatus,
    NewMessage,
    Resolution,
    SendOrder,
    measure,
    storable_text,
)
from insider.history import Event
from insider.inbound import Reply
from insider.ports import LoadedFile
from insider.receipt_parsing import Receipt, ReceiptOutcome, ReceiptResult

T = TypeVar("T")

# Waiting receipts a resolve applies at most, per provider id it recorded: a bound on its
# statement; any beyond wait for the periodic pass (or the next receipt of that id), in order.
WAITING_PER_SEND: Final = 16


class Row(Protocol):
    """A row read by column name: psycopg's dict rows and sqlite3.Row both are."""

    def __getitem__(self, key: str, /) -> Any: ...


# A dialect's time as an aware UTC datetime (None stays None), and the other way round.
Timestamp = Callable[[Any], datetime | None]
Time = Callable[[datetime], Any]
# What an application of receipts did: the outcomes of the waiting ones it took, then of those given.
Applied = tuple[list[ReceiptOutcome], list[ReceiptOutcome]]


def new_message_row(m: NewMessage, time: Time) -> dict[str, Any]:
    """The columns of a message to store; ``time`` turns a datetime into what the database takes."""
    return {
        "recipient_phone": m.recipient_phone,
        "content": m.content,
        "send_at": time(m.send_at) if m.send_at is not None else None,
        "priority": m.priority,
        "valid_until": time(m.valid_until) if m.valid_until is not None else None,
        "encoding": m.encoding.value,
        "segments": m.segments,
        "category": m.category.value,
        "respect_sending_hours": m.respect_sending_hours,
        "consent_reply": m.consent_reply,
        "next_attempt_at": time(m.wait_until) if m.wait_until is not None else None,
        "wait_reason": m.wait_reason if m.wait_until is not None else None,
    }


def reply_from_row(row: Row, timestamp: Timestamp) -> Reply:
    """The Reply of a row of insider_inbound."""
    received_at = timestamp(row["received_at"])
    assert received_at is not None  # NOT NULL in the schema
    return Reply(
        id=row["id"],
        from_phone=row["from_phone"],
        text=row["text"],
        received_at=received_at,
        action=row["action"],
        to_phone=row["to_phone"],
        provider=row["provider"],
        provider_message_id=row["provider_message_id"],
    )


def message_from_row(row: Row, timestamp: Timestamp) -> Message:
    """The Message of a row; ``timestamp`` turns the database's time values into aware UTC datetimes."""
    created_at = timestamp(row["created_at"])
    assert created_at is not None  # NOT NULL in the schema
    claim_token = row["claim_token"]
    encoding, segments = row["encoding"], row["segments"]
    if encoding is None or segments is None:  # a row inserted by another program: counted on read
        measured, counted = measure(row["content"])
        encoding, segments = encoding or measured, segments or counted
    priority = row["priority"]
    return Message(
        id=row["id"],
        recipient_phone=row["recipient_phone"],
        content=row["content"],
        status=MessageStatus(row["status"]),
        created_at=created_at,
        sent_at=timestamp(row["sent_at"]),
        message_id=row["message_id"],
        last_error=row["last_error"],
        attempts=row["attempts"],
        next_attempt_at=timestamp(row["next_attempt_at"]),
        lease_expires_at=timestamp(row["lease_expires_at"]),
        idempotency_key=str(row["idempotency_key"]),  # a UUID from PostgreSQL, text from SQLite
        claim_token=str(claim_token) if claim_token is not None else None,
        uuid=_optional_text(row, "uuid"),
        delivered_at=timestamp(row["delivered_at"]),
        delivery_status=row["delivery_status"],
        delivery_error=row["delivery_error"],
        send_at=timestamp(row["send_at"]),
        priority=DEFAULT_PRIORITY if priority is None else int(priority),
        valid_until=timestamp(row["valid_until"]),
        encoding=Encoding(encoding),
        segments=int(segments),
        category=Category(row["category"] or Category.TRANSACTIONAL),
        provider=row["provider"],
        cost=float(row["cost"]) if row["cost"] is not None else None,
        provider_pin=row["provider_pin"],
        suppression_reason=row["suppression_reason"],
        wait_reason=row["wait_reason"],
        respect_sending_hours=bool(row["respect_sending_hours"]),
        consent_reply=bool(row["consent_reply"]),
        cap_admitted_at=timestamp(row["cap_admitted_at"]),
    )


def claim_token(text: str | None) -> uuid.UUID | None:
    """A claim token as a UUID; one that is not a UUID can hold no row, like None."""
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _storable(text: str | None) -> str | None:
    """Text we record but did not choose, as every database can store it (``domain.storable_text``)."""
    return storable_text(text) if text is not None else None


def outcome_row(r: Resolution, time: Time) -> dict[str, Any]:
    """What is written back for ``r``, as both dialects' resolve reads it (one JSON object each):
    the outcome, and the attempt that goes to the history with it (``at`` None: no event).

    A provider's message id or error text may hold anything: what no database can store is
    replaced as ``domain.storable_text`` says.
    """
    attempt = r.attempt
    return {
        "provider": r.provider,
        "provider_pin": r.provider_pin,
        "cost": r.cost,
        "attempt_provider": attempt.provider if attempt is not None else None,
        "earlier": [_attempt_row(a, time) for a in r.earlier],
        "id": int(r.id),
        "claim_token": claim_token(r.claim_token),
        "status": r.status.value,
        "sent_at": time(r.sent_at) if r.sent_at is not None else None,
        "message_id": _storable(r.message_id),
        "last_error": _storable(r.last_error),
        "retry_in_s": float(r.retry_in_s) if r.retry_in_s is not None else None,
        "uncount": bool(r.uncount_attempt),
        "wait_reason": r.wait_reason,
        "suppression_reason": _storable(r.suppression_reason),
        "segments": r.segments,
        "encoding": r.encoding.value if r.encoding is not None else None,
        "at": time(attempt.at) if attempt is not None else None,
        "outcome": attempt.outcome if attempt is not None else None,
        "attempt": attempt.number if attempt is not None else None,
        "status_code": attempt.status_code if attempt is not None else None,
        "duration_ms": attempt.duration_ms if attempt is not None else None,
        "error": _storable(attempt.error) if attempt is not None else None,
    }


def _attempt_row(a: Attempt, time: Time) -> dict[str, Any]:
    """A try before the last one (a failover), as both dialects' resolve reads it."""
    return {
        "at": time(a.at),
        "outcome": a.outcome,
        "attempt": a.number,
        "status_code": a.status_code,
        "duration_ms": a.duration_ms,
        "error": _storable(a.error),
        "provider": a.provider,
    }


def _from_row(cls: type[T], row: Row, timestamp: Timestamp, *times: str) -> T:
    """A dataclass from the row's columns of the same names; ``times`` read as the dialect gives them."""
    values = {f.name: row[f.name] for f in dataclasses.fields(cast(Any, cls))}
    return cls(**values | {name: timestamp(values[name]) for name in times})


def event_from_row(row: Row, timestamp: Timestamp) -> Event:
    """One event of a message's history."""
    return _from_row(Event, row, timestamp, "at", "done_at")


def receipt_rows(receipts: Sequence[Receipt], hints: Sequence[int | None], time: Time) -> list[dict[str, Any]]:
    """Receipts to apply, each with its index and the id the cache hinted at (both dialects' JSON)."""
    return [
        {
            "idx": i,
            "hint": hint,
            "provider_message_id": _storable(r.provider_message_id),
            "provider": r.provider,
            "receipt_status": _storable(r.status),
            "delivery_status": r.delivery_status,
            "final_status": r.final_status.value if r.final_status is not None else None,
            "error_code": _storable(r.error_code),
            "done_at": time(r.done_at) if r.done_at is not None else None,
            "received_at": time(r.received_at),
            "dedupe_key": r.dedupe_key,
        }
        for i, (r, hint) in enumerate(zip(receipts, hints, strict=True))
    ]


def provider_ids(receipts: Sequence[Receipt]) -> list[str | None]:
    """The provider ids of ``receipts``, each once, as stored (the waiting receipts of which go first)."""
    return list(dict.fromkeys(_storable(r.provider_message_id) for r in receipts))


def receipt_outcomes(rows: Sequence[Row], timestamp: Timestamp) -> Applied:
    """What each receipt did, from an application's result rows: the waiting ones taken (``src`` 0),
    then the receipts given (``src`` 1), each in order."""
    taken: list[ReceiptOutcome] = []
    given: list[ReceiptOutcome] = []
    for row in rows:
        (taken if row["src"] == 0 else given).append(
            ReceiptOutcome(
                ReceiptResult(row["result"]),
                row["message_id"],
                MessageStatus(row["status"]) if row["status"] is not None else None,
                timestamp(row["sent_at"]),
                timestamp(row["delivered_at"]),
            )
        )
    return taken, given


def dropped_receipt(row: Row, timestamp: Timestamp) -> Receipt:
    """A waiting receipt dropped as too old."""
    received_at = timestamp(row["received_at"])
    assert received_at is not None  # NOT NULL in the schema
    return Receipt(row["provider_message_id"], row["receipt_status"], received_at, provider=row["provider"])


def loaded_file_from_row(row: Row, timestamp: Timestamp) -> LoadedFile:
    """A file ``enqueue --file`` stored."""
    return _from_row(LoadedFile, row, timestamp, "loaded_at")


def _optional_text(row: Row, column: str) -> str | None:
    """A column that not every query (nor every database) returns, as text or None."""
    try:
        value = row[column]
    except (KeyError, IndexError):  # psycopg's dict rows, sqlite3.Row
        return None
    return str(value) if value is not None else None


def claim_query(queries: dict[str, str], order: SendOrder) -> str:
    """The claim statement with one due branch per priority, highest first (both dialects), and
    the expiry sweep where it runs in the same statement (PostgreSQL)."""
    branch = queries[f"due_{order.value}"]
    arms = "\n        UNION ALL\n        ".join(
        branch.replace("__PRIORITY__", str(p)) for p in range(MAX_PRIORITY, MIN_PRIORITY - 1, -1)
    )
    return queries["claim"].replace("__DUE__", arms).replace("__EXPIRE__", queries["expire"])


def claim_order(order: SendOrder) -> Any:
    """The sort key of claimed rows: the order in which a batch starts their requests."""
    if order is SendOrder.NEWEST:
        return lambda m: (-m.priority, -m.created_at.timestamp(), -m.id)
    return lambda m: (-m.priority, m.created_at, m.id)
