"""The SMPP adapter's rules without a peer: parts and their UDH, addresses, status table, receipt parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import smpp34

from insider.adapters.smpp import SmppSmsClient
from insider.adapters.smpp_codec import (
    DATA_CODING_GSM7,
    DATA_CODING_UCS2,
    TLV_MESSAGE_STATE,
    TLV_RECEIPTED_MESSAGE_ID,
    encode_parts,
    is_receipt,
    receipt_of,
    refused,
    source_address,
)
from insider.domain import Outcome, measure
from insider.receipt_parsing import parse_receipts


@pytest.mark.parametrize(
    "text",
    [
        "a" * 160,
        "a" * 161,
        "€" * 80,
        "€" * 81,
        "a" * 152 + "€" * 100,
        "ç" * 70,
        "ç" * 71,
        "👋" * 35,
        "👋" * 36,
        "Çağrı " * 60,
    ],
)
def test_parts_rebuild_the_text_and_match_measure(text: str) -> None:
    coding, parts = encode_parts(text, 7)
    encoding, segments = measure(text)

    assert coding == (DATA_CODING_GSM7 if encoding.value == "GSM-7" else DATA_CODING_UCS2)
    codec = "gsm03.38" if coding == DATA_CODING_GSM7 else "utf-16-be"
    if len(parts) == 1:
        assert parts[0].decode(codec) == text
    else:
        assert [p[:5] for p in parts] == [bytes((5, 0, 3, 7, len(parts)))] * len(parts)
        assert [p[5] for p in parts] == list(range(1, len(parts) + 1))
        assert "".join(p[6:].decode(codec) for p in parts) == text  # each part decodes alone: nothing cut
        assert max(len(p) - 6 for p in parts) <= (153 if coding == DATA_CODING_GSM7 else 134)
    assert len(parts) == segments


@pytest.mark.parametrize(
    ("text", "counted", "sent"),
    [
        # 306 septets with an extension character straddling the first boundary: the escape
        # stays with its character, so a third part is needed.
        ("a" * 152 + "€" + "b" * 152, 2, 3),
        # 201 UTF-16 units, every boundary inside an emoji: parts of 66 units.
        ("x" + "👋" * 100, 3, 4),
    ],
)
def test_a_part_one_shorter_can_make_more_parts_than_measure_counts(text: str, counted: int, sent: int) -> None:
    assert measure(text)[1] == counted
    assert len(encode_parts(text, 0)[1]) == sent


def test_the_reference_is_eight_bits() -> None:
    assert encode_parts("a" * 200, 257)[1][0][3] == 1


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("INSIDER", ("INSIDER", 5, 0)),
        ("Insider Co", ("Insider Co", 5, 0)),
        ("+905550001122", ("905550001122", 1, 1)),
        ("4455", ("4455", 1, 1)),
    ],
)
def test_source_addresses(source: str, expected: tuple[str, int, int]) -> None:
    assert source_address(source) == expected


@pytest.mark.parametrize("source", ["", "TWELVE-CHARS", "Çağrı", "1" * 21])
def test_bad_sources_are_refused(source: str) -> None:
    with pytest.raises(ValueError, match="source"):
        source_address(source)


@pytest.mark.parametrize(
    ("field", "value"), [("system_id", "s" * 16), ("password", "p" * 9), ("system_type", "t" * 13)]
)
def test_bind_fields_longer_than_smpp_allows_are_refused_without_showing_the_password(field: str, value: str) -> None:
    options = {"system_id": "insider", "password": "secret", "system_type": ""} | {field: value}
    with pytest.raises(ValueError, match=field) as raised:
        SmppSmsClient(
            "p",
            "127.0.0.1",
            2775,
            options["system_id"],
            options["password"],
            source="X",
            system_type=options["system_type"],
        )
    assert "p" * 9 not in str(raised.value)


@pytest.mark.parametrize(
    ("status", "outcome", "throttled"),
    [
        (0x58, Outcome.RETRY, True),
        (0x14, Outcome.RETRY, True),
        (0x08, Outcome.RETRY, False),
        (0x45, Outcome.RETRY, False),
        (0x0400, Outcome.RETRY, False),  # vendor-specific: transient, the attempt limit ends it
        (0x0A, Outcome.FAILED, False),
        (0x0B, Outcome.FAILED, False),
        (0x01, Outcome.FAILED, False),
        (0xC4, Outcome.FAILED, False),
    ],
)
def test_status_table(status: int, outcome: Outcome, throttled: bool) -> None:
    result = refused(status)
    assert (result.outcome, result.throttled, result.ambiguous) == (outcome, throttled, False)
    assert f"0x{status:08X}" in (result.error or "")


TEXT = (
    "id:0123456789 sub:001 dlvrd:001 submit date:2612010930 done date:2612010931 stat:DELIVRD err:000 text:stat:UNDELIV"
)


def test_a_receipt_from_the_text_alone() -> None:
    assert receipt_of(TEXT.encode(), 0, []) == {
        "messageId": "0123456789",
        "status": "DELIVRD",  # the text: after text: is the message's, never a field
        "doneAt": "2026-12-01T09:31:00+00:00",
    }


def test_the_tlvs_come_first_and_the_text_fills_in() -> None:
    tlvs = [
        smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, b"abc\x00"),
        smpp34.Tlv(TLV_MESSAGE_STATE, bytes([8])),
    ]
    receipt = receipt_of(TEXT.replace("err:000", "err:0B2").encode(), 0, tlvs)
    assert receipt == {
        "messageId": "abc",
        "status": "REJECTD",
        "errorCode": "0B2",
        "doneAt": "2026-12-01T09:31:00+00:00",
    }
    parsed = parse_receipts([receipt], datetime.now(UTC))[0]
    assert parsed.delivery_status == "rejected"


def test_tlvs_without_text_are_a_receipt() -> None:
    tlvs = [smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, b"abc\x00"), smpp34.Tlv(TLV_MESSAGE_STATE, bytes([2]))]
    assert is_receipt(0, tlvs)
    assert receipt_of(b"", 0, tlvs) == {"messageId": "abc", "status": "DELIVRD"}


@pytest.mark.parametrize("text", [b"", b"hello", b"id: stat:DELIVRD", b"id:1 sub:001 stat:", b"stat:DELIVRD"])
def test_text_that_names_no_message_or_no_state_is_no_receipt(text: bytes) -> None:
    assert receipt_of(text, 0, []) is None


def test_a_bad_done_date_is_left_out() -> None:
    receipt = receipt_of(b"id:1 done date:2613450000 stat:DELIVRD", 0, [])
    assert receipt == {"messageId": "1", "status": "DELIVRD"}


@pytest.mark.parametrize(("esm_class", "receipt"), [(0x04, True), (0x20, True), (0x00, False), (0x40, False)])
def test_the_message_type_says_receipt(esm_class: int, receipt: bool) -> None:
    assert is_receipt(esm_class, []) is receipt
