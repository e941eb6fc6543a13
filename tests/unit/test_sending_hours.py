"""Sending hours: the window's parsing, a number's zones, and the first allowed moment, DST included."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from insider.bulk import Limits, read_messages
from insider.config import ConfigError, load_settings
from insider.domain import NewMessage
from insider.sending_hours import (
    NO_COMMON_HOUR,
    NO_ZONE,
    SendingHours,
    SendingHoursPolicy,
    decide,
    describe,
    next_allowed,
    number_zones,
    parse_categories,
    parse_sending_hours,
    parse_timezone,
)

TURKEY = "+905301234567"
UK = "+447911123456"
NEW_YORK = "+12125550123"
LOS_ANGELES = "+13105550123"
TOLL_FREE = "+18005550123"
FICTIONAL = "+15555550123"
AUSTRALIA = "+61412345678"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def hours(text: str) -> SendingHours:
    window = parse_sending_hours(text)
    assert window is not None
    return window


DAY = hours("08:00-21:00")


# --- The settings ---------------------------------------------------------------------------------


def test_a_window_is_two_times_the_end_excluded() -> None:
    assert parse_sending_hours("08:00-21:00") == SendingHours(8 * 60, 21 * 60)
    assert parse_sending_hours(" 8:00 - 21:30 ") == SendingHours(8 * 60, 21 * 60 + 30)
    assert parse_sending_hours("22:00-06:00") == SendingHours(22 * 60, 6 * 60)  # crosses midnight
    assert parse_sending_hours("21:00-24:00") == SendingHours(21 * 60, 24 * 60)
    assert parse_sending_hours("21:00-00:00") == SendingHours(21 * 60, 24 * 60)  # midnight either way
    assert hours("00:00-24:00").whole_day
    assert parse_sending_hours("") is None
    assert parse_sending_hours("  ") is None
    assert str(hours("22:00-06:00")) == "22:00-06:00"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("08:00-08:00", "starts where it ends"),
        ("00:00-00:00", "starts where it ends"),
        ("24:00-24:00", "24:00 as the end"),
        ("06:00-06:00", "00:00-24:00 for the whole day"),
        ("24:00-08:00", "24:00 as the end"),
        ("08:00-24:30", "24:00 as the end"),
        ("08:60-21:00", "from 00:00 to 23:59"),
        ("8-21", "HH:MM-HH:MM"),
        ("08:00", "HH:MM-HH:MM"),
        ("08:00-21:00,22:00-23:00", "HH:MM-HH:MM"),
    ],
)
def test_a_bad_window_says_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_sending_hours(text)


def test_the_categories_and_the_zone() -> None:
    assert parse_categories("commercial") == ("commercial",)
    assert parse_categories(" Commercial , transactional ") == ("transactional", "commercial")
    for bad in ("", "promo", "commercial,promo"):
        with pytest.raises(ValueError, match="comma list of transactional, commercial"):
            parse_categories(bad)
    assert parse_timezone(" Europe/Istanbul ") == "Europe/Istanbul"
    for bad in ("", "Mars/Base", "Etc/Unknown", "America", "../etc/passwd"):
        with pytest.raises(ValueError, match="IANA time zone"):
            parse_timezone(bad)


def test_the_settings_and_their_defaults() -> None:
    settings = load_settings({}, env_file=None)
    assert settings.sending_hours is None
    assert settings.sending_hours_for == ("commercial",)
    assert settings.default_timezone == "UTC"
    settings = load_settings(
        {
            "INSIDER_SENDING_HOURS": "08:00-21:00",
            "INSIDER_SENDING_HOURS_FOR": "commercial,transactional",
            "INSIDER_DEFAULT_TIMEZONE": "Europe/Istanbul",
        },
        env_file=None,
    )
    assert settings.sending_hours == DAY
    assert settings.sending_hours_for == ("transactional", "commercial")
    assert settings.default_timezone == "Europe/Istanbul"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("INSIDER_DEFAULT_TIMEZONE", "Mars/Base", "INSIDER_DEFAULT_TIMEZONE: expected an IANA time zone"),
        ("INSIDER_SENDING_HOURS", "21:00-21:00", "INSIDER_SENDING_HOURS: the window starts where it ends"),
        ("INSIDER_SENDING_HOURS_FOR", "marketing", "INSIDER_SENDING_HOURS_FOR: expected a comma list"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value}, env_file=None)
    assert str(caught.value).startswith(says)
    assert "\n" not in str(caught.value)


# --- A number's zones -----------------------------------------------------------------------------


def test_the_zones_of_a_number() -> None:
    assert number_zones(TURKEY) == ("Europe/Istanbul",)
    assert "Europe/London" in number_zones(UK)
    assert number_zones(NEW_YORK) == ("America/New_York",)
    assert number_zones(LOS_ANGELES) == ("America/Los_Angeles",)
    toll_free = number_zones(TOLL_FREE)
    assert {"Pacific/Guam", "America/Halifax", "Pacific/Honolulu", "America/New_York"} <= set(toll_free)
    assert len(number_zones(AUSTRALIA)) > 1
    assert number_zones(FICTIONAL) == ()  # libphonenumber's Etc/Unknown
    assert number_zones("not a number") == ()


# --- The first allowed moment ---------------------------------------------------------------------


def test_turkey_the_end_excluded() -> None:
    # Istanbul is UTC+3 all year: 08:00-21:00 there is 05:00-18:00 UTC.
    assert next_allowed(TURKEY, utc(2026, 12, 5, 4, 59), DAY, "UTC") == utc(2026, 12, 5, 5, 0)
    assert next_allowed(TURKEY, utc(2026, 12, 5, 5, 0), DAY, "UTC") is None
    assert next_allowed(TURKEY, utc(2026, 12, 5, 17, 59, 59), DAY, "UTC") is None
    assert next_allowed(TURKEY, utc(2026, 12, 5, 18, 0), DAY, "UTC") == utc(2026, 12, 6, 5, 0)
    assert next_allowed(TURKEY, utc(2026, 12, 5, 23, 0), DAY, "UTC") == utc(2026, 12, 6, 5, 0)


def test_the_uk_in_winter_and_in_summer() -> None:
    assert next_allowed(UK, utc(2026, 12, 5, 7, 30), DAY, "UTC") == utc(2026, 12, 5, 8, 0)  # GMT
    assert next_allowed(UK, utc(2026, 7, 1, 6, 30), DAY, "UTC") == utc(2026, 7, 1, 7, 0)  # BST
    assert next_allowed(UK, utc(2026, 7, 1, 19, 59), DAY, "UTC") is None
    assert next_allowed(UK, utc(2026, 7, 1, 20, 0), DAY, "UTC") == utc(2026, 7, 2, 7, 0)


def test_new_york_and_los_angeles() -> None:
    assert next_allowed(NEW_YORK, utc(2026, 12, 5, 12, 0), DAY, "UTC") == utc(2026, 12, 5, 13, 0)  # EST
    assert next_allowed(NEW_YORK, utc(2026, 7, 1, 11, 0), DAY, "UTC") == utc(2026, 7, 1, 12, 0)  # EDT
    assert next_allowed(NEW_YORK, utc(2026, 12, 5, 13, 0), DAY, "UTC") is None
    assert next_allowed(LOS_ANGELES, utc(2026, 12, 5, 15, 0), DAY, "UTC") == utc(2026, 12, 5, 16, 0)
    # 20:59 PST on the 5th is still the 5th's window; 21:00 waits for 08:00 on the 6th.
    assert next_allowed(LOS_ANGELES, utc(2026, 12, 6, 4, 59), DAY, "UTC") is None
    assert next_allowed(LOS_ANGELES, utc(2026, 12, 6, 5, 0), DAY, "UTC") == utc(2026, 12, 6, 16, 0)
    # At the same moment one is inside and the other outside.
    at = utc(2026, 12, 5, 15, 0)
    assert next_allowed(NEW_YORK, at, DAY, "UTC") is None
    assert next_allowed(LOS_ANGELES, at, DAY, "UTC") is not None


def test_a_toll_free_number_waits_for_an_hour_allowed_in_all_its_zones() -> None:
    at = utc(2026, 12, 5, 10, 0)
    until = next_allowed(TOLL_FREE, at, DAY, "UTC")
    # Guam (UTC+10) reaches 08:00 at 22:00 UTC, while St John's (UTC-3:30) is at 18:30.
    assert until == utc(2026, 12, 5, 22, 0)
    assert until is not None
    for name in number_zones(TOLL_FREE):
        assert DAY.allows(until.astimezone(ZoneInfo(name))), name
    assert not DAY.allows((until - timedelta(minutes=1)).astimezone(ZoneInfo("Pacific/Guam")))
    decision = decide(TOLL_FREE, at, DAY, "UTC")
    assert decision.fallback is None
    assert describe(decision, DAY) == (
        "outside the sending hours 08:00-21:00 in all 42 zones of the number (America/Adak ... Pacific/Saipan); "
        "may go at 2026-12-05T22:00:00Z"
    )


def test_zones_with_no_common_hour_follow_the_default_zone() -> None:
    # 09:00-17:00 is narrower than the toll-free range's spread (Guam to St John's).
    office = hours("09:00-17:00")
    decision = decide(TOLL_FREE, utc(2026, 12, 5, 3, 0), office, "America/Chicago")
    assert decision == decide(TOLL_FREE, utc(2026, 12, 5, 3, 0), office, "America/Chicago")
    assert decision.zones == ("America/Chicago",)
    assert decision.fallback == NO_COMMON_HOUR
    assert decision.until == utc(2026, 12, 5, 15, 0)  # 09:00 CST
    assert "the default time zone: no common sending hour" in describe(decision, office)


def test_a_number_with_no_known_zone_follows_the_default_zone() -> None:
    decision = decide(FICTIONAL, utc(2026, 12, 5, 12, 0), DAY, "America/Chicago")
    assert decision.until == utc(2026, 12, 5, 14, 0)  # 08:00 CST
    assert (decision.zones, decision.fallback) == (("America/Chicago",), NO_ZONE)
    assert next_allowed(FICTIONAL, utc(2026, 12, 5, 12, 0), DAY, "UTC") is None
    assert describe(decision, DAY) == (
        "outside the sending hours 08:00-21:00: 06:00 in America/Chicago (the default time zone: no known zone); "
        "may go at 2026-12-05T14:00:00Z (08:00 there)"
    )


def test_australia_waits_for_its_westernmost_zone() -> None:
    # In December: Cocos (UTC+6:30) reaches 08:00 at 01:30 UTC, when Lord Howe (UTC+11) is at 12:30.
    assert next_allowed(AUSTRALIA, utc(2026, 12, 5, 10, 0), DAY, "UTC") == utc(2026, 12, 6, 1, 30)


def test_a_window_crossing_midnight() -> None:
    night = hours("22:00-06:00")
    # Istanbul: 22:00-06:00 local is 19:00-03:00 UTC.
    assert next_allowed(TURKEY, utc(2026, 12, 5, 12, 0), night, "UTC") == utc(2026, 12, 5, 19, 0)
    assert next_allowed(TURKEY, utc(2026, 12, 5, 19, 0), night, "UTC") is None
    assert next_allowed(TURKEY, utc(2026, 12, 5, 23, 30), night, "UTC") is None
    assert next_allowed(TURKEY, utc(2026, 12, 6, 2, 59), night, "UTC") is None
    assert next_allowed(TURKEY, utc(2026, 12, 6, 3, 0), night, "UTC") == utc(2026, 12, 6, 19, 0)


def test_the_whole_day_is_always_allowed() -> None:
    whole = hours("00:00-24:00")
    for hour in range(24):
        assert next_allowed(NEW_YORK, utc(2026, 12, 5, hour, 30), whole, "UTC") is None
    late = hours("21:00-24:00")
    assert next_allowed(NEW_YORK, utc(2026, 12, 6, 4, 59), late, "UTC") is None  # 23:59 EST
    assert next_allowed(NEW_YORK, utc(2026, 12, 6, 5, 0), late, "UTC") == utc(2026, 12, 7, 2, 0)


def test_daylight_saving_days_in_new_york() -> None:
    # 2026-03-08: clocks go from 02:00 EST to 03:00 EDT (07:00 UTC); 08:00 is 12:00 UTC that day.
    assert next_allowed(NEW_YORK, utc(2026, 3, 8, 11, 59), DAY, "UTC") == utc(2026, 3, 8, 12, 0)
    assert next_allowed(NEW_YORK, utc(2026, 3, 7, 12, 0), DAY, "UTC") == utc(2026, 3, 7, 13, 0)  # EST
    # A window opening at a time the clock skips opens when the clock jumps past it.
    skipped = hours("02:30-05:00")
    assert next_allowed(NEW_YORK, utc(2026, 3, 8, 6, 0), skipped, "UTC") == utc(2026, 3, 8, 7, 0)
    # 2026-11-01: clocks go from 02:00 EDT back to 01:00 EST (06:00 UTC).
    assert next_allowed(NEW_YORK, utc(2026, 11, 1, 6, 0), DAY, "UTC") == utc(2026, 11, 1, 13, 0)
    assert next_allowed(NEW_YORK, utc(2026, 10, 31, 11, 0), DAY, "UTC") == utc(2026, 10, 31, 12, 0)  # EDT
    # The repeated hour: a window that closed at 01:30 EDT is open again when the clock goes back to 01:00.
    repeated = hours("00:30-01:30")
    assert next_allowed(NEW_YORK, utc(2026, 11, 1, 5, 30), repeated, "UTC") == utc(2026, 11, 1, 6, 0)
    assert next_allowed(NEW_YORK, utc(2026, 11, 1, 6, 30), repeated, "UTC") == utc(2026, 11, 2, 5, 30)
    # A window opening in the repeated hour opens at both of its starts.
    inside = hours("01:15-01:45")
    assert next_allowed(NEW_YORK, utc(2026, 11, 1, 5, 45), inside, "UTC") == utc(2026, 11, 1, 6, 15)


def test_daylight_saving_day_in_the_uk() -> None:
    # 2026-03-29: 01:00 GMT becomes 02:00 BST; 08:00 is 07:00 UTC from that day on.
    assert next_allowed(UK, utc(2026, 3, 29, 6, 0), DAY, "UTC") == utc(2026, 3, 29, 7, 0)
    assert next_allowed(UK, utc(2026, 3, 28, 7, 0), DAY, "UTC") == utc(2026, 3, 28, 8, 0)


def test_the_moment_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_allowed(TURKEY, datetime(2026, 12, 5, 12, 0), DAY, "UTC")


# --- One deployment's policy ----------------------------------------------------------------------


def test_the_policy_of_the_settings() -> None:
    assert SendingHoursPolicy.from_settings(load_settings({}, env_file=None)) is None
    settings = load_settings({"INSIDER_SENDING_HOURS": "08:00-21:00"}, env_file=None)
    policy = SendingHoursPolicy.from_settings(settings)
    assert policy is not None
    assert (policy.window, policy.categories, policy.default_tz) == (DAY, frozenset({"commercial"}), "UTC")
    assert policy.applies("commercial")
    assert not policy.applies("transactional")
    assert policy.decide(NEW_YORK, utc(2026, 12, 5, 12, 0)).until == utc(2026, 12, 5, 13, 0)


def test_only_a_transactional_message_opts_out() -> None:
    policy = SendingHoursPolicy(DAY, ["commercial", "transactional"], "UTC")
    assert policy.applies("transactional")
    assert not policy.applies("transactional", respect_sending_hours=False)
    # A commercial row that says otherwise (written by another program) keeps the hours.
    assert policy.applies("commercial", respect_sending_hours=False)


def test_the_policy_keeps_a_bounded_number_of_zones() -> None:
    policy = SendingHoursPolicy(DAY, ["commercial"], "UTC", cache_size=2)
    for phone in (TURKEY, NEW_YORK, LOS_ANGELES, TURKEY):
        assert policy.zones(phone) == number_zones(phone)
    assert len(policy._zones) == 2


def test_the_readme_toll_free_example() -> None:
    # README: with 08:00-21:00, +1 800... in December from 22:00 to 00:30 UTC only.
    assert next_allowed(TOLL_FREE, utc(2026, 12, 5, 21, 59), DAY, "UTC") == utc(2026, 12, 5, 22, 0)
    assert next_allowed(TOLL_FREE, utc(2026, 12, 6, 0, 29), DAY, "UTC") is None
    assert next_allowed(TOLL_FREE, utc(2026, 12, 6, 0, 30), DAY, "UTC") == utc(2026, 12, 6, 22, 0)


# --- Files ----------------------------------------------------------------------------------------


def _read(text: str, policy: SendingHoursPolicy | None, now: datetime) -> tuple[list[NewMessage], list[str]]:
    limits = Limits(160, sending_hours=policy)
    chunks = list(read_messages(io.StringIO(text), limits, now=now))
    return [m for found, _ in chunks for m in found], [str(r) for _, bad in chunks for r in bad]


def test_a_csv_line_due_outside_its_hours_is_stored_waiting() -> None:
    policy = SendingHoursPolicy(DAY, ["commercial"], "UTC")
    text = (
        "to,content,category,respectSendingHours\n"
        f"{TURKEY},a,commercial,\n"
        f"{NEW_YORK},b,commercial,\n"
        f"{NEW_YORK},c,transactional,false\n"
        f"{NEW_YORK},d,commercial,false\n"
        f"{NEW_YORK},e,transactional,perhaps\n"
        f"{NEW_YORK},f,transactional, TRUE \n"
    )
    messages, rejected = _read(text, policy, utc(2026, 12, 5, 12, 0))
    assert [(m.content, m.wait_until, m.wait_reason, m.respect_sending_hours) for m in messages] == [
        ("a", None, None, True),
        ("b", utc(2026, 12, 5, 13, 0), "sending-hours", True),
        ("c", None, None, False),
        ("f", None, None, True),
    ]
    assert rejected == [
        "line 5: respectSendingHours may be false only for transactional messages",
        "line 6: respectSendingHours must be true or false",
    ]


def test_json_lines_take_respect_sending_hours_as_a_boolean() -> None:
    policy = SendingHoursPolicy(DAY, ["commercial", "transactional"], "UTC")
    lines = [
        f'{{"to": "{NEW_YORK}", "content": "a", "respectSendingHours": false}}',
        f'{{"to": "{NEW_YORK}", "content": "b"}}',
        f'{{"to": "{NEW_YORK}", "content": "c", "respectSendingHours": "false"}}',
    ]
    messages, rejected = _read("\n".join(lines) + "\n", policy, utc(2026, 12, 5, 12, 0))
    assert [(m.content, m.wait_reason) for m in messages] == [("a", None), ("b", "sending-hours")]
    assert rejected == ["line 3: respectSendingHours must be true or false"]


def test_a_file_without_sending_hours_marks_nothing() -> None:
    messages, rejected = _read(f"to,content,category\n{NEW_YORK},b,commercial\n", None, utc(2026, 12, 5, 12, 0))
    assert [(m.wait_until, m.wait_reason) for m in messages] == [(None, None)] and rejected == []
