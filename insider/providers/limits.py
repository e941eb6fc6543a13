"""A provider's requests in flight in this process: at most its share of the deployment's concurrency.

A semaphore whose size can change while it is in use: each process's share of a provider's
``concurrency`` moves as processes come and go (:class:`~insider.providers.switches.ProviderSwitches`
counts them). A share of 0 means the other processes hold the whole concurrency: a request
waits for a share, up to a deadline, and is told when none came.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from insider.ports import Clock


class Limiter:
    """At most ``capacity`` holders at once; :meth:`resize` changes it, waking waiters it lets in."""

    __slots__ = ("_capacity", "_clock", "_held", "_waiters")

    def __init__(self, capacity: int, clock: Clock) -> None:
        self._capacity = capacity
        self._clock = clock
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def held(self) -> int:
        return self._held

    def resize(self, capacity: int) -> None:
        """The new size; holders over it finish as they are (nothing is cut), later ones wait."""
        self._capacity = max(0, capacity)
        self._wake()

    async def acquire(self, timeout_s: float) -> bool:
        """Hold one place: True once held, False when none came within ``timeout_s``."""
        if self._held < self._capacity and not self._waiters:
            self._held += 1
            return True
        deadline = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            while True:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await asyncio.wait((waiter, deadline), return_when=asyncio.FIRST_COMPLETED)
                except BaseException:  # cancelled: a wake meant for this one goes to the next waiter
                    if waiter.done() and not waiter.cancelled():
                        self._wake()  # skips this one, done already
                    raise
                finally:
                    if not waiter.done():
                        waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                if self._held < self._capacity:
                    self._held += 1
                    self._wake()  # a place may be left for the next waiter too
                    return True
                if deadline.done():
                    return False
        finally:
            deadline.cancel()  # the sleeper is ours alone: cancelled, not awaited

    def release(self) -> None:
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        """Wake the first waiter when a place is free (it wakes the next one if another is)."""
        if self._held < self._capacity:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
                    return
