"""Validation of a message (E.164 phone, length in code points) and masking of phone numbers."""

from __future__ import annotations

import pytest

from insider.domain import (
    UnstorableText,
    ensure_storable,
    mask_phone,
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
    "phone",
    [
        "05551234567",  # no '+'
        "905551234567",
        "+90 555 123 45 67",  # spaces
        "+90-555-1234567",
        "+1234567",  # 7 digits: too short
        "+1234567890123456",  # 16 digits: too long
        "+0555123456",  # no country code starts with 0
        "+905551234567\n",  # a trailing newline must not slip through
        "+٩٠٥٥٥١٢٣٤٥٦٧",  # Arabic-Indic digits are digits to \d, not to a provider
        "",
        "+",
    ],
)
def test_a_non_e164_phone_is_invalid(phone: str) -> None:
    reason = validation_error(phone, "Merhaba", 160)
    assert reason is not None
    assert "E.164" in reason


@pytest.mark.parametrize("phone", ["+12345678", "+905551234567", "+123456789012345"])
def test_e164_numbers_of_8_to_15_digits_are_valid(phone: str) -> None:
    assert validation_error(phone, "Merhaba", 160) is None


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
