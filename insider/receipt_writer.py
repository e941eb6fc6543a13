"""Delivery receipts in, batched: the provider-id lookup and one write per batch, by lanes the supervisor owns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Final

from insider.logs import get_logger
from insider.ports import Clock, Observer, ReceiptStore, RepositoryUnavailable, SentCache
from insider.receipt_parsing import Receipt, ReceiptOutcome, ReceiptResult

log = get_logger("insider.delivery")

# Receipts written per statement: a few hundred kilobytes of JSON at most.
MAX_BATCH: Final = 2000
# Writes in flight at once (the writer's lanes). With one, a burst moved in lockstep: the
# database idled while the service answered one batch's requests and read the next's, and
# the service idled while the database wrote. With two, the next batch forms and goes while
# one is written.
MAX_WRITERS: Final = 2
# After a cache failure the cache is skipped this long: receipts go straight to the database's index.
CACHE_BACKOFF_S: Final = 5.0


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

    :meth:`submit` queues a request's receipts and waits for their outcomes. A lane
    (:meth:`run_lane`) takes everything queued (up to :data:`MAX_BATCH`) and applies it in
    one statement; receipts that arrive meanwhile form the next batch, which the other lane
    sends while the first is in the database (:data:`MAX_WRITERS` lanes). Under a burst the
    batches grow by themselves, and a lone receipt is written at once, with no timer. A
    provider id is never in two writes at once: a receipt for an id being written waits for
    that write, so the receipts of one message are applied in the order they came.

    The lanes are long-lived tasks of an owner: the supervisor in the service (one child per
    lane, asked to :meth:`finish` on the way out), or :meth:`running` for a program or test
    of its own. A request that comes while no lane runs is refused (RepositoryUnavailable).

    The provider's id is looked up in the sent cache first (``insider:sent:<messageId>``,
    one round trip per batch), then by the database's index when the cache has no entry or
    is down. A receipt may name its provider (ids are unique only per provider): ``providers``
    are the names it may give (None: any).
    """

    def __init__(
        self,
        repository: ReceiptStore,
        cache: SentCache | None,
        clock: Clock,
        *,
        observer: Observer | None = None,
        providers: Collection[str] | None = None,
    ) -> None:
        self._providers = frozenset(providers) if providers is not None else None
        self._repository = repository
        self._cache = cache
        self._clock = clock
        self._observer = observer
        self._queue: list[_Request] = []
        self._ready = asyncio.Event()  # set when a lane may find work: a request came, or a write ended
        self._lanes = 0  # lanes running
        self._finishing = False  # asked to finish: lanes end once the queue is written
        self._in_flight: set[str] = set()  # provider ids being written (never in two writes at once)
        self._cache_skipped_until = -1.0

    @property
    def providers(self) -> frozenset[str] | None:
        """The provider names a receipt may give, or None when any is taken."""
        return self._providers

    async def submit(self, receipts: Sequence[Receipt]) -> list[ReceiptOutcome]:
        """Apply ``receipts``; one outcome each, in order. Raises RepositoryUnavailable."""
        if not receipts:
            return []
        if self._finishing or not self._lanes:
            raise RepositoryUnavailable("receipts are not being written: the service is starting or shutting down")
        future: asyncio.Future[list[ReceiptOutcome]] = asyncio.get_running_loop().create_future()
        # A caller that goes away (a client hanging up) must not leave an error nobody reads.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((receipts, future))
        self._ready.set()
        # The write goes on if the caller is cancelled: another request may share it.
        return await asyncio.shield(future)

    async def run_lane(self) -> None:
        """Write what is queued, batch after batch, until cancelled, or until asked to finish and all is written."""
        self._lanes += 1
        try:
            while True:
                batch = self._take()
                if batch:
                    await self._write_batch(batch)
                    self._ready.set()  # its ids are free again: what waited for them may go
                    continue
                if self._finishing and not self._queue:
                    return
                self._ready.clear()
                await self._ready.wait()
        finally:
            self._lanes -= 1
            if not self._lanes:  # the last lane: nothing will write what is left
                left, self._queue = self._queue, []
                _fail(left, RepositoryUnavailable("receipts are not being written: the service is shutting down"))

    def finish(self) -> None:
        """Refuse new requests; the lanes end once what is queued is written."""
        self._finishing = True
        self._ready.set()

    @asynccontextmanager
    async def running(self, lanes: int = MAX_WRITERS) -> AsyncIterator[ReceiptWriter]:
        """Run the lanes in tasks of the caller's own; on the way out, write what is queued, then stop."""
        tasks = [asyncio.create_task(self.run_lane(), name="insider-receipts") for _ in range(lanes)]
        await asyncio.sleep(0)  # the lanes are running before the first request
        try:
            yield self
        finally:
            self.finish()
            await asyncio.wait(tasks)
            self._finishing = False

    def _take(self) -> list[_Request]:
        """The next batch, in order: up to MAX_BATCH receipts, none for a provider id being written.

        A request with such an id stays queued, and so does every later one sharing an id with
        it, so that each message's receipts keep their order; the writer of that id takes them next.
        """
        batch: list[_Request] = []
        kept: list[_Request] = []
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

    async def _write_batch(self, batch: list[_Request]) -> None:
        ids = {r.provider_message_id for rs, _ in batch for r in rs}
        self._in_flight |= ids
        try:
            receipts = [r for rs, _ in batch for r in rs]
            await self._write(batch, await self._hints(receipts))
        except asyncio.CancelledError:  # closed past its deadline: these requests are not written
            _fail(batch, RepositoryUnavailable("receipts not written: the service is shutting down"))
            raise
        finally:
            self._in_flight -= ids

    async def _write(self, batch: list[_Request], hints: Sequence[int | None]) -> None:
        """Write ``batch`` in one statement; answer each request with its outcomes or the error.

        The database being unavailable fails every request. Any other failure is one receipt's
        (one that cannot be stored): the batch is written again in halves, in order, down to
        single requests, and a request that still fails is written one receipt at a time, so
        that only the receipt that cannot be written is answered ``failed``.
        """
        receipts = [r for rs, _ in batch for r in rs]
        try:
            outcomes = await self._repository.apply_receipts(receipts, hints)
        except RepositoryUnavailable as exc:
            _fail(batch, exc)
            return
        except Exception:
            if len(batch) == 1:
                await self._write_one_by_one(batch[0], hints)
                return
            half = len(batch) // 2
            split = sum(len(rs) for rs, _ in batch[:half])
            await self._write(batch[:half], hints[:split])
            await self._write(batch[half:], hints[split:])
            return
        observe_receipts(self._observer, outcomes)
        start = 0
        for rs, future in batch:
            if not future.done():
                future.set_result(outcomes[start : start + len(rs)])
            start += len(rs)

    async def _write_one_by_one(self, request: _Request, hints: Sequence[int | None]) -> None:
        """A request whose write failed: each receipt on its own, and ``failed`` for one that cannot be stored."""
        receipts, future = request
        answers: list[ReceiptOutcome] = []  # one per receipt of the request
        seen: list[ReceiptOutcome] = []  # and the waiting receipts each write applied too
        for receipt, hint in zip(receipts, hints, strict=True):
            try:
                got = await self._repository.apply_receipts([receipt], [hint])
            except RepositoryUnavailable as exc:
                observe_receipts(self._observer, seen)
                _fail([request], exc)
                return
            except Exception as exc:
                log.error(
                    "receipt not written",
                    provider_message_id=receipt.provider_message_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                got = [ReceiptOutcome(ReceiptResult.FAILED)]
            answers.append(got[0])
            seen += got
        observe_receipts(self._observer, seen)
        if not future.done():
            future.set_result(answers)

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


def observe_receipts(observer: Observer | None, outcomes: Sequence[ReceiptOutcome]) -> None:
    """Receipts applied: told to the observer (metrics), and one log line with the tally."""
    if not outcomes:
        return
    if observer is not None:
        observer.receipts_applied(outcomes)
    tally = {result.value: 0 for result in ReceiptResult}
    for outcome in outcomes:
        tally[outcome.result.value] += 1
    log.info("receipts", count=len(outcomes), **tally)
    warn_ambiguous(outcomes)


def warn_ambiguous(outcomes: Sequence[ReceiptOutcome]) -> None:
    """One warning for the receipts that met no message because their id is several providers'."""
    count = sum(1 for outcome in outcomes if outcome.result is ReceiptResult.AMBIGUOUS)
    if count:
        log.warning(
            "receipts applied to no message: they name no provider, and messages of several providers have their ids;"
            " have each provider name itself (?provider=<name>)",
            count=count,
        )
