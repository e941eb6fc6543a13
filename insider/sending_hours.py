"""Sending hours: when a message may reach a recipient, by the local time of its number's zones."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

from insider.consent import SENDING_HOURS, Verdict, Wait
from insider.domain import CATEGORIES, Category, Message, NewMessage

if TYPE_CHECKING:
    from collections.abc import Iterable

    from insider.config import Settings

# How far ahead a moment allowed in all of a number's zones is looked for; with none in
# that time (a window narrower than the spread of the zones), the default zone decides.
HORIZON: Final = timedelta(days=7)
# What libphonenumber answers for a number it knows no zone of (the fictional +1555...).
UNKNOWN_ZONE: Final = "Etc/Unknown"
_DAY_MIN: Final = 24 * 60
_WINDOW: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_WINDOW_EXAMPLE: Final = "HH:MM-HH:MM such as 08:00-21:00 or 22:00-06:00"


@dataclass(frozen=True, slots=True)
class SendingHours:
    """A daily window of local time, ``start`` included and ``end`` excluded, in minutes of the day.

    ``start`` is 0 to 1439 and ``end`` 1 to 1440 (``24:00``); ``end`` below ``start`` is a
    window crossing midnight (``22:00-06:00``). ``00:00-24:00`` is the whole day.
    """

    start_min: int
    end_min: int

    def __post_init__(self) -> None:
        if not (0 <= self.start_min < _DAY_MIN and 0 < self.end_min <= _DAY_MIN) or self.start_min == self.end_min:
            raise ValueError(f"not a window: {self.start_min} to {self.end_min} minutes")

    @property
    def whole_day(self) -> bool:
        return self.start_min == 0 and self.end_min == _DAY_MIN

    def allows(self, local: datetime) -> bool:
        """Whether the wall-clock time of ``local`` lies in the window (boundaries are whole minutes)."""
        minute = local.hour * 60 + local.minute
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def __str__(self) -> str:
        return f"{_hhmm(self.start_min)}-{_hhmm(self.end_min)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_sending_hours(text: str) -> SendingHours | None:
    """``INSIDER_SENDING_HOURS``: ``HH:MM-HH:MM`` (``24:00`` only as the end), or empty for none.

    ValueError saying why for anything else, and for a window that starts where it ends.
    """
    if not text.strip():
        return None
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"expected {_WINDOW_EXAMPLE} (or empty for none), got {text!r}")
    start_h, start_m, end_h, end_m = (int(g) for g in match.groups())
    if start_h > 23 or start_m > 59 or end_m > 59 or end_h > 24 or (end_h == 24 and end_m):
        raise ValueError(f"expected times from 00:00 to 23:59 (24:00 as the end), got {text!r}")
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start == end % _DAY_MIN and not (start == 0 and end == _DAY_MIN):
        raise ValueError(
            f"the window starts where it ends ({text.strip()!r}): write 00:00-24:00 for the whole day, "
            "or leave it empty for no sending hours"
        )
    return SendingHours(start, end or _DAY_MIN)  # ending at 00:00 is ending at midnight, 24:00


def parse_categories(text: str) -> tuple[str, ...]:
    """``INSIDER_SENDING_HOURS_FOR``: a comma list of categories (at least one), in :data:`CATEGORIES` order."""
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(CATEGORIES))
    if unknown or not names:
        shown = repr(unknown[0]) if unknown else "nothing"
        raise ValueError(f"expected a comma list of {', '.join(CATEGORIES)}, got {shown}")
    return tuple(c for c in CATEGORIES if c in names)


def parse_timezone(text: str) -> str:
    """``INSIDER_DEFAULT_TIMEZONE``: an IANA time zone name zoneinfo knows (``Europe/Istanbul``, ``UTC``)."""
    name = text.strip()
    if load_zone(name) is None:
        raise ValueError(f"expected an IANA time zone such as Europe/Istanbul, America/New_York or UTC, got {text!r}")
    return name


def load_zone(name: str) -> ZoneInfo | None:
    """The zone named ``name``, or None when zoneinfo (the system's or the tzdata package's) has none.

    zoneinfo keeps the zones it has loaded, so asking again is cheap.
    """
    if not name or name == UNKNOWN_ZONE:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # unknown, malformed, or a directory's name
        return None


def number_zones(phone_e164: str) -> tuple[str, ...]:
    """The time zones libphonenumber places ``phone_e164`` in (by its prefix), those zoneinfo knows.

    Empty for a number with no known zone (``Etc/Unknown``, such as the fictional ``+1555...``)
    or one that does not parse: the caller's default zone applies.
    """
    try:
        parsed = phonenumbers.parse(phone_e164, None)
    except phonenumbers.NumberParseException:
        return ()
    names = phone_timezones.time_zones_for_number(parsed)
    return tuple(name for name in names if load_zone(name) is not None)


@dataclass(frozen=True, slots=True)
class Decision:
    """When a message to a number may go: ``until`` None means now; ``zones`` are the zones it was judged in."""

    until: datetime | None
    zones: tuple[str, ...]
    # Why the default zone decided, when it did (then ``zones`` is the default zone alone):
    # the number has no known zone, or its zones share no allowed moment within HORIZON.
    fallback: str | None = None
    at: datetime | None = None  # the moment judged


NO_ZONE: Final = "no known zone"
NO_COMMON_HOUR: Final = "no common sending hour in its zones"


def decide(
    phone_e164: str, at: datetime, window: SendingHours, default_tz: str, *, zones: tuple[str, ...] | None = None
) -> Decision:
    """When a message to ``phone_e164``, due ``at`` (aware), may go under ``window``.

    The moment must lie in the window in every zone of the number (a country or a toll-free
    range spanning several zones is sent to only when the hour is allowed in all of them). A
    number with no known zone follows ``default_tz``; so does one whose zones share no allowed
    moment within :data:`HORIZON`. Local times come from zoneinfo, so daylight saving time is
    exact: a window opening at a time a clock skips opens when the clock jumps past it.
    ``zones``: the number's zones when the caller knows them (:func:`number_zones`).
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    own = number_zones(phone_e164) if zones is None else zones
    if window.whole_day:
        return Decision(None, own or (default_tz,), fallback=None if own else NO_ZONE, at=at)
    if own:
        found = _earliest(tuple(_zone(n) for n in own), at, window)
        if found is not None:
            return Decision(None if found == at else found, own, at=at)
    found = _earliest((_zone(default_tz),), at, window)
    if found is None:  # cannot happen: a window in one zone opens within a day or two
        raise AssertionError(f"no moment in {window} in {default_tz} within {HORIZON}")
    fallback = NO_COMMON_HOUR if own else NO_ZONE
    return Decision(None if found == at else found, (default_tz,), fallback=fallback, at=at)


def next_allowed(phone_e164: str, at: datetime, window: SendingHours, default_tz: str) -> datetime | None:
    """The first moment from ``at`` a message to ``phone_e164`` may go, or None when it may go at ``at``.

    See :func:`decide` for the rule.
    """
    return decide(phone_e164, at, window, default_tz).until


def _zone(name: str) -> tzinfo:
    zone = load_zone(name)
    if zone is None:
        raise ValueError(f"unknown time zone {name!r}")
    return zone


def _allowed(window: SendingHours, zones: tuple[tzinfo, ...], when: datetime) -> bool:
    return all(window.allows(when.astimezone(zone)) for zone in zones)


def _earliest(zones: tuple[tzinfo, ...], at: datetime, window: SendingHours) -> datetime | None:
    """The first moment from ``at`` (itself included) within HORIZON allowed in every zone, or None.

    Being allowed changes only where a zone's clock reaches the window's start or where it
    jumps (a daylight saving change), so the earliest allowed moment is ``at`` or one of those.
    """
    at = at.astimezone(UTC)
    if _allowed(window, zones, at):
        return at
    last = at + HORIZON
    moments: set[datetime] = set()
    for zone in zones:
        moments.update(_openings(zone, at, last, window.start_min))
        moments.update(_jumps(zone, at, last))
    for moment in sorted(m for m in moments if at < m <= last):
        if _allowed(window, zones, moment):
            return moment
    return None


def _openings(zone: tzinfo, first: datetime, last: datetime, start_min: int) -> list[datetime]:
    """The moments (UTC) from ``first`` to ``last`` at which the clock of ``zone`` shows ``start_min``.

    A time shown twice (the hour repeated when clocks go back) gives both; a time skipped gives none.
    """
    found = []
    day = first.astimezone(zone).date() - timedelta(days=1)
    end_day = last.astimezone(zone).date() + timedelta(days=1)
    wall = time(start_min // 60, start_min % 60)
    while day <= end_day:
        naive = datetime.combine(day, wall)
        for fold in (0, 1):
            moment = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
            if moment.astimezone(zone).replace(tzinfo=None) == naive:  # the clock does show it
                found.append(moment)
        day += timedelta(days=1)
    return found


def _jumps(zone: tzinfo, first: datetime, last: datetime) -> list[datetime]:
    """The moments (UTC, to the second) from ``first`` to ``last`` at which ``zone`` changes its offset.

    Looked at once a day (zones change at most a few times a year), then narrowed by halving.
    """
    found = []
    step = timedelta(days=1)
    low = first
    while low < last:
        high = min(low + step, last)
        if low.astimezone(zone).utcoffset() != high.astimezone(zone).utcoffset():
            found.append(_jump_between(zone, low, high))
        low = high
    return found


def _jump_between(zone: tzinfo, low: datetime, high: datetime) -> datetime:
    """The first second after ``low`` with the offset ``high`` has (one change between them)."""
    after = high.astimezone(zone).utcoffset()
    lo, hi = 0, int((high - low).total_seconds())  # offset(low + lo) differs, offset(low + hi) matches
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (low + timedelta(seconds=mid)).astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return low + timedelta(seconds=hi)


def describe(decision: Decision, window: SendingHours) -> str:
    """Why a message waits, for its history and logs: the window, the zones, and when it may go."""
    zones = decision.zones
    one = _zone(zones[0]) if len(zones) == 1 else None  # one clock: say what it shows
    if one is not None and decision.at is not None:
        where = f": {decision.at.astimezone(one):%H:%M} in {zones[0]}"
    elif len(zones) <= 3:
        where = f" in {', '.join(zones)}"
    else:
        where = f" in all {len(zones)} zones of the number ({zones[0]} ... {zones[-1]})"
    if decision.fallback:
        where += f" (the default time zone: {decision.fallback})"
    if decision.until is None:
        return f"inside the sending hours {window}{where}"
    when = decision.until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if one is not None:
        when += f" ({decision.until.astimezone(one):%H:%M} there)"
    return f"outside the sending hours {window}{where}; may go at {when}"


class SendingHoursPolicy:
    """One deployment's sending hours: the window, the categories it holds, the default zone.

    Keeps each number's zones (up to ``cache_size`` numbers), so a batch or a file of messages
    to the same numbers asks libphonenumber once per number, and each decision for a set of
    zones and a moment, so a batch claimed (or a file read) at one moment decides once per set.
    """

    def __init__(
        self, window: SendingHours, categories: Iterable[str], default_tz: str, *, cache_size: int = 65_536
    ) -> None:
        self.window = window
        self.categories = frozenset(categories)
        self.default_tz = parse_timezone(default_tz)
        self._zones: dict[str, tuple[str, ...]] = {}
        self._decisions: dict[tuple[tuple[str, ...], datetime], Decision] = {}
        self._cache_size = cache_size

    @classmethod
    def from_settings(cls, settings: Settings) -> SendingHoursPolicy | None:
        """The policy INSIDER_SENDING_HOURS sets up, or None when it is empty (any hour)."""
        if settings.sending_hours is None:
            return None
        return cls(settings.sending_hours, settings.sending_hours_for, settings.default_timezone)

    def applies(self, category: str, respect_sending_hours: bool = True) -> bool:
        """Whether a message of ``category`` keeps the hours. Only a transactional one may opt out:
        a commercial message keeps them whatever its flag says (one written by another program)."""
        if category not in self.categories:
            return False
        return respect_sending_hours or category != Category.TRANSACTIONAL

    def zones(self, phone_e164: str) -> tuple[str, ...]:
        """:func:`number_zones`, kept per number."""
        found = self._zones.get(phone_e164)
        if found is None:
            if len(self._zones) >= self._cache_size:
                del self._zones[next(iter(self._zones))]  # the oldest
            found = self._zones[phone_e164] = number_zones(phone_e164)
        return found

    def decide(self, phone_e164: str, at: datetime) -> Decision:
        """When a message to ``phone_e164`` due ``at`` may go (see :func:`decide`)."""
        zones = self.zones(phone_e164)
        key = (zones, at)
        found = self._decisions.get(key)
        if found is None:
            if len(self._decisions) >= self._cache_size:
                del self._decisions[next(iter(self._decisions))]
            found = self._decisions[key] = decide(phone_e164, at, self.window, self.default_tz, zones=zones)
        return found

    def describe(self, decision: Decision) -> str:
        return describe(decision, self.window)

    def hold(self, message: NewMessage, now: datetime) -> NewMessage:
        """``message`` marked to wait (``wait_until``, ``wait_reason``) when it keeps the sending hours and
        is due (at its ``send_at``, or ``now``) outside them; otherwise ``message`` itself.

        Stored so, it shows when it may go from enqueue on, and the claim does not read it before.
        """
        if not self.applies(message.category, message.respect_sending_hours):
            return message
        due = max(message.send_at, now) if message.send_at is not None else now
        decision = self.decide(message.recipient_phone, due)
        if decision.until is None:
            return message
        return replace(message, wait_until=decision.until, wait_reason=SENDING_HOURS)


class SendingHoursGate:
    """The consent gate of sending hours: a claimed message that keeps them and is outside them now
    waits until they open (:class:`insider.consent.Wait`, reason ``sending-hours``), its history
    saying which window, which zones, and until when."""

    def __init__(self, policy: SendingHoursPolicy) -> None:
        self.policy = policy

    async def judge(self, messages: Sequence[Message], now: datetime) -> dict[int, Verdict]:
        held: dict[int, Verdict] = {}
        for message in messages:
            if not self.policy.applies(message.category, message.respect_sending_hours):
                continue
            decision = self.policy.decide(message.recipient_phone, now)
            if decision.until is not None:
                held[message.id] = Wait(decision.until, SENDING_HOURS, self.policy.describe(decision))
        return held


__all__ = [
    "HORIZON",
    "NO_COMMON_HOUR",
    "NO_ZONE",
    "Decision",
    "SendingHours",
    "SendingHoursGate",
    "SendingHoursPolicy",
    "decide",
    "describe",
    "load_zone",
    "next_allowed",
    "number_zones",
    "parse_categories",
    "parse_sending_hours",
    "parse_timezone",
]
