"""A ``messages`` row as a Message, and outcomes as the rows to write, whichever the database."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from insider.domain import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Encoding,
    Message,
    MessageStatus,
    NewMessage,
    Resolution,
    SendOrder,
    measure,
    storable_text,
)

# Waiting receipts a resolve applies at most, per provider id it recorded: a bound on its
# statement; any beyond wait for the periodic pass (or the next receipt of that id), in order.
WAITING_PER_SEND: Final = 16


class Row(Protocol):
    """A row read by column name: psycopg's dict rows and sqlite3.Row both are."""

    def __getitem__(self, key: str, /) -> Any: ...


def new_message_row(m: NewMessage, time: Callable[[datetime], Any]) -> dict[str, Any]:
    """The columns of a message to store; ``time`` turns a datetime into what the database takes."""
    return {
        "recipient_phone": m.recipient_phone,
        "content": m.content,
        "send_at": time(m.send_at) if m.send_at is not None else None,
        "priority": m.priority,
        "valid_until": time(m.valid_until) if m.valid_until is not None else None,
        "encoding": m.encoding.value,
        "segments": m.segments,
    }


def message_from_row(row: Row, timestamp: Callable[[Any], datetime | None]) -> Message:
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
    )


def claim_token(text: str | None) -> uuid.UUID | None:
    """A claim token as a UUID; one that is not a UUID can hold no row, like None."""
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """One resolution as both SQL adapters write it: the same values, cleaned the same way."""

    id: int
    claim_token: uuid.UUID | None
    status: str
    sent_at: datetime | None
    message_id: str | None
    last_error: str | None
    retry_in_s: float | None
    uncount: bool
    # The attempt, written to the message's history with the outcome (all None: no event).
    at: datetime | None = None
    outcome: str | None = None
    attempt: int | None = None
    status_code: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    segments: int | None = None
    encoding: str | None = None


def outcome_row(r: Resolution) -> OutcomeRow:
    """What is written back for ``r``. A provider's message id or error text may hold anything:
    what no database can store is replaced as ``domain.storable_text`` says."""
    return OutcomeRow(
        id=int(r.id),
        claim_token=claim_token(r.claim_token),
        status=r.status.value,
        sent_at=r.sent_at,
        message_id=storable_text(r.message_id) if r.message_id is not None else None,
        last_error=storable_text(r.last_error) if r.last_error is not None else None,
        retry_in_s=float(r.retry_in_s) if r.retry_in_s is not None else None,
        uncount=bool(r.uncount_attempt),
        at=r.attempt.at if r.attempt is not None else None,
        outcome=r.attempt.outcome if r.attempt is not None else None,
        attempt=r.attempt.number if r.attempt is not None else None,
        status_code=r.attempt.status_code if r.attempt is not None else None,
        duration_ms=r.attempt.duration_ms if r.attempt is not None else None,
        error=storable_text(r.attempt.error) if r.attempt is not None and r.attempt.error is not None else None,
        segments=r.segments,
        encoding=r.encoding.value if r.encoding is not None else None,
    )


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
