"""Opaque keyset cursors shared by every repository adapter."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Final

from insider.domain import EARLIEST_TIME, LATEST_TIME, Category, Message, MessageStatus
from insider.ports import InvalidCursor, Page

# A cursor this service hands out is about 80 characters; anything much longer is forged.
MAX_CURSOR_LENGTH = 512
# Ids are BIGINT (PostgreSQL) or INTEGER (SQLite): both signed 64-bit.
MAX_ID = 2**63 - 1
# Sort keys are times the service wrote: within the range of every stored time.
MIN_KEY = EARLIEST_TIME
MAX_KEY = LATEST_TIME
_FORGED = "cursor is not one this service handed out"

# The listing of every message the provider accepted (no status filter) tags its cursors so.
ACCEPTED: Final = "accepted"


def _listing(status: MessageStatus | None) -> str:
    return status.value if status is not None else ACCEPTED


def encode_cursor(status: MessageStatus | None, key: datetime, message_id: int) -> str:
    raw = json.dumps([_listing(status), key.isoformat(), message_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, status: MessageStatus | None) -> tuple[datetime, int]:
    """The (sort key, id) after which the next page starts; InvalidCursor if forged or stale.

    The structure is checked strictly, so that no value reaches a database that would make it
    fail (a boolean compared with a BIGINT, an id over 64 bits, a time outside the year range):
    ``[status, aware ISO 8601 time within years 1000 to 9999 in UTC, id from 1 to 2^63 - 1]``.
    """
    decoded = _unpack(cursor, 3)
    value, key, message_id = decoded
    # bool is an int in Python, but PostgreSQL would compare a boolean with a BIGINT and fail.
    if not isinstance(key, str) or type(message_id) is not int or not 1 <= message_id <= MAX_ID:
        raise InvalidCursor(_FORGED)
    try:
        parsed = datetime.fromisoformat(key)
        in_utc = parsed.astimezone(UTC) if parsed.tzinfo is not None else None
    except (ValueError, OverflowError):  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise InvalidCursor(_FORGED) from None
    if in_utc is None or not MIN_KEY <= in_utc <= MAX_KEY:
        raise InvalidCursor(_FORGED)
    if value != _listing(status):
        raise InvalidCursor("cursor belongs to another listing")
    return in_utc, message_id


def page_query(
    status: MessageStatus | None,
    limit: int,
    cursor: str | None,
    to: str | None = None,
    category: Category | None = None,
) -> tuple[str, dict[str, Any]]:
    """The named query (of ``queries.sql``) and its parameters for one page of ``limit + 1`` rows.

    ``status`` None lists every message the provider accepted, by ``sent_at``. After a
    cursor, ``params["key"]`` is its sort key as a datetime; an adapter that stores times
    otherwise converts it. With ``to``, the ``..._to`` queries of one recipient; with
    ``category``, their ``..._category`` twins (``sqlfiles.with_category_listings``). A
    category keeps the sort key, so a cursor stays valid with or without one.
    """
    name = "list_accepted" if status is None else "list_sent" if status is MessageStatus.SENT else "list_by_created"
    params: dict[str, Any] = {"status": _listing(status), "limit": limit + 1}
    if to is not None:
        name += "_to"
        params["to"] = to
    if cursor is not None:
        params["key"], params["id"] = decode_cursor(cursor, status)
        name += "_after"
    if category is not None:
        name += "_category"
        params["category"] = category.value
    return name, params


def page_of(rows: list[Message], limit: int, status: MessageStatus | None) -> Page:
    """A page from up to ``limit + 1`` rows in listing order: the extra row only says a next page exists."""
    page = rows[:limit]
    if len(rows) <= limit or not page:
        return Page(items=page, next_cursor=None)
    last = page[-1]
    key = last.sent_at if status is None or status is MessageStatus.SENT else last.created_at
    assert key is not None  # sent rows are listed by sent_at, which a sent row has
    return Page(items=page, next_cursor=encode_cursor(status, key, last.id))


# The suppression list's listing tags its cursors so; its rows are keyed by number, not id.
SUPPRESSIONS: Final = "suppressions"
_E164_MAX_LENGTH: Final = 16  # "+" and at most 15 digits


def encode_suppression_cursor(key: datetime, phone: str) -> str:
    """The cursor of the suppression list's page after the entry (``key``: its created_at, ``phone``)."""
    raw = json.dumps([SUPPRESSIONS, key.isoformat(), phone], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_suppression_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, phone) after which the next page of the suppression list starts; InvalidCursor
    if forged or another listing's. Checked as strictly as a message cursor."""
    decoded = _unpack(cursor, 3)
    listing, key, phone = decoded
    if not isinstance(key, str) or not isinstance(phone, str):
        raise InvalidCursor(_FORGED)
    if not (phone.startswith("+") and phone[1:].isascii() and phone[1:].isdigit() and len(phone) <= _E164_MAX_LENGTH):
        raise InvalidCursor(_FORGED)
    try:
        parsed = datetime.fromisoformat(key)
        in_utc = parsed.astimezone(UTC) if parsed.tzinfo is not None else None
    except (ValueError, OverflowError):
        raise InvalidCursor(_FORGED) from None
    if in_utc is None or not MIN_KEY <= in_utc <= MAX_KEY:
        raise InvalidCursor(_FORGED)
    if listing != SUPPRESSIONS:
        raise InvalidCursor("cursor belongs to another listing")
    return in_utc, phone


def encode_id_cursor(listing: str, row_id: int) -> str:
    """A cursor of a listing ordered by id alone (newest first): the last id of a page."""
    raw = json.dumps([listing, row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str, listing: str) -> int:
    """The id after which the next page of ``listing`` starts; InvalidCursor if forged or another listing's."""
    decoded = _unpack(cursor, 2)
    value, row_id = decoded
    if type(row_id) is not int or not 1 <= row_id <= MAX_ID:
        raise InvalidCursor(_FORGED)
    if value != listing:
        raise InvalidCursor("cursor belongs to another listing")
    return row_id


def _unpack(cursor: str, length: int) -> list[Any]:
    """The JSON list of ``length`` items a cursor encodes; InvalidCursor for anything else
    (too long, not base64, not JSON, too deep, another shape)."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor(_FORGED)
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded: Any = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, TypeError, binascii.Error, RecursionError):  # UnicodeError is a ValueError
        raise InvalidCursor(_FORGED) from None
    if not (isinstance(decoded, list) and len(decoded) == length):
        raise InvalidCursor(_FORGED)
    return decoded
