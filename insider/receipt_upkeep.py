"""The receipts' upkeep: waiting receipts applied or dropped, and the history kept to its retention."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from insider.logs import get_logger
from insider.ports import Clock, Observer, ReceiptStore, RepositoryUnavailable
from insider.receipt_parsing import WAITING_MAX_AGE_S
from insider.receipt_writer import observe_receipts

log = get_logger("insider.delivery")

# Waiting receipts are looked at this often; events past the retention are deleted this often,
# this many at a time.
WAITING_EVERY_S: Final = 5.0
PRUNE_EVERY_S: Final = 60.0
PRUNE_BATCH: Final = 1000


class ReceiptUpkeep:
    """Two long-lived loops for the supervisor's tree, each one of its children.

    :meth:`run_waiting` applies, every :data:`WAITING_EVERY_S`, the receipts that waited for
    their message's provider id, in the order they arrived, and drops those older than a day
    (one log line each). :meth:`run_retention` deletes events older than ``retention_s``
    every :data:`PRUNE_EVERY_S`, :data:`PRUNE_BATCH` at a time. Each logs one line per
    database outage, not one per pass.
    """

    def __init__(
        self,
        repository: ReceiptStore,
        clock: Clock,
        *,
        retention_s: float = 30 * 86400.0,
        observer: Observer | None = None,
    ) -> None:
        self._repository = repository
        self._clock = clock
        self.retention_s = retention_s
        self._observer = observer

    async def waiting_once(self) -> None:
        """Apply the waiting receipts whose message now has the id; drop those over a day old."""
        while True:
            report = await self._repository.apply_waiting(WAITING_MAX_AGE_S, PRUNE_BATCH)
            observe_receipts(self._observer, report.applied)
            for receipt in report.dropped:
                log.warning(
                    "receipt dropped: no message got its provider id within a day",
                    provider_message_id=receipt.provider_message_id,
                    provider=receipt.provider,
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

    async def run_waiting(self) -> None:
        """Run :meth:`waiting_once` every :data:`WAITING_EVERY_S`, until cancelled."""
        await self._every(WAITING_EVERY_S, self.waiting_once, "receipt upkeep")

    async def run_retention(self) -> None:
        """Run :meth:`prune_once` every :data:`PRUNE_EVERY_S`, until cancelled."""
        await self._every(PRUNE_EVERY_S, self.prune_once, "event retention")

    async def _every(self, every_s: float, once: Callable[[], Awaitable[object]], what: str) -> None:
        failing = False
        while True:
            try:
                await once()
                failing = False
            except RepositoryUnavailable as exc:
                if not failing:  # one line per outage, not one per pass
                    log.warning(f"{what} skipped: database unavailable", error=str(exc))
                failing = True
            except Exception:
                log.exception(f"{what} failed")
            await self._clock.sleep(every_s)
