"""One message to the providers its route names: failover, breakers, throttling, rates, and what each try did.

A message moves to the route's next provider only when the previous one certainly did not
accept it: a refused connection, an answered error, an SMPP error response, an open
breaker, a provider throttling or at its rate. After an ambiguous outcome (a timeout, a
cut after the request went out) it goes again to the same provider with the same key,
unless its route sets ``failover_on_ambiguous``; then the next provider is tried and the
try is marked as a possible duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from insider.domain import Outcome, SendResult
from insider.ports import Clock, SmsClient
from insider.providers.breaker import BreakerState, CircuitBreaker
from insider.providers.config import ProviderSpec, RouteSpec
from insider.providers.limits import Limiter
from insider.providers.routing import Router

# A provider that throttles without saying for how long is left alone this long, doubling
# while it goes on, up to the cap; one accepted message resets it.
THROTTLE_S = 1.0
THROTTLE_MAX_S = 60.0
# A send whose provider's rate turn is at most this far away waits for it in its batch; one
# further away (but within the provider's timeout) goes back to pending, due at its turn, so
# that its batch ends and the next batch's messages to other providers are not held back.
RATE_HOLD_S = 0.25
# The longest a send waits at start-up for the operators' switches to be read (the database may be down).
SWITCHES_WAIT_S = 1.0
# A provider whose concurrency the other processes hold whole is looked at again after this long.
SHARE_WAIT_S = 1.0
RECENT_ERRORS = 10


class ProviderRates(Protocol):
    """The deployment-wide rate of each provider (a row per provider in the database)."""

    async def take_send(self, provider: str, rate: float, max_wait_s: float) -> float | None:
        """Reserve one send at ``rate`` per second: the seconds to wait before it may go, or None
        (nothing reserved) when that would be more than ``max_wait_s``."""

    async def next_turn_in(self, provider: str) -> float:
        """The seconds until ``provider``'s next free turn (0 when it is free now); nothing reserved."""


class TryObserver(Protocol):
    """Told of every provider request as it ends (metrics per provider)."""

    def provider_tried(self, provider: str, result: SendResult, duration_s: float) -> None:
        """``provider`` answered ``result`` (or failed to) after ``duration_s``."""


@dataclass(frozen=True, slots=True)
class Tried:
    """One provider's try at one message, for the history."""

    provider: str
    result: SendResult
    at: datetime
    duration_ms: float
    possible_duplicate: bool = False  # ambiguous, and the route moved on to another provider


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What became of one message: the last result, who accepted it (or may have it), and every try."""

    result: SendResult
    provider: str | None
    tries: tuple[Tried, ...]
    route: str
    not_attempted: bool = False  # no provider could take it now: not an attempt, it goes again later


@dataclass(eq=False, slots=True)
class ProviderRuntime:
    """One provider while the service runs: its client, breaker, concurrency, throttle and counts."""

    spec: ProviderSpec
    client: SmsClient
    breaker: CircuitBreaker | None
    in_flight: Limiter  # this process's share of its concurrency
    share_counted: bool = True  # False until the processes sharing its concurrency were first counted
    enabled: bool = True  # an operator's choice, shared by the deployment
    throttled_until: float = 0.0
    throttle_s: float = 0.0
    sent: int = 0
    failed: int = 0
    throttled: int = 0
    deferred_next: float = 0.0  # the monotonic time after the last turn handed to a deferred message
    latency_s_total: float = 0.0
    recent_errors: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state if self.breaker is not None else BreakerState.CLOSED

    def cost(self, segments: int) -> float | None:
        """What a message of ``segments`` costs through this provider, when it has a price."""
        return None if self.spec.price is None else round(self.spec.price * segments, 6)

    def unavailable(self, now: float) -> tuple[str, float | None] | None:
        """Why it takes nothing now, and for how long at least (None: until an operator acts); None when it may."""
        if not self.enabled:
            return "disabled", None
        if now < self.throttled_until:
            return "throttled", self.throttled_until - now
        if self.in_flight.capacity == 0 and self.share_counted:
            return "its concurrency is the other processes' share", SHARE_WAIT_S
        if self.breaker is not None and not self.breaker.allows():
            return "breaker open", self.breaker.retry_in_s
        return None


class Dispatcher:
    """Sends one message through its route's providers, in order, and says what each try did."""

    def __init__(
        self,
        providers: Sequence[ProviderRuntime],
        router: Router,
        clock: Clock,
        *,
        rates: ProviderRates | None = None,
        rate_hold_s: float = RATE_HOLD_S,
        observer: TryObserver | None = None,
    ) -> None:
        self.providers: Mapping[str, ProviderRuntime] = {p.name: p for p in providers}
        self.router = router
        self._clock = clock
        self._rates = rates
        # Set once the operators' switches are read (ProviderSwitches); None: there are none to read.
        self.switches_read: asyncio.Event | None = None
        self._rate_hold_s = rate_hold_s
        self._observer = observer

    async def send(
        self,
        to: str,
        content: str,
        idempotency_key: str,
        *,
        category: str = "transactional",
        priority: int = 5,
        pinned: str | None = None,
        on_try: Callable[[str], None] | None = None,
    ) -> Dispatched:
        """Try the route's providers in order until one accepts, refuses for good, or may have it.

        ``pinned`` is the provider an earlier ambiguous attempt left the message with; ``on_try``
        is told each provider as its request starts (so that a caller cut short knows which one
        may have it).
        """
        if self.switches_read is not None and not self.switches_read.is_set():
            with contextlib.suppress(TimeoutError):  # unread (the database down): as they were
                async with asyncio.timeout(SWITCHES_WAIT_S):
                    await self.switches_read.wait()
        routed = self.router.choose(to, category, priority)
        assert routed is not None, "a default route always exists"
        route = routed.route
        order = routed.providers
        if pinned is not None and pinned in self.providers and not route.failover_on_ambiguous:
            order = (pinned,)  # it may have it already: the same provider, the same key
        tries: list[Tried] = []
        waits: list[str] = []
        soonest: float | None = None
        for name in order:
            provider = self.providers[name]
            why = provider.unavailable(self._clock.monotonic())
            if why is None and provider.spec.rate is not None and self._rates is not None:
                turn = await self._rate_turn(provider, provider.spec.rate)
                if isinstance(turn, tuple):
                    waits.append(f"{name} ({turn[0]})")
                    soonest = turn[1] if soonest is None else min(soonest, turn[1])
                    break  # its turn comes within its timeout: it waits for it, not another provider
                if turn is None:
                    why = ("at its rate", 1.0 / provider.spec.rate)
                elif turn > 0:
                    await self._clock.sleep(turn)
            if why is not None:
                waits.append(f"{name} ({why[0]})")
                if why[1] is not None:
                    soonest = why[1] if soonest is None else min(soonest, why[1])
                continue
            tried = await self._try(provider, to, content, idempotency_key, on_try)
            if isinstance(tried, tuple):  # no place came free, or it began throttling while this one waited
                waits.append(f"{name} ({tried[0]})")
                soonest = tried[1] if soonest is None else min(soonest, tried[1])
                continue
            result = tried.result
            if result.outcome is Outcome.SENT:
                tries.append(tried)
                return Dispatched(result, name, tuple(tries), route.name)
            if result.outcome is Outcome.RETRY and result.ambiguous:
                if not route.failover_on_ambiguous:
                    tries.append(tried)
                    return Dispatched(result, name, tuple(tries), route.name)
                tried = Tried(tried.provider, result, tried.at, tried.duration_ms, possible_duplicate=True)
            tries.append(tried)
        if not tries:
            error = "no provider can take it now: " + ", ".join(waits)
            result = SendResult(Outcome.RETRY, error=error, retry_after_s=soonest)
            return Dispatched(result, None, (), route.name, not_attempted=True)
        last = tries[-1].result
        if all(t.result.outcome is Outcome.FAILED for t in tries) and not waits:
            return Dispatched(last, None, tuple(tries), route.name)  # every provider refused it for good
        retry = SendResult(
            Outcome.RETRY,
            status_code=last.status_code,
            error=last.error,
            retry_after_s=last.retry_after_s if len(tries) == 1 else soonest,
            throttled=last.throttled,
        )
        return Dispatched(retry, None, tuple(tries), route.name)

    async def _rate_turn(self, provider: ProviderRuntime, rate: float) -> float | tuple[str, float] | None:
        """Reserve ``provider``'s next turn when it is near: the seconds to wait for it in the batch.
        ``("at its rate", seconds)`` when it is further away but within the provider's timeout (the
        message goes back to pending, due then); None when it is beyond (the route's next provider).

        Messages sent back are due one turn apart, in the order this process sent them back, so they
        do not all come back at once for the same turn.
        """
        assert self._rates is not None
        name, timeout_s = provider.name, provider.spec.timeout_s
        hold_s = min(self._rate_hold_s, timeout_s)
        wait_s = await self._rates.take_send(name, rate, hold_s)
        if wait_s is not None:
            return wait_s
        turn_in_s = await self._rates.next_turn_in(name)
        if turn_in_s > timeout_s:
            return None
        now = self._clock.monotonic()
        due_in_s = max(turn_in_s, provider.deferred_next - now)
        provider.deferred_next = now + due_in_s + 1.0 / rate
        return "at its rate", due_in_s

    async def _try(
        self, provider: ProviderRuntime, to: str, content: str, key: str, on_try: Callable[[str], None] | None
    ) -> Tried | tuple[str, float]:
        """One request to ``provider`` once a place among its requests in flight is free; why not
        and for how long instead, when none came within its timeout or it began throttling
        meanwhile (a throttling answer to a request ahead of this one)."""
        if not await provider.in_flight.acquire(provider.spec.timeout_s):
            if provider.breaker is not None:
                provider.breaker.released()  # the probe it may have taken was never used
            return "its concurrency is taken", SHARE_WAIT_S
        now = self._clock.monotonic()
        if now < provider.throttled_until:
            provider.in_flight.release()
            if provider.breaker is not None:
                provider.breaker.released()
            return "throttled", provider.throttled_until - now
        if on_try is not None:
            on_try(provider.name)
        at = self._clock.now()
        started = self._clock.monotonic()
        try:
            result = await provider.client.send(to, content, key)
        except asyncio.CancelledError:
            if provider.breaker is not None:
                provider.breaker.released()
            raise
        except Exception as exc:  # an adapter that broke its promise not to raise
            result = SendResult(Outcome.RETRY, error=f"{type(exc).__name__}: {exc}", ambiguous=True)
        finally:
            provider.in_flight.release()
        elapsed = self._clock.monotonic() - started
        self._note(provider, result, elapsed)
        if result.throttled and result.retry_after_s is None:  # it said not for how long: its pause, as taken
            result = dataclasses.replace(
                result, retry_after_s=max(0.0, provider.throttled_until - self._clock.monotonic())
            )
        if self._observer is not None:
            self._observer.provider_tried(provider.name, result, elapsed)
        return Tried(provider.name, result, at, round(elapsed * 1000, 1))

    def _note(self, provider: ProviderRuntime, result: SendResult, elapsed_s: float) -> None:
        breaker = provider.breaker
        provider.latency_s_total += elapsed_s
        if result.outcome is Outcome.SENT:
            provider.sent += 1
            provider.throttle_s = 0.0
            if breaker is not None:
                breaker.succeeded()
            return
        provider.failed += 1
        provider.recent_errors.append((self._clock.now(), result.error or "unknown error"))
        if result.throttled:
            provider.throttled += 1
            provider.throttle_s = min(THROTTLE_MAX_S, max(THROTTLE_S, provider.throttle_s * 2))
            pause = result.retry_after_s if result.retry_after_s is not None else provider.throttle_s
            provider.throttled_until = max(provider.throttled_until, self._clock.monotonic() + pause)
            if breaker is not None:
                breaker.released()  # it is busy, not down
        elif breaker is not None:
            if result.outcome is Outcome.FAILED:
                breaker.succeeded()  # it answered: healthy, it only refused this message
            else:
                breaker.failed()


def runtime(spec: ProviderSpec, client: SmsClient, clock: Clock, *, breaker: bool = True) -> ProviderRuntime:
    """A provider's runtime state from its settings (no breaker for the one-provider shorthand)."""
    return ProviderRuntime(
        spec=spec,
        client=client,
        breaker=CircuitBreaker(spec.breaker, clock) if breaker else None,
        in_flight=Limiter(spec.concurrency, clock),
    )


def single(name: str, client: SmsClient, clock: Clock, *, concurrency: int = 1_000_000) -> Dispatcher:
    """One provider and one route to it, with no breaker: a lone SMS client behaves as it always did."""
    spec = ProviderSpec(name=name, kind="webhook", timeout_s=0.0, concurrency=concurrency)
    route = RouteSpec("default", (name,))
    return Dispatcher([runtime(spec, client, clock, breaker=False)], Router([route], [spec]), clock)
