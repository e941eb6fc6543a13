"""The providers file (INSIDER_PROVIDERS_FILE): named providers and the routes between them, checked whole.

The file is TOML, read with the standard library's ``tomllib``. A mistake is one
:class:`ProvidersFileError` whose text names the file, the line and the key
(``providers.toml:7: providers[1].rate: expected a number of messages per second > 0``).
tomllib gives lines for syntax errors only; for a key it is found where the key is
assigned inside its ``[[providers]]`` or ``[[routes]]`` block.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insider.config import parse_duration
from insider.domain import is_region

KINDS = ("webhook", "smpp")
STRATEGIES = ("failover", "weighted", "cheapest")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PREFIX = re.compile(r"\+[0-9]{1,15}")
# An alphanumeric SMPP source address holds at most 11 characters; a numeric one a whole number.
_SOURCE = re.compile(r"[A-Za-z0-9 ]{1,11}|\+?[0-9]{1,20}")
_CATEGORIES = ("transactional", "commercial")

_COMMON = {"name", "kind", "timeout", "concurrency", "rate", "price"} | {
    "breaker_failures",
    "breaker_cooldown",
    "breaker_ratio",
    "breaker_window",
    "breaker_min_calls",
    "breaker_probes",
}
_KEYS = {
    "webhook": _COMMON | {"url", "auth_key"},
    "smpp": _COMMON | {"host", "port", "system_id", "password", "system_type", "source", "window"},
}
_ROUTE_KEYS = {"name", "match", "strategy", "providers", "weights", "failover_on_ambiguous"}
_MATCH_KEYS = {"prefix", "region", "category", "priority"}


def _toml(value: object) -> str:
    """A value as the file would spell it (true, "text", 1.5), for an error line."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


class ProvidersFileError(ValueError):
    """A providers file that cannot be used; its text is one line naming the file, line and key."""


@dataclass(frozen=True, slots=True)
class Breaker:
    """When a provider's circuit breaker opens, and how it closes again."""

    failures: int = 5  # consecutive transport failures that open it
    cooldown_s: float = 30.0  # open, then half-open after this long
    ratio: float | None = None  # or: this share of failures over the window opens it
    window_s: float = 60.0
    min_calls: int = 20  # the ratio counts only with at least this many calls in the window
    probes: int = 1  # half-open: this many requests may try at once


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider, as configured."""

    name: str
    kind: str  # webhook or smpp
    timeout_s: float
    concurrency: int
    rate: float | None = None  # messages per second for the whole deployment; None: no limit of its own
    # ``concurrency`` set in the file holds for the whole deployment (each process a share of it);
    # left out, it is each process's own (INSIDER_SEND_CONCURRENCY).
    shared_concurrency: bool = False
    price: float | None = None  # per segment; None: unknown (last for `cheapest`)
    breaker: Breaker = field(default_factory=Breaker)
    # webhook
    url: str = ""
    auth_key: str = field(default="", repr=False)
    # smpp
    host: str = ""
    port: int = 2775
    system_id: str = ""
    password: str = field(default="", repr=False)
    system_type: str = ""
    source: str = ""
    window: int = 10


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A rule: which messages it takes, and the providers it names with a strategy."""

    name: str
    providers: tuple[str, ...]
    strategy: str = "failover"
    weights: tuple[int, ...] = ()
    prefixes: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    priorities: tuple[int, ...] = ()
    failover_on_ambiguous: bool = False

    @property
    def is_default(self) -> bool:
        """A route without ``match``: it takes whatever no other route takes."""
        return not (self.prefixes or self.regions or self.categories or self.priorities)


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    providers: tuple[ProviderSpec, ...]
    routes: tuple[RouteSpec, ...]
    source: str = ""  # the file it came from, or a description of the shorthand

    def provider(self, name: str) -> ProviderSpec:
        return next(p for p in self.providers if p.name == name)


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a provider that does not say takes (the service's own settings)."""

    timeout_s: float = 10.0
    concurrency: int = 8


class _Located:
    """Finds the line of a key inside the n-th ``[[table]]`` block of the file's text."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self._lines = text.splitlines()

    def _block(self, table: str, index: int) -> tuple[int, int]:
        header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        starts = [n for n, line in enumerate(self._lines) if header.match(line)]
        if index >= len(starts):
            return 0, len(self._lines)
        start = starts[index]
        following = re.compile(r"^\s*\[")
        end = next((n for n in range(start + 1, len(self._lines)) if following.match(self._lines[n])), len(self._lines))
        return start, end

    def error(self, table: str, index: int, key: str | None, reason: str) -> ProvidersFileError:
        start, end = self._block(table, index)
        line = start
        if key is not None:
            assignment = re.compile(rf"^\s*{re.escape(key)}\s*=")
            line = next((n for n in range(start, end) if assignment.match(self._lines[n])), start)
        where = f"{table}[{index}]" + (f".{key}" if key is not None else "")
        return ProvidersFileError(f"{self.path}:{line + 1}: {where}: {reason}")


def load_providers_file(path: str | Path, defaults: Defaults | None = None) -> ProvidersConfig:
    """Read and check a providers file; raises ProvidersFileError with one line naming file, line and key."""
    shown = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ProvidersFileError(f"{shown}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ProvidersFileError(f"{shown}:{line}: not UTF-8 text") from None
    return parse_providers(text, shown, defaults)


def parse_providers(text: str, path: str = "<providers>", defaults: Defaults | None = None) -> ProvidersConfig:
    """The providers and routes of a providers file's ``text``; ``path`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", message) or "not valid TOML"
        line = found.group(1) if found else "1"
        raise ProvidersFileError(f"{path}:{line}: not valid TOML: {reason}") from None
    locate = _Located(path, text)
    for key in data:
        if key not in ("providers", "routes"):
            raise ProvidersFileError(f"{path}:1: {key}: {_unknown(key, ('providers', 'routes'))}")
    entries = data.get("providers")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ProvidersFileError(f"{path}:1: providers: at least one [[providers]] table is needed")
    providers = tuple(_provider(locate, i, entry, defaults or Defaults()) for i, entry in enumerate(entries))
    names = [p.name for p in providers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise locate.error("providers", i, "name", f"{name!r} is the name of an earlier provider too")
    route_entries = data.get("routes", [])
    if not isinstance(route_entries, list) or not all(isinstance(e, dict) for e in route_entries):
        raise ProvidersFileError(f"{path}:1: routes: expected [[routes]] tables")
    routes = tuple(_route(locate, i, entry, names) for i, entry in enumerate(route_entries))
    if not any(route.is_default for route in routes):
        # Whatever no route takes goes to every provider in the file's order, as a failover.
        routes += (RouteSpec("default", tuple(names)),)
    return ProvidersConfig(providers, routes, path)


def _unknown(key: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1)
    return f"unknown key{f' (did you mean {near[0]!r}?)' if near else ''}"


def _provider(locate: _Located, index: int, entry: Mapping[str, Any], defaults: Defaults) -> ProviderSpec:
    def fail(key: str | None, reason: str) -> ProvidersFileError:
        return locate.error("providers", index, key, reason)

    kind = entry.get("kind", "webhook")
    if kind not in KINDS:
        raise fail("kind", f"expected one of {', '.join(KINDS)}, got {_toml(kind)}")
    for key in entry:
        if key not in _KEYS[kind]:
            raise fail(key, _unknown(key, sorted(_KEYS[kind])) + f" for a {kind} provider")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail("name", "a name of letters, digits, '-' and '_' (at most 64) is needed")
    values = _Values(entry, fail)
    common: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "timeout_s": values.duration("timeout", defaults.timeout_s, positive=True),
        "concurrency": values.integer("concurrency", defaults.concurrency, low=1, high=10_000),
        "shared_concurrency": "concurrency" in entry,
        "rate": values.number("rate", None, positive=True, what="messages per second"),
        "price": values.number("price", None, positive=False, what="a price per segment"),
        "breaker": Breaker(
            failures=values.integer("breaker_failures", 5, low=1, high=1_000_000),
            cooldown_s=values.duration("breaker_cooldown", 30.0, positive=True),
            ratio=_ratio(values),
            window_s=values.duration("breaker_window", 60.0, positive=True),
            min_calls=values.integer("breaker_min_calls", 20, low=1, high=1_000_000),
            probes=values.integer("breaker_probes", 1, low=1, high=1000),
        ),
    }
    if kind == "webhook":
        url = values.text("url", required=True)
        if not re.match(r"^https?://[^/\s]+", url):
            raise fail("url", f"expected an http:// or https:// URL, got {_toml(url)}")
        return ProviderSpec(**common, url=url, auth_key=values.text("auth_key", default=""))
    source = values.text("source", required=True)
    if not _SOURCE.fullmatch(source):
        raise fail("source", "expected up to 11 letters, digits and spaces, or a number of up to 20 digits")
    return ProviderSpec(
        **common,
        host=values.text("host", required=True),
        port=values.integer("port", 2775, low=1, high=65535),
        system_id=values.text("system_id", required=True),
        password=values.text("password", default=""),
        system_type=values.text("system_type", default=""),
        source=source,
        window=values.integer("window", 10, low=1, high=1000),
    )


def _ratio(values: _Values) -> float | None:
    ratio = values.number("breaker_ratio", None, positive=True, what="a share of failures")
    if ratio is not None and ratio > 1:
        raise values.fail("breaker_ratio", f"expected a share of failures between 0 and 1, got {_toml(ratio)}")
    return ratio


def _route(locate: _Located, index: int, entry: Mapping[str, Any], names: Sequence[str]) -> RouteSpec:
    def fail(key: str | None, reason: str) -> ProvidersFileError:
        return locate.error("routes", index, key, reason)

    for key in entry:
        if key not in _ROUTE_KEYS:
            raise fail(key, _unknown(key, sorted(_ROUTE_KEYS)))
    values = _Values(entry, fail)
    name = values.text("name", default=f"route {index + 1}")
    strategy = values.text("strategy", default="failover")
    if strategy not in STRATEGIES:
        raise fail("strategy", f"expected one of {', '.join(STRATEGIES)}, got {_toml(strategy)}")
    providers = entry.get("providers")
    if not isinstance(providers, list) or not providers or not all(isinstance(p, str) for p in providers):
        raise fail("providers", "expected a list of provider names, at least one")
    for provider in providers:
        if provider not in names:
            near = difflib.get_close_matches(provider, names, n=1)
            raise fail(
                "providers", f"no provider is named {provider!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            )
    if len(set(providers)) != len(providers):
        raise fail("providers", "a provider is named twice")
    weights: tuple[int, ...] = ()
    if "weights" in entry:
        raw = entry["weights"]
        if strategy != "weighted":
            raise fail("weights", 'weights go with strategy = "weighted" only')
        if (
            not isinstance(raw, list)
            or len(raw) != len(providers)
            or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= 1_000_000 for w in raw)
            or not any(raw)
        ):
            raise fail("weights", f"expected {len(providers)} whole numbers, one per provider, not all 0")
        weights = tuple(raw)
    elif strategy == "weighted":
        raise fail("strategy", "a weighted route needs weights = [...], one per provider")
    match = entry.get("match", {})
    if not isinstance(match, dict):
        raise fail("match", 'expected a table such as { prefix = ["+90"] }')
    for key in match:
        if key not in _MATCH_KEYS:
            raise fail("match", f"{key}: {_unknown(key, sorted(_MATCH_KEYS))}")
    prefixes = _strings(match.get("prefix", []), lambda p: bool(_PREFIX.fullmatch(p)))
    if prefixes is None:
        raise fail("match", 'prefix: expected E.164 prefixes such as "+90" or ["+90", "+44"]')
    regions = _strings(match.get("region", []), lambda r: is_region(r.upper()))
    if regions is None:
        raise fail("match", 'region: expected ISO 3166 country codes such as "TR" or ["TR", "GB"]')
    categories = _strings(match.get("category", []), lambda c: c in _CATEGORIES)
    if categories is None:
        raise fail("match", f"category: expected {' or '.join(_CATEGORIES)}, or a list of them")
    priorities = match.get("priority", [])
    if isinstance(priorities, int) and not isinstance(priorities, bool):
        priorities = [priorities]
    if not isinstance(priorities, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 9 for p in priorities
    ):
        raise fail("match", "priority: expected a priority 0 to 9, or a list of them")
    failover_on_ambiguous = entry.get("failover_on_ambiguous", False)
    if not isinstance(failover_on_ambiguous, bool):
        raise fail("failover_on_ambiguous", "expected true or false")
    return RouteSpec(
        name=name,
        providers=tuple(providers),
        strategy=strategy,
        weights=weights,
        prefixes=tuple(prefixes),
        regions=tuple(r.upper() for r in regions),
        categories=tuple(categories),
        priorities=tuple(priorities),
        failover_on_ambiguous=failover_on_ambiguous,
    )


def _strings(value: Any, valid: Any) -> list[str] | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and valid(v) for v in items):
        return None
    return list(items)


class _Values:
    """Typed reads of one table's keys, each failing with the key's own line."""

    def __init__(self, entry: Mapping[str, Any], fail: Any) -> None:
        self._entry = entry
        self.fail = fail

    def text(self, key: str, *, default: str | None = None, required: bool = False) -> str:
        value = self._entry.get(key, default)
        if value is None or (required and value == ""):
            raise self.fail(key if key in self._entry else None, f"{key} is needed")
        if not isinstance(value, str) or "\x00" in value:
            raise self.fail(key, "expected a string")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self._entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected a whole number from {low} to {high}, got {_toml(value)}")
        return value

    def number(self, key: str, default: float | None, *, positive: bool, what: str) -> float | None:
        value = self._entry.get(key, default)
        if value is None:
            return None
        valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not valid or value < 0 or (positive and value == 0):
            raise self.fail(key, f"expected {what}, a number {'> 0' if positive else '>= 0'}, got {_toml(value)}")
        return float(value)

    def duration(self, key: str, default: float, *, positive: bool) -> float:
        value = self._entry.get(key, default)
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
        except ValueError:
            raise self.fail(
                key, f"expected seconds (10, 0.5) or a duration (500ms, 30s, 2m), got {_toml(value)}"
            ) from None
        if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
            raise self.fail(key, f"expected a duration > 0, got {_toml(value)}")
        return seconds
