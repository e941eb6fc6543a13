"""The ports of consent: the suppression list, the replies, the frequency cap's count and the
waiting messages' counts (the SQL repositories are each one); ``insider.ports`` composes them
into the repository."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from insider.domain import NewMessage
from insider.inbound import Inbound, Reply
from insider.suppressions import (
    DEFAULT_REASON,
    DEFAULT_SCOPE,
    NewSuppression,
    SuppressedMany,
    Suppression,
    SuppressionPage,
)

__all__ = ["CapStore", "InboundStore", "RecordedReply", "ReplyPage", "SuppressionList", "WaitingCounter"]


@runtime_checkable
class CapStore(Protocol):
    """A frequency cap's count, for the whole deployment; the SQL repositories are ones.

    Raises RepositoryUnavailable when the database cannot be reached.
    """

    async def admit_capped(
        self, candidates: Sequence[tuple[int, str]], limit: int, window_s: float
    ) -> dict[int, datetime | None]:
        """Admit claimed messages, given as (id, recipient) in the batch's order, under a cap of
        ``limit`` messages to one recipient within ``window_s`` seconds; one answer per id.

        None: admitted now (its admission time is stored, and counts from then on while the
        message is being sent or was sent). A time: over the cap, the earliest at which the
        count allows another. What counts for a recipient is its admitted messages of the
        window that are ``sending``, ``sent``, ``delivered`` or ``undelivered`` (one put back
        to pending, or failed, reached nobody), then the candidates admitted before it. One
        recipient is admitted by one process at a time.
        """


@runtime_checkable
class SuppressionList(Protocol):
    """The suppression list: numbers (E.164) not to send to; the SQL repositories are ones.

    The queue reads it itself (a message to a number suppressed for its category is stored
    ``suppressed`` at enqueue, and ends so at its claim). Every method raises
    RepositoryUnavailable when the database cannot be reached.
    """

    async def suppress(
        self, phone: str, scope: str = DEFAULT_SCOPE, reason: str = DEFAULT_REASON, source: str = "api"
    ) -> tuple[Suppression, bool]:
        """Put ``phone`` (E.164) on the list, or change its entry (scope, reason, source; it keeps its time).

        Returns the entry as stored, and whether it was added (False: it was there, updated).
        ``scope`` is ``all`` or ``commercial`` (else ValueError); see ``suppressions.check_suppression``
        for checking what a person typed.
        """

    async def suppress_many(self, entries: Sequence[NewSuppression]) -> SuppressedMany:
        """Put many numbers on the list (an import) in one transaction: all or none.

        A number given twice takes its last entry.
        """

    async def unsuppress(self, phone: str) -> bool:
        """Take a number off the list; whether it was on it. Messages it already held stay suppressed."""

    async def get_suppression(self, phone: str) -> Suppression | None:
        """A number's entry, or None when it is not on the list."""

    async def list_suppressions(self, limit: int, cursor: str | None = None, to: str | None = None) -> SuppressionPage:
        """The list, most recently added first, a page at a time (keyset: ``cursor`` is the previous
        page's ``next_cursor``; InvalidCursor otherwise). ``to`` keeps that number's entry alone."""

    async def count_suppressions(self) -> int:
        """How many numbers are on the list."""


@runtime_checkable
class WaitingCounter(Protocol):
    """Pending messages held back by consent, per reason; the SQL repositories are ones."""

    async def waiting_counts(self) -> dict[str, int]:
        """Pending messages per ``wait_reason`` (every reason of ``consent.WAIT_REASONS``, zeros included)."""


@dataclass(frozen=True, slots=True)
class RecordedReply:
    """What :meth:`InboundStore.record_inbound` did: the reply stored, or (``replayed``) the one stored
    before with the same provider id, which nothing was done for again."""

    reply: Reply
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ReplyPage:
    """One page of replies and the cursor of the next page (None on the last)."""

    items: list[Reply]
    next_cursor: str | None


@runtime_checkable
class InboundStore(Protocol):
    """Replies (inbound messages) and what their keywords do to the suppression list; the SQL repositories are ones.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    async def record_inbound(
        self, inbound: Inbound, action: str | None, scope: str, confirmation: NewMessage | None
    ) -> RecordedReply:
        """Store a reply and do what it asks, in one transaction.

        ``action`` ``opt-out``: its sender is suppressed for ``scope`` (``all`` or ``commercial``;
        a wider suppression already there stays), reason ``opt-out``, source ``inbound``;
        ``opt-in``: its sender's suppression goes. ``confirmation`` (a message to the sender,
        never held back by a suppression) is queued with it. A reply whose provider and provider
        id were stored before is that one (``replayed``): nothing is done again.
        """

    async def list_inbound(self, limit: int, cursor: str | None = None, from_phone: str | None = None) -> ReplyPage:
        """Replies, newest first; ``from_phone`` (E.164) keeps those of one sender. Keyset pagination:
        ``cursor`` is the ``next_cursor`` of the previous page (InvalidCursor when it is not one)."""
