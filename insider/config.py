"""Typed settings from config/defaults.env, then .env, then the environment; clear errors."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from dotenv import dotenv_values

from insider.caps import CAP_ACTIONS, FrequencyCap, parse_frequency_cap
from insider.domain import Category, SendOrder, content_error, is_region
from insider.durations import format_duration as format_duration
from insider.durations import parse_duration as parse_duration
from insider.keywords import DEFAULT_OPT_IN, DEFAULT_OPT_OUT, Keywords, parse_keywords
from insider.sending_hours import SendingHours, parse_categories, parse_sending_hours, parse_timezone

if TYPE_CHECKING:
    from insider.providers.config import ProvidersConfig

PREFIX = "INSIDER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")


class ConfigError(ValueError):
    """A setting with a value that cannot be used; the message names the variable."""


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {value}")
        return value

    return parse


def _duration_at_least(low: float, *, allow_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = parse_duration(text)
        if value == 0 and allow_zero:
            return value
        if value < low or value == 0:
            raise ValueError(f"expected a duration above {low:g}s, got {text!r}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    return parse


def _url(*schemes: str, optional: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if not value and optional:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    return parse


def _database_url(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme == "sqlite":
        # sqlite:///relative.db (from the working directory) or sqlite:////absolute.db
        if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/") or len(parts.path) < 2:
            raise ValueError("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return value
    return _url("postgresql", "postgres", "sqlite")(value)


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """``INSIDER_ALLOWED_HOSTS``: a comma list of host names or addresses, ``.example.com`` for a
    domain and its subdomains, or ``*`` for any. Ports are not part of it: any port matches.
    Empty: the listen address, localhost, 127.0.0.1 and [::1] (see insider.web.guard).
    """
    hosts: list[str] = []
    for raw in text.split(","):
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        try:
            hosts.append(str(ipaddress.ip_address(bare)))
            continue
        except ValueError:
            pass
        labels = (bare[1:] if bare.startswith(".") else bare).split(".")
        if entry != "*" and not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise ValueError(
                "expected host names or addresses without a port (example.com, .example.com, 10.0.0.5, [::1]) "
                f"or *, got {raw.strip()!r}"
            )
        hosts.append(bare)
    return tuple(dict.fromkeys(hosts))


def _region(text: str) -> str:
    value = text.strip().upper()
    if value and not is_region(value):
        raise ValueError(f"expected an ISO 3166 country code such as TR, US or DE (or empty), got {text!r}")
    return value


def _text(text: str) -> str:
    return text.strip()


_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_value(text: str) -> str:
    value = text.strip()
    if _CONTROL.search(value):  # a line break would let the value write headers of its own
        raise ValueError("must not contain line breaks or other control characters (it is sent as an HTTP header)")
    return value


# name (without the prefix) -> (field, parser)
_PARSERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATABASE_URL": ("database_url", _database_url),
    "REDIS_URL": ("redis_url", _url("redis", "rediss", "unix", optional=True)),
    "REDIS_PREFIX": ("redis_prefix", _text),
    "REDIS_TTL": ("redis_ttl_s", _duration_at_least(1)),
    "REDIS_LIST": ("redis_list", _text),
    "WEBHOOK_URL": ("webhook_url", _url("http", "https", optional=True)),
    "WEBHOOK_AUTH_KEY": ("webhook_auth_key", _header_value),
    "WEBHOOK_TIMEOUT": ("webhook_timeout_s", _duration_at_least(0.001)),
    "PROVIDERS_FILE": ("providers_file", _text),
    "BATCH_SIZE": ("batch_size", _int_between(1, 10_000)),
    "SEND_INTERVAL": ("send_interval_s", _duration_at_least(0, allow_zero=True)),
    "SEND_CONCURRENCY": ("send_concurrency", _int_between(1, 1_000)),
    "CONTENT_MAX_LENGTH": ("content_max_length", _int_between(1, 100_000)),
    "MAX_SEGMENTS": ("max_segments", _int_between(0, 255)),
    "DEFAULT_REGION": ("default_region", _region),
    "COMMERCIAL_FOOTER": ("commercial_footer", _text),
    "SENDING_HOURS": ("sending_hours", parse_sending_hours),
    "SENDING_HOURS_FOR": ("sending_hours_for", parse_categories),
    "DEFAULT_TIMEZONE": ("default_timezone", parse_timezone),
    "OPT_OUT_KEYWORDS": ("opt_out_keywords", parse_keywords),
    "OPT_IN_KEYWORDS": ("opt_in_keywords", parse_keywords),
    "OPT_OUT_SCOPE": ("opt_out_scope", _choice("all", "commercial")),
    "OPT_OUT_REPLY": ("opt_out_reply", _text),
    "OPT_IN_REPLY": ("opt_in_reply", _text),
    "SEND_ORDER": ("send_order", _choice(*(o.value for o in SendOrder))),
    "COMMERCIAL_CAP": ("commercial_cap", parse_frequency_cap),
    "COMMERCIAL_CAP_ACTION": ("commercial_cap_action", _choice(*CAP_ACTIONS)),
    "AUTOSTART": ("autostart", parse_bool),
    "MAX_ATTEMPTS": ("max_attempts", _int_between(1, 1_000)),
    "RETRY_BACKOFF": ("retry_backoff_s", _duration_at_least(0.001)),
    "RETRY_BACKOFF_MAX": ("retry_backoff_max_s", _duration_at_least(0.001)),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout_s", _duration_at_least(0, allow_zero=True)),
    "DATABASE_STATEMENT_TIMEOUT": ("database_statement_timeout_s", _duration_at_least(0.001, allow_zero=True)),
    "DATABASE_KEEPALIVES_IDLE": ("database_keepalives_idle_s", _duration_at_least(1)),
    "DATABASE_KEEPALIVES_INTERVAL": ("database_keepalives_interval_s", _duration_at_least(1)),
    "DATABASE_KEEPALIVES_COUNT": ("database_keepalives_count", _int_between(1, 100)),
    "API_TOKEN": ("api_token", _text),
    "DLR_TOKEN": ("dlr_token", _text),
    "EVENTS_RETENTION": ("events_retention_s", _duration_at_least(60)),
    "HOST": ("host", _text),
    "ALLOWED_HOSTS": ("allowed_hosts", parse_allowed_hosts),
    "PORT": ("port", _int_between(0, 65_535)),
    "HTTP_HEADER_TIMEOUT": ("http_header_timeout_s", _duration_at_least(0.001)),
    "HTTP_BODY_TIMEOUT": ("http_body_timeout_s", _duration_at_least(0.001)),
    "LOG_LEVEL": ("log_level", _choice(*LOG_LEVELS)),
    "LOG_FORMAT": ("log_format", _choice(*LOG_FORMATS)),
}
# The test suite's own variables (INSIDER_TEST_DATABASE_URL, ...), not settings.
_TEST_PREFIX = PREFIX + "TEST_"
# Variables the loader itself reads, not settings.
_META = {"CONFIG_FILE"}
# Settings of earlier versions: accepted whatever their value, ignored, and named in one
# warning at start-up, so that an old .env does not stop the service.
REMOVED = {
    "WEBHOOK_CLIENT": "the setting was removed; aiohttp's HTTP client always carries the webhook (delete the variable)",
}


def variable_names() -> list[str]:
    """Every INSIDER_* variable the service reads: the settings, then the loader's own."""
    return [PREFIX + name for name in (*_PARSERS, *sorted(_META))]


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the service, parsed and checked.

    Build one with :func:`load_settings`, or directly when embedding.
    """

    database_url: str
    redis_url: str
    redis_prefix: str
    redis_ttl_s: float
    webhook_url: str
    webhook_auth_key: str
    webhook_timeout_s: float
    batch_size: int
    send_interval_s: float
    send_concurrency: int
    content_max_length: int
    autostart: bool
    max_attempts: int
    retry_backoff_s: float
    retry_backoff_max_s: float
    shutdown_timeout_s: float
    api_token: str
    host: str
    port: int
    log_level: str
    log_format: str
    # Last, with defaults, so that code building Settings by hand keeps working.
    # The Redis list the original Go service pushed each send to (its REDIS_KEY); empty: none.
    redis_list: str = ""
    # Settings taken from the original Go service's names: (INSIDER_* name, the names it came from).
    from_original: tuple[tuple[str, str], ...] = ()
    # Empty: the listen address, localhost, 127.0.0.1 and [::1]; ("*",): any host.
    allowed_hosts: tuple[str, ...] = ()
    http_header_timeout_s: float = 5.0
    http_body_timeout_s: float = 10.0
    # Removed settings that were set (names, INSIDER_ included), to be named in a warning.
    ignored: tuple[str, ...] = ()
    dlr_token: str = ""
    events_retention_s: float = 30 * 86400.0
    max_segments: int = 0
    default_region: str = ""
    send_order: str = SendOrder.OLDEST.value
    commercial_footer: str = ""  # appended to commercial messages (domain.text_as_sent)
    # The local hours messages of these categories may reach their recipient (None: any hour),
    # and the zone of a number with no known zone (see insider.sending_hours).
    sending_hours: SendingHours | None = None
    sending_hours_for: tuple[str, ...] = (Category.COMMERCIAL.value,)
    default_timezone: str = "UTC"
    # At most so many commercial messages to one number within a window, for the whole
    # deployment (None: no cap); one over it waits, or is suppressed (insider.caps).
    commercial_cap: FrequencyCap | None = None
    commercial_cap_action: str = "wait"
    # Replies of these words (insider.keywords) suppress their sender (scope all or commercial) or lift it,
    # and are answered with these confirmations (empty: none).
    opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT
    opt_in_keywords: tuple[str, ...] = DEFAULT_OPT_IN
    opt_out_scope: str = "all"
    opt_out_reply: str = ""
    opt_in_reply: str = ""

    # PostgreSQL only: a statement running longer is cancelled by the server (0: no limit),
    # and TCP keepalives find a connection whose peer has silently gone.
    database_statement_timeout_s: float = 30.0
    database_keepalives_idle_s: float = 30.0
    database_keepalives_interval_s: float = 10.0
    database_keepalives_count: int = 3
    # Several providers and their routes (a TOML file), read and checked when the settings are;
    # empty: the one provider of INSIDER_WEBHOOK_URL (or the built-in simulated one).
    providers_file: str = ""
    providers: ProvidersConfig | None = None

    @property
    def lease_s(self) -> float:
        """How long a claim holds: the sender's own rule (``SenderOptions.lease_s_for``) on these settings."""
        from insider.sender import lease_for
        from insider.supervisor import drain_lanes

        lanes = drain_lanes(self.send_interval_s)
        return lease_for(self.batch_size, self.send_concurrency, self.webhook_timeout_s, lanes)

    def __repr__(self) -> str:  # the auth key must never reach a log or a traceback
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["webhook_auth_key"] = "***" if self.webhook_auth_key else ""
        shown["api_token"] = "***" if self.api_token else ""
        shown["dlr_token"] = "***" if self.dlr_token else ""
        shown["database_url"] = mask_url(self.database_url)
        shown["redis_url"] = mask_url(self.redis_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


# libpq also takes the password as a query parameter: postgresql://host/db?password=...
_QUERY_PASSWORD = re.compile(r"(?i)(^|&)(password=)[^&]*")


def mask_url(url: str) -> str:
    """The URL with any password (in the user info or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: show nothing of it
        return "***" if url else ""
    masked_query = _QUERY_PASSWORD.sub(r"\1\2***", parts.query)
    if password is None and masked_query == parts.query:
        return url  # nothing to hide; urlunsplit would also turn sqlite:///x.db into sqlite:/x.db
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return urlunsplit(parts._replace(query=masked_query))


def default_config_file() -> Path:
    """``config/defaults.env`` of the source tree, or of the installed data files."""
    here = Path(__file__).resolve().parent.parent / "config" / "defaults.env"
    if here.is_file():
        return here
    return Path(sys.prefix) / "share" / "insider" / "config" / "defaults.env"


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = Path(".env"),
    defaults_file: Path | None = None,
) -> Settings:
    """Read the settings: defaults file, then ``.env``, then the environment wins.

    A setting not set by an INSIDER_* variable (in ``.env`` or the environment) is taken
    from the original Go service's names when those are set (see ORIGINAL_NAMES).
    Raises ConfigError naming the first variable with a bad value.
    """
    environ = os.environ if environ is None else environ
    if defaults_file is None:
        override = environ.get(PREFIX + "CONFIG_FILE")
        defaults_file = Path(override) if override else default_config_file()
    if not defaults_file.is_file():
        raise ConfigError(f"INSIDER_CONFIG_FILE: no defaults file at {defaults_file}")
    merged: dict[str, str] = {}
    user_set: set[str] = set()  # INSIDER_* names given a value in .env or the environment
    original: dict[str, str] = {}  # the original service's names with a value
    user_sources = [dotenv_values(env_file)] if env_file is not None and env_file.is_file() else []
    user_sources.append(dict(environ))
    for source in (dotenv_values(defaults_file), *user_sources):
        for key, value in source.items():
            # INSIDER_TEST_* belong to the test suite (README, Tests): ignored wherever they are set.
            if key.startswith(PREFIX) and not key.startswith(_TEST_PREFIX) and value is not None:
                merged[key] = value
    for source in user_sources:
        for key, value in source.items():
            if value is None or not value.strip():  # empty counts as unset, as the original read it
                continue
            if key.startswith(PREFIX):
                user_set.add(key)
            elif key in _ORIGINAL_VARIABLES:
                original[key] = value

    ignored = tuple(sorted(k for k in merged if k[len(PREFIX) :] in REMOVED))
    unknown = sorted(
        k for k in merged if k[len(PREFIX) :] not in _PARSERS and k[len(PREFIX) :] not in _META and k not in ignored
    )
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (see README.md, Configuration)")
    taken: dict[str, str] = {}  # INSIDER_* name -> the original's names it came from
    for name, (value, names) in _from_original(original).items():
        if PREFIX + name not in user_set:
            merged[PREFIX + name] = value
            taken[PREFIX + name] = names
    values: dict[str, Any] = {}
    for name, (field_name, parse) in _PARSERS.items():
        key = PREFIX + name
        if key not in merged:
            raise ConfigError(f"{key}: missing from {defaults_file}")
        try:
            values[field_name] = parse(merged[key])
        except ValueError as exc:
            raise ConfigError(f"{taken.get(key, key)}: {exc}") from None
    settings = Settings(**values, from_original=tuple(taken.items()), ignored=ignored)
    if settings.retry_backoff_max_s < settings.retry_backoff_s:
        raise ConfigError("INSIDER_RETRY_BACKOFF_MAX: must not be below INSIDER_RETRY_BACKOFF")
    _check_consent_replies(settings)
    if settings.providers_file:
        from insider.providers.config import Defaults, ProvidersFileError, load_providers_file

        defaults = Defaults(timeout_s=settings.webhook_timeout_s, concurrency=settings.send_concurrency)
        try:
            providers = load_providers_file(settings.providers_file, defaults)
        except ProvidersFileError as exc:
            raise ConfigError(f"INSIDER_PROVIDERS_FILE: {exc}") from None
        settings = replace(settings, providers=providers)
    return settings


def _check_consent_replies(settings: Settings) -> None:
    """No word both opts out and opts in; a confirmation is a message the sender would send."""
    try:
        Keywords(settings.opt_out_keywords, settings.opt_in_keywords)
    except ValueError as exc:
        raise ConfigError(f"INSIDER_OPT_IN_KEYWORDS: {exc} (also in INSIDER_OPT_OUT_KEYWORDS)") from None
    for name, text in (("OPT_OUT_REPLY", settings.opt_out_reply), ("OPT_IN_REPLY", settings.opt_in_reply)):
        problem = content_error(text, settings.content_max_length, settings.max_segments) if text else None
        if problem is not None:
            raise ConfigError(f"{PREFIX}{name}: {problem}")


# --- The original Go service's settings ------------------------------------------------------------

# Its .env names, by the INSIDER_* setting they stand for (read only when that one is unset).
# Those of a URL that are not set take the original's own defaults.
ORIGINAL_NAMES: dict[str, tuple[str, ...]] = {
    "DATABASE_URL": ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_SSLMODE"),
    "REDIS_URL": ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD"),
    "REDIS_LIST": ("REDIS_KEY",),
    "WEBHOOK_URL": ("SMS_HOST",),
    "SEND_INTERVAL": ("TICKER_PERIOD",),
    "HOST": ("SERVER_HOST",),
    "PORT": ("SERVER_PORT",),
}
# Also in its .env; accepted and not used (the name and version of its Swagger page).
ORIGINAL_IGNORED = ("APP_NAME", "APP_VERSION")
_ORIGINAL_VARIABLES = frozenset(name for names in ORIGINAL_NAMES.values() for name in names)
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# A Go duration (time.ParseDuration): an optional sign, then numbers with units, e.g. 1h2m3.5s.
_GO_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOST = re.compile(r"[A-Za-z0-9._~%-]+|\[?[0-9A-Fa-f:.]+\]?|/[^\s?#]*")


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration, as ``time.ParseDuration`` reads it: ``2m``, ``1m30s``, ``1h2m3.5s``, ``0``."""
    value = text.strip()
    sign, rest = (value[0], value[1:]) if value[:1] in ("+", "-") else ("", value)
    if rest == "0":
        return 0.0
    total, position = 0.0, 0
    while position < len(rest):
        match = _GO_DURATION_PART.match(rest, position)
        if not match or match.group(1) in ("", "."):
            raise ValueError(f"expected a Go duration such as 2m, 30s, 1m30s or 300ms, got {text!r}")
        total += float(match.group(1)) * _GO_UNIT_S[match.group(2)]
        position = match.end()
    if not rest or not math.isfinite(total):
        raise ValueError(f"expected a Go duration such as 2m, 30s, 1m30s or 300ms, got {text!r}")
    if sign == "-" and total > 0:
        raise ValueError(f"expected a duration of 0 or more, got {text!r}")
    return total


def _original_int(name: str, text: str, low: int, high: int) -> int:
    try:
        return _int_between(low, high)(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _original_host(name: str, text: str) -> str:
    host = text.strip()
    if not _HOST.fullmatch(host):
        raise ConfigError(f"{name}: expected a host name or address, got {text!r}")
    if host.startswith("/"):  # a directory of Unix sockets (libpq's host=/var/run/postgresql)
        return quote(host, safe="")
    return f"[{host.strip('[]')}]" if ":" in host else host


def _from_original(found: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The INSIDER_* values the original's variables stand for: name -> (value, the names used).

    Raises ConfigError naming the variable with a bad value.
    """
    out: dict[str, tuple[str, str]] = {}

    def get(name: str, default: str) -> str:
        return found.get(name, default).strip()

    def used(setting: str) -> str:
        return ", ".join(n for n in ORIGINAL_NAMES[setting] if n in found)

    if any(n in found for n in ORIGINAL_NAMES["DATABASE_URL"]):
        host = _original_host("DB_HOST", get("DB_HOST", "localhost"))
        port = _original_int("DB_PORT", get("DB_PORT", "5432"), 1, 65_535)
        sslmode = get("DB_SSLMODE", "disable")
        if sslmode not in _SSL_MODES:
            raise ConfigError(f"DB_SSLMODE: expected one of {', '.join(_SSL_MODES)}, got {sslmode!r}")
        user = quote(get("DB_USER", "insider"), safe="")
        # The password as given (spaces too), only URL-encoded.
        password = quote(found.get("DB_PASSWORD", "insider"), safe="")
        dbname = quote(get("DB_NAME", "insiderdb"), safe="")
        url = f"postgresql://{user}:{password}@{host}:{port}/{dbname}?sslmode={sslmode}"
        out["DATABASE_URL"] = (url, used("DATABASE_URL"))
    if any(n in found for n in ORIGINAL_NAMES["REDIS_URL"]):
        host = _original_host("REDIS_HOST", get("REDIS_HOST", "localhost"))
        if host.startswith("%2F"):
            raise ConfigError(f"REDIS_HOST: expected a host name or address, got {found['REDIS_HOST']!r}")
        port = _original_int("REDIS_PORT", get("REDIS_PORT", "6379"), 1, 65_535)
        db = _original_int("REDIS_DB", get("REDIS_DB", "0"), 0, 1_000_000)
        password = found.get("REDIS_PASSWORD", "")
        auth = f":{quote(password, safe='')}@" if password else ""
        out["REDIS_URL"] = (f"redis://{auth}{host}:{port}/{db}", used("REDIS_URL"))
    if "REDIS_KEY" in found:
        out["REDIS_LIST"] = (found["REDIS_KEY"], "REDIS_KEY")
    if "SMS_HOST" in found:
        out["WEBHOOK_URL"] = (found["SMS_HOST"], "SMS_HOST")
    if "TICKER_PERIOD" in found:
        try:
            seconds = parse_go_duration(found["TICKER_PERIOD"])
        except ValueError as exc:
            raise ConfigError(f"TICKER_PERIOD: {exc}") from None
        out["SEND_INTERVAL"] = (f"{seconds:.9f}", "TICKER_PERIOD")
    if "SERVER_HOST" in found:
        out["HOST"] = (found["SERVER_HOST"], "SERVER_HOST")
    if "SERVER_PORT" in found:
        out["PORT"] = (found["SERVER_PORT"], "SERVER_PORT")
    return out
