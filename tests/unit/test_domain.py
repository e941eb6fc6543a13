"""Validation of a message (possible phone numbers, length in code points, segments) and masking of phone numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from insider.domain import (
    EARLIEST_TIME,
    LATEST_TIME,
    TIME_RANGE,
    Encoding,
    InvalidMessage,
    UnstorableText,
    build_message,
    ensure_storable,
    mask_phone,
    measure,
    normalize_phone,
    parse_rfc3339,
    storable_text,
    unstorable_text,
    validation_error,
)

PHONE = "+905551234567"
# Precomposed Turkish letters: one code point each, though two bytes each in UTF-8.
TURKISH = "ğüşıöçĞÜŞİÖÇ"


def turkish(length: int) -> str:
    return (TURKISH * (length // len(TURKISH) + 1))[:length]


def test_a_plain_message_is_valid() -> None:
    assert validation_error(PHONE, "Merhaba", 160) is None


def test_length_counts_code_points_not_bytes() -> None:
    at_limit = turkish(160)
    assert len(at_limit.encode()) > 160  # would fail a byte count

    assert validation_error(PHONE, at_limit, 160) is None
    reason = validation_error(PHONE, turkish(161), 160)
    assert reason is not None
    assert "161" in reason and "160" in reason


@pytest.mark.parametrize(
    ("phone", "why"),
    [
        ("05551234567", "no country code"),  # a national form, and no INSIDER_DEFAULT_REGION
        ("905551234567", "no country code"),
        ("+1234567", "too short"),
        ("+90555123456789012", "too long"),
        ("+0555123456", "country code"),  # no country code starts with 0
        ("+999123456789", "unknown country code"),
        ("call me", "not a phone number"),
        ("", "empty"),
        ("+", "not a phone number"),
        ("+90 530", "too short"),
    ],
)
def test_an_impossible_phone_is_invalid_saying_why(phone: str, why: str) -> None:
    reason = validation_error(phone, "Merhaba", 160)
    assert reason is not None
    assert reason.startswith("recipient_phone is not a possible phone number") and why in reason


@pytest.mark.parametrize(
    "phone",
    [
        "+905551234567",
        "+90 555 123 45 67",
        "+90-555-1234567",
        "+90 (555) 123 4567",
        "+15555550100",  # fictional, yet possible: accepted (is_valid_number would refuse it)
        "+4915112345678",
        "+٩٠٥٥٥١٢٣٤٥٦٧",  # Arabic-Indic digits: libphonenumber reads them as digits, stored as ASCII
    ],
)
def test_international_forms_are_valid_and_normalised(phone: str) -> None:
    assert validation_error(phone, "Merhaba", 160) is None
    assert normalize_phone(phone).startswith("+") and normalize_phone(phone)[1:].isascii()


@pytest.mark.parametrize("phone", ["0530 123 40 01", "(0530) 123-4001", "905301234001", "5301234001"])
def test_national_forms_need_the_default_region(phone: str) -> None:
    assert normalize_phone(phone, "TR") == "+905301234001"
    assert validation_error(phone, "x", 160, region="TR") is None


@pytest.mark.parametrize(
    ("content", "encoding", "segments"),
    [
        ("", Encoding.GSM7, 1),
        ("a" * 160, Encoding.GSM7, 1),
        ("a" * 161, Encoding.GSM7, 2),
        ("a" * 306, Encoding.GSM7, 2),
        ("a" * 307, Encoding.GSM7, 3),
        ("{" * 80, Encoding.GSM7, 1),  # extension table: 2 septets each
        ("{" * 80 + "a", Encoding.GSM7, 2),
        ("^~|\\[]€" * 10, Encoding.GSM7, 1),
        ("Ç" * 160, Encoding.GSM7, 1),  # Ç is in the default alphabet
        ("ç" * 70, Encoding.UCS2, 1),  # ç is not
        ("ı" * 71, Encoding.UCS2, 2),
        ("ğ" * 134, Encoding.UCS2, 2),
        ("ğ" * 135, Encoding.UCS2, 3),
        ("😀" * 35, Encoding.UCS2, 1),
        ("😀" * 34 + "ab", Encoding.UCS2, 1),  # 36 code points, 70 UTF-16 units
        ("😀" * 35 + "a", Encoding.UCS2, 2),  # 71 UTF-16 units
    ],
)
def test_encoding_and_segments_match_hand_counts(content: str, encoding: Encoding, segments: int) -> None:
    assert measure(content) == (encoding, segments)


def test_the_gsm_alphabet_agrees_with_the_codec() -> None:
    import codecs

    import gsm0338  # type: ignore[import-untyped]  # noqa: F401 - registers the codec

    for code in range(0x20, 0x3000):
        char = chr(code)
        try:
            septets = len(codecs.encode(char, "gsm03.38"))
        except UnicodeEncodeError:
            assert measure(char)[0] is Encoding.UCS2, repr(char)
        else:
            assert measure(char * 80) == (Encoding.GSM7, 1), repr(char)  # 80 or 160 septets
            assert measure(char * 81)[1] == septets, repr(char)  # 81 fit one; 162 need two


def test_max_segments() -> None:
    assert validation_error(PHONE, "a" * 307, 1000, max_segments=3) is None
    reason = validation_error(PHONE, "a" * 307, 1000, max_segments=2)
    assert reason == "content takes 3 GSM-7 segments, over the limit of 2"


@pytest.mark.parametrize("content", ["", "   ", "\n\t"])
def test_empty_content_is_invalid(content: str) -> None:
    assert validation_error(PHONE, content, 160) == "content is empty"


@pytest.mark.parametrize("phone", ["+905551234567", "+12345678", "+123456789012345", "+4915112345678"])
def test_masked_phone_hides_the_middle_digits(phone: str) -> None:
    masked = mask_phone(phone)

    assert len(masked) == len(phone)
    assert masked.startswith(phone[:4])
    assert masked.endswith(phone[-2:])
    middle = phone[4:-2]
    assert middle not in masked
    assert masked[4:-2] == "*" * len(middle)


def test_masking_a_short_or_missing_phone_shows_nothing() -> None:
    assert mask_phone(None) == ""
    assert mask_phone("") == ""
    assert mask_phone("+12345") == "******"


# --- text the databases cannot store: one rule, applied by both SQL adapters and the API ----------


@pytest.mark.parametrize(
    ("text", "why"),
    [("a \x00 NUL", "NUL"), ("lone \ud800 high", "unpaired surrogates"), ("lone \udfff low", "unpaired surrogates")],
)
def test_unstorable_text_says_why(text: str, why: str) -> None:
    problem = unstorable_text(text)
    assert problem is not None and why in problem
    with pytest.raises(UnstorableText, match=f"content .*{why}"):
        ensure_storable(recipient_phone=PHONE, content=text)
    reason = validation_error(PHONE, text, 160)
    assert reason is not None and reason.startswith("content ") and why in reason


@pytest.mark.parametrize("text", ["Merhaba", "emoji 😀 pair", turkish(40), "tab\tand\nnewline"])
def test_storable_text_is_left_alone(text: str) -> None:
    assert unstorable_text(text) is None
    assert storable_text(text) == text
    ensure_storable(content=text)


def test_storable_text_replaces_nul_and_lone_surrogates_with_the_replacement_character() -> None:
    assert storable_text("a\x00b\ud800c\udc00d😀") == "a\ufffdb\ufffdc\ufffdd😀"
    assert storable_text("\ud83d") == "\ufffd"  # half of an emoji


# --- Times: the one range every accepted time lies in ---------------------------------------

EDGE_TIMES_OUT = [
    "9999-12-31T23:59:59-14:00",  # year 10000 in UTC: past the end of Python's calendar
    "9999-12-31T23:59:59.999999-00:01",
    "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
    "0999-12-31T23:59:59Z",  # SQLite keeps four-digit years, from 1000
    "1000-01-01T00:00:00+00:01",  # 0999-12-31T23:59:00Z
]
EDGE_TIMES_IN = {
    "1000-01-01T00:00:00Z": datetime(1000, 1, 1, tzinfo=UTC),
    "1000-01-01T14:00:00+14:00": datetime(1000, 1, 1, tzinfo=UTC),
    "9999-12-31T23:59:59.999999Z": LATEST_TIME,
    "9999-12-31T09:59:59.999999-14:00": LATEST_TIME,
}


@pytest.mark.parametrize("text", EDGE_TIMES_OUT)
def test_a_time_outside_the_storable_range_is_a_value_error_naming_the_range(text: str) -> None:
    with pytest.raises(ValueError, match=f"^must be {TIME_RANGE}$"):
        parse_rfc3339(text)


@pytest.mark.parametrize(("text", "utc"), EDGE_TIMES_IN.items())
def test_the_ends_of_the_range_are_accepted_in_utc(text: str, utc: datetime) -> None:
    assert parse_rfc3339(text) == utc and parse_rfc3339(text).tzinfo is UTC
    assert datetime(1000, 1, 1, tzinfo=UTC) == EARLIEST_TIME
    assert datetime.max.replace(tzinfo=UTC) == LATEST_TIME


@pytest.mark.parametrize("field", ["sendAt", "validUntil"])
def test_a_message_built_with_a_time_outside_the_range_names_the_field(field: str) -> None:
    tokyo = timezone(timedelta(hours=9))
    early = datetime(1000, 1, 1, 8, 59, tzinfo=tokyo)  # 0999-12-31T23:59Z
    send_at, valid_until = (early, None) if field == "sendAt" else (None, early)
    with pytest.raises(InvalidMessage, match=f"^{field} must be {TIME_RANGE}$") as caught:
        build_message(
            PHONE,
            "hi",
            send_at=send_at,
            priority=5,
            valid_until=valid_until,
            now=datetime(999, 1, 1, tzinfo=UTC),
            max_length=160,
        )
    assert caught.value.field == field
