"""A provider's circuit breaker: open after failures, half-open after a cool-down with a probe, closed on success.

Kept small rather than taken from a library: the breakers found (purgatory, aiobreaker) keep
time with ``time.time()``, which the tests' fake clock cannot drive, and count consecutive
failures only, where this one also opens on a failure ratio over a window.
"""

from __future__ import annotations

import enum
from collections import deque

from insider.ports import Clock
from insider.providers.config import Breaker


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # requests go
    OPEN = "open"  # requests do not go, until the cool-down ends
    HALF_OPEN = "half-open"  # a few requests probe; one success closes it, one failure opens it again


class CircuitBreaker:
    """One provider's breaker, on the injected clock; only transport failures and error answers count.

    It opens after ``failures`` consecutive failures, or when at least ``min_calls`` calls of
    the last ``window_s`` failed in a share of ``ratio`` or more. Open, it refuses every
    request until ``cooldown_s`` has passed; then it is half-open and lets ``probes``
    requests through at once: the first success closes it, a failure opens it again for
    another cool-down. A request that may have reached the provider counts as a failure;
    throttling (a 429) does not: that provider is slowed down instead.
    """

    def __init__(self, settings: Breaker, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._in_a_row = 0
        self._opened_at = 0.0
        self._probing = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self.opened = 0  # how often it opened

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock.monotonic() - self._opened_at >= self.settings.cooldown_s:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def retry_in_s(self) -> float:
        """How long until an open breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.settings.cooldown_s - self._clock.monotonic())

    def allows(self) -> bool:
        """Whether a request may go now; in half-open, it takes one of the probes (give it back by recording)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._state is BreakerState.OPEN:  # the cool-down just ended
            self._state = BreakerState.HALF_OPEN
            self._probing = 0
        if self._probing >= self.settings.probes:
            return False
        self._probing += 1
        return True

    def succeeded(self) -> None:
        self._note(failed=False)
        self._in_a_row = 0
        if self._state is not BreakerState.CLOSED:
            self._state = BreakerState.CLOSED
            self._probing = 0
            self._calls.clear()

    def failed(self) -> None:
        self._note(failed=True)
        self._in_a_row += 1
        if self._state is BreakerState.HALF_OPEN or self._trips():
            self._open()

    def released(self) -> None:
        """A request that took a probe ended with no verdict on the provider (throttled, cancelled)."""
        if self._state is BreakerState.HALF_OPEN and self._probing:
            self._probing -= 1

    def _trips(self) -> bool:
        if self._in_a_row >= self.settings.failures:
            return True
        ratio = self.settings.ratio
        if ratio is None or len(self._calls) < self.settings.min_calls:
            return False
        failed = sum(1 for _, f in self._calls if f)
        return failed / len(self._calls) >= ratio

    def _note(self, *, failed: bool) -> None:
        now = self._clock.monotonic()
        self._calls.append((now, failed))
        horizon = now - self.settings.window_s
        while self._calls and self._calls[0][0] < horizon:
            self._calls.popleft()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock.monotonic()
        self._probing = 0
        self._in_a_row = 0
        self._calls.clear()
        self.opened += 1
