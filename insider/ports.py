"""The ports: what the service needs from a database (one protocol per role), an SMS provider, a cache and a clock."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

# The consent ports live in a module of their own; named here as well, as every port is.
from insider.consent_ports import CapStore as CapStore
from insider.consent_ports import InboundStore as InboundStore
from insider.consent_ports import RecordedReply as RecordedReply
from insider.consent_ports import ReplyPage as ReplyPage
from insider.consent_ports import SuppressionList as SuppressionList
from insider.consent_ports import WaitingCounter as WaitingCounter
from insider.domain import (
    BatchReport,
    Category,
    Message,
    MessageStatus,
    NewMessage,
    Resolution,
    SendOrder,
    SendResult,
)
from insider.history import MAX_EVENTS, Event
from insider.receipt_parsing import Receipt, ReceiptOutcome


class RepositoryUnavailable(Exception):
    """The database cannot be reached; the caller may try again later."""


class SchemaUpgradeRefused(Exception):
    """The database holds something the migrations cannot upgrade; nothing was changed.

    The message says what and how to fix it. Trying again does not help until someone does.
    """


class MessageNotFound(LookupError):
    """No message has that id."""


class InvalidState(Exception):
    """The message is not in a state that allows the operation."""

    def __init__(self, message: Message, wanted: str) -> None:
        super().__init__(f"message {message.id} is {message.status.value}, not {wanted}")
        self.message = message


class IdempotencyConflict(Exception):
    """The Idempotency-Key was first used with another request body."""


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's Idempotency-Key and a digest of the request it came with."""

    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What an enqueue stored, or (``replayed``) what the first request with its key stored."""

    messages: list[Message]
    replayed: bool = False


class InvalidCursor(ValueError):
    """A pagination cursor that this repository did not hand out."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of messages and the cursor of the next page (None on the last)."""

    items: list[Message]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SentEntry:
    """What the cache keeps about a sent message."""

    provider_message_id: str
    sent_at: datetime
    id: int


class SendQueue(Protocol):
    """Claiming and recording: what the sender does with the queue, one batch at a time.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    async def claim(self, limit: int, lease_s: float, order: SendOrder = SendOrder.OLDEST) -> list[Message]:
        """Lease up to ``limit`` due messages in one statement, and report the ones that expired.

        Due: sending with a lease that has expired (its holder died), then pending whose
        time has come (its ``send_at``, its retry time, or at once) and not past its
        ``valid_until``: highest priority first, then the longest due first (``order``
        oldest) or the most recently due (newest). Claimed rows become ``sending`` with a
        lease of ``lease_s`` seconds, a fresh claim token and one more attempt.

        Pending rows past their ``valid_until`` become ``expired`` on the way (a bounded
        number per call) and are returned too, with that status, never claimed.
        """

    async def resolve(self, resolutions: Sequence[Resolution]) -> Sequence[ReceiptOutcome]:
        """Write back the outcome of claimed messages, all in one statement.

        A resolution applies only while its claim token still holds the row, except a
        ``sent`` one, which applies to any row the provider has not accepted yet (the send
        happened). Each resolution's ``attempt`` goes to the message's history with it.
        Receipts that were waiting for the provider ids just recorded are applied right
        after; their outcomes are returned (for the metrics).
        """

    async def expire(self) -> int:
        """Turn pending messages past their ``valid_until`` into expired (bounded); how many."""


class RateSlot(Protocol):
    """The deployment-wide batch slot: several processes on one database share one rate.

    Raises RepositoryUnavailable when the database cannot be reached.
    """

    async def acquire_slot(self, name: str, interval_s: float) -> float:
        """Take the deployment-wide batch slot ``name`` if its time has come.

        Returns 0 when taken (the next slot is then one interval later, or one interval
        from now when late), or the seconds to wait until it can be taken.
        """


class MessageReader(Protocol):
    """Reading: messages one at a time or a page at a time, their counts and their history.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    async def get(self, message_id: int) -> Message | None:
        """One message in any state."""

    async def get_by_uuid(self, message_uuid: str) -> Message | None:
        """The message with this UUID (rows of the original Go service keep theirs), or None."""

    async def list_messages(
        self,
        status: MessageStatus | None,
        limit: int,
        cursor: str | None = None,
        to: str | None = None,
        category: Category | None = None,
    ) -> Page:
        """Messages in one status, newest first (sent: by ``sent_at``; others: by ``created_at``).

        ``status`` None: every message the provider accepted (sent, delivered, undelivered), by ``sent_at``.

        Keyset pagination: ``cursor`` is the ``next_cursor`` of the previous page. ``to``
        (E.164) keeps only the messages to that recipient, ``category`` those of that category.
        """

    async def counts(self) -> dict[MessageStatus, int]:
        """How many messages are in each status (pending ones past their validUntil expire first)."""

    async def segments_sent(self) -> int:
        """The SMS segments of every sent message."""

    async def events(self, message_id: int, limit: int = MAX_EVENTS) -> list[Event]:
        """A message's history, oldest first: its first ``limit`` events."""


class Intake(Protocol):
    """Writing by hand: messages in (one, a batch, a file's worth), and a retry or a cancel of one.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    async def enqueue(
        self,
        recipient_phone: str,
        content: str,
        *,
        send_at: datetime | None = None,
        priority: int = 5,
        valid_until: datetime | None = None,
    ) -> Message:
        """Store one pending message and return it (its encoding and segments counted).

        Raises UnstorableText (a ValueError) for text no database can store: see ``domain.unstorable_text``.
        """

    async def enqueue_many(self, messages: Sequence[NewMessage], idempotency: IdempotencyKey | None = None) -> Enqueued:
        """Store all the messages or none, in one transaction, and return them in order.

        With ``idempotency``, a key first seen stores them and remembers their ids for
        24 hours; the same key with the same request hash stores nothing and returns
        those messages (``replayed``); with another hash, IdempotencyConflict. Concurrent
        requests with one key wait for the first.
        """

    async def load(self, messages: Sequence[NewMessage]) -> int:
        """Store many messages as fast as the database takes them (COPY); returns how many."""

    async def retry(self, message_id: int) -> Message:
        """Put a failed message back to pending with its attempts reset.

        Raises MessageNotFound, or InvalidState when it is not failed.
        """

    async def cancel(self, message_id: int) -> Message:
        """Turn a pending message into cancelled; it is never sent after this returns.

        Raises MessageNotFound, or InvalidState when it is not pending (a ``sending`` one
        is already being sent).
        """


@dataclass(frozen=True, slots=True)
class WaitingReport:
    """What a pass over the waiting receipts did: those applied, and those dropped as too old."""

    applied: list[ReceiptOutcome]
    dropped: list[Receipt]


@dataclass(frozen=True, slots=True)
class ProviderTotals:
    """What one provider accepted (messages, their segments and cost) and how many of its tries failed."""

    provider: str
    sent: int
    failed: int
    segments: int
    cost: float


@dataclass(frozen=True, slots=True)
class ProviderState:
    """What the deployment shares about one provider: an operator's switch and a pause it asked for."""

    enabled: bool
    throttled_s: float | None  # the seconds left of the pause it asked for (0: over); None: never asked


@runtime_checkable
class ProviderStore(Protocol):
    """The providers' shared state: each one's rate, an operator's switch, and their totals.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    async def take_send(self, provider: str, rate: float, max_wait_s: float) -> float | None:
        """Reserve one send of ``provider`` at ``rate`` per second, for the whole deployment: the
        seconds to wait before it may go, or None (nothing reserved) when that is over ``max_wait_s``."""

    async def next_turn_in(self, provider: str) -> float:
        """The seconds until ``provider``'s next free turn, for the whole deployment (0 when it is
        free now); nothing is reserved."""

    async def provider_states(self) -> dict[str, ProviderState]:
        """Each provider's switch and pause, by name (a provider nobody switched or paused is absent)."""

    async def throttle_provider(self, provider: str, seconds: float) -> None:
        """``provider`` asked for a pause of ``seconds``: every process keeps it (the longer pause wins)."""

    async def provider_members(self, member: str, ttl_s: float) -> list[tuple[str, float]]:
        """Say that process ``member`` is alive; the processes seen in the last ``ttl_s`` seconds
        (``member`` among them), in an order every process sees alike, each with the seconds
        since it first said so."""

    async def provider_member_gone(self, member: str) -> None:
        """Process ``member`` stops: its share goes to the others at once."""

    async def switch_provider(self, name: str, enabled: bool) -> None:
        """Take ``name`` out of rotation, or put it back, for the whole deployment (kept across restarts)."""

    async def provider_totals(self) -> list[ProviderTotals]:
        """Every provider's totals, by name."""


@runtime_checkable
class CategoryCounter(Protocol):
    """Messages per category and status; the SQL repositories are ones."""

    async def category_counts(self) -> dict[Category, dict[MessageStatus, int]]:
        """Each category's messages per status (every category and status, zeros included)."""


@runtime_checkable
class ReceiptStore(Protocol):
    """Delivery receipts and the upkeep of the history; the SQL repositories are ones.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    async def apply_receipts(self, receipts: Sequence[Receipt], hints: Sequence[int | None]) -> list[ReceiptOutcome]:
        """Apply receipts in one write: one outcome per receipt, in order, then one per waiting receipt applied.

        ``hints`` (one per receipt) are our ids for the provider ids, from the cache, or None;
        a hint is trusted only when that message has the provider's id. A receipt that names
        its provider meets only that provider's message with the id; one that names none
        meets the id's message while the messages with that id are all one provider's, and
        none (``ambiguous``, not kept) when they are several providers'. A receipt whose
        provider id no message has yet (of its provider) waits (see :meth:`apply_waiting`). Receipts still
        waiting for one of these provider ids, when a message now has it, are applied first,
        in the order they came: a newer receipt never overtakes one that waits. Their
        outcomes follow those of ``receipts``.
        """

    async def apply_waiting(self, max_age_s: float, limit: int = 1000) -> WaitingReport:
        """Apply waiting receipts whose provider id a message now has; drop those older than ``max_age_s``.

        Up to ``limit`` are applied, each message's in the order they came.
        """

    async def prune_events(self, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` events older than ``older_than_s``; how many went."""


@dataclass(frozen=True, slots=True)
class LoadedFile:
    """A file loaded by ``enqueue --file``, remembered by the SHA-256 digest of its bytes."""

    digest: str
    name: str  # as given: a path, or - for standard input
    lines: int
    stored: int
    rejected: int
    loaded_at: datetime | None = None  # when it was stored; None until then
    loads: int = 1  # times it was loaded (more with --again)


class FileAlreadyLoaded(Exception):
    """A file with the same bytes was loaded before; nothing of this load was stored."""

    def __init__(self, previous: LoadedFile) -> None:
        super().__init__(f"a file with the same bytes ({previous.name}) was loaded before")
        self.previous = previous


class FileLoad(Protocol):
    """One file's messages on their way in: staged as they come, stored all at once, or none."""

    async def add(self, messages: Sequence[NewMessage]) -> None:
        """Stage messages (in file order): nothing is visible to the queue until :meth:`publish`."""

    async def publish(self, record: LoadedFile, *, again: bool = False) -> LoadedFile:
        """Store every staged message and ``record``, in one transaction; returns the record as stored.

        Raises FileAlreadyLoaded, storing nothing, when a file with the same digest was stored
        before, unless ``again`` (then it is counted once more). Concurrent loads of the same
        bytes wait for each other, so only one is stored.
        """


@runtime_checkable
class FileLoads(Protocol):
    """Loads of whole files (``enqueue --file``), each all or nothing; the SQL repositories are ones.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    def file_load(self) -> AbstractAsyncContextManager[FileLoad]:
        """A load of one file: what was staged and not published is gone on exit (and if the process dies)."""

    async def loaded_file(self, digest: str) -> LoadedFile | None:
        """The file stored with this digest, if any."""


class Schema(Protocol):
    """The database itself: its schema, and whether it answers.

    Every method raises RepositoryUnavailable when the database cannot be reached.
    """

    async def migrate(self) -> None:
        """Create or upgrade the schema; safe when several processes run it at once.

        Raises SchemaUpgradeRefused, having changed nothing, when the database holds what
        cannot be upgraded.
        """

    async def ping(self) -> None:
        """Return when the database answers."""


class SupervisorStore(Schema, RateSlot, Protocol):
    """What the supervisor asks of the database: the schema, prepared at start-up, and the batch slot."""


class MessageRepository(
    SendQueue,
    RateSlot,
    MessageReader,
    Intake,
    ReceiptStore,
    FileLoads,
    ProviderStore,
    SuppressionList,
    CapStore,
    Schema,
    Protocol,
):
    """The queue of messages, every role at once; PostgreSQL is the source of truth in production.

    What the SQL adapters implement and the container hands out. A part of the service takes
    only the role it uses (the sender a :class:`SendQueue`, the receipt writer a
    :class:`ReceiptStore`, ...), so a test's fake implements that role alone.
    """


class SmsClient(Protocol):
    """The SMS provider."""

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        """Send one message; never raises for a provider or transport failure."""


class SentCache(Protocol):
    """Where the provider's message ids of sent messages are kept for fast look-ups."""

    async def remember(self, entries: Sequence[SentEntry]) -> None:
        """Store the entries, in one round trip; raises on failure (the caller logs it)."""

    async def lookup(self, provider_message_id: str) -> SentEntry | None:
        """The entry for a provider's message id, if cached."""

    async def lookup_ids(self, provider_message_ids: Sequence[str]) -> dict[str, int]:
        """Our message ids of those provider ids that are cached, in one round trip."""

    async def ping(self) -> None:
        """Return when the cache answers."""


class Clock(Protocol):
    """Time for the schedule: monotonic for pacing, UTC wall time for records."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class Observer(Protocol):
    """What the sender and the supervisor report as they work; :class:`insider.metrics.Metrics` is one."""

    def send_attempt(self, outcome: str, duration_s: float | None) -> None:
        """One message's attempt ended: ``sent``, ``retry``, ``failed``, ``invalid`` (never sent), or
        ``expired`` (past its validUntil, never sent).

        ``duration_s`` is how long the provider took, None when no request was made.
        """

    def batch_done(self, report: BatchReport) -> None:
        """One batch ended and its outcomes were recorded."""

    def receipts_applied(self, outcomes: Sequence[ReceiptOutcome]) -> None:
        """Receipts were applied; those that moved a message to delivered or undelivered count."""

    def segments_sent(self, segments: int) -> None:
        """The provider accepted a message of ``segments`` SMS segments."""
