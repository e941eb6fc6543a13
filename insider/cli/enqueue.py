"""The enqueue command: one message from its options, or many from a CSV or JSON Lines file, without the API."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

from insider.bulk import BadFile, Limits, Progress, load_file, open_text
from insider.cli.process import EXIT_FAILED, quiet_pool_retries, schema_refused
from insider.config import Settings, mask_url
from insider.container import Container, open_repository
from insider.domain import InvalidMessage, build_message, parse_rfc3339
from insider.ports import RepositoryUnavailable, SchemaUpgradeRefused


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


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Store one message (--to, --content) or a file's (--file); the exit code (usage errors exit with 2)."""
    usage: argparse.ArgumentParser = args.enqueue_parser
    if args.file is not None:
        if args.to is not None or args.content is not None:
            usage.error("--file goes without --to and --content")
        if args.chunk_size < 1:
            usage.error("--chunk-size must be at least 1")
        if args.workers < 0:
            usage.error("--workers must be 0 or more")
        return asyncio.run(enqueue_file(settings, args.file, args.chunk_size, args.workers))
    if args.to is None or args.content is None:
        usage.error("--to and --content are required (or --file)")
    return asyncio.run(enqueue_one(settings, args))


async def enqueue_one(settings: Settings, args: argparse.Namespace) -> int:
    """Check one message as the API does, store it (creating the schema if needed) and print its id."""
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
    quiet_pool_retries()
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
            return schema_refused(exc)
    print(stored.id)
    return 0


async def enqueue_file(settings: Settings, path: str, chunk_size: int, workers: int) -> int:
    """Load a file's messages in chunks, printing progress and every rejected line; 1 if any was rejected."""
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

    quiet_pool_retries()
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
                return schema_refused(exc)
    print(f"stored {stored} messages, rejected {rejected} lines")
    return EXIT_FAILED if rejected else 0
