"""The real clock and a fake one that tests drive by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta


class SystemClock:
    """Monotonic time for pacing, timezone-aware UTC for records."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to; sleepers wake as it passes their time.

    ``await clock.advance(s)`` moves time forward, waking each sleeper in order and
    letting the event loop run what they start before moving on.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._t = 0.0
        self._epoch = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._t

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=self._t)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleepers are waiting (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_wake(self) -> float | None:
        """The monotonic time of the earliest live sleeper."""
        live = [t for t, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def settle(self, rounds: int = 50) -> None:
        """Let the event loop run until the tasks woken so far have done what they can."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers on the way in order."""
        if not seconds >= 0:  # a monotonic clock never goes back (and NaN is no time)
            raise ValueError(f"cannot advance a monotonic clock by {seconds!r} seconds")
        target = self._t + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._t = max(self._t, when)
            fut.set_result(None)
            await self.settle()
        self._t = target
        await self.settle()
