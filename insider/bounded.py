"""Steps of a batch that run to their end despite a cancellation, within a budget that starts at the first one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from insider.logs import get_logger
from insider.ports import Clock

log = get_logger("insider.sender")
T = TypeVar("T")


class BoundedShield:
    """Awaits steps to their end despite a cancellation, but not forever.

    ``asyncio.shield`` alone returns at the cancellation and leaves the work running in
    the background, where whoever cancelled (a stop, then the container closing the
    pool) would pull the database from under it. So a claim and the final write run on
    when the batch is cancelled, and the batch ends only after them; but from the first
    cancellation on they share ``budget_s`` (on the injected clock). Past it, the step
    is cancelled too, the batch waits for it to end (the step is the batch's own: nothing
    is left running without an owner), and the cancellation goes on: its messages are
    released by their lease. A step that ignored its cancellation would hold the batch,
    whose owner closes it with a deadline of its own (the supervisor's STOP_MARGIN_S).
    """

    def __init__(self, clock: Clock, budget_s: float) -> None:
        self._clock = clock
        self._budget_s = budget_s
        self._deadline: float | None = None

    def interrupted(self) -> None:
        """The batch was cancelled: the budget starts now (once)."""
        if self._deadline is None:
            self._deadline = self._clock.monotonic() + self._budget_s

    async def run(self, awaitable: Awaitable[T]) -> T:
        task = asyncio.ensure_future(awaitable)
        interruption: asyncio.CancelledError | None = None
        while not task.done():
            if self._deadline is not None:
                remaining = self._deadline - self._clock.monotonic()
                if remaining <= 0:
                    break
                timer = asyncio.ensure_future(self._clock.sleep(remaining))
                try:
                    await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError as exc:
                    interruption = exc
                finally:
                    timer.cancel()
                continue
            try:
                await asyncio.wait({task})  # unlike await task, a cancellation here does not reach the task
            except asyncio.CancelledError as exc:
                interruption = exc
                self.interrupted()
        if not task.done():
            task.cancel()
            log.error(
                "gave up waiting for the database after a stop; the leases will release those messages",
                budget_s=self._budget_s,
            )
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: the cancellation is what the caller must see
            raise interruption or asyncio.CancelledError()
        if interruption is not None:
            if not task.cancelled():
                task.exception()  # retrieved: the cancellation is what the caller must see
            raise interruption
        return task.result()
