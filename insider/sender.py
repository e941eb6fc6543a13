"""One batch, top to bottom: claim, validate, send concurrently, record, cache, log."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from insider.bounded import BoundedShield
from insider.consent import Gate, Suppress, Verdict
from insider.domain import (
    Attempt,
    BatchReport,
    InvalidMessage,
    Message,
    MessageStatus,
    Outcome,
    Resolution,
    SendOrder,
    SendResult,
    check_message,
    mask_phone,
    measure,
    text_as_sent,
)
from insider.logs import get_logger
from insider.ports import Clock, Observer, RepositoryUnavailable, SendQueue, SentCache, SentEntry, SmsClient
from insider.providers.dispatch import Dispatcher, Tried, single
from insider.receipt_writer import warn_ambiguous

log = get_logger("insider.sender")
T = TypeVar("T")

# A batch tops itself up after failing invalid rows, but only this many times, so
# that a table full of invalid rows cannot keep one batch busy.
MAX_CLAIM_ROUNDS = 5
# Retries of the final write when the database blinks right after the sends.
RESOLVE_RETRIES_S = (0.2, 1.0, 3.0)
# Once a batch is cancelled (a stop, a shutdown), what it must still do (finish its claim,
# record what it abandoned) gets this long at most; what is not recorded by then is
# released by its lease. Every wait has a deadline, whatever the database does.
RECORD_BUDGET_S = 3.0
# Added to the longest a batch can take, for claiming and recording it.
LEASE_MARGIN_S = 30.0

__all__ = ["BatchReport", "BatchSender", "SenderOptions", "lease_for"]


@dataclass(frozen=True, slots=True)
class SenderOptions:
    """The knobs of a batch; each is an INSIDER_* setting in the service.

    ``send_timeout_s`` is the longest one provider request may take (the SMS client's
    own timeout, INSIDER_WEBHOOK_TIMEOUT in the service): the lease of a claim follows
    from it (see :meth:`lease_s_for`). ``lease_s`` overrides the derived lease (tests);
    leave it None.
    """

    batch_size: int = 2
    content_max_length: int = 160
    concurrency: int = 8
    max_attempts: int = 5
    retry_backoff_s: float = 30.0
    retry_backoff_max_s: float = 3600.0
    send_timeout_s: float = 10.0
    lease_s: float | None = None
    max_segments: int = 0  # 0: no limit beyond content_max_length
    default_region: str = ""  # ISO country code for national number forms; empty: international only
    send_order: str = SendOrder.OLDEST.value  # among due messages of one priority: oldest or newest first
    commercial_footer: str = ""  # appended to what commercial messages send (domain.text_as_sent)

    @property
    def claim_lease_s(self) -> float:
        """The lease of a claim when one batch runs at a time (see :meth:`lease_s_for`)."""
        return self.lease_s_for(1)

    def lease_s_for(self, lanes: int) -> float:
        """How long a claim holds its messages: the longest the batch can take, plus a margin.

        A batch sends in ceil(lanes x batch / concurrency) waves, each bounded by the send
        timeout (when ``lanes`` batches run side by side they share the bound, so one may
        wait for the others' waves); LEASE_MARGIN_S covers claiming and recording. A
        process that dies leaves its claims to be taken again after this long.
        """
        if self.lease_s is not None:
            return self.lease_s
        return lease_for(self.batch_size, self.concurrency, self.send_timeout_s, lanes)


def lease_for(batch_size: int, concurrency: int, send_timeout_s: float, lanes: int = 1) -> float:
    """ceil(lanes x batch_size / concurrency) x send_timeout_s + LEASE_MARGIN_S."""
    waves = math.ceil(max(1, lanes) * batch_size / max(1, concurrency))
    return waves * send_timeout_s + LEASE_MARGIN_S


class BatchSender:
    """Sends one batch of due messages; the supervisor decides when."""

    def __init__(
        self,
        repository: SendQueue,
        sms_client: SmsClient | Dispatcher,
        cache: SentCache | None,
        clock: Clock,
        options: SenderOptions,
        *,
        jitter: Callable[[], float] = random.random,
        observer: Observer | None = None,
        gates: Sequence[Gate] = (),
    ) -> None:
        self._repository = repository
        self._gates = tuple(gates)  # consent, in order: what holds a claimed message back
        # One provider (an SMS client of its own) is one route to it, as it always was.
        self._dispatch = sms_client if isinstance(sms_client, Dispatcher) else single("default", sms_client, clock)
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

    async def run_batch(self, stopping: asyncio.Event | None = None, *, lanes: int = 1) -> BatchReport:
        """Claim up to a batch of due messages, send them, and record every outcome.

        ``lanes`` is how many batches run side by side under this sender's one concurrency
        bound (the supervisor's drain mode runs two); the claim's lease allows for them.
        When ``stopping`` is set, requests not yet started are not started and their
        messages go back to pending. If the batch is cancelled, requests in flight are
        abandoned and their messages go back to pending (same idempotency key). The
        claim and the write of outcomes run to their end despite a cancellation, and the
        batch ends only after them: whoever cancelled it may close the pool next.
        """
        started = self._clock.monotonic()
        shield = BoundedShield(self._clock, RECORD_BUDGET_S)
        resolutions: dict[int, Resolution] = {}
        claimed: list[Message] = []
        sendable: list[Message] = []
        tasks: list[asyncio.Task[None]] = []
        recipients: dict[int, str] = {}  # the recipient of each sendable message, in E.164
        abandoned: dict[int, Attempt] = {}  # requests a stop cut short: kept in the history when put back

        order = SendOrder(self.options.send_order)

        async def claim(wanted: int) -> list[Message]:
            got = await self._repository.claim(wanted, self.options.lease_s_for(lanes), order)
            # Noted inside the uninterrupted claim: a stop that lands while the rows come
            # back must still find them, to put them back. Rows that expired on the way are
            # not held; they are only reported.
            held = [m for m in got if m.status is MessageStatus.SENDING]
            claimed.extend(held)
            for message in got:
                if message.status is MessageStatus.EXPIRED:
                    log.info("send", **_send_fields(message, "expired"), error=message.last_error)
                    if self._observer is not None:
                        self._observer.send_attempt("expired", None)
                elif message.status is MessageStatus.SUPPRESSED:  # its number's consent was withdrawn
                    log.info("send", **_send_fields(message, "suppressed"), reason=message.suppression_reason)
                    if self._observer is not None:
                        self._observer.send_attempt("suppressed", None)
            return held

        queue = iter(sendable)  # shared by the workers: each message is taken by exactly one

        async def worker() -> None:
            # A few workers rather than a task per message: the same concurrency for far
            # fewer task switches, which showed in the profile of a drain.
            for message in queue:
                async with self._in_flight:
                    if stopping is not None and stopping.is_set():
                        return  # this and the rest are left unresolved: released below
                    if message.valid_until is not None and self._clock.now() >= message.valid_until:
                        resolutions[message.id] = self._expire(message)
                        continue
                    resolutions[message.id] = await self._send_one(message, recipients[message.id], abandoned)

        try:
            for _ in range(MAX_CLAIM_ROUNDS):
                wanted = self.options.batch_size - len(sendable)
                # Committed before it returns: a cancelled claim would strand its rows until their lease ends.
                got = await shield.run(claim(wanted))
                for message in got:
                    o = self.options
                    try:
                        phone = check_message(
                            message.recipient_phone,
                            message.content,
                            o.content_max_length,
                            region=o.default_region,
                            max_segments=o.max_segments,
                        )
                    except InvalidMessage as exc:
                        resolutions[message.id] = Resolution(
                            message.id,
                            message.claim_token,
                            MessageStatus.FAILED,
                            last_error=f"invalid: {exc}",
                            attempt=Attempt(self._clock.now(), "invalid", message.attempts, error=str(exc)),
                        )
                        log.warning("send", **_send_fields(message, "invalid"), error=str(exc))
                        if self._observer is not None:
                            self._observer.send_attempt("invalid", None)
                        continue
                    sendable.append(message)
                    recipients[message.id] = phone
                if len(got) < wanted or len(sendable) == self.options.batch_size:
                    break
            if self._gates and sendable:
                sendable[:] = await self._judge(sendable, resolutions)  # before any worker reads the queue
            tasks = [asyncio.create_task(worker()) for _ in range(min(self.options.concurrency, len(sendable)))]
            if tasks:
                await asyncio.gather(*tasks)
        except BaseException as exc:  # cancelled (a stop) or broken: nothing claimed may stay stranded
            why = "stopped" if isinstance(exc, asyncio.CancelledError) else "batch failed"
            if isinstance(exc, asyncio.CancelledError):
                shield.interrupted()

            async def put_back() -> None:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._release_unresolved(claimed, resolutions, why, abandoned)
                await self._finish(resolutions)

            with contextlib.suppress(Exception):  # _finish logged it; the original error must go on
                await shield.run(put_back())
            raise
        self._release_unresolved(claimed, resolutions, "stopped", abandoned)
        await shield.run(self._finish(resolutions))
        return self._report(claimed, resolutions, self._clock.monotonic() - started)

    async def _judge(self, messages: list[Message], resolutions: dict[int, Resolution]) -> list[Message]:
        """Run the consent gates in order; what they hold back is resolved here, the rest returned."""
        now = self._clock.now()
        for gate in self._gates:
            verdicts = await gate.judge(messages, now)
            if not verdicts:
                continue
            kept: list[Message] = []
            for message in messages:
                verdict = verdicts.get(message.id)
                if verdict is None:
                    kept.append(message)
                else:
                    resolutions[message.id] = self._held_back(message, verdict, now)
            messages = kept
        return messages

    def _held_back(self, message: Message, verdict: Verdict, now: datetime) -> Resolution:
        """A message a gate holds back: suppressed for good, or pending until it may go (not an attempt)."""
        outcome = "suppressed" if isinstance(verdict, Suppress) else "deferred"
        if self._observer is not None:
            self._observer.send_attempt(outcome, None)
        attempt = Attempt(now, outcome, message.attempts, error=verdict.detail)
        if isinstance(verdict, Suppress):
            log.info("send", **_send_fields(message, outcome), reason=verdict.reason, detail=verdict.detail)
            return Resolution(
                message.id,
                message.claim_token,
                MessageStatus.SUPPRESSED,
                last_error=None,
                uncount_attempt=True,
                attempt=attempt,
                suppression_reason=verdict.reason,
            )
        wait_s = max(0.0, (verdict.until - now).total_seconds())
        log.info(
            "send",
            **_send_fields(message, outcome),
            reason=verdict.reason,
            detail=verdict.detail,
            until=verdict.until.isoformat(),
        )
        return Resolution(
            message.id,
            message.claim_token,
            MessageStatus.PENDING,
            last_error=message.last_error,
            retry_in_s=wait_s,
            uncount_attempt=True,
            attempt=attempt,
            provider_pin=message.provider_pin,
            wait_reason=verdict.reason,
        )

    def _expire(self, message: Message, last_error: str | None = None, attempt: Attempt | None = None) -> Resolution:
        """A claimed message past its validUntil: never sent, ``expired``.

        ``last_error`` is the failure that made it retry, if one did; the repository words the
        reason with it, as it words the reason of every message that expires.
        """
        assert message.valid_until is not None
        fields = _send_fields(message, "expired")
        if last_error:
            fields["error"] = last_error
        log.info("send", **fields, valid_until=message.valid_until.isoformat())
        if self._observer is not None:
            self._observer.send_attempt("expired", None)
        return Resolution(
            message.id, message.claim_token, MessageStatus.EXPIRED, last_error=last_error or None, attempt=attempt
        )

    def _release_unresolved(
        self,
        claimed: list[Message],
        resolutions: dict[int, Resolution],
        why: str,
        abandoned: dict[int, Attempt],
    ) -> None:
        """Put back what was claimed and not resolved; a request cut short stays in the history."""
        for message in claimed:
            if message.id not in resolutions:
                cut = abandoned.get(message.id)
                resolutions[message.id] = Resolution(
                    message.id,
                    message.claim_token,
                    MessageStatus.PENDING,
                    retry_in_s=0.0,
                    uncount_attempt=True,
                    attempt=cut,
                    # A request cut short may have reached its provider: the next attempt goes there.
                    provider_pin=cut.provider if cut is not None and cut.provider else message.provider_pin,
                )
                log.info("send", **_send_fields(message, "released"), reason=why)

    async def _send_one(self, message: Message, recipient: str, abandoned: dict[int, Attempt]) -> Resolution:
        started_at = self._clock.now()
        t0 = self._clock.monotonic()
        tried: list[str] = []  # the providers its requests went to, in order
        try:
            dispatched = await self._dispatch.send(
                recipient,
                text_as_sent(message.content, message.category, self.options.commercial_footer),
                message.idempotency_key,
                category=message.category.value,
                priority=message.priority,
                pinned=message.provider_pin,
                on_try=tried.append,
            )
        except asyncio.CancelledError:
            duration_ms = round((self._clock.monotonic() - t0) * 1000, 1)
            log.info("send", **_send_fields(message, "interrupted"), duration_ms=duration_ms)
            # The provider may have it already: the history says so, and that it goes again (there).
            abandoned[message.id] = Attempt(
                started_at,
                "interrupted",
                message.attempts,
                duration_ms=duration_ms,
                error="stopped before the provider answered; sent again later with the same Idempotency-Key",
                provider=tried[-1] if tried else None,
            )
            raise
        result = dispatched.result
        if dispatched.not_attempted:
            return self._not_attempted(message, result)
        *before, last = dispatched.tries
        duration_ms = round((self._clock.monotonic() - t0) * 1000, 1)
        if result.outcome is Outcome.RETRY and result.throttled:
            outcome = "throttled"  # the provider is busy: it slows the message down, never fails it
        elif result.outcome is Outcome.RETRY:
            outcome = "retry" if message.attempts < self.options.max_attempts else "failed"
        else:
            outcome = result.outcome.value  # sent or failed, as the row becomes
        # The attempts go to the message's history in the same write as its outcome: the tries
        # of other providers first (a failover), then the last.
        attempt = Attempt(
            last.at,
            outcome,
            message.attempts,
            last.result.status_code,
            last.duration_ms,
            None if result.outcome is Outcome.SENT else (last.result.error or "unknown error"),
            last.result.provider_message_id,
            last.provider,
        )
        resolution = self._resolve(message, result, attempt, provider=dispatched.provider)
        pin = dispatched.provider if result.outcome is Outcome.RETRY and result.ambiguous else None
        if before or pin is not None:  # a failover's earlier tries, or a provider that may have it
            resolution = dataclasses.replace(
                resolution, earlier=tuple(_earlier(t, message.attempts) for t in before), provider_pin=pin
            )
        if resolution.status is MessageStatus.EXPIRED:
            return resolution  # retrying would go past its validUntil; _expire reported it
        fields = _send_fields(message, outcome)
        fields.update(
            status_code=result.status_code,
            duration_ms=duration_ms,
            provider_message_id=result.provider_message_id,
            provider=last.provider,
        )
        if before:
            fields["failed_over"] = [t.provider for t in before]
        if self._observer is not None:
            self._observer.send_attempt(outcome, duration_ms / 1000)
        if result.outcome is Outcome.SENT and (result.warning or not result.provider_message_id):
            log.warning("send", **fields, warning=result.warning or "provider accepted it without a messageId")
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

    def _not_attempted(self, message: Message, result: SendResult) -> Resolution:
        """No provider could take it now (all throttled, at their rate, breakers open, disabled): not an
        attempt; back to pending, due again when the soonest of them may take it (or after a backoff)."""
        retry_in_s = result.retry_after_s if result.retry_after_s is not None else self.backoff_s(1, None)
        log.info("send", **_send_fields(message, "waiting"), reason=result.error, retry_in_s=round(retry_in_s, 3))
        return Resolution(
            message.id,
            message.claim_token,
            MessageStatus.PENDING,
            last_error=result.error,
            retry_in_s=retry_in_s,
            uncount_attempt=True,
            provider_pin=message.provider_pin,
        )

    def _resolve(
        self, message: Message, result: SendResult, attempt: Attempt | None = None, *, provider: str | None = None
    ) -> Resolution:
        """The row's new state after ``result``; a sent one records ``provider`` and its cost."""
        if result.outcome is Outcome.SENT:
            footer = self.options.commercial_footer
            encoding, segments = measure(text_as_sent(message.content, message.category, footer))
            if self._observer is not None:
                self._observer.segments_sent(segments)
            return Resolution(
                message.id,
                message.claim_token,
                MessageStatus.SENT,
                sent_at=self._clock.now(),
                message_id=result.provider_message_id or None,
                last_error=None,
                segments=segments,
                encoding=encoding,
                attempt=attempt,
                provider=provider,
                cost=None if provider is None else self._dispatch.providers[provider].cost(segments),
            )
        error = result.error or "unknown error"
        if result.outcome is Outcome.RETRY:
            # A provider that throttles (429, ESME_RTHROTTLED) is busy, not refusing: the try is
            # in the history, but it does not count against INSIDER_MAX_ATTEMPTS.
            throttled = result.throttled
            if message.attempts >= self.options.max_attempts and not throttled:
                return Resolution(
                    message.id,
                    message.claim_token,
                    MessageStatus.FAILED,
                    last_error=f"gave up after {message.attempts} attempts: {error}",
                    attempt=attempt,
                )
            retry_in_s = self.backoff_s(1 if throttled else message.attempts, result.retry_after_s)
            if message.valid_until is not None:
                retry_at = self._clock.now().timestamp() + retry_in_s
                if retry_at >= message.valid_until.timestamp():  # retries stop at expiry
                    expired = dataclasses.replace(attempt, outcome="expired") if attempt is not None else None
                    return self._expire(message, error, expired)
            return Resolution(
                message.id,
                message.claim_token,
                MessageStatus.PENDING,
                last_error=error,
                retry_in_s=retry_in_s,
                attempt=attempt,
                uncount_attempt=throttled,
            )
        return Resolution(message.id, message.claim_token, MessageStatus.FAILED, last_error=error, attempt=attempt)

    async def _finish(self, resolutions: dict[int, Resolution]) -> None:
        """Record every outcome in one write, then cache the sent ones in one round trip."""
        if not resolutions:
            return
        batch = list(resolutions.values())
        for delay in (*RESOLVE_RETRIES_S, None):
            try:
                delivered = await self._repository.resolve(batch)
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
        if delivered and self._observer is not None:  # receipts that were waiting for these sends
            self._observer.receipts_applied(delivered)
        warn_ambiguous(delivered)
        sent = [
            SentEntry(r.message_id, r.sent_at, r.id)
            for r in batch
            if r.status is MessageStatus.SENT and r.message_id and r.sent_at
        ]
        if sent and self._cache is not None:
            try:
                await self._cache.remember(sent)
            except Exception as exc:  # the database is the source of truth; the cache is a convenience
                log.warning(
                    "cache write skipped",
                    count=len(sent),
                    setting="INSIDER_REDIS_URL",
                    error=f"{type(exc).__name__}: {exc}",
                )

    @staticmethod
    def _report(claimed: list[Message], resolutions: dict[int, Resolution], duration_s: float) -> BatchReport:
        statuses = [r.status for r in resolutions.values()]
        # Released: put back unsent with no attempt (a stop, no provider free); a throttled try is a retry.
        released = sum(1 for r in resolutions.values() if r.uncount_attempt and r.attempt is None)
        deferred = sum(1 for r in resolutions.values() if r.status is MessageStatus.PENDING and r.wait_reason)
        dues = [
            r.retry_in_s for r in resolutions.values() if r.status is MessageStatus.PENDING and r.retry_in_s is not None
        ]
        return BatchReport(
            claimed=len(claimed),
            sent=statuses.count(MessageStatus.SENT),
            retried=statuses.count(MessageStatus.PENDING) - released - deferred,
            failed=statuses.count(MessageStatus.FAILED),
            expired=statuses.count(MessageStatus.EXPIRED),
            released=released,
            deferred=deferred,
            suppressed=statuses.count(MessageStatus.SUPPRESSED),
            duration_s=duration_s,
            next_due_s=min(dues, default=None),
        )


def _earlier(tried: Tried, number: int) -> Attempt:
    """A try of one provider that another followed (a failover), for the history."""
    error = tried.result.error or "unknown error"
    if tried.possible_duplicate:
        error = f"possible duplicate: it may have reached the provider, and the route moved on ({error})"
    return Attempt(
        tried.at,
        "failover",
        number,
        tried.result.status_code,
        tried.duration_ms,
        error,
        tried.result.provider_message_id,
        tried.provider,
    )


def _send_fields(message: Message, outcome: str) -> dict[str, object]:
    """The stable keys of every ``send`` log event; the recipient masked."""
    return {
        "message_id": message.id,
        "to": mask_phone(message.recipient_phone),
        "attempt": message.attempts,
        "outcome": outcome,
    }
