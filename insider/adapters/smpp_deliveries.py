"""One SMPP provider's deliver_sm handed to its callbacks in order: receipts in batches, inbound messages one by one.

A callback that raises gets them again with backoff, while the inbox (as large as smpp34's
own inbound queue) and what is held fill: the bind's reader then waits, and smpp34 refuses
the next deliver_sm (see :mod:`insider.adapters.smpp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import smpp34

from insider.adapters.smpp_codec import inbound_of, is_receipt, receipt_of
from insider.domain import mask_phone
from insider.logs import get_logger
from insider.ports import Clock

log = get_logger("insider.smpp")

ReceiptsCallback = Callable[[list[dict[str, Any]]], Awaitable[None]]
InboundCallback = Callable[[dict[str, Any]], Awaitable[None]]

# Receipts and inbound messages the callbacks refused are handed to them again after this,
# doubled up to the cap.
CALLBACK_RETRY_S: Final = 0.5
CALLBACK_RETRY_MAX_S: Final = 30.0


@dataclass(slots=True)
class Delivery:
    """One deliver_sm taken from the SMSC: a receipt for the receipts callback, or an inbound message."""

    receipt: dict[str, Any] | None = None
    inbound: dict[str, Any] | None = None


class SmppDeliveries:
    """The inbox of one provider's deliver_sm and the task that hands them over (:meth:`run`).

    :meth:`put` takes one from the bind (waiting while the inbox is full); :meth:`drain`
    lets :meth:`run` end once what was received has had its chance; :meth:`report_lost`
    logs what is left.
    """

    def __init__(
        self,
        name: str,
        receipts: ReceiptsCallback | None,
        inbound: InboundCallback | None,
        clock: Clock,
        buffer: int,
    ) -> None:
        self.name = name
        self._receipts = receipts
        self._inbound = inbound
        self._clock = clock
        self._buffer = buffer
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=buffer)
        self._unwritten: list[Delivery] = []
        self._draining = False

    def open(self) -> None:
        """Before :meth:`run`: hand over until :meth:`drain`."""
        self._draining = False

    def drain(self) -> None:
        """Let :meth:`run` end once the inbox is empty (at its first failure from now on)."""
        self._draining = True
        with contextlib.suppress(asyncio.QueueFull):  # full: it is not waiting for more
            self._inbox.put_nowait(Delivery())  # wakes run() if it waits for more

    async def put(self, event: smpp34.DeliverSmEvent) -> None:
        """Take one deliver_sm into the inbox; a full inbox holds it (and the bind's reader) back."""
        await self._inbox.put(self._delivery(event))

    def _delivery(self, event: smpp34.DeliverSmEvent) -> Delivery:
        if is_receipt(event.esm_class, event.tlvs):
            receipt = receipt_of(event.short_message, event.data_coding, event.tlvs)
            if receipt is None:
                log.warning(
                    "SMPP receipt without a message id or a state; acknowledged and dropped",
                    provider=self.name,
                    short_message=event.short_message[:160].decode("latin-1"),
                )
                return Delivery()
            return Delivery(receipt=receipt)
        return Delivery(inbound=inbound_of(event))

    async def run(self) -> None:
        """Hand receipts (batched as they come) and inbound messages to the callbacks; again with backoff on failure."""
        failures = 0
        while True:
            if not self._unwritten:
                if self._draining and self._inbox.empty():
                    return
                self._unwritten.append(await self._inbox.get())
            while not self._inbox.empty() and len(self._unwritten) < self._buffer:
                self._unwritten.append(self._inbox.get_nowait())
            try:
                await self._hand_over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if self._draining:
                    return
                wait_s = min(CALLBACK_RETRY_MAX_S, CALLBACK_RETRY_S * 2.0 ** min(failures - 1, 30))
                if failures == 1:
                    log.warning(
                        "SMPP receipts or replies not written; trying again with backoff",
                        provider=self.name,
                        held=len(self._unwritten),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                await self._clock.sleep(wait_s)
                continue
            if failures:
                log.info("SMPP receipts or replies written again", provider=self.name)
            failures = 0

    async def _hand_over(self) -> None:
        """Hand the unwritten ones over in order; what was handed is dropped from them as it succeeds."""
        while self._unwritten:
            first = self._unwritten[0]
            if first.receipt is not None:
                batch = list(itertools.takewhile(lambda d: d.receipt is not None, self._unwritten))
                if self._receipts is not None:
                    await self._receipts([d.receipt for d in batch if d.receipt is not None])
                else:
                    log.info("SMPP receipts with nowhere to go", provider=self.name, count=len(batch))
                del self._unwritten[: len(batch)]
            elif first.inbound is not None:
                if self._inbound is not None:
                    await self._inbound(first.inbound)
                else:
                    log.info(
                        "SMPP inbound message",
                        provider=self.name,
                        sender=mask_phone(first.inbound["from"]),
                        to=first.inbound["to"],
                        length=len(first.inbound["text"]),
                    )
                del self._unwritten[0]
            else:  # nothing to hand (dropped, or the drain's wake-up)
                del self._unwritten[0]

    def report_lost(self) -> None:
        """Log what is still held (acknowledged to the SMSC, never handed over): the stop came first."""
        held = [d for d in self._unwritten if d.receipt is not None or d.inbound is not None]
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item.receipt is not None or item.inbound is not None:
                held.append(item)
        self._unwritten.clear()
        if held:
            log.error(
                "SMPP receipts lost: acknowledged to the SMSC but not written before the stop",
                provider=self.name,
                receipts=[d.receipt["messageId"] for d in held if d.receipt is not None][:100],
                inbound=sum(1 for d in held if d.inbound is not None),
            )
