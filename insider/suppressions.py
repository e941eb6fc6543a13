"""The suppression list: numbers not to send to (all messages, or commercial ones), each with why and from where.

A number is kept in E.164. The list is read by the queue's own statements (at enqueue and at
claim, see the migrations' ``insider_suppressed_for``); this module says what a row of it is
and checks what goes in.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from insider.domain import InvalidMessage, InvalidPhone, as_utc, normalize_phone

__all__ = [
    "DEFAULT_REASON",
    "DEFAULT_SCOPE",
    "MAX_REASON_LENGTH",
    "MAX_SOURCE_LENGTH",
    "NewSuppression",
    "Scope",
    "SuppressedMany",
    "Suppression",
    "SuppressionPage",
    "check_suppression",
    "text_problem",
]


class Scope(enum.StrEnum):
    """What a suppression holds back."""

    ALL = "all"  # every message (but the confirmation of an opt-out or opt-in)
    COMMERCIAL = "commercial"  # commercial messages; transactional ones still go


SCOPES: Final = tuple(s.value for s in Scope)
DEFAULT_SCOPE: Final = Scope.ALL
DEFAULT_REASON: Final = "opt-out"
# A reason is a word or a short sentence (it is shown as each suppressed message's suppressionReason).
MAX_REASON_LENGTH: Final = 200
MAX_SOURCE_LENGTH: Final = 40
# Control characters (line breaks and tabs included), NUL and unpaired surrogates: a reason is one line of text.
_UNFIT: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class NewSuppression:
    """A number to put on the list (or whose entry to change): checked, in E.164."""

    phone: str
    scope: Scope = DEFAULT_SCOPE
    reason: str = DEFAULT_REASON
    source: str = "api"
    # When it was first suppressed, for an entry carried over from elsewhere (an import of an
    # export); None: now. An entry already on the list keeps its own.
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Suppression:
    """One number on the suppression list."""

    phone: str  # E.164
    scope: Scope
    reason: str
    source: str  # api, import, inbound, ...
    created_at: datetime  # when the number was first put on the list


@dataclass(frozen=True, slots=True)
class SuppressionPage:
    """One page of the list, most recent first, and the cursor of the next page (None on the last)."""

    items: list[Suppression]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SuppressedMany:
    """What an import of many suppressions did: numbers added to the list, and numbers already on it, updated."""

    added: int
    updated: int


def text_problem(name: str, text: object, max_length: int) -> str | None:
    """Why ``text`` cannot be a suppression's ``name`` (reason, source), or None when it can."""
    if not isinstance(text, str):
        return f"{name} must be a string"
    if not text.strip():
        return f"{name} must not be blank"
    if len(text) > max_length:
        return f"{name} is {len(text)} characters, over the limit of {max_length}"
    if _UNFIT.search(text):
        return f"{name} must be one line of text, without control characters"
    return None


def check_suppression(
    to: str,
    *,
    scope: str = DEFAULT_SCOPE,
    reason: str = DEFAULT_REASON,
    source: str = "api",
    region: str = "",
    created_at: datetime | None = None,
    now: datetime | None = None,
) -> NewSuppression:
    """A suppression checked as the API, the CLI and the replies check one; InvalidMessage names the bad field.

    ``to`` is any form ``POST /api/v1/messages`` takes (normalised to E.164 with ``region``);
    ``scope`` ``all`` or ``commercial``; ``reason`` and ``source`` one line of text each, not
    blank, at most :data:`MAX_REASON_LENGTH` and :data:`MAX_SOURCE_LENGTH` characters;
    ``created_at`` (optional) in the storable range and not after ``now``.
    """
    try:
        phone = normalize_phone(to, region)
    except InvalidPhone as exc:
        raise InvalidMessage("to", f"to is not a possible phone number: {exc}") from None
    if scope not in SCOPES:
        raise InvalidMessage("scope", f"scope must be {' or '.join(SCOPES)}")
    for name, text, limit in (("reason", reason, MAX_REASON_LENGTH), ("source", source, MAX_SOURCE_LENGTH)):
        problem = text_problem(name, text, limit)
        if problem is not None:
            raise InvalidMessage(name, problem)
    if created_at is not None:
        try:
            created_at = as_utc(created_at)
        except ValueError as exc:
            raise InvalidMessage("createdAt", f"createdAt {exc}") from None
        if now is not None and created_at > now:
            raise InvalidMessage("createdAt", "createdAt must not be in the future")
    return NewSuppression(phone, Scope(scope), reason.strip(), source.strip(), created_at)
