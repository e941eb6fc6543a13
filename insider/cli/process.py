"""What only the process owns: exit codes, the event loop (uvloop), the collector, signals, the listening socket."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

# Exit codes: 0 done, 1 failed at run time (database down, port taken), 2 bad usage or settings.
EXIT_FAILED = 1
EXIT_USAGE = 2
# The database holds what the migrations cannot upgrade: someone must fix it first, so a
# supervisor should not restart the service (systemd: RestartPreventExitStatus=3).
EXIT_SCHEMA = 3


def say(text: str) -> None:
    """``text`` and a line break on stderr in one write: the log's writer thread writes there too,
    and ``print`` writes its text and its line break apart, so a log line could land between them."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def database_down(database_url: str, exc: Exception) -> int:
    """One error line for a database that does not answer a one-shot command; the exit code."""
    from insider.config import mask_url

    say(f"insider: error: the database does not answer (INSIDER_DATABASE_URL={mask_url(database_url)}): {exc}")
    return EXIT_FAILED


def schema_refused(exc: Exception) -> int:
    """One error line for a database the migrations cannot upgrade; the exit code that says so."""
    say(f"insider: error: cannot upgrade the database: {exc}")
    return EXIT_SCHEMA


async def listen(runner: web.AppRunner, host: str, port: int, *, names: str = "") -> int | None:
    """Listen on host:port; the port really bound (for port 0), or None after one error line.

    ``names`` says which settings chose the address (INSIDER_HOST and INSIDER_PORT), for that line.
    """
    from aiohttp import web

    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        say(f"insider: error: cannot listen on {host}:{port}{names}: {reason}")
        return None
    return int(runner.addresses[0][1]) if runner.addresses else port


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: a command that serves then stops gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


# Allocations between two young-generation collections (CPython's default: 700). Each
# collection cost about as much whatever the count (130 µs at 700, 80 at 20,000 here), so at
# the default a drain spent 15 µs per message collecting, 3 µs at this threshold.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Keep the garbage collector off what start-up built, and collect the young less often.

    Modules, the app and its routes, Swagger's spec and the pools are some 80,000 objects
    that every full collection walked again; under a burst of requests (receipts, above all)
    those walks took several percent of the service's time. Frozen, they are never scanned.
    Only the command line does this: an embedding program keeps its own collector settings.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


# Tasks still running when a command's coroutine has returned (a child the supervisor
# abandoned because it ignored its cancellation) get this long to end once cancelled again.
LEFTOVER_S = 0.25


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run a long-lived command on uvloop where it is installed (it is, on Linux and macOS).

    uvloop's transports roughly halve the event loop's own cost per HTTP request, which
    is most of the sender's CPU time when it drains a backlog (docs/performance.md).
    Only the command line chooses the loop: an embedding program keeps its own.

    When the command is done, a task that still ignores its cancellation after
    :data:`LEFTOVER_S` must not keep the process alive (asyncio would wait for it for
    ever): the process exits with the command's code, after one error line naming it.
    """
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # e.g. Windows: the standard loop does the same work, slower
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        code = runner.run(main)
        stuck = runner.run(_end_leftovers(LEFTOVER_S))
        if stuck:
            from insider.logs import get_logger

            get_logger("insider").error("exiting without the tasks that ignored their cancellation", tasks=stuck)
            logging.shutdown()  # every log line written (the command line's writer is stopped)
            sys.stderr.flush()
            os._exit(code)  # the event loop would wait for them for ever
        return code


async def _end_leftovers(timeout_s: float) -> list[str]:
    """Cancel the tasks still running and wait for them up to ``timeout_s``; the names of those left."""
    current = asyncio.current_task()
    left = {task for task in asyncio.all_tasks() if task is not current}
    for task in left:
        task.cancel()
    if not left:
        return []
    _, pending = await asyncio.wait(left, timeout=timeout_s)
    return sorted(task.get_name() for task in pending)


def until_stopped(main: Coroutine[Any, Any, int]) -> int:
    """Run a command that serves until stopped: Ctrl+C during its start-up stops it quietly too.

    Once serving, SIGINT and SIGTERM are the command's own (a graceful stop, exit 0). Before
    its handlers are in place, asyncio turns Ctrl+C into KeyboardInterrupt, which printed a
    traceback; it now ends the same way, with whatever was opened closed on the way out.
    """
    try:
        return run_fast(main)
    except KeyboardInterrupt:
        return 0
