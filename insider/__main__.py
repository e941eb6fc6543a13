"""The command line: the only place that owns signals and the exit code."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from insider import __version__
from insider.config import REMOVED, ConfigError, Settings, format_duration, load_settings, mask_url, parse_duration
from insider.logs import configure_logging

if TYPE_CHECKING:
    from aiohttp import web

    from insider.supervisor import SenderStatus

log = structlog.get_logger("insider")

# Exit codes: 0 done, 1 failed at run time (database down, port taken), 2 bad usage or settings.
EXIT_FAILED = 1
EXIT_USAGE = 2
# The database holds what the migrations cannot upgrade: someone must fix it first, so a
# supervisor should not restart the service (systemd: RestartPreventExitStatus=3).
EXIT_SCHEMA = 3
EXAMPLE_PHONE = "+15555550100"  # a number reserved for fiction
EXAMPLE_CONTENT = "Hello from insider"
SIMULATOR_PORT = 9090
# How long the start-up summary waits for the schema and the sender's first decision; the
# API is already listening meanwhile.
SUMMARY_WAIT_S = 3.0


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _latency(text: str) -> tuple[float, float]:
    """``50ms`` (always that long) or ``20ms-50ms`` (anywhere in between)."""
    low_text, _, high_text = text.partition("-")
    low = _duration(low_text)
    high = _duration(high_text) if high_text else low
    if high < low:
        raise argparse.ArgumentTypeError(f"expected SHORTEST-LONGEST, got {text!r}")
    return low, high


def _http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text.strip()


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m insider",
        description="Sends queued SMS messages from a database to an SMS provider at a controlled rate. "
        "Settings come from INSIDER_* variables (see README.md and .env.example).",
        epilog="Without a command, it serves.",
    )
    parser.add_argument("--version", action="version", version=f"insider {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    commands.add_parser(
        "serve",
        help="run the API and the sender (the default)",
        description="Run the HTTP API and, unless INSIDER_AUTOSTART=false, the sender. "
        "Stops gracefully on SIGTERM or SIGINT.",
    )
    commands.add_parser(
        "migrate",
        help="apply the database migrations and exit",
        description="Apply the database migrations (INSIDER_DATABASE_URL) and exit.",
    )
    enqueue = commands.add_parser(
        "enqueue",
        help="add a message to the queue without the API",
        description="Validate one message as the API does, store it as pending in INSIDER_DATABASE_URL "
        "(creating the schema if needed) and print its id.",
    )
    enqueue.add_argument(
        "--to",
        help=f"recipient, international ({EXAMPLE_PHONE}) or, with INSIDER_DEFAULT_REGION, national",
    )
    enqueue.add_argument(
        "--content", help="the text, at most INSIDER_CONTENT_MAX_LENGTH characters; - reads it from stdin (UTF-8)"
    )
    enqueue.add_argument("--send-at", help="not sent before this RFC 3339 time (2026-12-01T09:00:00+03:00)")
    enqueue.add_argument("--priority", type=int, default=5, help="0 to 9, higher first (default 5)")
    enqueue.add_argument("--valid-until", help="never sent after this RFC 3339 time: expired instead")
    enqueue.add_argument(
        "--file",
        help="load many messages: CSV with the header to,content[,sendAt,priority,validUntil], or JSON Lines "
        "with those fields; - reads standard input. Prints a progress line, what was stored and every "
        "rejected line with its number",
    )
    enqueue.set_defaults(enqueue_parser=enqueue)
    enqueue.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that check the lines of --file beside this one (default 0: a thread of this one); "
        "worth it only with idle cores: checking a line is pure Python",
    )
    enqueue.add_argument(
        "--chunk-size", type=int, default=10_000, help="messages stored per transaction with --file (default 10000)"
    )
    simulate = commands.add_parser(
        "simulate",
        help="run a simulated SMS provider (an HTTP server like the webhook)",
        description="Run an HTTP server that answers like the provider's webhook: POST / or /webhook with "
        '{"to", "content"} gets 202 and a messageId (the same one again for a repeated Idempotency-Key). '
        "GET /messages lists what it accepted, GET /healthz says it is up. With --dlr-url, it posts a delivery "
        "receipt for each accepted message to that URL, like a real provider. Nothing leaves this machine.",
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    simulate.add_argument(
        "--port", type=_port, default=SIMULATOR_PORT, help=f"port to listen on (default {SIMULATOR_PORT})"
    )
    simulate.add_argument(
        "--latency",
        type=_latency,
        default=(0.02, 0.05),
        metavar="DURATION[-DURATION]",
        help="how long an answer takes: 50ms, or 20ms-50ms for anywhere in between (default 20ms-50ms)",
    )
    simulate.add_argument(
        "--fail-rate", type=_rate, default=0.0, metavar="FRACTION", help="share of requests answered 500 (default 0)"
    )
    simulate.add_argument(
        "--rate-limit-rate",
        type=_rate,
        default=0.0,
        metavar="FRACTION",
        help="share of requests answered 429 with Retry-After (default 0)",
    )
    simulate.add_argument(
        "--retry-after",
        type=_duration,
        default=1.0,
        metavar="DURATION",
        help="the Retry-After of a 429, rounded up to whole seconds (default 1s)",
    )
    simulate.add_argument("--auth-key", default="", help="when set, requests must carry it in x-ins-auth-key")
    simulate.add_argument(
        "--dlr-url",
        type=_http_url,
        default=None,
        metavar="URL",
        help="post a delivery receipt for each accepted message to this URL, e.g. "
        "http://127.0.0.1:8080/api/v1/delivery-reports (default: no receipts)",
    )
    simulate.add_argument(
        "--dlr-token", default="", metavar="TOKEN", help="sent with the receipts as x-ins-auth-key (INSIDER_DLR_TOKEN)"
    )
    simulate.add_argument(
        "--dlr-delay",
        type=_latency,
        default=(1.0, 5.0),
        metavar="DURATION[-DURATION]",
        help="how long after accepting a message its receipt comes: 2s, or 1s-5s for anywhere in between "
        "(default 1s-5s)",
    )
    simulate.add_argument(
        "--undelivered-rate",
        type=_rate,
        default=0.05,
        metavar="FRACTION",
        help="share of receipts saying undelivered (default 0.05)",
    )
    return parser


def _quiet_pool_retries() -> None:
    """A one-shot command reports a database that does not answer in its one error line;
    the pool's warnings about each reconnection attempt would only bury it."""
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


async def _listen(runner: web.AppRunner, host: str, port: int, *, names: str = "") -> int | None:
    """Listen on host:port; the port really bound (for port 0), or None after one error line.

    ``names`` says which settings chose the address (INSIDER_HOST and INSIDER_PORT), for that line.
    """
    from aiohttp import web

    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"insider: error: cannot listen on {host}:{port}{names}: {reason}", file=sys.stderr)
        return None
    return int(runner.addresses[0][1]) if runner.addresses else port


def _schema_refused(exc: Exception) -> int:
    print(f"insider: error: cannot upgrade the database: {exc}", file=sys.stderr, flush=True)
    return EXIT_SCHEMA


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _display_host(host: str) -> str:
    """The host of the URLs to show: a wildcard address is reached on the loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _python_command() -> str:
    """How to run this Python from the working directory: the venv's path (relative when it is below it).

    A bare ``python`` would be another interpreter, without insider, outside the venv.
    """
    executable = Path(sys.executable)
    try:
        return shlex.quote(str(executable.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(executable)) if executable.is_absolute() else "python"


def _default_settings() -> Settings | None:
    try:
        return load_settings({}, env_file=None)
    except ConfigError:
        return None


def command_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """The INSIDER_* assignments a command pasted in another terminal needs to act on the same data.

    ``enqueue`` must reach the same database and check the same length; whatever differs from the
    defaults is spelt out (a password masked: it is not printed, put it back in place of ``***``).
    """
    environ = os.environ if environ is None else environ
    defaults = _default_settings()
    assignments: list[str] = []
    if "INSIDER_CONFIG_FILE" in environ:
        assignments.append(f"INSIDER_CONFIG_FILE={shlex.quote(environ['INSIDER_CONFIG_FILE'])}")
    if defaults is None or settings.database_url != defaults.database_url:
        assignments.append(f"INSIDER_DATABASE_URL={shlex.quote(mask_url(settings.database_url))}")
    if defaults is None or settings.content_max_length != defaults.content_max_length:
        assignments.append(f"INSIDER_CONTENT_MAX_LENGTH={settings.content_max_length}")
    return "".join(a + " " for a in assignments)


def _next_batch(status: SenderStatus, now: datetime) -> tuple[str, str]:
    """When the first batch goes, as the summary says it, and the rest of the "It goes out" line."""
    at = status.next_tick_at
    if at is None or (at - now).total_seconds() < 1:
        return "now", "It goes out with the next batch"
    wait = format_duration(float(math.ceil((at - now).total_seconds())))
    when = at.astimezone(UTC).strftime("%H:%M:%SZ")
    why = f" ({status.wait_reason})" if status.wait_reason else ""
    return f"at {when}, in {wait}{why}", f"The next batch goes at {when}, in {wait}"


def startup_summary(
    settings: Settings,
    *,
    base_url: str,
    running: bool,
    pending: int | None,
    python: str = "python",
    sender: SenderStatus | None = None,
    now: datetime | None = None,
) -> str:
    """The block printed when the service starts: where it is, what it uses, how to give it work.

    With ``sender`` (the sender's status once its first tick decided), a ``Next`` line says
    when the first batch goes and why.
    """
    from insider.adapters.sqlite import is_sqlite_url, sqlite_path

    if is_sqlite_url(settings.database_url):
        path = sqlite_path(settings.database_url)
        where = path if path == ":memory:" else str(Path(path).resolve())
        database = f"SQLite {settings.database_url} ({where})"
    else:
        database = f"PostgreSQL {mask_url(settings.database_url)}"
    if pending is None:
        database += " (not answering yet; sending starts once it does)"
    cache = f"Redis {mask_url(settings.redis_url)}" if settings.redis_url else "in-process (INSIDER_REDIS_URL is empty)"
    if settings.redis_list:
        cache += (
            f", each send also pushed to the list {settings.redis_list}"
            if settings.redis_url
            else (f"; the list {settings.redis_list} needs Redis and is not written")
        )
    provider = (
        mask_url(settings.webhook_url) if settings.webhook_url else "built-in simulator — nothing leaves this machine"
    )
    every = (
        f"every {format_duration(settings.send_interval_s)}"
        if settings.send_interval_s > 0
        else "back to back (INSIDER_SEND_INTERVAL=0)"
    )
    noun = "message" if settings.batch_size == 1 else "messages"
    sending = "running" if running else "stopped (start it: POST /api/v1/messages/start)"
    lines = [
        f"insider {__version__} is up",
        f"  API       {base_url}/api/v1/messages",
        f"  Dashboard {base_url}/",
        f"  Swagger   {base_url}/swagger",
        f"  Database  {database}",
        f"  Cache     {cache}",
        f"  Provider  {provider}",
        f"  Batches   {settings.batch_size} {noun} {every}",
        f"  Sending   {sending}",
    ]
    if settings.from_original:
        taken = "; ".join(f"{name} from {names}" for name, names in settings.from_original)
        lines.append(f"  Original  settings read from the Go service's names: {taken}")
    next_line = None
    if running and sender is not None:
        when, next_line = _next_batch(sender, now or datetime.now(UTC))
        lines.append(f"  Next      {when}")
    if pending == 0:
        auth = ' -H "Authorization: Bearer $INSIDER_API_TOKEN"' if settings.api_token else ""
        body = f'{{"to": "{EXAMPLE_PHONE}", "content": "{EXAMPLE_CONTENT}"}}'
        lines += [
            "Nothing is waiting to be sent. Add a message with either of:",
            f"  curl -X POST {base_url}/api/v1/messages -H 'Content-Type: application/json'{auth} -d '{body}'",
            f"  {command_settings(settings)}{python} -m insider enqueue --to {EXAMPLE_PHONE} "
            f"--content '{EXAMPLE_CONTENT}'",
        ]
        if mask_url(settings.database_url) != settings.database_url:
            lines.append("  (put the database password back in place of *** in INSIDER_DATABASE_URL)")
        if running and settings.send_interval_s > 0:
            if next_line is not None and not next_line.startswith("It goes"):
                lines.append(f"{next_line}; a message added now goes out with it.")
            else:
                lines.append(
                    f"It goes out with the next batch, at most {format_duration(settings.send_interval_s)} from now."
                )
    lines.append("Stop with Ctrl+C.")
    return "\n".join(lines)


async def _serve(settings: Settings) -> int:
    from insider.adapters.sqlite import is_sqlite_url
    from insider.container import Container, resolve
    from insider.domain import MessageStatus
    from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused
    from insider.web.app import create_app
    from insider.web.server import ServiceRunner

    if not is_sqlite_url(settings.database_url):
        from insider.adapters.postgres import wrong_url_reason

        # A URL that can never work fails the start now, with one line; a server that is
        # merely down does not (the service starts and waits for it).
        reason = await wrong_url_reason(settings.database_url)
        if reason is not None:
            print(f"insider: error: INSIDER_DATABASE_URL: {reason}", file=sys.stderr)
            return EXIT_USAGE
    container = Container(settings=settings)
    # The sender starts only once the listener is bound: a start that fails (the port is
    # taken) sends nothing and takes no rate slot.
    app = create_app(container, autostart=False, wait_for_schema=False)
    runner = ServiceRunner(app)
    try:
        await runner.setup()  # the lifespan opens the pools; the schema is applied in the background
    except SchemaUpgradeRefused as exc:  # the lifespan closed what it had opened
        return _schema_refused(exc)
    stop = asyncio.Event()
    _install_stop_signals(stop)
    try:
        port = await _listen(runner, settings.host, settings.port, names=" (INSIDER_HOST, INSIDER_PORT)")
        if port is None:
            return EXIT_FAILED
        base_url = f"http://{_display_host(settings.host)}:{port}"
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
            return _schema_refused(exc)
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
            settings, base_url=base_url, running=running, pending=pending, python=_python_command(), sender=sender
        )
        print(summary, file=sys.stderr, flush=True)
        _settle_heap()
        await stop.wait()
        log.info("shutting down", grace_s=settings.shutdown_timeout_s)
    finally:
        await runner.cleanup()  # stops the sender (in-flight sends get the grace period), closes pools
    return 0


async def _migrate(settings: Settings) -> int:
    from insider.container import Container, open_repository
    from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused

    _quiet_pool_retries()
    async with open_repository(Container(settings=settings)) as repository:
        try:
            await repository.migrate()
        except RepositoryUnavailable as exc:
            print(
                f"insider: error: the database does not answer (INSIDER_DATABASE_URL="
                f"{mask_url(settings.database_url)}): {exc}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        except SchemaUpgradeRefused as exc:
            return _schema_refused(exc)
    log.info("migrations applied", database=mask_url(settings.database_url))
    return 0


def _read_stdin_text() -> str | None:
    """All of stdin as UTF-8 text, without the final line break; None if it is not UTF-8."""
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.removesuffix("\n").removesuffix("\r")


def _not_storable(name: str, text: str) -> str | None:
    """Why a text argument cannot be stored: bytes that are not UTF-8 (kept by Python as surrogates), NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid UTF-8 text"
    if "\x00" in text:
        return f"{name} must not contain NUL characters"
    return None


async def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from insider.container import Container, open_repository
    from insider.domain import InvalidMessage, build_message, parse_rfc3339
    from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused

    to, content = args.to, args.content
    if content == "-":
        stdin_text = _read_stdin_text()
        if stdin_text is None:
            print("insider: error: invalid message: the content on stdin is not valid UTF-8 text", file=sys.stderr)
            return EXIT_FAILED
        content = stdin_text
    reason = _not_storable("to", to) or _not_storable("content", content)
    if reason is not None:
        print(f"insider: error: invalid message: {reason}", file=sys.stderr)
        return EXIT_FAILED
    times: dict[str, datetime | None] = {}
    for name, value in (("--send-at", args.send_at), ("--valid-until", args.valid_until)):
        try:
            times[name] = parse_rfc3339(value) if value is not None else None
        except ValueError as exc:
            print(f"insider: error: invalid message: {name} {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        message = build_message(
            to,
            content,
            send_at=times["--send-at"],
            priority=args.priority,
            valid_until=times["--valid-until"],
            now=datetime.now(UTC),
            max_length=settings.content_max_length,
            region=settings.default_region,
            max_segments=settings.max_segments,
        )
    except InvalidMessage as exc:  # worded as the API words it: the field is "to"
        reason = str(exc).replace("recipient_phone", "to")
        hint = " (INSIDER_CONTENT_MAX_LENGTH)" if "characters, over the limit" in reason else ""
        print(f"insider: error: invalid message: {reason}{hint}", file=sys.stderr)
        return EXIT_FAILED
    _quiet_pool_retries()
    async with open_repository(Container(settings=settings)) as repository:
        try:
            await repository.migrate()
            stored = (await repository.enqueue_many([message])).messages[0]
        except RepositoryUnavailable as exc:
            print(
                f"insider: error: the database does not answer (INSIDER_DATABASE_URL="
                f"{mask_url(settings.database_url)}): {exc}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        except SchemaUpgradeRefused as exc:
            return _schema_refused(exc)
    print(stored.id)
    return 0


async def _enqueue_file(settings: Settings, path: str, chunk_size: int, workers: int) -> int:
    from insider.bulk import BadFile, Limits, Progress, load_file, open_text
    from insider.container import Container, open_repository
    from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused

    try:
        stream = open_text(path)
    except OSError as exc:
        print(f"insider: error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    limits = Limits(settings.content_max_length, settings.default_region, settings.max_segments)
    started = time.monotonic()
    done = [0, 0]  # stored, rejected: for the error line

    def progress(step: Progress) -> None:
        for line in step.rejected:
            print(f"rejected {line}", flush=True)
        done[0], done[1] = step.stored, done[1] + len(step.rejected)
        rate = step.stored / max(time.monotonic() - started, 1e-9)
        print(f"insider: {step.stored:,} stored, {done[1]:,} rejected ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    _quiet_pool_retries()
    with stream:
        async with open_repository(Container(settings=settings)) as repository:
            try:
                await repository.migrate()
                stored, rejected = await load_file(
                    repository, stream, limits, chunk_size=chunk_size, workers=workers, on_progress=progress
                )
            except BadFile as exc:
                print(f"insider: error: {path}: {exc}", file=sys.stderr)
                return EXIT_FAILED
            except UnicodeDecodeError as exc:
                print(f"insider: error: {path} is not UTF-8 text ({exc.reason}); {done[0]} stored", file=sys.stderr)
                return EXIT_FAILED
            except RepositoryUnavailable as exc:
                print(f"insider: error: database unavailable after {done[0]} stored: {exc}", file=sys.stderr)
                return EXIT_FAILED
            except SchemaUpgradeRefused as exc:
                return _schema_refused(exc)
    print(f"stored {stored} messages, rejected {rejected} lines")
    return EXIT_FAILED if rejected else 0


async def _simulate(args: argparse.Namespace) -> int:
    import aiohttp
    from aiohttp import web

    from insider.simulator import (
        ReceiptOptions,
        ReceiptReporter,
        SimulatedProvider,
        SimulatorOptions,
        create_simulator_app,
        http_receipt_sink,
    )

    options = SimulatorOptions(
        latency_s=args.latency,
        fail_rate=args.fail_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after,
        auth_key=args.auth_key,
    )
    receipts = ReceiptOptions(delay_s=args.dlr_delay, undelivered_rate=args.undelivered_rate)
    session = aiohttp.ClientSession() if args.dlr_url else None
    reporter = (
        ReceiptReporter(http_receipt_sink(session, args.dlr_url, args.dlr_token), receipts)
        if session is not None
        else None
    )
    provider = SimulatedProvider(options, reporter=reporter)
    runner = web.AppRunner(create_simulator_app(provider), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    _install_stop_signals(stop)
    try:
        port = await _listen(runner, args.host, args.port)
        if port is None:
            return EXIT_FAILED
        base_url = f"http://{_display_host(args.host)}:{port}"
        low, high = options.latency_s
        latency = format_duration(low) if low == high else f"{format_duration(low)} to {format_duration(high)}"
        answers = [f"202 after {latency}"]
        if options.rate_limit_rate:
            retry_after = format_duration(float(math.ceil(options.retry_after_s)))
            answers.append(f"{options.rate_limit_rate:.0%} 429 (Retry-After {retry_after})")
        if options.fail_rate:
            answers.append(f"{options.fail_rate:.0%} 500")
        # The key itself is not printed: this block ends up in logs.
        key_hint = " INSIDER_WEBHOOK_AUTH_KEY=<the --auth-key>" if options.auth_key else ""
        log.info("simulator listening", url=f"{base_url}/webhook")
        print(
            "\n".join(
                [
                    f"insider {__version__} simulated SMS provider is up — nothing leaves this machine",
                    f"  Webhook   POST {base_url}/webhook (or POST {base_url}/)",
                    f"  Messages  GET {base_url}/messages",
                    f"  Health    GET {base_url}/healthz",
                    f"  Answers   {'; '.join(answers)}",
                    f"  Auth key  {'required (x-ins-auth-key)' if options.auth_key else 'not checked'}",
                    f"  Receipts  {_receipts_line(args.dlr_url, receipts)}",
                    f"Send to it: INSIDER_WEBHOOK_URL={base_url}/webhook{key_hint} {_python_command()} -m insider",
                    "Stop with Ctrl+C.",
                ]
            ),
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
        if reporter is not None:
            await reporter.aclose()
        if session is not None:
            await session.close()
    return 0


def _receipts_line(url: str | None, options: Any) -> str:
    if not url:
        return "none (--dlr-url URL posts a delivery receipt for each message)"
    low, high = options.delay_s
    delay = format_duration(low) if low == high else f"{format_duration(low)} to {format_duration(high)}"
    # The URL is shown without its query: a ?token= there is a secret.
    shown = urlunsplit(urlsplit(url)._replace(query="", fragment=""))
    return f"POST {shown} after {delay}, {options.undelivered_rate:.0%} undelivered"


# Allocations between two young-generation collections (CPython's default: 700). Each
# collection cost about as much whatever the count (130 µs at 700, 80 at 20,000 here), so at
# the default a drain spent 15 µs per message collecting, 3 µs at this threshold.
GC_YOUNG_THRESHOLD = 20_000


def _settle_heap() -> None:
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


def _run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run a long-lived command on uvloop where it is installed (it is, on Linux and macOS).

    uvloop's transports roughly halve the event loop's own cost per HTTP request, which
    is most of the sender's CPU time when it drains a backlog (docs/performance.md).
    Only the command line chooses the loop: an embedding program keeps its own.
    """
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the standard loop does the same work, slower
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _until_stopped(main: Coroutine[Any, Any, int]) -> int:
    """Run a command that serves until stopped: Ctrl+C during its start-up stops it quietly too.

    Once serving, SIGINT and SIGTERM are the command's own (a graceful stop, exit 0). Before
    its handlers are in place, asyncio turns Ctrl+C into KeyboardInterrupt, which printed a
    traceback; it now ends the same way, with whatever was opened closed on the way out.
    """
    try:
        return _run_fast(main)
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse exits with 2 itself on bad usage)."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"insider: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    for name in settings.ignored:  # an old .env must not stop the service, but it should be cleaned
        log.warning(f"{name} is ignored: {REMOVED[name.removeprefix('INSIDER_')]}", setting=name)
    command = args.command or "serve"
    if command == "serve" and settings.webhook_url:
        from insider.adapters.webhook import proxy_from_environment

        try:  # a proxy aiohttp cannot use would fail every send, or be skipped silently
            proxy_from_environment(settings.webhook_url)
        except ValueError as exc:
            print(f"insider: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if command == "simulate":
        return _until_stopped(_simulate(args))
    if command == "enqueue":
        usage: argparse.ArgumentParser = args.enqueue_parser
        if args.file is not None:
            if args.to is not None or args.content is not None:
                usage.error("--file goes without --to and --content")
            if args.chunk_size < 1:
                usage.error("--chunk-size must be at least 1")
            if args.workers < 0:
                usage.error("--workers must be 0 or more")
            return asyncio.run(_enqueue_file(settings, args.file, args.chunk_size, args.workers))
        if args.to is None or args.content is None:
            usage.error("--to and --content are required (or --file)")
        return asyncio.run(_enqueue(settings, args))
    if command == "migrate":
        return asyncio.run(_migrate(settings))
    return _until_stopped(_serve(settings))


if __name__ == "__main__":
    sys.exit(main())
