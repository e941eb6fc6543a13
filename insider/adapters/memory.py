"""In-process adapters of the SMS client and cache ports: the sent-message cache used when no Redis
is set, and a fake SMS provider for tests and embedding.

There is no in-memory message repository: the queue's rules live in SQL, once per dialect, and
``insider.adapters.sqlite.memory_repository`` gives the SQLite one on a ``:memory:`` database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from insider.clock import SystemClock
from insider.domain import Outcome, SendResult
from insider.ports import Clock, SentEntry


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
        self.lookups = 0

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

    async def lookup_ids(self, provider_message_ids: Sequence[str]) -> dict[str, int]:
        self.lookups += 1
        found = {}
        for provider_message_id in provider_message_ids:
            entry = await self.lookup(provider_message_id)
            if entry is not None:
                found[provider_message_id] = entry.id
        return found

    async def ping(self) -> None:
        if not self.available:
            raise ConnectionError("in-memory cache made unavailable")
