"""The enqueue command: one message from its options, or many from a CSV or JSON Lines file, without the API."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from contextlib import nullcontext
from datetime import UTC, datetime

from insider.bulk import Limits, Progress, Rejects, already_loaded, fix_rejects, load_file
from insider.cli.process import EXIT_FAILED, database_down, say, schema_refused
from insider.config import Settings
from insider.container import Container, open_repository
from insider.domain import InvalidMessage, build_message, parse_rfc3339
from insider.file_records import BadFile, FileSource, file_digest
from insider.ports import FileAlreadyLoaded, RepositoryUnavailable, SchemaUpgradeRefused
from insider.sending_hours import SendingHoursPolicy


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
        if args.rejects is not None and _same_file(args.rejects, args.file):
            usage.error("--rejects must name another file than --file")
        return asyncio.run(enqueue_file(settings, args))
    if args.rejects is not None or args.again or args.check:
        usage.error("--rejects, --again and --check go with --file")
    if args.to is None or args.content is None:
        usage.error("--to and --content are required (or --file)")
    return asyncio.run(enqueue_one(settings, args))


async def enqueue_one(settings: Settings, args: argparse.Namespace) -> int:
    """Check one message as the API does, store it (creating the schema if needed) and print its id."""
    to, content = args.to, args.content
    if content == "-":
        stdin_text = _read_stdin_text()
        if stdin_text is None:
            say("insider: error: invalid message: the content on stdin is not valid UTF-8 text")
            return EXIT_FAILED
        content = stdin_text
    reason = _not_storable("to", to) or _not_storable("content", content)
    if reason is not None:
        say(f"insider: error: invalid message: {reason}")
        return EXIT_FAILED
    times: dict[str, datetime | None] = {}
    for name, value in (("--send-at", args.send_at), ("--valid-until", args.valid_until)):
        try:
            times[name] = parse_rfc3339(value) if value is not None else None
        except ValueError as exc:
            say(f"insider: error: invalid message: {name} {exc}")
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
            category=args.category,
            footer=settings.commercial_footer,
            respect_sending_hours=not args.ignore_sending_hours,
            sending_hours=SendingHoursPolicy.from_settings(settings),
        )
    except InvalidMessage as exc:  # worded as the API words it: the field is "to"
        reason = str(exc).replace("recipient_phone", "to")
        if exc.field == "respectSendingHours":
            reason = "--ignore-sending-hours is for transactional messages only: commercial ones keep the sending hours"
        hint = " (INSIDER_CONTENT_MAX_LENGTH)" if "characters, over the limit" in reason else ""
        say(f"insider: error: invalid message: {reason}{hint}")
        return EXIT_FAILED
    async with open_repository(Container(settings=settings)) as repository:
        try:
            await repository.migrate()
            stored = (await repository.enqueue_many([message])).messages[0]
        except RepositoryUnavailable as exc:
            return database_down(settings.database_url, exc)
        except SchemaUpgradeRefused as exc:
            return schema_refused(exc)
    print(stored.id)
    return 0


async def enqueue_file(settings: Settings, args: argparse.Namespace) -> int:
    """Load a file's messages, all at once or none, printing progress and every rejected line; 1 if any was rejected."""
    path: str = args.file
    try:
        source = FileSource.open(path)
        # A file loaded before is refused before it is read (a stream is, at the end).
        digest = None if args.again or args.check else await asyncio.to_thread(file_digest, path)
    except OSError as exc:
        say(f"insider: error: cannot read {path}: {exc.strerror or exc}")
        return EXIT_FAILED
    try:
        rejects = Rejects.open(args.rejects) if args.rejects else None
    except OSError as exc:
        source.close()
        say(f"insider: error: cannot write {args.rejects}: {exc.strerror or exc}")
        return EXIT_FAILED
    limits = Limits(
        settings.content_max_length,
        settings.default_region,
        settings.max_segments,
        settings.commercial_footer,
        SendingHoursPolicy.from_settings(settings),
    )
    started = time.monotonic()
    rejected = 0

    def progress(step: Progress) -> None:
        nonlocal rejected
        for line in step.rejected:
            print(f"rejected {line}", flush=True)
        rejected += len(step.rejected)
        rate = step.staged / max(time.monotonic() - started, 1e-9)
        say(f"insider: {step.staged:,} ready, {rejected:,} rejected ({rate:,.0f}/s)")

    options = {"chunk_size": args.chunk_size, "workers": args.workers, "on_progress": progress}
    with source, rejects or nullcontext():
        if args.check:
            try:
                loaded = await load_file(None, source, limits, rejects=rejects, **options)
            except BadFile as exc:
                say(f"insider: error: {path}: {exc}")
                return EXIT_FAILED
            print(f"checked {loaded.stored} messages (nothing stored), rejected {loaded.rejected} lines")
            return EXIT_FAILED if loaded.rejected else 0
        async with open_repository(Container(settings=settings)) as repository:
            try:
                await repository.migrate()
                previous = await repository.loaded_file(digest) if digest is not None else None
                if previous is not None:
                    raise FileAlreadyLoaded(previous)
                loaded = await load_file(
                    repository, source, limits, name=path, again=args.again, rejects=rejects, **options
                )
            except BadFile as exc:
                say(f"insider: error: {path}: {exc}")
                return EXIT_FAILED
            except FileAlreadyLoaded as exc:
                say(f"insider: error: {already_loaded(path, exc.previous)}")
                return EXIT_FAILED
            except RepositoryUnavailable as exc:
                say(f"insider: error: database unavailable, nothing of {path} was stored: {exc}")
                return EXIT_FAILED
            except SchemaUpgradeRefused as exc:
                return schema_refused(exc)
    print(f"stored {loaded.stored} messages, rejected {loaded.rejected} lines")
    if loaded.rejected:
        say(f"insider: {fix_rejects(loaded.rejected, args.rejects)}")
    return EXIT_FAILED if loaded.rejected else 0


def _same_file(one: str, other: str) -> bool:
    """Whether two paths name one existing file (a rejects file must not overwrite its input)."""
    try:
        return other != "-" and os.path.samefile(one, other)
    except OSError:
        return False
