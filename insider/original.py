"""What the original Go service's clients read: its time format and its sent-message item."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

# The newest entries kept in the Redis list INSIDER_REDIS_LIST, and the most items
# GET /messages answers with (the original kept and answered with everything).
SENT_LIST_MAX: Final = 10_000


def go_time(when: datetime) -> str:
    """``when`` as Go's encoding/json writes a time.Time (RFC 3339 with up to nanoseconds, no
    trailing zeros), in UTC: ``2026-03-02T12:00:00Z``, ``2026-03-02T12:00:00.1234Z``."""
    utc = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def sent_item(provider_message_id: str | None, sent_at: datetime) -> dict[str, Any]:
    """One ``{"messageId", "sentAt"}`` item of the original's list; a send without an id has ``""``."""
    return {"messageId": provider_message_id or "", "sentAt": go_time(sent_at)}
