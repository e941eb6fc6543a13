"""The supervisor: an actor that owns the sender task, its schedule, manual batches and the schema."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import structlog

from insider.clock import SystemClock
from insider.domain import BatchReport
from insider.ports import Clock, Observer, RepositoryUnavailable, SchemaUpgradeRefused, SupervisorStore
from insider.sender import DRAIN_PIPELINE_DEPTH, RECORD_BUDGET_S, BatchSender

log = structlog.get_logger("insider.supervisor")

SLOT_NAME = "sender"
# With no interval (drain mode), how long an empty queue is left before it is asked again.
IDLE_POLL_S = 1.0
# In drain mode this many batches run at once, sharing the sender's concurrency bound:
# while one records its outcomes and claims again, the other's requests keep the
# provider busy. Leases allow for it (SenderOptions.pipeline_depth).
DRAIN_PIPELINE = DRAIN_PIPELINE_DEPTH
# After a failed tick, the next try comes no later than this (the rate gate still holds).
FAILED_TICK_RETRY_S = 5.0
# While the schema could not be applied (the database was down at start-up), it is tried this often.
PREPARE_RETRY_S = 1.0
# How long a stop waits, beyond its grace and the sender's own bound on recording what it
# abandoned (RECORD_BUDGET_S), for the sender task to end; only a bug would need it.
STOP_SAFETY_S = 0.5
# What a stop or a shutdown may take beyond its grace: the bounded final write, plus the safety.
STOP_MARGIN_S = RECORD_BUDGET_S + STOP_SAFETY_S


class SupervisorClosed(RuntimeError):
    """The supervisor was closed (its service shut down): it starts and sends nothing any more."""

    def __init__(self) -> None:
        super().__init__("the supervisor is closed: its service has shut down, so it cannot start or send")


class SupervisorState(enum.StrEnum):
    """Where the supervisor is in its life."""

    IDLE = "idle"  # not sending on a schedule (never started, or stopped)
    RUNNING = "running"  # the sender task runs the schedule
    STOPPING = "stopping"  # a stop is winding the sender task down
    CLOSED = "closed"  # closed for good: start() and run_once() raise SupervisorClosed


@dataclass(frozen=True, slots=True)
class SenderStatus:
    """What the sender is doing; the API's ``GET /api/v1/sender``."""

    running: bool
    batch_size: int
    interval_s: float
    last_tick_at: datetime | None
    next_tick_at: datetime | None
    last_batch: BatchReport | None
    state: SupervisorState = SupervisorState.IDLE
    # Why the next batch goes when it does (the rate, the deployment's slot, the database), or None.
    wait_reason: str | None = None


@dataclass(slots=True)
class _Command:
    kind: str  # start, stop, run_once, prepare, keep_preparing, close
    reply: asyncio.Future[Any]
    grace_s: float = 0.0


@dataclass(slots=True)
class _Run:
    """One start-to-stop run of the sender task."""

    task: asyncio.Task[None]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Supervisor:
    """Sends a batch every interval, and answers start, stop, run-once and close, in order.

    The supervisor is an actor: one task of its own (started on the first call, in a
    context of its own) owns everything it runs in an ``asyncio.TaskGroup``: the sender
    loop, batches sent with ``run_once()``, and the retries of the schema when the
    database was down at start-up. ``start()``, ``stop()``, ``run_once()``,
    ``prepare()`` and ``close()`` are messages to it, handled one at a time in the
    order they were sent, each answered with the state its own request led to; the
    state is one of :class:`SupervisorState`. A caller that is cancelled while waiting
    does not undo its message: a cancelled ``stop()`` still stops.

    The first batch goes at once, then one every ``interval_s`` on the monotonic clock
    (batch k at start + k x interval; an overrun delays the next batch, never doubles
    it). Every batch also takes the deployment-wide slot from the repository, so several
    processes on one database share one rate, and a quick stop/start (or a restart
    with a shorter interval) obeys the current interval after the last batch.

    Use it as an async context manager: on the way out it is closed (the sender stops
    and the actor's task ends). It closes nothing it was given.
    """

    def __init__(
        self,
        sender: BatchSender,
        repository: SupervisorStore,
        *,
        interval_s: float,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        if interval_s == 0 and sender.options.pipeline_depth < DRAIN_PIPELINE:
            # Drain mode runs batches side by side; their leases must allow for waiting on each other.
            sender.options = replace(sender.options, pipeline_depth=DRAIN_PIPELINE)
        self._sender = sender
        self._repository = repository
        self._clock = clock or SystemClock()
        self._observer = observer  # told of every batch (metrics); None: nobody
        self.interval_s = interval_s
        self._state = SupervisorState.IDLE
        self._mailbox: asyncio.Queue[_Command] = asyncio.Queue()
        self._actor: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._run: _Run | None = None
        self._helpers: set[asyncio.Task[None]] = set()  # manual batches, schema tasks
        self._batch_lock = asyncio.Lock()
        self._prepare_lock = asyncio.Lock()
        self._batches_in_flight = 0
        self._last_tick_at: datetime | None = None
        self._next_tick_mono: float | None = None
        self._wait_reason: str | None = None
        self._last_batch: BatchReport | None = None
        self._schema_ready = False
        self._retrying_schema = False
        self._database_down = False
        self._scheduled = asyncio.Event()  # set once a run's first tick decided when a batch goes
        self.ticks = 0

    # --- what callers see -------------------------------------------------------------------

    @property
    def state(self) -> SupervisorState:
        return self._state

    @property
    def schema_ready(self) -> bool:
        """Whether the repository's schema has been applied (``prepare()`` succeeded)."""
        return self._schema_ready

    @property
    def running(self) -> bool:
        """Whether automatic sending runs (the state is ``running``)."""
        return self._state is SupervisorState.RUNNING

    def status(self) -> SenderStatus:
        """A snapshot for the API and the logs."""
        next_tick_at = None
        reason = None
        if self.running and self._next_tick_mono is not None:
            ahead = max(0.0, self._next_tick_mono - self._clock.monotonic())
            next_tick_at = self._clock.now() + timedelta(seconds=ahead)
            reason = self._wait_reason
        return SenderStatus(
            running=self.running,
            batch_size=self._sender.options.batch_size,
            interval_s=self.interval_s,
            last_tick_at=self._last_tick_at,
            next_tick_at=next_tick_at,
            last_batch=self._last_batch,
            state=self._state,
            wait_reason=reason,
        )

    async def first_schedule(self, timeout_s: float) -> SenderStatus:
        """The status once this run's first tick has decided when a batch goes (the slot, the
        database), or after ``timeout_s`` seconds of real time, whichever is first."""
        if self.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scheduled.wait(), timeout_s)
        return self.status()

    async def start(self) -> bool:
        """Start automatic sending if it is not running; returns ``running`` (True).

        Raises SupervisorClosed after ``close()``.
        """
        result: bool = await self._ask("start")
        return result

    async def stop(self, grace_s: float = 0.0) -> bool:
        """Stop automatic sending; returns ``running`` (False).

        No new request starts after this is handled. Requests in flight get ``grace_s``
        seconds to finish and be recorded; those still running then are cancelled and
        their messages go back to pending with the same idempotency key. It returns
        within ``grace_s`` plus ``STOP_MARGIN_S`` whatever the database or provider do:
        what could not be recorded by then is released by its lease.
        """
        if self._state is SupervisorState.CLOSED and self._actor_done():
            return False
        result: bool = await self._ask("stop", grace_s=grace_s)
        return result

    async def run_once(self) -> BatchReport:
        """Send one batch now, outside the schedule; waits for a running batch to end first.

        It takes no rate slot. Raises SupervisorClosed after ``close()``.
        """
        report: BatchReport = await self._ask("run_once")
        return report

    async def prepare(self) -> None:
        """Create or upgrade the repository's schema, once; never twice at the same time.

        Raises RepositoryUnavailable when the database cannot be reached (try again
        later, or call ``prepare_when_reachable()``).
        """
        await self._ask("prepare")

    async def prepare_when_reachable(self) -> None:
        """Have the supervisor apply the schema in the background as soon as the database answers.

        Returns at once; the retries belong to the supervisor and end with ``close()``.
        """
        await self._ask("keep_preparing")

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop sending (as ``stop(grace_s)``), end every task of the supervisor, and refuse new starts.

        Idempotent. ``start()`` and ``run_once()`` raise SupervisorClosed afterwards.
        """
        if self._state is SupervisorState.CLOSED and self._actor_done():
            return
        await self._ask("close", grace_s=grace_s)
        actor = self._actor
        if actor is not None:
            await asyncio.wait({actor})

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- the mailbox ------------------------------------------------------------------------

    def _actor_done(self) -> bool:
        return self._actor is None or self._actor.done()

    async def _ask(self, kind: str, grace_s: float = 0.0) -> Any:
        if self._state is SupervisorState.CLOSED and self._actor_done():
            raise SupervisorClosed()
        if self._actor is None:
            # A context of its own: the actor and its tasks must not inherit the request id
            # (or any other context) of the call that happened to wake it.
            self._actor = asyncio.create_task(self._main(), name="insider-supervisor", context=contextvars.Context())
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._mailbox.put_nowait(_Command(kind, reply, grace_s))
        # A cancelled caller cancels only its wait: the command is still handled, in its turn.
        return await reply

    async def _main(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                while self._state is not SupervisorState.CLOSED:
                    command = await self._mailbox.get()
                    try:
                        result = await self._handle(command)
                    except Exception as exc:
                        if not command.reply.done():
                            command.reply.set_exception(exc)
                        continue
                    except BaseException:  # the actor is cancelled (its event loop ends): answer, then go
                        if not command.reply.done():
                            command.reply.set_exception(SupervisorClosed())
                        raise
                    if result is not _DEFERRED and not command.reply.done():
                        command.reply.set_result(result)
        finally:
            # Cancelled (the event loop is ending) or closed: nothing more is accepted.
            self._state = SupervisorState.CLOSED
            self._run = None
            self._next_tick_mono = None
            while not self._mailbox.empty():
                late = self._mailbox.get_nowait()
                if not late.reply.done():
                    if late.kind in ("stop", "close"):
                        late.reply.set_result(False if late.kind == "stop" else None)
                    else:
                        late.reply.set_exception(SupervisorClosed())

    async def _handle(self, command: _Command) -> Any:
        if command.kind == "start":
            return self._start()
        if command.kind == "stop":
            await self._stop(command.grace_s)
            return False
        if command.kind == "close":
            await self._stop(command.grace_s)
            for helper in list(self._helpers):
                helper.cancel()
            self._state = SupervisorState.CLOSED
            log.info("supervisor closed")
            return None
        if self._state is SupervisorState.CLOSED:
            raise SupervisorClosed()
        if command.kind == "run_once":
            self._spawn(self._reply_with(command.reply, self._manual_batch()), "insider-run-once")
            return _DEFERRED
        if command.kind == "prepare":
            self._spawn(self._reply_with(command.reply, self._prepare()), "insider-schema")
            return _DEFERRED
        if command.kind == "keep_preparing":
            if not self._schema_ready and not self._retrying_schema:
                self._retrying_schema = True
                self._spawn(self._prepare_until_reachable(), "insider-schema-retry")
            return None
        raise ValueError(f"unknown command {command.kind!r}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        assert self._group is not None
        task = self._group.create_task(work, name=name)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    @staticmethod
    async def _reply_with(reply: asyncio.Future[Any], work: Awaitable[Any]) -> None:
        try:
            result = await work
        except asyncio.CancelledError:
            if not reply.done():
                reply.set_exception(SupervisorClosed())
            raise
        except Exception as exc:  # the caller's to handle; the actor's group must not end for it
            if not reply.done():
                reply.set_exception(exc)
            return
        if not reply.done():
            reply.set_result(result)

    # --- the commands -----------------------------------------------------------------------

    def _start(self) -> bool:
        if self._state is SupervisorState.CLOSED:
            raise SupervisorClosed()
        if self._run is None:
            assert self._group is not None
            self._next_tick_mono = self._clock.monotonic()
            self._wait_reason = "due now: the first batch of a start goes at once"
            self._scheduled.clear()
            self._run = _Run(self._group.create_task(self._sender_loop(), name="insider-sender"))
            self._state = SupervisorState.RUNNING
            log.info("sender started", batch_size=self._sender.options.batch_size, interval_s=self.interval_s)
        return True

    async def _stop(self, grace_s: float) -> None:
        run = self._run
        if run is None:
            return
        self._state = SupervisorState.STOPPING
        run.stopping.set()
        try:
            if grace_s > 0 and self._batches_in_flight:  # only a batch in flight is worth waiting for
                await self._wait_at_most(run.task, grace_s)
        finally:
            run.task.cancel()  # also when the actor itself is cancelled: the sender must not outlive it
            # The sender bounds its own final write (RECORD_BUDGET_S); this wait is a safety net.
            # asyncio.wait neither raises the task's CancelledError nor swallows one aimed at the actor.
            await asyncio.wait({run.task}, timeout=STOP_MARGIN_S)
            self._run = None
            self._next_tick_mono = None
            if self._state is SupervisorState.STOPPING:
                self._state = SupervisorState.IDLE
        if not run.task.done():
            log.error("sender task did not end within its bound; it is left to end on its own", margin_s=STOP_MARGIN_S)
        elif not run.task.cancelled() and (error := run.task.exception()) is not None:
            log.error("sender task failed", error=f"{type(error).__name__}: {error}")
        log.info("sender stopped")

    async def _wait_at_most(self, task: asyncio.Task[None], timeout_s: float) -> None:
        """Wait for ``task`` to end, but no longer than ``timeout_s`` on the injected clock."""
        timer = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()

    async def _manual_batch(self) -> BatchReport:
        await self._prepare()
        async with self._batch_lock:
            # A stop ends the schedule, not manual batches: a stopped run's (set) event must
            # not make this batch release everything it claims. A running one's applies.
            run = self._run
            return await self._batch(run.stopping if run is not None else None)

    async def _prepare(self) -> None:
        if self._schema_ready:
            return
        async with self._prepare_lock:  # one migration at a time, whoever asks
            if not self._schema_ready:
                await self._repository.migrate()
                self._schema_ready = True

    async def _prepare_until_reachable(self) -> None:
        failed = False
        try:
            while not self._schema_ready:
                try:
                    await self._prepare()
                except SchemaUpgradeRefused as exc:  # someone must fix the database first
                    log.error("cannot upgrade the database; nothing will be sent until it is fixed", error=str(exc))
                    return
                except RepositoryUnavailable as exc:
                    if not failed:
                        log.error(
                            "database unavailable at start-up; the schema will be applied once it answers",
                            error=str(exc),
                        )
                        failed = True
                    await self._clock.sleep(PREPARE_RETRY_S)
                    continue
                except Exception:
                    log.exception("applying the schema failed")
                    return
                if failed:
                    log.info("schema applied; the database answers again")
        finally:
            self._retrying_schema = False

    # --- the sender task --------------------------------------------------------------------

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

    async def _sender_loop(self) -> None:
        run = self._run
        assert run is not None
        try:
            if self.interval_s > 0:
                await self._loop(run.stopping)
                return
            async with asyncio.TaskGroup() as group:  # drain mode: overlapping batches, one bound
                for _ in range(DRAIN_PIPELINE):
                    group.create_task(self._loop(run.stopping))
        finally:
            if self._run is run and self._state is SupervisorState.RUNNING:
                # Ended by itself (a database it cannot upgrade), not by a stop: say so.
                self._run = None
                self._next_tick_mono = None
                self._state = SupervisorState.IDLE

    def _schedule(self, at_mono: float, reason: str) -> None:
        self._next_tick_mono = at_mono
        self._wait_reason = reason
        self._scheduled.set()

    async def _loop(self, stopping: asyncio.Event) -> None:
        clock = self._clock
        next_tick = clock.monotonic()
        every = f"one batch every {self.interval_s:g}s" if self.interval_s > 0 else "back to back"
        while not stopping.is_set():
            self._next_tick_mono = next_tick
            delay = next_tick - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            if stopping.is_set():
                break
            try:
                # A database that was down at start-up has no schema yet: apply it first.
                await self._prepare()
                if self.interval_s > 0:
                    wait_s = await self._repository.acquire_slot(SLOT_NAME, self.interval_s)
                    self._database_is_back()
                    if wait_s > 0:  # another process, or this one's last run, had the slot
                        last = clock.now() + timedelta(seconds=wait_s - self.interval_s)
                        next_tick = clock.monotonic() + wait_s
                        self._schedule(
                            next_tick,
                            f"rate slot: another process's or the previous run's batch at {_iso(last)} "
                            f"({every}, on the current INSIDER_SEND_INTERVAL)",
                        )
                        continue
                    self._schedule(clock.monotonic(), "due now: a batch is going")
                    async with self._batch_lock:
                        report = await self._batch(stopping)
                else:  # drain mode: the batches of the pipeline overlap on purpose
                    self._schedule(clock.monotonic(), "due now: draining back to back")
                    report = await self._batch(stopping)
                self._database_is_back()
            except SchemaUpgradeRefused as exc:
                # Someone must fix the database first: each tick would only say so again.
                log.error("sending stopped: cannot upgrade the database", error=str(exc))
                self._wait_reason = "sending stopped: cannot upgrade the database (see the log)"
                self._next_tick_mono = None
                return
            except RepositoryUnavailable as exc:
                log.error("tick failed: database unavailable", error=str(exc))
                self._database_down = True
                retry = min(self.interval_s, FAILED_TICK_RETRY_S) if self.interval_s > 0 else IDLE_POLL_S
                next_tick = clock.monotonic() + retry
                self._schedule(next_tick, f"database unavailable: trying again every {retry:g}s")
                continue
            except Exception:
                log.exception("tick failed")  # a bug: keep the sender alive, try at the next tick
                next_tick = max(next_tick + self.interval_s, clock.monotonic() + (self.interval_s or IDLE_POLL_S))
                self._schedule(next_tick, "the last tick failed (see the log)")
                continue
            if self.interval_s > 0:
                # On the grid from the start; an overrun moves the grid, it never bunches batches.
                next_tick = max(next_tick + self.interval_s, clock.monotonic())
                self._schedule(next_tick, f"rate: {every}; the last batch went at {_iso(clock.now())}")
            elif report.claimed == 0:
                next_tick = clock.monotonic() + IDLE_POLL_S
                self._schedule(next_tick, f"queue empty: asking again every {IDLE_POLL_S:g}s")
            else:
                next_tick = clock.monotonic()
                self._schedule(next_tick, "due now: draining back to back")

    def _database_is_back(self) -> None:
        if self._database_down:
            self._database_down = False
            log.info("database answers again; sending resumes")


class _Deferred:
    """A command whose reply comes later, from a task of the supervisor's group."""


_DEFERRED = _Deferred()
