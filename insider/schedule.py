"""The sender's schedule, as the supervisor's actor keeps it: when each batch goes, and what the last one did."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from insider.children import ChildTask, Ended
from insider.domain import BatchReport
from insider.logs import get_logger
from insider.ports import Clock, Observer, RateSlot, RepositoryUnavailable, SchemaUpgradeRefused
from insider.sender import RECORD_BUDGET_S, BatchSender

log = get_logger("insider.supervisor")

SLOT_NAME = "sender"
# With no interval (drain mode), this many batches run at once, sharing the sender's
# concurrency bound: while one records its outcomes and claims again, the other's requests
# keep the provider busy. Each batch's lease allows for the others (BatchSender.run_batch).
DRAIN_PIPELINE = 2
# With no interval (drain mode), how long an empty queue is left before it is asked again.
IDLE_POLL_S = 1.0
# After a failed tick, the next try comes no later than this (the rate gate still holds).
FAILED_TICK_RETRY_S = 5.0
# How long a batch is given, once cancelled, beyond its own bound on recording what it
# abandoned (RECORD_BUDGET_S), before it is reported as abandoned; only a bug would need it.
STOP_SAFETY_S = 0.5
# What a stop or a shutdown may take beyond its grace: the bounded final write, plus the safety.
STOP_MARGIN_S = RECORD_BUDGET_S + STOP_SAFETY_S
# A rate-slot check holds nothing: it is cancelled with this deadline.
QUICK_CLOSE_S = 0.5


def drain_lanes(interval_s: float) -> int:
    """How many batches run side by side: :data:`DRAIN_PIPELINE` in drain mode (no interval), else one."""
    return DRAIN_PIPELINE if interval_s == 0 else 1


class Tree(Protocol):
    """What the schedule asks of the supervisor's actor, whose children its batches are."""

    @property
    def schema_ready(self) -> bool: ...

    def spawn(
        self, name: str, work: Coroutine[Any, Any, Any], on_end: Callable[[Ended], None], close_timeout_s: float
    ) -> ChildTask: ...

    def timer(self, delay_s: float, then: Callable[[], None]) -> ChildTask: ...

    def after_schema(self, then: Callable[[BaseException | None], None]) -> None: ...


@dataclass(eq=False, slots=True)
class Run:
    """One start-to-stop run of the schedule."""

    lanes: int
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    grid: float = 0.0  # interval mode: when the current batch was due (the next is one interval on)
    tick_due: bool = False  # interval mode: a tick came while a manual batch ran; it goes after it
    due_at: float | None = None  # drain mode: when the soonest message a batch put back is due again
    children: set[ChildTask] = field(default_factory=set)  # its slot checks, batches and timers


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Schedule:
    """Decides when each batch goes, from what the batches and slot checks report; only the actor calls it.

    The first batch goes at once, then one every ``interval_s`` on the monotonic clock
    (batch k at start + k x interval; an overrun delays the next batch, never doubles it).
    Every batch first takes the deployment-wide slot from the repository, so several
    processes on one database share one rate. With ``interval_s`` 0 (drain mode),
    :func:`drain_lanes` batches run back to back, each asking again after :data:`IDLE_POLL_S`
    once the queue is empty. A manual batch (``run_once``) never overlaps a scheduled one in
    interval mode: whichever comes second waits for the first to end.
    """

    def __init__(
        self,
        tree: Tree,
        sender: BatchSender,
        slot: RateSlot,
        clock: Clock,
        observer: Observer | None,
        interval_s: float,
    ) -> None:
        self._tree = tree
        self._sender = sender
        self._slot = slot
        self._clock = clock
        self._observer = observer  # told of every batch (metrics); None: nobody
        self.interval_s = interval_s
        self.run: Run | None = None
        self._batches: set[ChildTask] = set()  # every batch and slot check in flight, of any run or manual
        self.manual: dict[ChildTask, asyncio.Future[Any]] = {}  # the run_once() batches in flight, and their callers
        self._manual: deque[asyncio.Future[Any]] = deque()  # run_once() callers waiting for a batch to end
        self._database_down = False
        self.last_tick_at: datetime | None = None
        self.next_tick_mono: float | None = None
        self.wait_reason: str | None = None
        self.last_batch: BatchReport | None = None
        self.scheduled = asyncio.Event()  # set once a run's first tick decided when a batch goes
        self.ticks = 0

    # --- what the actor calls -----------------------------------------------------------------

    def start(self) -> bool:
        """Begin a run (the first batch goes at once); False if one runs already."""
        if self.run is not None:
            return False
        self.run = run = Run(lanes=drain_lanes(self.interval_s), grid=self._clock.monotonic())
        self.next_tick_mono = self._clock.monotonic()
        self.wait_reason = "due now: the first batch of a start goes at once"
        self.scheduled.clear()
        log.info("sender started", batch_size=self._sender.options.batch_size, interval_s=self.interval_s)
        for _ in range(run.lanes):
            self._tick(run)
        return True

    def end_run(self) -> Run | None:
        """The current run ends: nothing new starts (its batches' requests in flight are the caller's to close)."""
        run, self.run = self.run, None
        self.next_tick_mono = None
        if run is not None:
            run.stopping.set()
        return run

    @staticmethod
    def batches_of(run: Run) -> list[ChildTask]:
        """The batches of ``run`` still in flight."""
        return [c for c in run.children if c.name == "batch" and not c.done]

    def _busy(self) -> bool:
        """Whether a batch or a slot check is in flight (one that a stop closed no longer counts)."""
        self._batches = {c for c in self._batches if not c.done}
        return bool(self._batches)

    def run_once(self, reply: asyncio.Future[Any]) -> None:
        """A batch now, outside the schedule; its report answers ``reply``."""
        if not self._tree.schema_ready:
            self._tree.after_schema(lambda error: self._run_once_after_schema(reply, error))
            return
        run = self.run
        if run is not None and run.lanes == 1 and self._busy():
            self._manual.append(reply)  # never two batches at once in interval mode
            return
        self._start_batch(None, reply)

    def fail_waiting(self, error: BaseException) -> None:
        """Answer every run_once() caller still waiting with ``error`` (the supervisor closes)."""
        waiting = [*self._manual, *self.manual.values()]
        self._manual.clear()
        self.manual.clear()
        for reply in waiting:
            if not reply.done():
                reply.set_exception(error)

    # --- the ticks --------------------------------------------------------------------------

    def _set_next(self, at_mono: float, reason: str) -> None:
        self.next_tick_mono = at_mono
        self.wait_reason = reason
        self.scheduled.set()

    def _timer(self, run: Run, delay_s: float) -> None:
        def wake() -> None:
            run.children.discard(timer)
            self._tick(run)

        timer = self._tree.timer(delay_s, wake)
        run.children.add(timer)

    def _tick(self, run: Run) -> None:
        """Time for a batch of ``run``: in interval mode, take the slot first."""
        if run is not self.run:
            return
        if not self._tree.schema_ready:  # a database that was down at start-up has no schema yet
            self._tree.after_schema(lambda error: self._tick_after_schema(run, error))
            return
        if run.lanes > 1:  # drain mode: the batches of the pipeline overlap on purpose, no slot
            self._set_next(self._clock.monotonic(), "due now: draining back to back")
            self._start_batch(run)
            return
        if self._busy():  # a manual batch is out: this tick goes once it has ended
            run.tick_due = True
            return
        check = self._tree.spawn(
            "slot",
            self._slot.acquire_slot(SLOT_NAME, self.interval_s),
            lambda ended: self._on_slot(run, check, ended),
            close_timeout_s=QUICK_CLOSE_S,
        )
        self._batches.add(check)
        run.children.add(check)

    def _tick_after_schema(self, run: Run, error: BaseException | None) -> None:
        if error is None:
            self._tick(run)
        elif run is self.run:
            self._tick_failed(run, error)

    def _run_once_after_schema(self, reply: asyncio.Future[Any], error: BaseException | None) -> None:
        if error is None:
            self.run_once(reply)
        elif not reply.done():
            reply.set_exception(error)

    def _start_batch(self, run: Run | None, reply: asyncio.Future[Any] | None = None) -> None:
        self.last_tick_at = self._clock.now()
        self.ticks += 1
        lanes = run.lanes if run is not None else drain_lanes(self.interval_s)
        # A stop ends the schedule, not manual batches: a stopped run's (set) event must not make a
        # manual batch release everything it claims. A running one's applies.
        current = run or self.run
        work = self._sender.run_batch(current.stopping if current is not None else None, lanes=lanes)
        batch = self._tree.spawn(
            "batch" if reply is None else "run-once",
            work,
            lambda ended: self._on_batch(run, reply, batch, ended),
            close_timeout_s=STOP_MARGIN_S,
        )
        self._batches.add(batch)
        if run is not None:
            run.children.add(batch)
        elif reply is not None:
            self.manual[batch] = reply

    def _on_slot(self, run: Run, check: ChildTask, ended: Ended) -> None:
        self._batches.discard(check)
        run.children.discard(check)
        if run is not self.run:
            self._next_waiting()
            return
        if ended.error is not None:
            self._tick_failed(run, ended.error)
            self._next_waiting()
            return
        wait_s: float = ended.result
        self._database_is_back()
        if wait_s > 0:  # another process, or this one's last run, had the slot
            every = f"one batch every {self.interval_s:g}s"
            last = self._clock.now() + timedelta(seconds=wait_s - self.interval_s)
            run.grid = self._clock.monotonic() + wait_s
            self._set_next(
                run.grid,
                f"rate slot: another process's or the previous run's batch at {_iso(last)} "
                f"({every}, on the current INSIDER_SEND_INTERVAL)",
            )
            self._timer(run, wait_s)
            self._next_waiting()
            return
        self._set_next(self._clock.monotonic(), "due now: a batch is going")
        self._start_batch(run)

    def _on_batch(self, run: Run | None, reply: asyncio.Future[Any] | None, batch: ChildTask, ended: Ended) -> None:
        self._batches.discard(batch)
        if run is not None:
            run.children.discard(batch)
        self.manual.pop(batch, None)
        if ended.error is None:
            report: BatchReport = ended.result
            self._batch_done(report)
            if reply is not None and not reply.done():
                reply.set_result(report)
        elif reply is not None and not reply.done():
            reply.set_exception(ended.error)
        if run is not None and run is self.run:
            if ended.error is not None:
                self._tick_failed(run, ended.error)
            else:
                self._next_after(run, ended.result)
        self._next_waiting()

    def _next_after(self, run: Run, report: BatchReport) -> None:
        self._database_is_back()
        now = self._clock.monotonic()
        if report.next_due_s is not None:
            due_at = now + report.next_due_s
            run.due_at = due_at if run.due_at is None or run.due_at <= now else min(run.due_at, due_at)
        if run.lanes == 1:
            # On the grid from the start; an overrun moves the grid, it never bunches batches.
            run.grid = max(run.grid + self.interval_s, now)
            every = f"one batch every {self.interval_s:g}s"
            self._set_next(run.grid, f"rate: {every}; the last batch went at {_iso(self._clock.now())}")
            self._timer(run, run.grid - now)
        elif report.claimed == 0:
            # A message an earlier batch put back (a provider's rate turn, a pause) may be due
            # before the next poll: asked again then, so that its turn is not missed.
            soonest = run.due_at if run.due_at is not None and run.due_at > now else None
            run.due_at = None
            if soonest is not None and soonest - now < IDLE_POLL_S:
                self._set_next(soonest, "queue empty until a message put back is due")
                self._timer(run, soonest - now)
            else:
                self._set_next(now + IDLE_POLL_S, f"queue empty: asking again every {IDLE_POLL_S:g}s")
                self._timer(run, IDLE_POLL_S)
        else:
            self._set_next(now, "due now: draining back to back")
            self._start_batch(run)

    def _next_waiting(self) -> None:
        """Interval mode: a manual batch or a tick that waited for the batch in flight goes now."""
        run = self.run
        if self._busy() or (run is not None and run.lanes > 1):
            return
        if self._manual:
            self._start_batch(None, self._manual.popleft())
        elif run is not None and run.tick_due:
            run.tick_due = False
            self._tick(run)

    def _batch_done(self, report: BatchReport) -> None:
        self.last_batch = report
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

    def _tick_failed(self, run: Run, error: BaseException) -> None:
        now = self._clock.monotonic()
        if isinstance(error, SchemaUpgradeRefused):
            self._sending_refused(error)
            return
        if isinstance(error, RepositoryUnavailable):
            log.error("tick failed: database unavailable", error=str(error))
            self._database_down = True
            retry = min(self.interval_s, FAILED_TICK_RETRY_S) if run.lanes == 1 else IDLE_POLL_S
            run.grid = now + retry
            self._set_next(run.grid, f"database unavailable: trying again every {retry:g}s")
            self._timer(run, retry)
            return
        # A bug: the schedule goes on, and tries again at the next tick.
        log.error("tick failed", error=f"{type(error).__name__}: {error}", exc_info=error)
        step = self.interval_s or IDLE_POLL_S
        run.grid = max(run.grid + self.interval_s, now + step)
        self._set_next(run.grid, "the last tick failed (see the log)")
        self._timer(run, run.grid - now)

    def _sending_refused(self, error: SchemaUpgradeRefused) -> None:
        """A database it cannot upgrade: sending stops with one error (someone must fix it first)."""
        if self.run is None:
            return
        log.error("sending stopped: cannot upgrade the database", error=str(error))
        self.end_run()
        self.wait_reason = "sending stopped: cannot upgrade the database (see the log)"

    def _database_is_back(self) -> None:
        if self._database_down:
            self._database_down = False
            log.info("database answers again; sending resumes")
