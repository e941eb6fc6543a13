"""Frequency caps: at most N commercial messages to one number within a window, for the whole deployment.

``INSIDER_COMMERCIAL_CAP`` (``3/24h``) is read into a :class:`FrequencyCap`; :class:`CapGate` is
the consent gate that applies it to the claimed messages of a batch. The count is the
database's (``CapStore.admit_capped``): every process admits through it, one recipient at a
time, so the cap holds however many processes send.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from insider.consent import CAP, Suppress, Verdict, Wait
from insider.domain import Category, Message
from insider.durations import format_duration, parse_duration
from insider.ports import CapStore

__all__ = ["CAP_ACTIONS", "CapGate", "FrequencyCap", "parse_frequency_cap"]

# What becomes of a commercial message over the cap (INSIDER_COMMERCIAL_CAP_ACTION).
WAIT: Final = "wait"  # pending until the cap allows it
SUPPRESS: Final = "suppress"  # ended suppressed, with the reason cap
CAP_ACTIONS: Final = (WAIT, SUPPRESS)
_COUNT: Final = re.compile(r"\s*[0-9]+\s*")


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most ``limit`` commercial messages to one number within any ``window_s`` seconds."""

    limit: int
    window_s: float
    window: str = field(default="", compare=False)  # the window as the setting wrote it (24h), for people

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_text}"

    @property
    def window_text(self) -> str:
        return self.window or format_duration(self.window_s)


def parse_frequency_cap(text: str) -> FrequencyCap | None:
    """``N/duration`` (``3/24h``, ``1/30s``, ``10/7d``) as a cap; empty: None (no cap)."""
    value = text.strip()
    if not value:
        return None
    count, slash, window = value.partition("/")
    if not slash or not _COUNT.fullmatch(count):
        raise ValueError(f"expected messages/duration such as 3/24h, 1/30s or 10/7d (or empty), got {text!r}")
    limit = int(count)
    if limit < 1:
        raise ValueError(f"the number of messages must be 1 or more, got {text!r}")
    try:
        window_s = parse_duration(window)
    except ValueError as exc:
        raise ValueError(f"the window after the /: {exc}") from None
    if window_s <= 0:
        raise ValueError(f"the window must be longer than 0, got {text!r}")
    return FrequencyCap(limit, window_s, window.strip())


class CapGate:
    """The frequency cap as a consent gate (``insider.consent.Gate``): commercial messages only.

    Each batch's commercial messages are admitted in the batch's order, in one call to the
    repository, which counts and marks them for the whole deployment. One over the cap
    waits until the count allows another (``action`` wait) or ends suppressed (``suppress``).
    ``held`` is told the action of each message held back (the metrics).
    """

    def __init__(
        self,
        repository: CapStore,
        cap: FrequencyCap,
        action: str = WAIT,
        *,
        held: Callable[[str], None] | None = None,
    ) -> None:
        if action not in CAP_ACTIONS:
            raise ValueError(f"a cap's action is one of {', '.join(CAP_ACTIONS)}, not {action!r}")
        self._repository = repository
        self.cap = cap
        self.action = action
        self._held = held

    async def judge(self, messages: Sequence[Message], now: datetime) -> dict[int, Verdict]:
        candidates = [(m.id, m.recipient_phone) for m in messages if m.category is Category.COMMERCIAL]
        if not candidates:
            return {}
        # The repository reckons on the database's clock (the deployment's), not ``now``.
        decided = await self._repository.admit_capped(candidates, self.cap.limit, self.cap.window_s)
        verdicts: dict[int, Verdict] = {}
        for message_id, until in decided.items():
            if until is None:
                continue
            if self.action == WAIT:
                verdicts[message_id] = Wait(until, CAP, f"{self._reached()}: the next may go at {until.isoformat()}")
            else:
                verdicts[message_id] = Suppress(CAP, f"{self._reached()} already: over the cap, never sent")
            if self._held is not None:
                self._held(self.action)
        return verdicts

    def _reached(self) -> str:
        n = self.cap.limit
        return f"{n} commercial message{'' if n == 1 else 's'} to this number within {self.cap.window_text}"
