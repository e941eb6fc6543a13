"""A message's history: each send attempt and each delivery receipt, as the history endpoint reads it back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

# The history endpoint returns at most this many events of a message (attempts are bounded by
# INSIDER_MAX_ATTEMPTS; receipts only by what a provider sends).
MAX_EVENTS: Final = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a message's history: a send attempt or a receipt."""

    id: int
    message_id: int
    at: datetime
    kind: str  # attempt or receipt
    outcome: str | None
    attempt: int | None = None
    status_code: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    provider_message_id: str | None = None
    receipt_status: str | None = None
    error_code: str | None = None
    done_at: datetime | None = None
    provider: str | None = None  # an attempt's provider
