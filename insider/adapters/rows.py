"""A ``messages`` row as a Message, whichever database it came from."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from insider.domain import Message, MessageStatus


class Row(Protocol):
    """A row read by column name: psycopg's dict rows and sqlite3.Row both are."""

    def __getitem__(self, key: str, /) -> Any: ...


def message_from_row(row: Row, timestamp: Callable[[Any], datetime | None]) -> Message:
    """The Message of a row; ``timestamp`` turns the database's time values into aware UTC datetimes."""
    created_at = timestamp(row["created_at"])
    assert created_at is not None  # NOT NULL in the schema
    claim_token = row["claim_token"]
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
    )
