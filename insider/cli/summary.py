"""What the service prints once it is up: where it listens, what it uses, and how to give it work."""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from insider import __version__
from insider.cli.arguments import EXAMPLE_PHONE
from insider.config import ConfigError, Settings, format_duration, load_settings, mask_url

if TYPE_CHECKING:
    from insider.supervisor import SenderStatus

EXAMPLE_CONTENT = "Hello from insider"


def display_host(host: str) -> str:
    """The host of the URLs to show: a wildcard address is reached on the loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def python_command() -> str:
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
    from insider.adapters.sqlite import is_sqlite_url, sqlite_path  # not for `simulate`, which shares the helpers above

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
    if settings.sending_hours is not None:
        kinds = " and ".join(settings.sending_hours_for)
        lines.append(
            f"  Hours     {settings.sending_hours} at the recipient's local time for {kinds} messages "
            f"(a number with no known zone: {settings.default_timezone})"
        )
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
