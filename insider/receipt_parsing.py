"""Delivery receipts as a provider posts them: parsed from a request body, and what their status forms mean."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from insider.domain import MessageStatus, as_utc, unstorable_text

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
    # Named no provider, and messages of several providers have that id: applied to none (not kept).
    AMBIGUOUS = "ambiguous"
    FAILED = "failed"  # it could not be stored (logged); the others of its request were


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery receipt, as received.

    ``status`` is the provider's word as written; ``delivery_status`` its meaning when final.
    ``provider`` names the provider that sent it, when known: ids are unique only per
    provider, so a named receipt matches only that provider's message with the id.
    """

    provider_message_id: str
    status: str
    received_at: datetime
    error_code: str | None = None
    done_at: datetime | None = None
    provider: str | None = None

    @property
    def delivery_status(self) -> str | None:
        return delivery_status(self.status)

    @property
    def final_status(self) -> MessageStatus | None:
        meaning = self.delivery_status
        return FINAL_STATUS[meaning] if meaning is not None else None

    @property
    def dedupe_key(self) -> str:
        """The receipt's identity: provider id, status (any case), error code and time of delivery.

        Not the provider: a message's history holds a receipt once, however it was named; two
        providers' receipts for one id meet two messages, and wait apart (the waiting table's
        key has the provider).
        """
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


# One request's receipts at most (the endpoint's body limit comes first for long ids).
MAX_RECEIPTS_PER_REQUEST: Final = 10_000
_MAX_ID_LENGTH: Final = 256
_MAX_STATUS_LENGTH: Final = 64


class InvalidReceipts(ValueError):
    """A body that is not one receipt or an array of them; ``fields`` names each problem (``<index>.field``)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("invalid receipts")
        self.fields = fields


def _text_field(
    item: dict[str, Any], name: str, max_length: int, *, required: bool, numbers: bool = True
) -> tuple[str | None, str | None]:
    """(value, problem) of a string field; whole numbers are taken as their digits (ids and codes often are)."""
    value = item.get(name)
    if value is None:
        return None, (f"{name} is required" if required else None)
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None, "must be a string"
    value = value.strip()
    if required and not value:
        return None, "must not be empty"
    if len(value) > max_length:
        return None, f"must be at most {max_length} characters"
    problem = unstorable_text(value)
    return (None, problem) if problem else (value or None, None)


_ISO_8601: Final = "must be an ISO 8601 time, e.g. 2026-01-01T12:00:00Z"


def _timestamp(value: Any) -> tuple[datetime | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, _ISO_8601
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, _ISO_8601
    try:  # a time with no offset is read as UTC, as providers mostly mean it
        return as_utc(parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed), None
    except ValueError as exc:
        return None, str(exc)


def parse_receipts(body: Any, received_at: datetime, *, provider: str | None = None) -> list[Receipt]:
    """The receipts of a request body: one object or an array of them, each from ``provider`` (None: unnamed).

    Raises InvalidReceipts naming every problem: ``<index>.<field>`` in an array, the bare
    field name for a single object. Fields other than messageId, status, errorCode and
    doneAt are ignored (providers add their own).
    """
    single = isinstance(body, dict)
    items = [body] if single else body
    if not isinstance(items, list):
        raise InvalidReceipts({"_schema": ["the body must be a receipt object or a JSON array of them"]})
    if len(items) > MAX_RECEIPTS_PER_REQUEST:
        raise InvalidReceipts({"_schema": [f"at most {MAX_RECEIPTS_PER_REQUEST} receipts per request"]})
    problems: dict[str, list[str]] = {}
    receipts = []
    for index, item in enumerate(items):
        prefix = "" if single else f"{index}."
        if not isinstance(item, dict):
            problems[str(index)] = ["must be an object with messageId and status"]
            continue
        message_id, id_problem = _text_field(item, "messageId", _MAX_ID_LENGTH, required=True)
        status, status_problem = _text_field(item, "status", _MAX_STATUS_LENGTH, required=True, numbers=False)
        error_code, code_problem = _text_field(item, "errorCode", _MAX_STATUS_LENGTH, required=False)
        done_at, time_problem = _timestamp(item.get("doneAt"))
        for name, problem in (
            ("messageId", id_problem),
            ("status", status_problem),
            ("errorCode", code_problem),
            ("doneAt", time_problem),
        ):
            if problem is not None:
                problems[prefix + name] = [problem]
        if message_id is not None and status is not None and not (code_problem or time_problem):
            receipts.append(Receipt(message_id, status, received_at, error_code, done_at, provider))
    if problems:
        raise InvalidReceipts(problems)
    return receipts
