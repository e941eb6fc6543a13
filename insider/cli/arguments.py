"""The command line's arguments: one parser for every command, and the types that check their values."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from insider import __version__
from insider.config import parse_duration

EXAMPLE_PHONE = "+15555550100"  # a number reserved for fiction
SIMULATOR_PORT = 9090  # where `simulate` listens by default

N = TypeVar("N", int, float)


def _number(convert: Callable[[str], N], low: N, high: N, what: str) -> Callable[[str], N]:
    """An argument's type: a number from ``low`` to ``high``; anything else is "expected <what>"."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_rate = _number(float, 0.0, 1.0, "a fraction from 0 to 1")
_port = _number(int, 0, 65_535, "a port from 0 to 65535")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fault(text: str) -> str:
    """A fault mode, checked here and read by the command (a throttle's Retry-After defaults to --retry-after)."""
    from insider.simulator_control import FaultError, parse_fault  # aiohttp's server, for this command only

    try:
        parse_fault(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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


# smpp34's server cannot say which port it was given: the SMSC needs one of its own.
_smpp_port = _number(int, 1, 65_535, "a port from 1 to 65535 (the SMSC cannot report a port chosen for it)")


def parser() -> argparse.ArgumentParser:
    """The parser of ``python -m insider`` and its commands."""
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
        "--category",
        default="transactional",
        help="transactional (the default: codes, order updates) or commercial (marketing); "
        "a file's lines name their own",
    )
    enqueue.add_argument(
        "--ignore-sending-hours",
        action="store_true",
        help="a transactional message that may go at any hour, outside INSIDER_SENDING_HOURS (the API's "
        '"respectSendingHours": false; refused for a commercial one)',
    )
    enqueue.add_argument(
        "--file",
        help="load many messages: CSV with the header to,content[,sendAt,priority,validUntil,category] and "
        "optionally respectSendingHours (true or false), or JSON Lines "
        "with those fields; - reads standard input. Prints a progress line, what was stored and every "
        "rejected line with its number. The valid lines are stored together at the end, or none; the same "
        "file is loaded once (see --again)",
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
        "--chunk-size", type=int, default=10_000, help="lines checked and staged at a time with --file (default 10000)"
    )
    enqueue.add_argument(
        "--rejects",
        metavar="PATH",
        help="with --file: write the rejected lines to PATH as the file had them (with the CSV header), "
        "to fix them there and load that file alone",
    )
    enqueue.add_argument(
        "--again",
        action="store_true",
        help="with --file: load a file that was loaded before (the same bytes), queuing its messages once more",
    )
    enqueue.add_argument(
        "--check", action="store_true", help="with --file: check every line and report, storing nothing"
    )
    suppressions = commands.add_parser(
        "suppressions",
        help="import or export the suppression list as CSV",
        description="The suppression list (numbers not to send to) in INSIDER_DATABASE_URL, as CSV with the "
        "header to,scope,reason,source,createdAt (creating the schema if needed).",
    )
    suppressions.set_defaults(suppressions_parser=suppressions)
    actions = suppressions.add_subparsers(dest="suppressions_command", metavar="ACTION", title="actions")
    imports = actions.add_parser(
        "import",
        help="put a CSV file's numbers on the list",
        description="Put the numbers of a CSV file on the suppression list. The header names the column to "
        "(required) and any of scope (all, the default, or commercial), reason (default opt-out), source "
        "(default import) and createdAt (RFC 3339; default now): an export reads back as it was. A number "
        "already on the list gets the line's scope, reason and source. Prints every rejected line with its "
        "number; the good lines are stored together, in one transaction. Exit code 1 if a line was rejected.",
    )
    imports.add_argument("file", metavar="FILE", help="the CSV file; - reads standard input")
    exports = actions.add_parser(
        "export",
        help="write the list as CSV",
        description="Write the whole suppression list as CSV (to,scope,reason,source,createdAt), most recently "
        "added first.",
    )
    exports.add_argument("file", metavar="FILE", nargs="?", default="-", help="where to write it (default -: stdout)")
    simulate = commands.add_parser(
        "simulate",
        help="run a simulated SMS provider (an HTTP server like the webhook)",
        description="Run an HTTP server that answers like the provider's webhook: POST / or /webhook with "
        '{"to", "content"} gets 202 and a messageId (the same one again for a repeated Idempotency-Key). '
        "GET /messages lists what it accepted, GET /healthz says it is up. With --dlr-url, it posts a delivery "
        "receipt for each accepted message to that URL, like a real provider. With --smpp-port, an SMSC too. "
        "Nothing leaves this machine.",
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
    simulate.add_argument(
        "--fault",
        type=_fault,
        default=None,
        metavar="MODE",
        help="start misbehaving: down (connections refused; needs --control-port), hang (no answer), slow:5s "
        "(every answer after that long), error or error:STATUS (every request answered 503 or STATUS), throttle "
        "or throttle:2s (every request answered 429 with that Retry-After, default --retry-after). "
        "POST /simulator/mode switches it at run time (default: up, answering as the options above say)",
    )
    simulate.add_argument(
        "--control-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="also serve GET /simulator, POST /simulator/mode (/down, /up), /messages and /healthz on this port, "
        "which stays up while the webhook's port is down (needed for down)",
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
    simulate.add_argument(
        "--smpp-port",
        type=_smpp_port,
        default=None,
        metavar="PORT",
        help="also run a simulated SMSC (SMPP 3.4) on this port, beside the HTTP provider: it answers submit_sm "
        "as --latency, --fail-rate (ESME_RSYSERR) and --rate-limit-rate (ESME_RTHROTTLED) say, and sends each "
        "receipt asked for as a deliver_sm after --dlr-delay (--undelivered-rate undelivered). "
        "POST /smsc/down on the HTTP port refuses binds, POST /smsc/up takes them again",
    )
    simulate.add_argument(
        "--smpp-system-id",
        default="",
        metavar="ID",
        help="with --smpp-port: only binds with this system_id are kept (default: any; the password is not checked)",
    )
    return parser
