"""The supervisor: owns the cancellable sender task and its schedule."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING

import structlog

from insider.clock import SystemClock
from insider.config import DRAIN_PIPELINE_DEPTH
from insider.ports import Clock, MessageRepository, RepositoryUnavailable, SchemaUpgradeRefused
from insider.sender import BatchReport, BatchSender

if TYPE_CHECKING:
    from insider.metrics import Observer

log = structlog.get_logger("insider.supervisor")

SLOT_NAME = "sender"
# With no interval (drain mode), how long an empty queue is left before it is asked again.
IDLE_POLL_S = 1.0
# In drain mode this many batches run at once, sharing the sender's concurrency bound:
# while one records its outcomes and claims again, the other's requests keep the
# provider busy. Leases allow for it (Settings.lease_s).
DRAIN_PIPELINE = DRAIN_PIPELINE_DEPTH
# After a failed tick, the next try comes no later than this (the rate gate still holds).
FAILED_TICK_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class SenderStatus:
    """What the sender is doing; the API's ``GET /api/v1/sender``."""

    running: bool
    batch_size: int
    interval_s: float
    last_tick_at: datetime | None
    next_tick_at: datetime | None
    last_batch: BatchReport | None


class Supervisor:
    """Sends a batch every interval in a task of its own, until stopped.

    ``start()`` creates the sender task and ``stop()`` cancels it; both are idempotent.
    The first batch goes at once, then one every ``interval_s`` on the monotonic clock
    (batch k at start + k x interval; an overrun delays the next batch, never doubles
    it). Every batch also takes the deployment-wide slot from the repository, so several
    processes on one database share one rate, and a quick stop/start cannot beat it.

    Use it as an async context manager to stop it on the way out; it closes nothing
    it was given.
    """

    def __init__(
        self,
        sender: BatchSender,
        repository: MessageRepository,
        *,
        interval_s: float,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._sender = sender
        self._repository = repository
        self._clock = clock or SystemClock()
        self._observer = observer  # told of every batch (metrics); None: nobody
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self._batches_in_flight = 0
        self._last_tick_at: datetime | None = None
        self._next_tick_mono: float | None = None
        self._last_batch: BatchReport | None = None
        self._schema_ready = False
        self.ticks = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def status(self) -> SenderStatus:
        """A snapshot for the API and the logs."""
        next_tick_at = None
        if self.running and self._next_tick_mono is not None:
            ahead = max(0.0, self._next_tick_mono - self._clock.monotonic())
            next_tick_at = self._clock.now() + timedelta(seconds=ahead)
        return SenderStatus(
            running=self.running,
            batch_size=self._sender.options.batch_size,
            interval_s=self.interval_s,
            last_tick_at=self._last_tick_at,
            next_tick_at=next_tick_at,
            last_batch=self._last_batch,
        )

    async def start(self) -> bool:
        """Start automatic sending if it is not running; returns ``running`` (True).

        Called while a ``stop()`` is still winding down, it waits for that to end first.
        """
        task = self._task
        if task is not None and not task.done() and self._stopping.is_set():
            await asyncio.wait({task})  # else it would report running for a task about to end
        if not self.running:
            self._stopping = asyncio.Event()
            # A context of its own: the task must not inherit the request id (or any other
            # context) of the HTTP request that happened to start it.
            self._task = asyncio.create_task(self._run(), name="insider-sender", context=contextvars.Context())
            log.info("sender started", batch_size=self._sender.options.batch_size, interval_s=self.interval_s)
        return True

    async def stop(self, grace_s: float = 0.0) -> bool:
        """Stop automatic sending; returns ``running`` (False).

        No new request starts after this is called. Requests in flight get ``grace_s``
        seconds to finish and be recorded; those still running then are cancelled and
        their messages go back to pending with the same idempotency key.
        """
        task = self._task
        if task is None or task.done():
            return False
        self._stopping.set()
        try:
            if grace_s > 0 and self._batches_in_flight:  # only a batch in flight is worth waiting for
                await self._wait_at_most(task, grace_s)
        finally:
            task.cancel()  # also when this stop() is itself cancelled: the sender must not outlive it
        # asyncio.wait neither raises the task's CancelledError nor swallows one aimed at this caller.
        await asyncio.wait({task})
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("sender task failed", error=f"{type(error).__name__}: {error}")
        self._next_tick_mono = None
        log.info("sender stopped")
        return False

    async def _wait_at_most(self, task: asyncio.Task[None], timeout_s: float) -> None:
        """Wait for ``task`` to end, but no longer than ``timeout_s`` on the injected clock."""
        timer = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()

    async def prepare(self) -> None:
        """Create or upgrade the repository's schema, once; sending does it before its first batch.

        Raises RepositoryUnavailable when the database cannot be reached (try again later).
        """
        if not self._schema_ready:
            await self._repository.migrate()
            self._schema_ready = True

    async def run_once(self) -> BatchReport:
        """Send one batch now, outside the schedule; waits for a running batch to end first."""
        await self.prepare()
        async with self._batch_lock:
            # A stop() ends the schedule, not manual batches: its (still set) event must not
            # make this batch release everything it claims.
            return await self._batch(self._stopping if self.running else None)

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _batch(self, stopping: asyncio.Event | None) -> BatchReport:
        self._last_tick_at = self._clock.now()
        self.ticks += 1
        self._batches_in_flight += 1
        try:
            report = await self._sender.run_batch(stopping)
        finally:
            self._batches_in_flight -= 1
        self._last_batch = report
        if self._observer is not None:
            self._observer.batch_done(report)
        if report.claimed:
            log.info(
                "batch",
                claimed=report.claimed,
                sent=report.sent,
                retried=report.retried,
                failed=report.failed,
                released=report.released,
                duration_ms=round(report.duration_s * 1000, 1),
            )
        return report

    async def _run(self) -> None:
        if self.interval_s > 0:
            await self._loop()
            return
        async with asyncio.TaskGroup() as group:  # drain mode: overlapping batches, one bound
            for _ in range(DRAIN_PIPELINE):
                group.create_task(self._loop())

    async def _loop(self) -> None:
        clock = self._clock
        next_tick = clock.monotonic()
        while not self._stopping.is_set():
            self._next_tick_mono = next_tick
            delay = next_tick - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            if self._stopping.is_set():
                break
            try:
                # A database that was down at start-up has no schema yet: apply it first.
                await self.prepare()
                if self.interval_s > 0:
                    wait_s = await self._repository.acquire_slot(SLOT_NAME, self.interval_s)
                    if wait_s > 0:  # another process (or our own last run) had this slot
                        next_tick = clock.monotonic() + wait_s
                        continue
                if self.interval_s > 0:
                    async with self._batch_lock:
                        report = await self._batch(self._stopping)
                else:  # drain mode: the batches of the pipeline overlap on purpose
                    report = await self._batch(self._stopping)
            except SchemaUpgradeRefused as exc:
                # Someone must fix the database first: each tick would only say so again.
                log.error("sending stopped: cannot upgrade the database", error=str(exc))
                return
            except RepositoryUnavailable as exc:
                log.error("tick failed: database unavailable", error=str(exc))
                retry = min(self.interval_s, FAILED_TICK_RETRY_S) if self.interval_s > 0 else IDLE_POLL_S
                next_tick = clock.monotonic() + retry
                continue
            except Exception:
                log.exception("tick failed")  # a bug: keep the sender alive, try at the next tick
                next_tick = max(next_tick + self.interval_s, clock.monotonic() + (self.interval_s or IDLE_POLL_S))
                continue
            if self.interval_s > 0:
                # On the grid from the start; an overrun moves the grid, it never bunches batches.
                next_tick = max(next_tick + self.interval_s, clock.monotonic())
            elif report.claimed == 0:
                next_tick = clock.monotonic() + IDLE_POLL_S
            else:
                next_tick = clock.monotonic()
