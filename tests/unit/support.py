"""Test doubles shared by the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from insider.adapters.memory import Request
from insider.domain import Outcome, SendResult


def accepted(request: Request) -> SendResult:
    return SendResult(Outcome.SENT, status_code=202, provider_message_id=f"pm-{request.content}")


class HeldProvider:
    """Answers only when the test sets ``release``; counts the requests in flight."""

    def __init__(self, answer: Callable[[Request], SendResult] = accepted) -> None:
        self.answer = answer
        self.release = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0

    async def __call__(self, request: Request) -> SendResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return self.answer(request)
