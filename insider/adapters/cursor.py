"""Opaque keyset cursors shared by every repository adapter."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from insider.domain import Message, MessageStatus
from insider.ports import InvalidCursor, Page


def encode_cursor(status: MessageStatus, key: datetime, message_id: int) -> str:
    raw = json.dumps([status.value, key.isoformat(), message_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, status: MessageStatus) -> tuple[datetime, int]:
    """The (sort key, id) after which the next page starts; InvalidCursor if forged or stale."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value, key, message_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        parsed = datetime.fromisoformat(key)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this service handed out") from None
    if value != status.value or not isinstance(message_id, int) or parsed.tzinfo is None:
        raise InvalidCursor("cursor belongs to another listing")
    return parsed, message_id


def page_query(status: MessageStatus, limit: int, cursor: str | None) -> tuple[str, dict[str, Any]]:
    """The named query (of ``queries.sql``) and its parameters for one page of ``limit + 1`` rows.

    After a cursor, ``params["key"]`` is its sort key as a datetime; an adapter that stores
    times otherwise converts it.
    """
    sent = status is MessageStatus.SENT
    params: dict[str, Any] = {"status": status.value, "limit": limit + 1}
    if cursor is None:
        return ("list_sent" if sent else "list_by_created"), params
    params["key"], params["id"] = decode_cursor(cursor, status)
    return ("list_sent_after" if sent else "list_by_created_after"), params


def page_of(rows: list[Message], limit: int, status: MessageStatus) -> Page:
    """A page from up to ``limit + 1`` rows in listing order: the extra row only says a next page exists."""
    page = rows[:limit]
    if len(rows) <= limit or not page:
        return Page(items=page, next_cursor=None)
    last = page[-1]
    key = last.sent_at if status is MessageStatus.SENT else last.created_at
    assert key is not None  # sent rows are listed by sent_at, which a sent row has
    return Page(items=page, next_cursor=encode_cursor(status, key, last.id))
