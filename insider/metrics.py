"""Prometheus metrics of one service instance, and the cheap message counts they read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from insider.clock import SystemClock
from insider.consent import WAIT_REASONS
from insider.domain import BatchReport, Category, MessageStatus, Outcome, SendResult
from insider.ports import (
    CategoryCounter,
    Clock,
    MessageReader,
    ProviderStore,
    ProviderTotals,
    SuppressionList,
    WaitingCounter,
)
from insider.receipt_parsing import ReceiptOutcome, ReceiptResult

# The Prometheus text exposition format, version 0.0.4 (what generate_latest writes, and every Prometheus reads).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A provider request takes milliseconds to the webhook timeout (10 s by default).
SEND_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A receipt comes seconds to hours after the send (a phone that is off).
DELIVERY_BUCKETS_S = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0)
# A batch is a claim, its sends (in waves of INSIDER_SEND_CONCURRENCY) and one write.
BATCH_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


OUTCOMES = ("sent", "retry", "failed", "invalid", "expired", "throttled", "deferred", "suppressed")
# What a reply asked for (insider.keywords.Action), or nothing.
REPLY_ACTIONS = ("opt-out", "opt-in", "none")
# insider_provider_breaker_state's values: one series per provider, not one per state.
BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}


@dataclass(slots=True)
class _ProviderSeries:
    """One provider's series, kept at hand: the lookup by label is per request."""

    sent: Counter
    failed: Counter
    throttled: Counter
    duration: Histogram


class Metrics:
    """The service's metrics on a registry of their own, so that several copies never collide.

    Counters and histograms move as the sender reports to it (it is an :class:`insider.ports.Observer`);
    the gauges are set when scraped (see :meth:`set_state`). ``exposition()`` is the body
    of ``GET /metrics``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_sent = Counter("insider_messages_sent", "Messages the provider accepted", registry=r)
        self.messages_failed = Counter(
            "insider_messages_failed", "Messages that became failed (refused, invalid or out of attempts)", registry=r
        )
        self.send_attempts = Counter(
            "insider_send_attempts",
            "Send attempts by outcome: sent, retry, failed, invalid, expired, throttled; and messages held back: "
            "deferred (sending hours, a cap), suppressed (never sent)",
            ["outcome"],
            registry=r,
        )
        self.segments_sent_total = Counter(
            "insider_segments_sent", "SMS segments of the messages the provider accepted", registry=r
        )
        self.messages_expired = Counter(
            "insider_messages_expired", "Messages the sender found past their validUntil (never sent)", registry=r
        )
        self.messages = Gauge("insider_messages", "Messages per status (a few seconds old)", ["status"], registry=r)
        self.send_duration = Histogram(
            "insider_send_duration_seconds", "Time one provider request took", buckets=SEND_BUCKETS_S, registry=r
        )
        self.batch_duration = Histogram(
            "insider_batch_duration_seconds",
            "Time one batch took, claim to record",
            buckets=BATCH_BUCKETS_S,
            registry=r,
        )
        self.messages_delivered = Counter(
            "insider_messages_delivered", "Sent messages a receipt said were delivered", registry=r
        )
        self.messages_undelivered = Counter(
            "insider_messages_undelivered",
            "Sent messages a receipt said were not delivered (undelivered, expired, rejected)",
            registry=r,
        )
        self.delivery_time = Histogram(
            "insider_delivery_seconds",
            "Time from sent to delivered, as the receipts tell it",
            buckets=DELIVERY_BUCKETS_S,
            registry=r,
        )
        self.suppressions = Gauge(
            "insider_suppressions", "Numbers on the suppression list (a few seconds old)", registry=r
        )
        self.pending = Gauge("insider_pending_messages", "Messages waiting to be sent (a few seconds old)", registry=r)
        self.waiting = Gauge(
            "insider_messages_waiting",
            "Pending messages held back by consent, by reason: sending-hours (outside the recipient's sending "
            "hours), cap (a frequency cap); a few seconds old",
            ["reason"],
            registry=r,
        )
        for reason in WAIT_REASONS:
            self.waiting.labels(reason=reason).set(0)
        self.sender_running = Gauge("insider_sender_running", "1 while automatic sending runs, else 0", registry=r)
        # Every series exists from the start, at 0; kept at hand, as the lookup is per send.
        self._attempts = {outcome: self.send_attempts.labels(outcome=outcome) for outcome in OUTCOMES}
        # Per provider: the label's values are the configured providers' names, never a request's input.
        by = ["provider"]
        self.provider_sent = Counter("insider_provider_sent", "Requests the provider accepted", by, registry=r)
        self.provider_failed = Counter(
            "insider_provider_failed",
            "Requests the provider did not accept: refused, errors, timeouts, throttled",
            by,
            registry=r,
        )
        self.provider_throttled = Counter(
            "insider_provider_throttled",
            "Times the provider asked to slow down (429, Retry-After, ESME_RTHROTTLED)",
            by,
            registry=r,
        )
        self.provider_send_duration = Histogram(
            "insider_provider_send_duration_seconds",
            "Time one request to the provider took",
            by,
            buckets=SEND_BUCKETS_S,
            registry=r,
        )
        self.provider_breaker = Gauge(
            "insider_provider_breaker_state",
            "The provider's circuit breaker: 0 closed, 1 half-open, 2 open",
            by,
            registry=r,
        )
        self.provider_enabled = Gauge(
            "insider_provider_enabled",
            "1 while the provider is in rotation, 0 when an operator took it out",
            by,
            registry=r,
        )
        self.provider_cost = Gauge(
            "insider_provider_cost",
            "Cost of the messages the provider accepted, for the whole deployment (a few seconds old)",
            by,
            registry=r,
        )
        self._providers: dict[str, _ProviderSeries] = {}
        self.cap_holds = Counter(
            "insider_cap_holds",
            "Commercial messages the frequency cap held back, by action: wait (pending until it allows them) "
            "or suppress",
            ["action"],
            registry=r,
        )
        self._cap_holds = {action: self.cap_holds.labels(action=action) for action in ("wait", "suppress")}
        self.inbound_replies = Counter(
            "insider_inbound_replies",
            "Replies received (POST /api/v1/inbound, SMPP), by what they asked: opt-out, opt-in, none",
            ["action"],
            registry=r,
        )
        self._replies = {action: self.inbound_replies.labels(action=action) for action in REPLY_ACTIONS}

    def providers_configured(self, names: Iterable[str]) -> None:
        """Make every series of these providers, at 0, before their first request."""
        for name in names:
            self._series(name)

    def _series(self, provider: str) -> _ProviderSeries:
        series = self._providers.get(provider)
        if series is None:
            series = _ProviderSeries(
                self.provider_sent.labels(provider=provider),
                self.provider_failed.labels(provider=provider),
                self.provider_throttled.labels(provider=provider),
                self.provider_send_duration.labels(provider=provider),
            )
            self._providers[provider] = series
            self.provider_breaker.labels(provider=provider).set(0)
            self.provider_enabled.labels(provider=provider).set(1)
            self.provider_cost.labels(provider=provider).set(0)
        return series

    def provider_tried(self, provider: str, result: SendResult, duration_s: float) -> None:
        series = self._series(provider)
        (series.sent if result.outcome is Outcome.SENT else series.failed).inc()
        if result.throttled:
            series.throttled.inc()
        series.duration.observe(duration_s)

    def set_provider(self, provider: str, *, breaker: str, enabled: bool, cost: float | None = None) -> None:
        """Set a provider's gauges when scraped; ``cost`` None keeps the last known one."""
        self._series(provider)
        self.provider_breaker.labels(provider=provider).set(BREAKER_VALUES[breaker])
        self.provider_enabled.labels(provider=provider).set(1 if enabled else 0)
        if cost is not None:
            self.provider_cost.labels(provider=provider).set(cost)

    def send_attempt(self, outcome: str, duration_s: float | None) -> None:
        series = self._attempts.get(outcome)
        (series or self.send_attempts.labels(outcome=outcome)).inc()
        if outcome == "sent":
            self.messages_sent.inc()
        elif outcome in ("failed", "invalid"):
            self.messages_failed.inc()
        elif outcome == "expired":
            self.messages_expired.inc()
        if duration_s is not None:
            self.send_duration.observe(duration_s)

    def cap_held(self, action: str) -> None:
        """The frequency cap held a message back (``action``: wait or suppress)."""
        self._cap_holds[action].inc()

    def batch_done(self, report: BatchReport) -> None:
        self.batch_duration.observe(report.duration_s)

    def receipts_applied(self, outcomes: Sequence[ReceiptOutcome]) -> None:
        delivered = undelivered = 0
        for outcome in outcomes:
            if outcome.result is not ReceiptResult.APPLIED:
                continue
            if outcome.status is MessageStatus.DELIVERED:
                delivered += 1
                if outcome.sent_at is not None and outcome.delivered_at is not None:
                    # A provider's clock may run behind ours: never a negative time.
                    self.delivery_time.observe(max(0.0, (outcome.delivered_at - outcome.sent_at).total_seconds()))
            elif outcome.status is MessageStatus.UNDELIVERED:
                undelivered += 1
        # Once per batch: each inc() takes the counter's lock.
        if delivered:
            self.messages_delivered.inc(delivered)
        if undelivered:
            self.messages_undelivered.inc(undelivered)

    def segments_sent(self, segments: int) -> None:
        self.segments_sent_total.inc(segments)

    def reply_received(self, action: str | None) -> None:
        """A reply was stored; ``action`` what its keyword asked for (None: no keyword)."""
        self._replies[action or "none"].inc()

    def set_state(
        self,
        *,
        running: bool,
        pending: int | None,
        counts: dict[MessageStatus, int] | None = None,
        waiting: dict[str, int] | None = None,
        suppressions: int | None = None,
    ) -> None:
        """Set the gauges from the current state; ``pending`` (or ``counts``, ``suppressions``) None keeps
        the last known value."""
        self.sender_running.set(1 if running else 0)
        if suppressions is not None:
            self.suppressions.set(suppressions)
        if pending is not None:
            self.pending.set(pending)
        if waiting is not None:
            for reason in WAIT_REASONS:
                self.waiting.labels(reason=reason).set(waiting.get(reason, 0))
        if counts is not None:
            for status in MessageStatus:
                self.messages.labels(status=status.value).set(counts.get(status, 0))

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class CountsCache:
    """``repository.counts()`` at most once per ``ttl_s``, however many callers ask.

    Scrapes and dashboards poll; the database answers one of them per ``ttl_s`` and the
    others share that answer. Concurrent callers of a stale cache wait for one query.
    A failure is not cached: it propagates to every caller that was waiting for it.
    """

    def __init__(self, repository: MessageReader, *, ttl_s: float = 2.0, clock: Clock | None = None) -> None:
        self._repository = repository
        self._clock = clock or SystemClock()
        self.ttl_s = ttl_s
        self._counts: dict[MessageStatus, int] | None = None
        self.segments_sent = 0  # of every sent message, read with the counts
        self.providers: list[ProviderTotals] = []  # each provider's totals, read with the counts (when kept)
        self.categories: dict[Category, dict[MessageStatus, int]] = {}  # read with the counts (when kept)
        self.waiting: dict[str, int] = {}  # pending messages held back, per reason, read with the counts (when kept)
        self.suppressions: int | None = None  # numbers on the suppression list, read with the counts (when kept)
        self._taken_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> dict[MessageStatus, int] | None:
        if self._counts is not None and self._clock.monotonic() - self._taken_at < self.ttl_s:
            return self._counts
        return None

    async def get(self) -> dict[MessageStatus, int]:
        """Messages per status, at most ``ttl_s`` old; raises RepositoryUnavailable."""
        counts = self._fresh()
        if counts is not None:
            return counts
        async with self._lock:
            counts = self._fresh()  # another caller may have refreshed it while this one waited
            if counts is None:
                counts = dict(await self._repository.counts())
                self.segments_sent = await self._repository.segments_sent()
                if isinstance(self._repository, ProviderStore):
                    self.providers = await self._repository.provider_totals()
                if isinstance(self._repository, CategoryCounter):
                    self.categories = await self._repository.category_counts()
                if isinstance(self._repository, WaitingCounter):
                    self.waiting = await self._repository.waiting_counts()
                if isinstance(self._repository, SuppressionList):
                    self.suppressions = await self._repository.count_suppressions()
                self._counts, self._taken_at = counts, self._clock.monotonic()
            return counts

    @property
    def last(self) -> dict[MessageStatus, int] | None:
        """The last counts read, however old (None before the first)."""
        return self._counts
