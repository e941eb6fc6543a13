"""In-memory adapters: fast, inspectable, and what the unit tests run on."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from insider.adapters.cursor import decode_cursor, page_of
from insider.clock import SystemClock
from insider.domain import Message, MessageStatus, Outcome, Resolution, SendResult, next_slot
from insider.ports import Clock, InvalidState, MessageNotFound, Page, RepositoryUnavailable, SentEntry


class InMemoryMessageRepository:
    """The repository port on a dict; behaves like the PostgreSQL one for one process.

    Set ``available = False`` to make every call raise RepositoryUnavailable, as an
    unreachable database would.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._rows: dict[int, Message] = {}
        self._ids = itertools.count(1)
        self._slots: dict[str, datetime] = {}
        self.available = True
        self.claims: list[list[int]] = []  # ids of each claim, for tests
        self.resolve_calls = 0

    def _check(self) -> None:
        if not self.available:
            raise RepositoryUnavailable("in-memory repository made unavailable")

    @property
    def rows(self) -> list[Message]:
        """Every message, in id order."""
        return [self._rows[k] for k in sorted(self._rows)]

    def add(
        self,
        recipient_phone: str,
        content: str,
        *,
        created_at: datetime | None = None,
        status: MessageStatus = MessageStatus.PENDING,
    ) -> Message:
        """Insert a row directly, as another program writing to the table would."""
        message = Message(
            id=next(self._ids),
            recipient_phone=recipient_phone,
            content=content,
            status=status,
            created_at=created_at or self._clock.now(),
            idempotency_key=str(uuid.uuid4()),
        )
        self._rows[message.id] = message
        return message

    async def migrate(self) -> None:
        self._check()

    async def ping(self) -> None:
        self._check()

    async def enqueue(self, recipient_phone: str, content: str) -> Message:
        self._check()
        return self.add(recipient_phone, content)

    async def get(self, message_id: int) -> Message | None:
        self._check()
        return self._rows.get(message_id)

    async def list_messages(self, status: MessageStatus, limit: int, cursor: str | None = None) -> Page:
        self._check()

        def key(m: Message) -> tuple[datetime, int]:
            when = m.sent_at if status is MessageStatus.SENT else m.created_at
            assert when is not None
            return when, m.id

        rows = sorted((m for m in self._rows.values() if m.status is status), key=key, reverse=True)
        if cursor is not None:
            after = decode_cursor(cursor, status)
            rows = [m for m in rows if key(m) < after]
        return page_of(rows[: limit + 1], limit, status)

    def _due(self, m: Message, now: datetime) -> bool:
        if m.status is MessageStatus.PENDING:
            return m.next_attempt_at is None or m.next_attempt_at <= now
        if m.status is MessageStatus.SENDING:
            return m.lease_expires_at is not None and m.lease_expires_at <= now
        return False

    async def claim(self, limit: int, lease_s: float) -> list[Message]:
        self._check()
        now = self._clock.now()
        due = sorted((m for m in self._rows.values() if self._due(m, now)), key=lambda m: (m.created_at, m.id))
        claimed = []
        for m in due[:limit]:
            updated = replace(
                m,
                status=MessageStatus.SENDING,
                attempts=m.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_s),
                claim_token=str(uuid.uuid4()),
            )
            self._rows[m.id] = updated
            claimed.append(updated)
        self.claims.append([m.id for m in claimed])
        return claimed

    async def resolve(self, resolutions: Sequence[Resolution]) -> None:
        self._check()
        self.resolve_calls += 1
        now = self._clock.now()
        for r in resolutions:
            m = self._rows.get(r.id)
            if m is None:
                continue
            holds = m.status is MessageStatus.SENDING and m.claim_token == r.claim_token
            if not (holds or (r.status is MessageStatus.SENT and m.status is not MessageStatus.SENT)):
                continue
            self._rows[r.id] = replace(
                m,
                status=r.status,
                sent_at=r.sent_at,
                message_id=r.message_id,
                last_error=r.last_error if r.last_error is not None else m.last_error,
                next_attempt_at=now + timedelta(seconds=r.retry_in_s) if r.retry_in_s is not None else None,
                lease_expires_at=None,
                claim_token=None,
                attempts=m.attempts - 1 if r.uncount_attempt else m.attempts,
            )

    async def retry(self, message_id: int) -> Message:
        self._check()
        m = self._rows.get(message_id)
        if m is None:
            raise MessageNotFound(message_id)
        if m.status is not MessageStatus.FAILED:
            raise InvalidState(m, "failed")
        updated = replace(m, status=MessageStatus.PENDING, attempts=0, next_attempt_at=None)
        self._rows[message_id] = updated
        return updated

    async def acquire_slot(self, name: str, interval_s: float) -> float:
        self._check()
        now = self._clock.now()
        next_at = self._slots.get(name)
        if next_at is not None and next_at > now:
            return (next_at - now).total_seconds()
        self._slots[name] = next_slot(next_at, now, interval_s)
        return 0.0

    async def counts(self) -> dict[MessageStatus, int]:
        self._check()
        result = dict.fromkeys(MessageStatus, 0)
        for m in self._rows.values():
            result[m.status] += 1
        return result


@dataclass
class Request:
    """One request an in-memory SMS client received."""

    to: str
    content: str
    idempotency_key: str


Responder = Callable[[Request], Awaitable[SendResult] | SendResult]


@dataclass
class InMemorySmsClient:
    """An SMS provider in memory: records every request and answers as told.

    ``responder`` decides each answer; by default every request is accepted with a
    fresh provider message id.
    """

    responder: Responder | None = None
    requests: list[Request] = field(default_factory=list)

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        request = Request(to, content, idempotency_key)
        self.requests.append(request)
        if self.responder is None:
            return SendResult(Outcome.SENT, status_code=202, provider_message_id=str(uuid.uuid4()))
        answer = self.responder(request)
        if asyncio.iscoroutine(answer) or isinstance(answer, Awaitable):
            return await answer
        return answer


class InMemorySentCache:
    """The sent-message cache in the process: the embedded default when no Redis is set.

    Bounded like Redis with a TTL would be, so a long drain cannot grow it without end:
    entries expire after ``ttl_s`` and, past ``max_entries``, the oldest go first.
    ``available = False`` makes it fail like a lost Redis (for tests).
    """

    def __init__(self, *, ttl_s: float = 7 * 86400, max_entries: int = 100_000, clock: Clock | None = None) -> None:
        self.entries: OrderedDict[str, SentEntry] = OrderedDict()
        self._expires: dict[str, float] = {}
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock or SystemClock()
        self.available = True
        self.calls = 0

    async def remember(self, entries: Sequence[SentEntry]) -> None:
        self.calls += 1
        if not self.available:
            raise ConnectionError("in-memory cache made unavailable")
        expires = self._clock.monotonic() + self._ttl_s
        for e in entries:
            self.entries[e.provider_message_id] = e
            self.entries.move_to_end(e.provider_message_id)
            self._expires[e.provider_message_id] = expires
        while len(self.entries) > self._max_entries:
            oldest, _ = self.entries.popitem(last=False)
            del self._expires[oldest]

    async def lookup(self, provider_message_id: str) -> SentEntry | None:
        if not self.available:
            raise ConnectionError("in-memory cache made unavailable")
        expires = self._expires.get(provider_message_id)
        if expires is not None and expires <= self._clock.monotonic():
            del self.entries[provider_message_id], self._expires[provider_message_id]
            return None
        return self.entries.get(provider_message_id)

    async def ping(self) -> None:
        if not self.available:
            raise ConnectionError("in-memory cache made unavailable")
