"""The supervisor: the root of the process's one supervision tree, an actor that owns every long-lived task."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from insider.children import Child, Children, ChildStatus, ChildTask, Ended, LongLived
from insider.clock import SystemClock
from insider.domain import BatchReport
from insider.logs import get_logger
from insider.ports import Clock, Observer, SupervisorStore
from insider.schedule import (
    DRAIN_PIPELINE,
    FAILED_TICK_RETRY_S,
    IDLE_POLL_S,
    QUICK_CLOSE_S,
    SLOT_NAME,
    STOP_MARGIN_S,
    STOP_SAFETY_S,
    Schedule,
    drain_lanes,
)
from insider.schema_keeper import PREPARE_RETRY_S, SchemaKeeper
from insider.sender import BatchSender

log = get_logger("insider.supervisor")

__all__ = [
    "DRAIN_PIPELINE",
    "FAILED_TICK_RETRY_S",
    "IDLE_POLL_S",
    "PREPARE_RETRY_S",
    "SLOT_NAME",
    "STOP_MARGIN_S",
    "STOP_SAFETY_S",
    "Child",
    "ChildStatus",
    "SenderStatus",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorState",
    "Transition",
    "drain_lanes",
]


class SupervisorClosed(RuntimeError):
    """The supervisor was closed (its service shut down): it starts and sends nothing any more."""

    def __init__(self) -> None:
        super().__init__("the supervisor is closed: its service has shut down, so it cannot start or send")


class SupervisorState(enum.StrEnum):
    """Where the supervisor is in its life."""

    IDLE = "idle"  # not sending on a schedule (never started, or stopped)
    RUNNING = "running"  # batches go on the schedule
    STOPPING = "stopping"  # a stop is winding the schedule's batches down
    CLOSED = "closed"  # closed for good: start() and run_once() raise SupervisorClosed


@dataclass(frozen=True, slots=True)
class Transition:
    """What one command did: the state before it was handled and after (the same when it changed nothing)."""

    command: str
    before: SupervisorState
    after: SupervisorState

    @property
    def changed(self) -> bool:
        return self.before is not self.after


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
    children: tuple[ChildStatus, ...] = ()


# --- the mailbox's messages: commands from callers; children's reports are children.Ended ------


@dataclass(slots=True)
class _Command:
    reply: asyncio.Future[Any]


@dataclass(slots=True)
class _Start(_Command):
    pass


@dataclass(slots=True)
class _Stop(_Command):
    grace_s: float


@dataclass(slots=True)
class _Close(_Command):
    grace_s: float


@dataclass(slots=True)
class _RunOnce(_Command):
    pass


@dataclass(slots=True)
class _Prepare(_Command):
    pass


@dataclass(slots=True)
class _KeepPreparing(_Command):
    pass


@dataclass(slots=True)
class _Cancelled:
    """A child ended by a cancellation: its owner closed it, and only forgets it."""

    child: ChildTask


_Message = _Command | Ended | _Cancelled


class Supervisor:
    """Sends a batch every interval, and answers start, stop, run-once and close, in order.

    The supervisor is the root of one supervision tree and an actor: a task of its own
    (started on the first call, in a context of its own) owns every long-lived task of the
    service as a child: each batch of the schedule and its rate-slot check, batches sent with
    ``run_once()``, the schema's application, the timers of the schedule, and the ``children``
    it is given (receipt writers, upkeep, ...). Only that task changes the supervisor's
    state: children report to it by messages (a batch is done, a slot is taken, the schema is
    applied, a child crashed), and callers send it typed commands, handled one at a time in
    the order sent. ``start()``, ``stop()`` and ``close()`` answer with the
    :class:`Transition` they caused, so of many concurrent starts exactly one changed
    anything. A caller that is cancelled while waiting does not undo its command: a
    cancelled ``stop()`` still stops.

    The schedule is :class:`insider.schedule.Schedule`'s: the first batch at once, then one
    every ``interval_s``, each taking the deployment-wide rate slot; with ``interval_s`` 0
    (drain mode), :func:`drain_lanes` batches back to back. Every child is closed with its
    own deadline (:mod:`insider.children`); a long-lived child that crashes is started again
    with backoff, and ``status().children`` says so. Use it as an async context manager: on
    the way out it is closed. It closes nothing it was given.
    """

    def __init__(
        self,
        sender: BatchSender,
        repository: SupervisorStore,
        *,
        interval_s: float,
        clock: Clock | None = None,
        observer: Observer | None = None,
        children: Sequence[Child] = (),
    ) -> None:
        self._sender = sender
        self._repository = repository
        self._clock = clock or SystemClock()
        self._mailbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._actor: asyncio.Task[None] | None = None
        self._children = Children(self._clock)
        self._on_end: dict[ChildTask, Callable[[Ended], None]] = {}
        self._schedule = Schedule(self, sender, repository, self._clock, observer, interval_s)
        self._long_lived = LongLived(children, self._clock, self.spawn, self.timer)
        self._schema = SchemaKeeper(repository, self.spawn, self.timer, self._long_lived.schema_applied)
        # Written by the actor's task only.
        self._closed = False
        self._stopping = False

    # --- what callers see -------------------------------------------------------------------

    @property
    def interval_s(self) -> float:
        return self._schedule.interval_s

    @property
    def ticks(self) -> int:
        """How many batches have started (scheduled and manual)."""
        return self._schedule.ticks

    @property
    def state(self) -> SupervisorState:
        if self._closed:
            return SupervisorState.CLOSED
        if self._stopping:
            return SupervisorState.STOPPING
        return SupervisorState.RUNNING if self._schedule.run is not None else SupervisorState.IDLE

    @property
    def schema_ready(self) -> bool:
        """Whether the repository's schema has been applied (``prepare()`` succeeded)."""
        return self._schema.ready

    @property
    def running(self) -> bool:
        """Whether automatic sending runs (the state is ``running``)."""
        return self.state is SupervisorState.RUNNING

    @property
    def abandoned(self) -> list[str]:
        """The children that outlived their deadline after they were cancelled (a bug in them), by name."""
        return list(self._children.abandoned)

    def status(self) -> SenderStatus:
        """A snapshot for the API and the logs."""
        schedule = self._schedule
        next_tick_at = None
        reason = None
        if self.running and schedule.next_tick_mono is not None:
            ahead = max(0.0, schedule.next_tick_mono - self._clock.monotonic())
            next_tick_at = self._clock.now() + timedelta(seconds=ahead)
            reason = schedule.wait_reason
        return SenderStatus(
            running=self.running,
            batch_size=self._sender.options.batch_size,
            interval_s=schedule.interval_s,
            last_tick_at=schedule.last_tick_at,
            next_tick_at=next_tick_at,
            last_batch=schedule.last_batch,
            state=self.state,
            wait_reason=reason,
            children=self._long_lived.statuses(),
        )

    async def first_schedule(self, timeout_s: float) -> SenderStatus:
        """The status once this run's first tick has decided when a batch goes (the slot, the
        database), or after ``timeout_s`` seconds of real time, whichever is first."""
        if self.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedule.scheduled.wait(), timeout_s)
        return self.status()

    async def start(self) -> Transition:
        """Start automatic sending if it is not running; the transition says whether this call started it.

        Raises SupervisorClosed after ``close()``.
        """
        transition: Transition = await self._ask(_Start)
        return transition

    async def stop(self, grace_s: float = 0.0) -> Transition:
        """Stop automatic sending; the transition says whether this call stopped it.

        No new request starts after this is handled. Requests in flight get ``grace_s``
        seconds to finish and be recorded; those still running then are cancelled and
        their messages go back to pending with the same idempotency key. It returns
        within ``grace_s`` plus ``STOP_MARGIN_S`` whatever the database or provider do:
        what could not be recorded by then is released by its lease.
        """
        if self._closed and self._actor_done():
            return Transition("stop", SupervisorState.CLOSED, SupervisorState.CLOSED)
        transition: Transition = await self._ask(_Stop, grace_s=grace_s)
        return transition

    async def run_once(self) -> BatchReport:
        """Send one batch now, outside the schedule; waits for a running batch to end first.

        It takes no rate slot. Raises SupervisorClosed after ``close()``.
        """
        report: BatchReport = await self._ask(_RunOnce)
        return report

    async def prepare(self) -> None:
        """Create or upgrade the repository's schema, once; never twice at the same time.

        Raises RepositoryUnavailable when the database cannot be reached (try again
        later, or call ``prepare_when_reachable()``).
        """
        await self._ask(_Prepare)

    async def prepare_when_reachable(self) -> None:
        """Have the supervisor apply the schema in the background as soon as the database answers.

        Returns at once; the retries are the supervisor's children and end with ``close()``.
        """
        await self._ask(_KeepPreparing)

    async def close(self, grace_s: float = 0.0) -> Transition:
        """Stop sending (as ``stop(grace_s)``), close every child, each with its own deadline, and refuse new starts.

        Returns within ``grace_s`` plus ``STOP_MARGIN_S``, whatever the children do. Idempotent.
        ``start()`` and ``run_once()`` raise SupervisorClosed afterwards.
        """
        if self._closed and self._actor_done():
            return Transition("close", SupervisorState.CLOSED, SupervisorState.CLOSED)
        transition: Transition = await self._ask(_Close, grace_s=grace_s)
        actor = self._actor
        if actor is not None:
            await asyncio.wait({actor})
        return transition

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- the tree: what the schedule and the long-lived children ask of the actor -----------

    def spawn(
        self, name: str, work: Coroutine[Any, Any, Any], on_end: Callable[[Ended], None], close_timeout_s: float
    ) -> ChildTask:
        """Start a child; its end comes back through the mailbox, and ``on_end`` is called by the actor."""
        box: list[ChildTask] = []

        async def reporting() -> None:
            try:
                result = await work
            except asyncio.CancelledError:
                self._mailbox.put_nowait(_Cancelled(box[0]))
                raise
            except Exception as exc:
                self._mailbox.put_nowait(Ended(box[0], error=exc))
                return
            self._mailbox.put_nowait(Ended(box[0], result=result))

        child = self._children.spawn(name, reporting(), close_timeout_s=close_timeout_s)
        box.append(child)
        self._on_end[child] = on_end
        return child

    def timer(self, delay_s: float, then: Callable[[], None]) -> ChildTask:
        """A child that sleeps ``delay_s`` on the clock; then the actor calls ``then``."""
        return self.spawn("timer", self._clock.sleep(delay_s), lambda _: then(), close_timeout_s=QUICK_CLOSE_S)

    def after_schema(self, then: Callable[[BaseException | None], None]) -> None:
        """Call ``then`` with the outcome of the next schema attempt (None: applied); start one if none runs."""
        self._schema.after(then)

    # --- the mailbox ------------------------------------------------------------------------

    def _actor_done(self) -> bool:
        return self._actor is None or self._actor.done()

    async def _ask(self, kind: type[_Command], **fields: float) -> Any:
        if self._closed and self._actor_done():
            raise SupervisorClosed()
        if self._actor is None:
            # A context of its own: the actor and its children must not inherit the request id
            # (or any other context) of the call that happened to wake it.
            self._actor = asyncio.create_task(self._main(), name="insider-supervisor", context=contextvars.Context())
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._mailbox.put_nowait(kind(reply, **fields))
        # A cancelled caller cancels only its wait: the command is still handled, in its turn.
        return await reply

    async def _main(self) -> None:
        try:
            self._long_lived.start_all(self._schema.ready)
            while not self._closed:
                message = await self._mailbox.get()
                if isinstance(message, _Cancelled):
                    self._on_end.pop(message.child, None)
                elif isinstance(message, Ended):
                    on_end = self._on_end.pop(message.child, None)
                    if on_end is not None:
                        try:
                            on_end(message)
                        except Exception:
                            log.exception("the supervisor failed to handle a child's report", child=message.child.name)
                else:
                    await self._answer(message)
        finally:
            # Closed, or cancelled (the event loop is ending): nothing more is accepted, nothing runs on.
            self._closed = True
            self._children.cancel_all()
            self._answer_the_rest()

    async def _answer(self, command: _Command) -> None:
        try:
            result = await self._handle(command)
        except Exception as exc:
            if not command.reply.done():
                command.reply.set_exception(exc)
            return
        except BaseException:  # the actor is cancelled (its event loop ends): answer, then go
            if not command.reply.done():
                command.reply.set_exception(SupervisorClosed())
            raise
        if result is not _DEFERRED and not command.reply.done():
            command.reply.set_result(result)

    def _answer_the_rest(self) -> None:
        closed = SupervisorClosed()
        self._schedule.fail_waiting(closed)
        with contextlib.suppress(Exception):
            self._schema.fail_waiting(closed)
        while not self._mailbox.empty():
            late = self._mailbox.get_nowait()
            if isinstance(late, _Command) and not late.reply.done():
                if isinstance(late, _Stop | _Close):
                    command = "stop" if isinstance(late, _Stop) else "close"
                    late.reply.set_result(Transition(command, SupervisorState.CLOSED, SupervisorState.CLOSED))
                else:
                    late.reply.set_exception(closed)

    # --- the commands -----------------------------------------------------------------------

    async def _handle(self, command: _Command) -> Any:
        if isinstance(command, _Stop):
            return await self._stop(command.grace_s, "stop")
        if isinstance(command, _Close):
            return await self._close(command.grace_s)
        if self._closed:
            raise SupervisorClosed()
        if isinstance(command, _Start):
            before = self.state
            self._schedule.start()
            return Transition("start", before, self.state)
        if isinstance(command, _RunOnce):
            self._schedule.run_once(command.reply)
            return _DEFERRED
        if isinstance(command, _Prepare):
            if self._schema.ready:
                return None
            reply = command.reply
            self._schema.after(lambda error: _settle(reply, None, error))
            return _DEFERRED
        if isinstance(command, _KeepPreparing):
            self._schema.keep_trying()
            return None
        raise TypeError(f"unknown command {command!r}")

    async def _stop(self, grace_s: float, command: str) -> Transition:
        before = self.state
        run = self._schedule.end_run()  # no request starts any more
        if run is None:
            return Transition(command, before, before)
        self._stopping = True
        try:
            # Its timers and slot checks hold nothing: closed at once.
            await asyncio.gather(*(self._children.close(c) for c in run.children if c.name != "batch"))
            batches = self._schedule.batches_of(run)
            if grace_s > 0:  # requests in flight may finish and be recorded within the grace
                await self._children.wait(batches, grace_s)
            # Each batch bounds its own final write (RECORD_BUDGET_S) once cancelled; its deadline is the safety net.
            await asyncio.gather(*(self._children.close(c) for c in batches))
        finally:
            self._stopping = False
            log.info("sender stopped")
        return Transition(command, before, self.state)

    async def _close(self, grace_s: float) -> Transition:
        before = self.state
        # The schedule, manual batches and the long-lived children wind down side by side, each on its own deadline.
        await asyncio.gather(
            self._stop(grace_s, "close"),
            self._close_manual(grace_s),
            self._long_lived.close(self._children),
        )
        self._closed = True
        await self._children.close_all()  # timers, schema attempts
        log.info("supervisor closed")
        return Transition("close", before, SupervisorState.CLOSED)

    async def _close_manual(self, grace_s: float) -> None:
        batches = [c for c in self._schedule.manual if not c.done]
        if batches and grace_s > 0:
            await self._children.wait(batches, grace_s)
        await asyncio.gather(*(self._children.close(c) for c in batches))


def _settle(reply: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if reply.done():
        return
    if error is None:
        reply.set_result(result)
    else:
        reply.set_exception(error)


class _Deferred:
    """A command whose reply comes later, when a child reports."""


_DEFERRED = _Deferred()
