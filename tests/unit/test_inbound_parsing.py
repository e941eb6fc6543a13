"""A reply as a provider forwards it: our JSON or Twilio's form fields, numbers in E.164, every bad field named."""

from __future__ import annotations

from typing import Any

import pytest

from insider.inbound import MAX_INBOUND_TEXT, Inbound, InvalidInbound, form_inbound, parse_inbound


def test_json_with_every_field() -> None:
    body = {"from": "+90 530 123 45 67", "to": "+1 212 555 0123", "text": "STOP", "messageId": "SM1"}
    assert parse_inbound(body, provider="twilio") == Inbound("+905301234567", "STOP", "+12125550123", "twilio", "SM1")


def test_to_is_optional_and_may_be_a_short_code_or_a_sender_name() -> None:
    assert parse_inbound({"from": "+905301234567", "text": "hi"}).to_phone is None
    assert parse_inbound({"from": "+905301234567", "to": "4545", "text": "hi"}).to_phone == "4545"
    assert parse_inbound({"from": "+905301234567", "to": "INSIDER", "text": "hi"}).to_phone == "INSIDER"


def test_national_forms_follow_the_default_region() -> None:
    assert parse_inbound({"from": "0530 123 45 67", "text": "x"}, "TR").from_phone == "+905301234567"
    with pytest.raises(InvalidInbound) as raised:
        parse_inbound({"from": "0530 123 45 67", "text": "x"})
    assert list(raised.value.fields) == ["from"]


def test_an_empty_text_is_a_reply_too() -> None:  # a picture alone (Twilio posts Body="")
    assert parse_inbound({"from": "+905301234567", "text": ""}).text == ""


def test_unknown_fields_are_ignored() -> None:
    assert parse_inbound({"from": "+905301234567", "text": "x", "receivedAt": "now"}).text == "x"


def test_a_text_of_the_limit_is_taken() -> None:
    assert len(parse_inbound({"from": "+905301234567", "text": "a" * MAX_INBOUND_TEXT}).text) == MAX_INBOUND_TEXT


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"text": "STOP"}, {"from": ["missing: required"]}),
        ({"from": "+905301234567"}, {"text": ["missing: required"]}),
        ({}, {"from": ["missing: required"], "text": ["missing: required"]}),
        ({"from": 905301234567, "text": "x"}, {"from": ["must be a string"]}),
        ({"from": "+905301234567", "text": ["STOP"]}, {"text": ["must be a string"]}),
        ({"from": "+905301234567", "text": "x", "to": 4545}, {"to": ["must be a string"]}),
        ({"from": "+905301234567", "text": "x", "messageId": 7}, {"messageId": ["must be a string"]}),
        ({"from": "+905301234567", "text": "x", "messageId": "m" * 129}, {"messageId": ["at most 128 characters"]}),
        ({"from": "+905301234567", "text": "a" * 1601}, {"text": ["at most 1600 characters, got 1601"]}),
        ({"from": "+905301234567", "text": "a\x00"}, {"text": ["must not contain NUL characters (\\u0000)"]}),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], fields: dict[str, list[str]]) -> None:
    with pytest.raises(InvalidInbound) as raised:
        parse_inbound(body)
    assert raised.value.fields == fields


@pytest.mark.parametrize("sender", ["hello", "+1", "+99912345678", "", "12", "+90530123456789012"])
def test_a_sender_that_is_no_phone_number_is_named(sender: str) -> None:
    with pytest.raises(InvalidInbound) as raised:
        parse_inbound({"from": sender, "text": "STOP"})
    assert list(raised.value.fields) == ["from"]
    assert raised.value.fields["from"][0].startswith("not a possible phone number")


@pytest.mark.parametrize("to", ["+1", "not a number at all, too long", "a/b"])
def test_our_number_that_is_none_of_the_forms_is_named(to: str) -> None:
    with pytest.raises(InvalidInbound) as raised:
        parse_inbound({"from": "+905301234567", "text": "x", "to": to})
    assert list(raised.value.fields) == ["to"]


@pytest.mark.parametrize("body", [[], "STOP", 5, None])
def test_a_body_that_is_no_object_is_refused(body: Any) -> None:
    with pytest.raises(InvalidInbound) as raised:
        parse_inbound(body)
    assert list(raised.value.fields) == ["_schema"]


def test_twilios_form_fields_are_ours() -> None:
    form = {"From": "+905301234567", "To": "+12125550123", "Body": "Stop", "MessageSid": "SM9", "NumMedia": "0"}
    assert form_inbound(form) == {"from": "+905301234567", "to": "+12125550123", "text": "Stop", "messageId": "SM9"}
    assert parse_inbound(form_inbound(form)) == Inbound("+905301234567", "Stop", "+12125550123", None, "SM9")


def test_our_names_in_a_form_win_over_twilios() -> None:
    assert form_inbound({"from": "+905301234567", "From": "+12125550123", "text": "x"}) == {
        "from": "+905301234567",
        "text": "x",
    }
