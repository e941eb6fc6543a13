"""Consent at send time: the gates a claimed message passes before it goes to a provider.

A gate looks at the claimed, valid messages of a batch and may hold some back: a
:class:`Wait` puts one back to pending until a time (sending hours, a frequency cap), not
counted as an attempt; a :class:`Suppress` ends one ``suppressed``, never sent. Gates run in
order, each on what the ones before let through. The suppression list itself is checked by
the claim statement (and at enqueue), so no gate reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from insider.domain import Message

__all__ = ["CAP", "SENDING_HOURS", "WAIT_REASONS", "Gate", "Suppress", "Verdict", "Wait"]

# Why a pending message waits (its ``wait_reason``, the API's ``waitReason``).
SENDING_HOURS: Final = "sending-hours"
CAP: Final = "cap"
WAIT_REASONS: Final = (SENDING_HOURS, CAP)


@dataclass(frozen=True, slots=True)
class Wait:
    """Not now: back to pending, due at ``until``; ``reason`` is its waitReason, ``detail`` says why."""

    until: datetime
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Suppress:
    """Never: the message ends ``suppressed`` with ``reason`` (its suppressionReason)."""

    reason: str
    detail: str


Verdict = Wait | Suppress


class Gate(Protocol):
    """One rule of consent applied to the messages of a batch before they are sent."""

    async def judge(self, messages: Sequence[Message], now: datetime) -> dict[int, Verdict]:
        """The messages (by id) this gate holds back, and how; the others may go."""
        ...
