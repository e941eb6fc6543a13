"""The command line, one module per command: main() reads the settings, picks the command and returns its exit code."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from insider.cli.arguments import parser
from insider.cli.process import EXIT_USAGE, say
from insider.config import REMOVED, ConfigError, Settings, load_settings
from insider.logs import get_logger, process_logging

log = get_logger("insider")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse exits with 2 itself on bad usage)."""
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        say(f"insider: error: {exc}")
        return EXIT_USAGE
    # The process's logging is the command line's alone (an embedding program keeps its own):
    # set up here, and every line written before main() returns.
    with process_logging(settings.log_level, settings.log_format):
        return _run(args, settings)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    for name in settings.ignored:  # an old .env must not stop the service, but it should be cleaned
        log.warning(f"{name} is ignored: {REMOVED[name.removeprefix('INSIDER_')]}", setting=name)
    # Each command's module is imported only when it runs: --help and --version stay quick.
    command = args.command or "serve"
    if command == "simulate":
        from insider.cli import simulate

        return simulate.run(args)
    if command == "enqueue":
        from insider.cli import enqueue

        return enqueue.run(settings, args)
    if command == "suppressions":
        from insider.cli import suppressions

        return suppressions.run(settings, args)
    if command == "migrate":
        from insider.cli import migrate

        return migrate.run(settings)
    from insider.cli import serve

    return serve.run(settings)
