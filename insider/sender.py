"""One batch, top to bottom: claim, validate, send concurrently, record, cache, log."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog

from insider.domain import Message, MessageStatus, Outcome, Resolution, SendResult, mask_phone, validation_error
from insider.ports import Clock, MessageRepository, RepositoryUnavailable, SentCache, SentEntry, SmsClient

if TYPE_CHECKING:
    from insider.metrics import Observer

log = structlog.get_logger("insider.sender")
T = TypeVar("T")

# A batch tops itself up after failing invalid rows, but only this many times, so
# that a table full of invalid rows cannot keep one batch busy.
MAX_CLAIM_ROUNDS = 5
# Retries of the final write when the database blinks right after the sends.
RESOLVE_RETRIES_S = (0.2, 1.0, 3.0)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one batch did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SenderOptions:
    """The knobs of a batch; every one is an INSIDER_* setting."""

    batch_size: int = 2
    content_max_length: int = 160
    lease_s: float = 60.0
    concurrency: int = 8
    max_attempts: int = 5
    retry_backoff_s: float = 30.0
    retry_backoff_max_s: float = 3600.0


class BatchSender:
    """Sends one batch of due messages; the supervisor decides when."""

    def __init__(
        self,
        repository: MessageRepository,
        sms_client: SmsClient,
        cache: SentCache | None,
        clock: Clock,
        options: SenderOptions,
        *,
        jitter: Callable[[], float] = random.random,
        observer: Observer | None = None,
    ) -> None:
        self._repository = repository
        self._sms = sms_client
        self._cache = cache
        self._clock = clock
        self.options = options
        self._jitter = jitter
        self._observer = observer  # told of every attempt (metrics); None: nobody
        # One bound for every batch of this sender: batches that overlap (drain mode) share it.
        self._in_flight = asyncio.Semaphore(options.concurrency)

    def backoff_s(self, attempts: int, retry_after_s: float | None) -> float:
        """Delay before the next attempt: exponential with equal jitter, capped; Retry-After wins."""
        if retry_after_s is not None:
            return max(0.0, retry_after_s)
        o = self.options
        # The exponent is bounded so that a large attempt count cannot overflow a float.
        ceiling = min(o.retry_backoff_max_s, o.retry_backoff_s * 2.0 ** min(max(0, attempts - 1), 64))
        return ceiling / 2 + ceiling / 2 * self._jitter()

    async def run_batch(self, stopping: asyncio.Event | None = None) -> BatchReport:
        """Claim up to a batch of due messages, send them, and record every outcome.

        When ``stopping`` is set, requests not yet started are not started and their
        messages go back to pending. If the batch is cancelled, requests in flight are
        abandoned and their messages go back to pending (same idempotency key). The
        claim and the write of outcomes run to their end despite a cancellation, and the
        batch ends only after them: whoever cancelled it may close the pool next.
        """
        started = self._clock.monotonic()
        resolutions: dict[int, Resolution] = {}
        claimed: list[Message] = []
        sendable: list[Message] = []
        tasks: list[asyncio.Task[None]] = []

        async def claim(wanted: int) -> list[Message]:
            got = await self._repository.claim(wanted, self.options.lease_s)
            # Noted inside the uninterrupted claim: a stop that lands while the rows come
            # back must still find them, to put them back.
            claimed.extend(got)
            return got

        queue = iter(sendable)  # shared by the workers: each message is taken by exactly one

        async def worker() -> None:
            # A few workers rather than a task per message: the same concurrency for far
            # fewer task switches, which showed in the profile of a drain.
            for message in queue:
                async with self._in_flight:
                    if stopping is not None and stopping.is_set():
                        return  # this and the rest are left unresolved: released below
                    resolutions[message.id] = await self._send_one(message)

        try:
            for _ in range(MAX_CLAIM_ROUNDS):
                wanted = self.options.batch_size - len(sendable)
                # Committed before it returns: a cancelled claim would strand its rows until their lease ends.
                got = await _uninterrupted(claim(wanted))
                for message in got:
                    reason = validation_error(message.recipient_phone, message.content, self.options.content_max_length)
                    if reason is None:
                        sendable.append(message)
                    else:
                        resolutions[message.id] = Resolution(
                            message.id, message.claim_token, MessageStatus.FAILED, last_error=f"invalid: {reason}"
                        )
                        log.warning("send", **_send_fields(message, "invalid"), error=reason)
                        if self._observer is not None:
                            self._observer.send_attempt("invalid", None)
                if len(got) < wanted or len(sendable) == self.options.batch_size:
                    break
            tasks = [asyncio.create_task(worker()) for _ in range(min(self.options.concurrency, len(sendable)))]
            if tasks:
                await asyncio.gather(*tasks)
        except BaseException as exc:  # cancelled (a stop) or broken: nothing claimed may stay stranded
            why = "stopped" if isinstance(exc, asyncio.CancelledError) else "batch failed"

            async def put_back() -> None:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._release_unresolved(claimed, resolutions, why)
                await self._finish(resolutions)

            with contextlib.suppress(Exception):  # _finish logged it; the original error must go on
                await _uninterrupted(put_back())
            raise
        self._release_unresolved(claimed, resolutions, "stopped")
        await _uninterrupted(self._finish(resolutions))
        return self._report(claimed, resolutions, self._clock.monotonic() - started)

    def _release_unresolved(self, claimed: list[Message], resolutions: dict[int, Resolution], why: str) -> None:
        for message in claimed:
            if message.id not in resolutions:
                resolutions[message.id] = Resolution(
                    message.id, message.claim_token, MessageStatus.PENDING, retry_in_s=0.0, uncount_attempt=True
                )
                log.info("send", **_send_fields(message, "released"), reason=why)

    async def _send_one(self, message: Message) -> Resolution:
        t0 = self._clock.monotonic()
        try:
            result = await self._sms.send(message.recipient_phone, message.content, message.idempotency_key)
        except asyncio.CancelledError:
            duration_ms = round((self._clock.monotonic() - t0) * 1000, 1)
            log.info("send", **_send_fields(message, "interrupted"), duration_ms=duration_ms)
            raise
        except Exception as exc:  # an adapter that broke its promise not to raise
            result = SendResult(Outcome.RETRY, error=f"{type(exc).__name__}: {exc}")
        duration_ms = round((self._clock.monotonic() - t0) * 1000, 1)
        resolution = self._resolve(message, result)
        if result.outcome is Outcome.RETRY:
            outcome = "retry" if resolution.status is MessageStatus.PENDING else "failed"
        else:
            outcome = resolution.status.value
        fields = _send_fields(message, outcome)
        fields.update(
            status_code=result.status_code, duration_ms=duration_ms, provider_message_id=result.provider_message_id
        )
        if self._observer is not None:
            self._observer.send_attempt(outcome, duration_ms / 1000)
        if result.outcome is Outcome.SENT and not result.provider_message_id:
            log.warning("send", **fields, warning="provider accepted it without a messageId")
        elif resolution.status is MessageStatus.SENT:
            log.info("send", **fields)
        else:
            log.warning(
                "send",
                **fields,
                error=resolution.last_error,
                retry_in_s=None if resolution.retry_in_s is None else round(resolution.retry_in_s, 3),
            )
        return resolution

    def _resolve(self, message: Message, result: SendResult) -> Resolution:
        if result.outcome is Outcome.SENT:
            return Resolution(
                message.id,
                message.claim_token,
                MessageStatus.SENT,
                sent_at=self._clock.now(),
                message_id=result.provider_message_id or None,
                last_error=None,
            )
        error = result.error or "unknown error"
        if result.outcome is Outcome.RETRY:
            if message.attempts >= self.options.max_attempts:
                return Resolution(
                    message.id,
                    message.claim_token,
                    MessageStatus.FAILED,
                    last_error=f"gave up after {message.attempts} attempts: {error}",
                )
            return Resolution(
                message.id,
                message.claim_token,
                MessageStatus.PENDING,
                last_error=error,
                retry_in_s=self.backoff_s(message.attempts, result.retry_after_s),
            )
        return Resolution(message.id, message.claim_token, MessageStatus.FAILED, last_error=error)

    async def _finish(self, resolutions: dict[int, Resolution]) -> None:
        """Record every outcome in one write, then cache the sent ones in one round trip."""
        if not resolutions:
            return
        batch = list(resolutions.values())
        for delay in (*RESOLVE_RETRIES_S, None):
            try:
                await self._repository.resolve(batch)
                break
            except RepositoryUnavailable as exc:
                if delay is None:
                    log.error(
                        "outcomes not recorded; their leases will expire and they will be sent again "
                        "with the same idempotency key",
                        count=len(batch),
                        error=str(exc),
                    )
                    raise
                await self._clock.sleep(delay)
        sent = [
            SentEntry(r.message_id, r.sent_at, r.id)
            for r in batch
            if r.status is MessageStatus.SENT and r.message_id and r.sent_at
        ]
        if sent and self._cache is not None:
            try:
                await self._cache.remember(sent)
            except Exception as exc:  # the database is the source of truth; the cache is a convenience
                log.warning("cache write skipped", count=len(sent), error=f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _report(claimed: list[Message], resolutions: dict[int, Resolution], duration_s: float) -> BatchReport:
        statuses = [r.status for r in resolutions.values()]
        released = sum(1 for r in resolutions.values() if r.uncount_attempt)
        return BatchReport(
            claimed=len(claimed),
            sent=statuses.count(MessageStatus.SENT),
            retried=statuses.count(MessageStatus.PENDING) - released,
            failed=statuses.count(MessageStatus.FAILED),
            released=released,
            duration_s=duration_s,
        )


def _send_fields(message: Message, outcome: str) -> dict[str, object]:
    """The stable keys of every ``send`` log event; the recipient masked."""
    return {
        "message_id": message.id,
        "to": mask_phone(message.recipient_phone),
        "attempt": message.attempts,
        "outcome": outcome,
    }


async def _uninterrupted(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile, then re-raise that.

    ``asyncio.shield`` alone returns at the cancellation and leaves the work running in
    the background, where whoever cancelled (a stop, then the container closing the
    pool) would pull the database from under it.
    """
    task = asyncio.ensure_future(awaitable)
    interruption: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})  # unlike await task, a cancellation here does not reach the task
        except asyncio.CancelledError as exc:
            interruption = exc
    if interruption is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller must see
        raise interruption
    return task.result()
