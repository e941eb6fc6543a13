"""The command line: the only place that owns signals and the exit code."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from insider import __version__
from insider.config import ConfigError, Settings, load_settings, mask_url
from insider.logs import configure_logging

log = structlog.get_logger("insider")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m insider",
        description="Sends queued SMS messages from a database to an SMS provider at a controlled rate. "
        "Settings come from INSIDER_* variables (see README.md).",
    )
    parser.add_argument("--version", action="version", version=f"insider {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="run the API and the sender (the default)",
        description="Run the HTTP API and, unless INSIDER_AUTOSTART=false, the sender.",
    )
    commands.add_parser(
        "migrate", help="apply the database migrations and exit", description="Apply the database migrations and exit."
    )
    return parser


async def _serve(settings: Settings) -> int:
    from aiohttp import web

    from insider.container import Container, resolve
    from insider.web.app import create_app

    container = Container(settings=settings)
    app = create_app(container)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()  # runs the lifespan: pools, migrations, sender
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            print(f"insider: error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
            return 1
        log.info(
            "serving",
            api=f"http://{settings.host}:{settings.port}/api/v1/messages",
            swagger=f"http://{settings.host}:{settings.port}/swagger",
            database=mask_url(settings.database_url),
            cache=mask_url(settings.redis_url) or "in-process",
            batch_size=settings.batch_size,
            interval_s=settings.send_interval_s,
            sending=(await resolve(container.supervisor)).running,
        )
        await stop.wait()
        log.info("shutting down", grace_s=settings.shutdown_timeout_s)
    finally:
        await runner.cleanup()  # stops the sender (in-flight sends get the grace period), closes pools
    return 0


async def _migrate(settings: Settings) -> int:
    from insider.adapters.postgres import PostgresMessageRepository, open_postgres_pool
    from insider.ports import RepositoryUnavailable

    async with open_postgres_pool(settings.database_url) as pool:
        try:
            await PostgresMessageRepository(pool).migrate()
        except RepositoryUnavailable as exc:
            print(f"insider: error: database unavailable: {exc}", file=sys.stderr)
            return 1
    log.info("migrations applied", database=mask_url(settings.database_url))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"insider: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    command = args.command or "serve"
    if command == "serve" and not settings.webhook_url:
        print("insider: error: INSIDER_WEBHOOK_URL: not set; the provider's webhook URL is required", file=sys.stderr)
        return 2
    runner = _serve if command == "serve" else _migrate
    return asyncio.run(runner(settings))


if __name__ == "__main__":
    sys.exit(main())
