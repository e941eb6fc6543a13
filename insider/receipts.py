"""Delivery receipts: the provider's word on a sent message, its status forms, and the history events."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from insider.domain import MessageStatus

# What a receipt's status says, case-insensitively, in the forms providers commonly send:
# ours, SMPP's `stat` field (DELIVRD, UNDELIV, ...), Twilio's, Vonage's, Infobip's, Sinch's,
# Plivo's and MessageBird's. The value is the delivery status kept on the message.
FINAL_FORMS: Final[dict[str, str]] = {
    "delivered": "delivered",
    "delivrd": "delivered",
    "read": "delivered",  # Twilio and others: delivered and read
    "undelivered": "undelivered",
    "undeliv": "undelivered",
    "undeliverable": "undelivered",
    "failed": "undelivered",  # Twilio, Vonage, Plivo, Sinch: the network did not deliver it
    "delivery_failed": "undelivered",  # MessageBird
    "deleted": "undelivered",  # SMPP DELETED: removed from the SMSC before delivery
    "aborted": "undelivered",  # Sinch
    "expired": "expired",
    "rejected": "rejected",
    "rejectd": "rejected",
}
# Forms that say "not yet": kept as an event, changing nothing.
INTERIM_FORMS: Final = frozenset(
    {
        "unknown",
        "acceptd",
        "accepted",
        "enroute",
        "sent",
        "queued",
        "buffered",
        "sending",
        "scheduled",
        "dispatched",
        "pending",
        "submitted",
    }
)
# The delivery status of a final receipt, and the message status it leads to.
FINAL_STATUS: Final[dict[str, MessageStatus]] = {
    "delivered": MessageStatus.DELIVERED,
    "undelivered": MessageStatus.UNDELIVERED,
    "expired": MessageStatus.UNDELIVERED,
    "rejected": MessageStatus.UNDELIVERED,
}
# A receipt for a provider id that no message has yet is kept this long, then dropped.
WAITING_MAX_AGE_S: Final = 86400.0


def delivery_status(status: str) -> str | None:
    """The delivery status (delivered, undelivered, expired, rejected) a receipt's status means, or None.

    None: not final (ENROUTE, ACCEPTD, UNKNOWN, ...) or not a form we know; either way the
    receipt is kept as an event and changes nothing.
    """
    return FINAL_FORMS.get(status.strip().lower())


class ReceiptResult(enum.StrEnum):
    """What one receipt did."""

    APPLIED = "applied"  # the sent message became delivered or undelivered
    RECORDED = "recorded"  # kept in the message's history; its status did not change
    DUPLICATE = "duplicate"  # the same receipt was had before: nothing changed
    WAITING = "waiting"  # no message has that provider id yet: kept, applied when one does


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery receipt, as received.

    ``status`` is the provider's word as written; ``delivery_status`` its meaning when final.
    """

    provider_message_id: str
    status: str
    received_at: datetime
    error_code: str | None = None
    done_at: datetime | None = None

    @property
    def delivery_status(self) -> str | None:
        return delivery_status(self.status)

    @property
    def final_status(self) -> MessageStatus | None:
        meaning = self.delivery_status
        return FINAL_STATUS[meaning] if meaning is not None else None

    @property
    def dedupe_key(self) -> str:
        """The receipt's identity: provider id, status (any case), error code and time of delivery."""
        parts = (
            self.provider_message_id,
            self.status.strip().lower(),
            self.error_code or "",
            self.done_at.isoformat() if self.done_at is not None else "",
        )
        return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ReceiptOutcome:
    """What one receipt did, and, when it moved a message, what it moved it to."""

    result: ReceiptResult
    message_id: int | None = None  # ours, when a message has the provider's id
    status: MessageStatus | None = None  # the new status, when applied
    sent_at: datetime | None = None
    delivered_at: datetime | None = None


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
