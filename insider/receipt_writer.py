"""Delivery receipts in, batched: the provider-id lookup, one write per batch, and the periodic upkeep."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from typing import Final

import structlog

from insider.ports import Clock, Observer, ReceiptStore, RepositoryUnavailable, SentCache
from insider.receipt_parsing import WAITING_MAX_AGE_S, Receipt, ReceiptOutcome, ReceiptResult

log = structlog.get_logger("insider.delivery")

# Receipts written per statement: a few hundred kilobytes of JSON at most.
MAX_BATCH: Final = 2000
# Writes in flight at once. With one, a burst moved in lockstep: the database idled while the
# service answered one batch's requests and read the next's, and the service idled while the
# database wrote. With two, the next batch forms and goes while one is written.
MAX_WRITERS: Final = 2
# After a cache failure the cache is skipped this long: receipts go straight to the database's index.
CACHE_BACKOFF_S: Final = 5.0
# The upkeep: waiting receipts are retried this often; old events deleted this often, this many at a time.
WAITING_EVERY_S: Final = 5.0
PRUNE_EVERY_S: Final = 60.0
PRUNE_BATCH: Final = 1000


# Ids are positive 64-bit integers in both databases: a cached id outside them cannot be one of ours.
MAX_ID: Final = 2**63 - 1

_Request = tuple[Sequence[Receipt], asyncio.Future[list[ReceiptOutcome]]]


def _hint(value: object) -> int | None:
    """A cached id as a hint, or None when it cannot be one of ours."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    return None


def _fail(batch: Sequence[_Request], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class ReceiptWriter:
    """Applies delivery receipts as they come, many requests to one database write.

    :meth:`submit` queues a request's receipts and waits for their outcomes. A writer task
    takes everything queued (up to :data:`MAX_BATCH`) and applies it in one statement;
    receipts that arrive meanwhile form the next batch, which a second writer sends while
    the first is in the database (:data:`MAX_WRITERS`). Under a burst the batches grow by
    themselves, and a lone receipt is written at once, with no timer. A provider id is never
    in two writes at once: a receipt for an id being written waits for that write, so the
    receipts of one message are applied in the order they came.

    The provider's id is looked up in the sent cache first (``insider:sent:<messageId>``,
    one round trip per batch), then by the database's index when the cache has no entry or
    is down. :meth:`run_upkeep` applies receipts that waited for their message, drops those
    older than a day (one log line each) and deletes events past ``retention_s``.
    """

    def __init__(
        self,
        repository: ReceiptStore,
        cache: SentCache | None,
        clock: Clock,
        *,
        retention_s: float = 30 * 86400.0,
        observer: Observer | None = None,
    ) -> None:
        self._repository = repository
        self._cache = cache
        self._clock = clock
        self.retention_s = retention_s
        self._observer = observer
        self._queue: list[tuple[Sequence[Receipt], asyncio.Future[list[ReceiptOutcome]]]] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._starting = 0  # writers created that have not taken a batch yet
        self._in_flight: set[str] = set()  # provider ids being written (never in two writes at once)
        self._cache_skipped_until = -1.0

    async def submit(self, receipts: Sequence[Receipt]) -> list[ReceiptOutcome]:
        """Apply ``receipts``; one outcome each, in order. Raises RepositoryUnavailable."""
        if not receipts:
            return []
        future: asyncio.Future[list[ReceiptOutcome]] = asyncio.get_running_loop().create_future()
        # A caller that goes away (a client hanging up) must not leave an error nobody reads.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((receipts, future))
        # A writer that has not taken its batch yet will take this too; else one more, up to the cap.
        if not self._starting and len(self._writers) < MAX_WRITERS:
            self._starting += 1
            # A context of its own: the writer serves many requests, so its log lines carry none's request id.
            writer = asyncio.create_task(self._write_all(), name="insider-receipts", context=contextvars.Context())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        # The write goes on if the caller is cancelled: another request may share it.
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        """Wait for the receipts already queued to be written."""
        while self._writers:
            await asyncio.wait(set(self._writers))

    def _take(self) -> list[tuple[Sequence[Receipt], asyncio.Future[list[ReceiptOutcome]]]]:
        """The next batch, in order: up to MAX_BATCH receipts, none for a provider id being written.

        A request with such an id stays queued, and so does every later one sharing an id with
        it, so that each message's receipts keep their order; the writer of that id takes them next.
        """
        batch: list[tuple[Sequence[Receipt], asyncio.Future[list[ReceiptOutcome]]]] = []
        kept: list[tuple[Sequence[Receipt], asyncio.Future[list[ReceiptOutcome]]]] = []
        held: set[str] = set()
        size = 0
        for index, item in enumerate(self._queue):
            if batch and size + len(item[0]) > MAX_BATCH:
                kept.extend(self._queue[index:])
                break
            ids = {r.provider_message_id for r in item[0]}
            if not ids.isdisjoint(held) or not ids.isdisjoint(self._in_flight):
                held.update(ids)
                kept.append(item)
                continue
            batch.append(item)
            size += len(item[0])
        self._queue = kept
        return batch

    async def _write_all(self) -> None:
        self._starting -= 1
        while batch := self._take():
            ids = {r.provider_message_id for rs, _ in batch for r in rs}
            self._in_flight |= ids
            try:
                receipts = [r for rs, _ in batch for r in rs]
                await self._write(batch, await self._hints(receipts))
            finally:
                self._in_flight -= ids

    async def _write(self, batch: list[_Request], hints: Sequence[int | None]) -> None:
        """Write ``batch`` in one statement; answer each request with its outcomes or the error.

        The database being unavailable fails every request. Any other failure is one request's
        (a receipt that cannot be stored): the batch is written again in halves, in order, down
        to single requests, so that only the request that cannot be written gets the error.
        """
        receipts = [r for rs, _ in batch for r in rs]
        try:
            outcomes = await self._repository.apply_receipts(receipts, hints)
        except RepositoryUnavailable as exc:
            _fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                log.error("receipts not written", count=len(receipts), error=f"{type(exc).__name__}: {exc}")
                _fail(batch, exc)
                return
            half = len(batch) // 2
            split = sum(len(rs) for rs, _ in batch[:half])
            await self._write(batch[:half], hints[:split])
            await self._write(batch[half:], hints[split:])
            return
        self._observe(outcomes)
        start = 0
        for rs, future in batch:
            if not future.done():
                future.set_result(outcomes[start : start + len(rs)])
            start += len(rs)

    async def _hints(self, receipts: Sequence[Receipt]) -> list[int | None]:
        """Our ids for the receipts' provider ids, from the cache; None where it has none (or is down).

        A cached id that is not one of ours (not a positive 64-bit integer, as both databases
        store ids) is no hint: that receipt alone is matched by the database's index.
        """
        if self._cache is None or self._clock.monotonic() < self._cache_skipped_until:
            return [None] * len(receipts)
        try:
            found = await self._cache.lookup_ids([r.provider_message_id for r in receipts])
        except Exception as exc:  # the database's index answers instead
            self._cache_skipped_until = self._clock.monotonic() + CACHE_BACKOFF_S
            log.warning(
                "sent cache lookup failed; receipts are matched by the database for a while",
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=CACHE_BACKOFF_S,
            )
            return [None] * len(receipts)
        return [_hint(found.get(r.provider_message_id)) for r in receipts]

    def _observe(self, outcomes: Sequence[ReceiptOutcome]) -> None:
        if not outcomes:
            return
        if self._observer is not None:
            self._observer.receipts_applied(outcomes)
        tally = {result.value: 0 for result in ReceiptResult}
        for outcome in outcomes:
            tally[outcome.result.value] += 1
        log.info("receipts", count=len(outcomes), **tally)

    async def upkeep_once(self) -> None:
        """Apply the waiting receipts whose message now has the id; drop those over a day old."""
        while True:
            report = await self._repository.apply_waiting(WAITING_MAX_AGE_S, PRUNE_BATCH)
            self._observe(report.applied)
            for receipt in report.dropped:
                log.warning(
                    "receipt dropped: no message got its provider id within a day",
                    provider_message_id=receipt.provider_message_id,
                    status=receipt.status,
                    received_at=receipt.received_at.isoformat(),
                )
            if len(report.applied) < PRUNE_BATCH and len(report.dropped) < PRUNE_BATCH:
                return

    async def prune_once(self) -> int:
        """Delete events past the retention, :data:`PRUNE_BATCH` at a time, until none is left."""
        total = 0
        while True:
            deleted = await self._repository.prune_events(self.retention_s, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
            await asyncio.sleep(0)  # small batches, with room for other work between them
        if total:
            log.info("events past retention deleted", count=total, retention_s=self.retention_s)
        return total

    async def run_upkeep(self) -> None:
        """Run :meth:`upkeep_once` every few seconds and :meth:`prune_once` every minute, until cancelled."""
        next_prune = self._clock.monotonic()
        failing = False
        while True:
            try:
                await self.upkeep_once()
                if self._clock.monotonic() >= next_prune:
                    await self.prune_once()
                    next_prune = self._clock.monotonic() + PRUNE_EVERY_S
                failing = False
            except RepositoryUnavailable as exc:
                if not failing:  # one line per outage, not one per pass
                    log.warning("receipt upkeep skipped: database unavailable", error=str(exc))
                failing = True
            except Exception:
                log.exception("receipt upkeep failed")
            await self._clock.sleep(WAITING_EVERY_S)
