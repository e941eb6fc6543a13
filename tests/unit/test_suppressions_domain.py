"""What goes on the suppression list: a number in E.164, a scope, a one-line reason and source, a past time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from insider.domain import InvalidMessage
from insider.suppressions import MAX_REASON_LENGTH, MAX_SOURCE_LENGTH, NewSuppression, Scope, check_suppression

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_defaults_and_normalised_number() -> None:
    assert check_suppression("0530 123 40 01", region="TR") == NewSuppression(
        "+905301234001", Scope.ALL, "opt-out", "api", None
    )
    entry = check_suppression("+90 530 123 4001", scope="commercial", reason="  İYS ret  ", source="inbound")
    assert (entry.scope, entry.reason, entry.source) == (Scope.COMMERCIAL, "İYS ret", "inbound")


@pytest.mark.parametrize(
    ("given", "field", "why"),
    [
        ({"to": "0530 123 40 01"}, "to", "country code"),
        ({"to": "+90 530"}, "to", "too short"),
        ({"scope": "marketing"}, "scope", "scope must be all or commercial"),
        ({"reason": ""}, "reason", "must not be blank"),
        ({"reason": "x" * (MAX_REASON_LENGTH + 1)}, "reason", f"over the limit of {MAX_REASON_LENGTH}"),
        ({"reason": "tab\there"}, "reason", "without control characters"),
        ({"reason": "bell \x07"}, "reason", "without control characters"),
        ({"reason": "c1 \x85"}, "reason", "without control characters"),
        ({"reason": "half \ud800"}, "reason", "without control characters"),
        ({"source": "s" * (MAX_SOURCE_LENGTH + 1)}, "source", "over the limit"),
        ({"created_at": NOW + timedelta(seconds=1)}, "createdAt", "must not be in the future"),
    ],
)
def test_what_is_refused_names_its_field(given: dict[str, object], field: str, why: str) -> None:
    arguments: dict[str, object] = {"to": "+905301234001", "now": NOW} | given
    with pytest.raises(InvalidMessage) as refused:
        check_suppression(**arguments)  # type: ignore[arg-type]
    assert refused.value.field == field
    assert why in str(refused.value)


def test_a_past_time_is_kept_in_utc() -> None:
    then = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert check_suppression("+905301234001", created_at=then, now=NOW).created_at == then
