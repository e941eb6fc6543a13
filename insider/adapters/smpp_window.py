"""The window of an SMPP bind: at most so many submit_sm outstanding, their slots handed to waiting sends in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class SubmitWindow:
    """Slots for outstanding submit_sm: taken before a PDU goes out, given back when smpp34 is done with it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle: list[asyncio.Future[None]] = []

    @property
    def in_flight(self) -> int:
        return self.size - self._free

    def take_now(self) -> bool:
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    def wait(self) -> asyncio.Future[None]:
        """A future done when a slot is handed to it (the caller then holds it)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def abandon(self, waiter: asyncio.Future[None]) -> None:
        """The caller stopped waiting: a slot handed to it in the meantime goes on to the next."""
        if waiter.done() and not waiter.cancelled():
            self.give()
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def give(self, _: object = None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
        if self._free == self.size:
            for idle in self._idle:
                if not idle.done():
                    idle.set_result(None)
            self._idle.clear()

    def idle(self) -> asyncio.Future[None]:
        """A future done when nothing is in flight."""
        idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._free == self.size:
            idle.set_result(None)
        else:
            self._idle.append(idle)
        return idle
