"""The supervisor's children: every long-lived task has an owner, and each is closed with a deadline of its own.

The owner spawns a child as a task and closes it as aiojobs closes a job: cancel it, wait
for it up to its own timeout, and report it if it is still running then (a child that
ignores cancellation cannot hold its owner past that deadline; it is named in the log and
in ``abandoned``, never silently gone). Waits run on the injected :class:`Clock`, so tests
drive the deadlines on a fake clock like every other schedule of the supervisor (aiojobs
keeps its timeouts on the event loop's clock, which is why this small owner exists).

Long-lived children (:class:`Child`: receipt writers, upkeep, ...) are started with the
supervisor, started again with backoff when they crash (:class:`LongLived`), and closed
last, each first asked to finish on its own.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from insider.logs import get_logger
from insider.ports import Clock

log = get_logger("insider.supervisor")

# A crashed child is started again after this long, doubled at each crash in a row up to the
# cap; a child that ran this long before it crashed starts the count again.
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 60.0


@dataclass(eq=False, slots=True)
class ChildTask:
    """One running child: its name, its task, and the deadline it is closed with."""

    name: str
    task: asyncio.Task[Any]
    close_timeout_s: float
    number: int = 0

    @property
    def done(self) -> bool:
        return self.task.done()


@dataclass(slots=True)
class Ended:
    """A child's report to its owner: it ended, with its result or the exception it raised."""

    child: ChildTask
    result: Any = None
    error: BaseException | None = None


class Children:
    """The tasks one owner (the supervisor's actor) runs; every one is closed with its own timeout.

    ``spawn`` starts a child in the owner's context. ``close`` cancels one and waits for it
    at most its ``close_timeout_s`` (on the clock); ``close_all`` does that for every child
    at once. A child that outlives its deadline is logged and kept in :attr:`abandoned`.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._running: set[ChildTask] = set()
        self._numbers = itertools.count(1)
        self._abandoned: list[ChildTask] = []

    def __len__(self) -> int:
        return len(self._running)

    @property
    def abandoned(self) -> list[str]:
        """The names of the children that outlived their deadline once cancelled (and may still run)."""
        return [c.name for c in self._abandoned]

    def spawn(self, name: str, work: Coroutine[Any, Any, Any], *, close_timeout_s: float) -> ChildTask:
        """Start ``work`` as a child named ``name``."""
        task = asyncio.create_task(work, name=f"insider-{name}")
        child = ChildTask(name, task, close_timeout_s, next(self._numbers))
        self._running.add(child)
        task.add_done_callback(lambda _: self._running.discard(child))
        return child

    async def wait(self, children: Sequence[ChildTask], timeout_s: float) -> bool:
        """Wait for ``children`` to end on their own, at most ``timeout_s`` on the clock; True if they all did."""
        pending: set[asyncio.Future[Any]] = {c.task for c in children if not c.done}
        if pending and timeout_s > 0:
            timer = asyncio.ensure_future(self._clock.sleep(timeout_s))
            try:
                # asyncio.wait never cancels what it waits for, nor swallows a cancellation of the caller.
                while pending and not timer.done():
                    _, pending = await asyncio.wait(pending | {timer}, return_when=asyncio.FIRST_COMPLETED)
                    pending.discard(timer)
            finally:
                timer.cancel()
        return all(c.done for c in children)

    async def close(self, child: ChildTask, timeout_s: float | None = None) -> bool:
        """Cancel ``child`` and wait for it up to its deadline; True if it ended, False if abandoned."""
        if child.done:
            return True
        if child in self._abandoned:  # given its deadline once already
            return False
        child.task.cancel()
        limit = child.close_timeout_s if timeout_s is None else timeout_s
        if await self.wait([child], limit):
            return True
        self._abandoned.append(child)
        log.error(
            "a child of the supervisor did not end within its deadline after it was cancelled; it is abandoned",
            child=child.name,
            deadline_s=limit,
        )
        return False

    async def close_all(self, which: Callable[[ChildTask], bool] = lambda _: True) -> None:
        """Close every running child that ``which`` selects, all at once, each with its own deadline."""
        chosen = [c for c in self._running if which(c)]
        if chosen:
            await asyncio.gather(*(self.close(c) for c in chosen))

    def cancel_all(self) -> None:
        """Cancel every running child without waiting (the owner itself is going away)."""
        for child in self._running:
            child.task.cancel()


@dataclass(frozen=True, slots=True)
class Child:
    """A long-lived child of the supervisor, started with it and closed with it.

    ``run`` makes the child's coroutine (called again for each restart); with
    ``needs_schema`` it starts once the database's schema is applied. A child that
    crashes (raises) or ends on its own while the supervisor is open is started again after
    a backoff (:data:`RESTART_BACKOFF_S`, doubling to :data:`RESTART_BACKOFF_MAX_S`). On
    close, ``finish`` (when given) asks it to end on its own, and it gets ``close_timeout_s``
    to do so before it is cancelled; a child that ignores the cancellation too is reported
    as abandoned after another ``close_timeout_s``.
    """

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    close_timeout_s: float = 1.0
    finish: Callable[[], None] | None = None
    needs_schema: bool = False


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """One long-lived child as ``GET /api/v1/sender`` and ``/readyz`` show it."""

    name: str
    state: str  # running, restarting (after a crash, until its backoff ends), stopped, abandoned
    restarts: int
    last_error: str | None


@dataclass(eq=False, slots=True)
class _Kept:
    spec: Child
    child: ChildTask | None = None
    restarts: int = 0
    crashes_in_a_row: int = 0
    started_mono: float = 0.0
    last_error: str | None = None
    state: str = "stopped"


class LongLived:
    """The supervisor's long-lived children: their restarts with backoff, their health, their close."""

    def __init__(
        self,
        specs: Sequence[Child],
        clock: Clock,
        spawn: Callable[[str, Coroutine[Any, Any, Any], Callable[[Ended], None], float], ChildTask],
        timer: Callable[[float, Callable[[], None]], ChildTask],
    ) -> None:
        self._kept = {spec.name: _Kept(spec) for spec in specs}
        if len(self._kept) != len(specs):
            raise ValueError("the supervisor's children need names of their own")
        self._clock = clock
        self._spawn = spawn
        self._timer = timer
        self._closing = False

    def statuses(self) -> tuple[ChildStatus, ...]:
        return tuple(ChildStatus(name, k.state, k.restarts, k.last_error) for name, k in self._kept.items())

    def start_all(self, schema_ready: bool) -> None:
        """Start every child (those that need the schema only once it is applied)."""
        for kept in self._kept.values():
            if schema_ready or not kept.spec.needs_schema:
                self._start(kept)

    def schema_applied(self) -> None:
        """The schema is applied: start the children that waited for it."""
        for kept in self._kept.values():
            if kept.spec.needs_schema and kept.child is None and kept.state == "stopped":
                self._start(kept)

    def _start(self, kept: _Kept) -> None:
        if self._closing:
            return
        spec = kept.spec
        kept.child = self._spawn(spec.name, spec.run(), lambda ended: self._ended(kept, ended), spec.close_timeout_s)
        kept.started_mono = self._clock.monotonic()
        kept.state = "running"

    def _ended(self, kept: _Kept, ended: Ended) -> None:
        kept.child = None
        if self._closing:
            return
        if self._clock.monotonic() - kept.started_mono >= RESTART_BACKOFF_MAX_S:
            kept.crashes_in_a_row = 0
        kept.crashes_in_a_row += 1
        kept.restarts += 1
        delay = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** min(kept.crashes_in_a_row - 1, 16))
        name = kept.spec.name
        if ended.error is not None:
            kept.last_error = f"{type(ended.error).__name__}: {ended.error}"
            log.error(
                "a child of the supervisor crashed; it is started again",
                child=name,
                error=kept.last_error,
                restart_in_s=delay,
                exc_info=ended.error,
            )
        else:
            kept.last_error = "it ended on its own"
            log.error("a child of the supervisor ended on its own; it is started again", child=name, restart_in_s=delay)
        kept.state = "restarting"
        self._timer(delay, lambda: self._start(kept))

    async def close(self, children: Children) -> None:
        """Ask each to finish, give each its deadline, then cancel what is left (each with its deadline again)."""
        self._closing = True
        running = [k for k in self._kept.values() if k.child is not None and not k.child.done]
        for kept in running:
            if kept.spec.finish is not None:
                kept.spec.finish()
        await asyncio.gather(*(self._close(children, kept) for kept in running))
        for kept in self._kept.values():
            if kept.state != "abandoned":
                kept.state = "stopped"

    @staticmethod
    async def _close(children: Children, kept: _Kept) -> None:
        child = kept.child
        assert child is not None
        if kept.spec.finish is not None:  # asked to end on its own: it gets its deadline for that first
            await children.wait([child], kept.spec.close_timeout_s)
        if not await children.close(child):
            kept.state = "abandoned"
