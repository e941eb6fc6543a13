"""The message, its states, send outcomes and validation: plain data, no I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

# fullmatch, not match with $: "$" also matches before a trailing newline. No leading 0 in E.164.
E164 = re.compile(r"\+[1-9][0-9]{7,14}")


class MessageStatus(enum.StrEnum):
    """Where a message is in its life; the values are stored in the database."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DELIVERED = "delivered"  # the provider's receipt says it reached the handset
    UNDELIVERED = "undelivered"  # the provider's receipt says it never will


# Statuses of a message the provider accepted: listed by ``sent_at``.
ACCEPTED_STATUSES = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.UNDELIVERED)


@dataclass(frozen=True, slots=True)
class Message:
    """One row of the ``messages`` table."""

    id: int
    recipient_phone: str
    content: str
    status: MessageStatus
    created_at: datetime
    sent_at: datetime | None = None
    message_id: str | None = None
    last_error: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_expires_at: datetime | None = None
    idempotency_key: str = ""
    claim_token: str | None = None
    # The UUID a row of the original Go service was known by (PostgreSQL only).
    uuid: str | None = None
    delivered_at: datetime | None = None  # when the final receipt says it happened
    delivery_status: str | None = None  # delivered, undelivered, expired or rejected
    delivery_error: str | None = None  # the provider's error code, if it gave one


class Outcome(enum.StrEnum):
    """What one send attempt (or a refusal to send) came to."""

    SENT = "sent"  # the provider accepted it (any 2xx)
    RETRY = "retry"  # transient: back to pending with a backoff, or failed when out of attempts
    FAILED = "failed"  # permanent: never sent


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the SMS client reports for one request."""

    outcome: Outcome
    status_code: int | None = None
    provider_message_id: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    # A sent message whose answer was odd after its 2xx status line (logged, not an error).
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    """The state one claimed message is written back with, all fields at once."""

    id: int
    claim_token: str | None
    status: MessageStatus
    sent_at: datetime | None = None
    message_id: str | None = None
    last_error: str | None = None
    retry_in_s: float | None = None  # pending again: due this many seconds from now
    # An interrupted or never-started attempt does not count against the message.
    uncount_attempt: bool = False
    # The attempt behind this outcome, written to the message's history with it; None: no event
    # (a message released unsent by a stop).
    attempt: Attempt | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One send attempt, as the message's history keeps it."""

    at: datetime  # when the request started (or the message was refused, for an invalid one)
    outcome: str  # sent, retry, failed, invalid
    number: int  # the message's attempt count at the time
    status_code: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    provider_message_id: str | None = None


# What neither database can store as text: NUL (PostgreSQL refuses it) and unpaired
# surrogates (no UTF-8 form, so neither PostgreSQL nor SQLite takes them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def unstorable_text(text: str) -> str | None:
    """Why ``text`` cannot be stored as given (a NUL or an unpaired surrogate), or None when it can.

    Both SQL adapters refuse such a message on enqueue with this reason (a ValueError), the
    API answers 422 with it, and the sender fails such a row (written by another program)
    instead of sending it.
    """
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters (\\u0000)"
    return "must not contain unpaired surrogates (\\ud800 to \\udfff)"


class UnstorableText(ValueError):
    """A message whose text no database can store (NUL, unpaired surrogates); nothing was written."""


def ensure_storable(**texts: str) -> None:
    """Raise UnstorableText naming the first of ``texts`` (field name = text) that cannot be stored."""
    for name, text in texts.items():
        problem = unstorable_text(text)
        if problem is not None:
            raise UnstorableText(f"{name} {problem}")


def storable_text(text: str) -> str:
    """``text`` with what no database can store (NUL, unpaired surrogates) replaced by U+FFFD.

    For text we record but did not choose: a provider's error or message id. Both SQL
    adapters write such text through this, so they store the same thing.
    """
    return _UNSTORABLE.sub(REPLACEMENT, text)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one batch did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    duration_s: float = 0.0


def validation_error(recipient_phone: str, content: str, max_length: int) -> str | None:
    """Why a message can never be sent, or None when it can.

    Length counts Unicode code points, so Turkish text has the same limit as ASCII.
    """
    if not isinstance(recipient_phone, str) or not E164.fullmatch(recipient_phone):
        return "recipient_phone is not an E.164 number ('+' and 8 to 15 digits)"
    if not isinstance(content, str) or not content.strip():
        return "content is empty"
    problem = unstorable_text(content)
    if problem is not None:
        return f"content {problem}"
    if len(content) > max_length:
        return f"content is {len(content)} characters, over the limit of {max_length}"
    return None


def mask_phone(phone: str | None) -> str:
    """A phone number fit for logs: country prefix and last two digits only."""
    if not phone:
        return ""
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:4] + "*" * (len(phone) - 6) + phone[-2:]


def slot_wait_s(last_at: datetime | None, now: datetime, interval_s: float) -> float:
    """How long until the slot whose last batch went at ``last_at`` is due: one (current) interval later."""
    if last_at is None:
        return 0.0
    return max(0.0, (last_at + timedelta(seconds=interval_s) - now).total_seconds())


def slot_batch_at(last_at: datetime | None, now: datetime, interval_s: float) -> datetime:
    """When a batch taking the slot at ``now`` counts as sent: when due if on time, else now.

    A slot taken up to a small tolerance late keeps the grid (batch k at start + k x
    interval, no drift); one taken later restarts the grid from now (no catch-up burst),
    so two batches are never less than one interval apart. The PostgreSQL adapter
    computes the same in SQL; SQLite calls this.
    """
    if last_at is not None:
        due = last_at + timedelta(seconds=interval_s)
        if timedelta(0) <= now - due <= timedelta(seconds=slot_tolerance_s(interval_s)):
            return due
    return now


def slot_tolerance_s(interval_s: float) -> float:
    """How late a slot may be taken and still keep the grid: 5% of it, at most 1 s."""
    return min(0.05 * interval_s, 1.0)
