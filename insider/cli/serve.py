"""The serve command: the HTTP API and the sender, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio

from insider.adapters.postgres import wrong_url_reason
from insider.adapters.sqlite import is_sqlite_url
from insider.adapters.webhook import proxy_from_environment
from insider.cli.process import (
    EXIT_FAILED,
    EXIT_USAGE,
    install_stop_signals,
    listen,
    say,
    schema_refused,
    settle_heap,
    until_stopped,
)
from insider.cli.summary import display_host, python_command, startup_summary
from insider.config import Settings, mask_url
from insider.container import Container, resolve
from insider.domain import MessageStatus
from insider.logs import get_logger
from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused
from insider.supervisor import Supervisor
from insider.web.app import create_app
from insider.web.server import ServiceRunner

log = get_logger("insider")

# How long the start-up summary waits for the schema and the sender's first decision; the
# API is already listening meanwhile.
SUMMARY_WAIT_S = 3.0


def run(settings: Settings) -> int:
    """Serve until stopped; the exit code."""
    if settings.webhook_url:
        try:  # a proxy aiohttp cannot use would fail every send, or be skipped silently
            proxy_from_environment(settings.webhook_url)
        except ValueError as exc:
            say(f"insider: error: {exc}")
            return EXIT_USAGE
    return until_stopped(serve(settings))


async def serve(settings: Settings) -> int:
    """Listen, start the sender (unless INSIDER_AUTOSTART=false), print the summary, and serve until a signal."""
    if not is_sqlite_url(settings.database_url):
        # A URL that can never work fails the start now, with one line; a server that is
        # merely down does not (the service starts and waits for it).
        reason = await wrong_url_reason(settings.database_url)
        if reason is not None:
            say(f"insider: error: INSIDER_DATABASE_URL: {reason}")
            return EXIT_USAGE
    container = Container(settings=settings)
    # The sender starts only once the listener is bound: a start that fails (the port is
    # taken) sends nothing and takes no rate slot.
    app = create_app(container, autostart=False, wait_for_schema=False)
    # HTTP requests in flight get the same grace as the sends, side by side (see the end).
    runner = ServiceRunner(app, shutdown_timeout=settings.shutdown_timeout_s)
    try:
        await runner.setup()  # the lifespan opens the pools; the schema is applied in the background
    except SchemaUpgradeRefused as exc:  # the lifespan closed what it had opened
        return schema_refused(exc)
    stop = asyncio.Event()
    install_stop_signals(stop)
    supervisor: Supervisor | None = None
    try:
        port = await listen(runner, settings.host, settings.port, names=" (INSIDER_HOST, INSIDER_PORT)")
        if port is None:
            return EXIT_FAILED
        base_url = f"http://{display_host(settings.host)}:{port}"
        supervisor = await resolve(container.supervisor)
        pending: int | None = None
        try:
            # Waits for the schema (applied by the supervisor), but not for long: the API already serves.
            await asyncio.wait_for(supervisor.prepare(), SUMMARY_WAIT_S)
            counts = await (await resolve(container.repository)).counts()
            pending = counts[MessageStatus.PENDING] + counts[MessageStatus.SENDING]
        except (RepositoryUnavailable, TimeoutError):
            pending = None
        except SchemaUpgradeRefused as exc:  # nothing was sent: the sender has not started
            return schema_refused(exc)
        if settings.autostart:
            await supervisor.start()
        running = supervisor.running
        sender = await supervisor.first_schedule(SUMMARY_WAIT_S) if running else None
        log.info(
            "serving",
            api=f"{base_url}/api/v1/messages",
            swagger=f"{base_url}/swagger",
            database=mask_url(settings.database_url),
            cache=mask_url(settings.redis_url) or "in-process",
            provider=mask_url(settings.webhook_url) or "simulator",
            batch_size=settings.batch_size,
            interval_s=settings.send_interval_s,
            sending=running,
            from_original=dict(settings.from_original),
        )
        summary = startup_summary(
            settings, base_url=base_url, running=running, pending=pending, python=python_command(), sender=sender
        )
        say(summary)
        settle_heap()
        await stop.wait()
        log.info("shutting down", grace_s=settings.shutdown_timeout_s)
    finally:
        # The sends in flight and the HTTP requests in flight get the grace side by side: the
        # schedule stops now, while the server stops taking requests and waits for those it has
        # (then cancels them); the app's cleanup then closes the supervisor's other children
        # and the pools. Each step has its deadline, so the whole is INSIDER_SHUTDOWN_TIMEOUT
        # plus the supervisor's margin.
        stopping = asyncio.ensure_future(supervisor.stop(settings.shutdown_timeout_s)) if supervisor else None
        await runner.cleanup()
        if stopping is not None:
            await asyncio.wait({stopping})
    return 0
