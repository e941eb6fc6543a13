"""The SMS provider as an SMPP 3.4 bind (an SMSC, bound as a transceiver) over smpp34: submits, their answers, receipts.

One :class:`SmppSmsClient` is one bind. Its owner runs :meth:`SmppSmsClient.run` as a
long-lived task (the supervisor, as one of its children): it connects, binds, keeps the bind
(smpp34's core sends ``enquire_link`` every 30 s), and binds again after a cut or a refused
bind, with exponential backoff and jitter. :meth:`SmppSmsClient.send` submits one message
on the current bind; it never raises for what the SMSC or the network do. What goes into
the PDUs and what is read out of them (parts, addresses, statuses, receipts) is
:mod:`insider.adapters.smpp_codec`'s.

What smpp34 (1.5) does not do publicly, and what this module does about it:

- ``window_size`` is not enforced by its core: the window of outstanding ``submit_sm`` is
  kept here (:mod:`insider.adapters.smpp_window`). A slot is given back when smpp34 is done
  with the PDU (its answer came, its own 30 s response timer ran out, or the bind dropped),
  not when a send stops waiting for it, so the SMSC never holds more than ``window`` of ours.
- Its core answers each ``deliver_sm`` as it arrives (``deliver_sm_resp`` OK), before the
  receipt is written, so a receipt cannot be answered after the write. Receipts the callback
  refused are kept here (:mod:`insider.adapters.smpp_deliveries`) and handed to it again
  with backoff, while smpp34's inbound queue (``receipt_buffer``) and ours (as many again)
  fill. Past that, smpp34 refuses the next
  ``deliver_sm`` with ``ESME_RMSGQFUL``; version 1.5 writes that refusal one octet too long
  and the SMSC drops the bind, so it is bound again with backoff and the SMSC sends what it
  was refused again. Receipts still held when the process stops are logged as lost.
- It drops its ``Disconnected`` event when its inbound queue is full: whether the session
  lives is also asked every few seconds (``is_alive``).
- A ``system_id``, ``password`` or ``system_type`` longer than SMPP allows panics its core
  (the bind then only times out): they are checked when the client is made.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import datetime
from typing import Any, Final

import smpp34

from insider.adapters.smpp_codec import (
    ESM_UDHI,
    MAX_DESTINATION,
    NPI_E164,
    TON_INTERNATIONAL,
    encode_parts,
    refused,
    source_address,
)
from insider.adapters.smpp_deliveries import InboundCallback, ReceiptsCallback, SmppDeliveries
from insider.adapters.smpp_window import SubmitWindow
from insider.clock import SystemClock
from insider.domain import Outcome, SendResult, mask_phone
from insider.logs import get_logger
from insider.ports import Clock

log = get_logger("insider.smpp")


# The bind's fields (5.2.1-5.2.3), without their NUL. smpp34 1.5 does not refuse longer ones:
# its core panics in a worker thread and the bind only times out, so they are checked here.
MAX_SYSTEM_ID: Final = 15
MAX_PASSWORD: Final = 8
MAX_SYSTEM_TYPE: Final = 12

# How the bind is kept. A failed bind (or a cut) is tried again after the backoff, doubled at
# each failure in a row up to the cap, each wait drawn from half to all of it (jitter); a
# bind that held for the cap starts the count again.
BIND_TIMEOUT_S: Final = 10.0
RECONNECT_BACKOFF_S: Final = 1.0
RECONNECT_BACKOFF_MAX_S: Final = 60.0
RECEIPT_BUFFER: Final = 1024
# How often a bind with nothing to say is asked whether it still lives (see _serve).
LIVENESS_CHECK_S: Final = 5.0


def _settled(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned future's exception as seen (asyncio would log it as never retrieved)."""
    if not future.cancelled():
        future.exception()


class SmppSmsClient:
    """The SmsClient port on one SMPP provider: an SMSC bound as a transceiver.

    ``send`` submits on the current bind: the message as one ``submit_sm`` or as
    concatenated parts (each waits for its answer before the next goes), with a delivery
    receipt asked for on the last part only, whose ``message_id`` is the message's provider
    id. A send takes at most ``timeout_s`` in all, waiting for room in the window of
    ``window`` outstanding ``submit_sm`` included. Outcomes:

    - ``SENT``: every part accepted (``submit_sm_resp`` with status 0).
    - ``RETRY`` / ``FAILED`` from an error ``command_status``: the SMSC certainly did not take
      it (see :data:`TRANSIENT_STATUSES`, :data:`PERMANENT_STATUSES`); throttling statuses
      set ``throttled``. A refusal after earlier parts were accepted is ``ambiguous``.
    - ``RETRY`` not ambiguous, at once, when not bound (connecting, down, finishing), or when
      the window had no room within the timeout: nothing went out.
    - ``RETRY`` ``ambiguous`` when the answer did not come within the timeout or the bind
      dropped with the PDU out: the SMSC may have it.

    SMPP has no idempotency key (``idempotency_key`` is not sent): a message sent again after
    an ambiguous outcome may reach the handset twice.

    Receipts (``deliver_sm`` whose esm_class says so, or with the receipt TLVs) go to
    ``receipts`` in the JSON shape of ``POST /api/v1/delivery-reports``, in batches as they
    come; other ``deliver_sm`` (a handset's reply) go to ``inbound``, or are logged (number
    masked). A callback that raises gets them again with backoff (see the module's text on
    what smpp34 acknowledges).

    The bind's life is :meth:`run`, which its owner runs as a long-lived task; :meth:`finish`
    asks it to unbind and end. :attr:`state`, :attr:`last_error` and :attr:`bound_since` are
    for health checks.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        system_id: str,
        password: str,
        *,
        source: str,
        window: int = 10,
        timeout_s: float = 10.0,
        receipts: ReceiptsCallback | None = None,
        inbound: InboundCallback | None = None,
        clock: Clock | None = None,
        system_type: str = "",
        bind_timeout_s: float = BIND_TIMEOUT_S,
        reconnect_backoff_s: float = RECONNECT_BACKOFF_S,
        reconnect_backoff_max_s: float = RECONNECT_BACKOFF_MAX_S,
        receipt_buffer: int = RECEIPT_BUFFER,
        rng: random.Random | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if not timeout_s > 0 or not bind_timeout_s > 0:
            raise ValueError("timeout_s and bind_timeout_s must be positive")
        if not 0 < reconnect_backoff_s <= reconnect_backoff_max_s:
            raise ValueError("reconnect_backoff_s must be positive and at most reconnect_backoff_max_s")
        if receipt_buffer < 1:
            raise ValueError(f"receipt_buffer must be at least 1, not {receipt_buffer}")
        for field, value, limit in (
            ("system_id", system_id, MAX_SYSTEM_ID),
            ("password", password, MAX_PASSWORD),
            ("system_type", system_type, MAX_SYSTEM_TYPE),
        ):
            if len(value.encode("latin-1", "replace")) > limit or not value.isascii():
                shown = repr(value) if field != "password" else f"{len(value)} characters"
                raise ValueError(f"{field} must be at most {limit} ASCII characters (SMPP 3.4), not {shown}")
        self.name = name
        self.host = host
        self.port = port
        self.system_id = system_id
        self._password = password
        self.system_type = system_type
        self.source, self._source_ton, self._source_npi = source_address(source)
        self.window = window
        self.timeout_s = timeout_s
        self.bind_timeout_s = bind_timeout_s
        self.reconnect_backoff_s = reconnect_backoff_s
        self.reconnect_backoff_max_s = reconnect_backoff_max_s
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._buffer = receipt_buffer
        self._window = SubmitWindow(window)
        self._references = itertools.count(self._rng.randrange(256))
        self._smsc: smpp34.Smsc | None = None
        self._finishing = asyncio.Event()
        self._running = False
        self._deliveries = SmppDeliveries(name, receipts, inbound, self._clock, receipt_buffer)
        self.state = "down"  # bound, connecting, down
        self.last_error: str | None = None
        self.bound_since: datetime | None = None

    def __repr__(self) -> str:  # never the password
        return (
            f"SmppSmsClient({self.name!r}, {self.host}:{self.port}, system_id={self.system_id!r}, state={self.state})"
        )

    @property
    def in_flight(self) -> int:
        """submit_sm out and not yet done with (answered, timed out in smpp34, or dropped with the bind)."""
        return self._window.in_flight

    # --- sending -------------------------------------------------------------------------

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        """Submit one message on the current bind; never raises for what the SMSC or the network do."""
        destination = to.strip().removeprefix("+")
        if not (destination.isascii() and destination.isdigit()) or len(destination) > MAX_DESTINATION:
            return SendResult(Outcome.FAILED, error=f"the recipient is not an international number: {mask_phone(to)}")
        try:
            coding, parts = encode_parts(content, next(self._references))
        except (UnicodeEncodeError, ValueError) as exc:
            return SendResult(Outcome.FAILED, error=f"the message cannot be encoded: {exc}")
        deadline = self._clock.monotonic() + self.timeout_s
        message_id: str | None = None
        for number, short_message in enumerate(parts, 1):
            last = number == len(parts)
            where = f" (part {number} of {len(parts)}, after {number - 1} accepted)" if number > 1 else ""
            if self._bound_session() is None:
                return self._not_bound(ambiguous=number > 1, where=where)
            if not await self._take_slot(deadline):
                return SendResult(
                    Outcome.RETRY,
                    error=f"no room in the window of {self.window} outstanding submit_sm within "
                    f"{self.timeout_s:g}s{where}",
                    ambiguous=number > 1,
                )
            smsc = self._bound_session()
            if smsc is None:  # the bind went while this send waited for room
                self._window.give()
                return self._not_bound(ambiguous=number > 1, where=where)
            try:
                answer = smsc.submit_sm(
                    destination,
                    short_message,
                    source_addr=self.source,
                    source_addr_ton=self._source_ton,
                    source_addr_npi=self._source_npi,
                    dest_addr_ton=TON_INTERNATIONAL,
                    dest_addr_npi=NPI_E164,
                    esm_class=ESM_UDHI if len(parts) > 1 else 0,
                    registered_delivery=1 if last else 0,
                    data_coding=coding,
                )
            except Exception as exc:  # refused before it went out (smpp34 raises at once on a closed bind)
                self._window.give()
                return SendResult(Outcome.RETRY, error=f"submit_sm not sent: {exc}{where}", ambiguous=number > 1)
            future = asyncio.ensure_future(answer)
            future.add_done_callback(self._window.give)  # the slot is smpp34's until it is done with the PDU
            future.add_done_callback(_settled)
            if not await self._within(future, deadline - self._clock.monotonic()):
                return SendResult(
                    Outcome.RETRY,
                    error=f"no submit_sm_resp within {self.timeout_s:g}s{where}: the SMSC may have it",
                    ambiguous=True,
                )
            if future.exception() is not None:
                return SendResult(
                    Outcome.RETRY,
                    error=f"the bind failed with the submit_sm out ({future.exception()}){where}: the SMSC may have it",
                    ambiguous=True,
                )
            response = future.result()
            if response.command_status != 0:
                result = refused(response.command_status, where=where)
                if number > 1:
                    return SendResult(result.outcome, error=result.error, throttled=result.throttled, ambiguous=True)
                return result
            message_id = response.message_id
        if not message_id:
            return SendResult(Outcome.SENT, warning="the SMSC accepted it without a message_id: no receipt can match")
        return SendResult(Outcome.SENT, provider_message_id=message_id)

    def _bound_session(self) -> smpp34.Smsc | None:
        """The session to submit on: bound, and not finishing."""
        if self.state != "bound" or self._finishing.is_set():
            return None
        return self._smsc

    def _not_bound(self, *, ambiguous: bool, where: str) -> SendResult:
        why = f": {self.last_error}" if self.last_error and self.state != "bound" else ""
        state = "finishing" if self._finishing.is_set() else self.state
        return SendResult(
            Outcome.RETRY, error=f"SMPP provider {self.name} is not bound ({state}){why}{where}", ambiguous=ambiguous
        )

    async def _take_slot(self, deadline: float) -> bool:
        if self._window.take_now():
            return True
        waiter = self._window.wait()
        try:
            if await self._within(waiter, deadline - self._clock.monotonic()):
                return True
        except BaseException:
            self._window.abandon(waiter)
            raise
        self._window.abandon(waiter)
        return False

    async def _within(self, future: asyncio.Future[Any], seconds: float) -> bool:
        """Wait for ``future`` at most ``seconds`` on the clock (never cancelling it); True when it is done."""
        if future.done():
            return True
        if seconds <= 0:
            return False
        # A timer of this call's own, ended before it returns: the clock is injectable, so
        # asyncio.timeout (the event loop's time) would not do.
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({future, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return future.done()

    # --- the bind's life -----------------------------------------------------------------

    def finish(self) -> None:
        """Ask :meth:`run` to let the submits in flight be answered (up to ``timeout_s``), unbind, and end.

        Sends from now on are ``RETRY`` (not bound). After it, :meth:`run` returns at once.
        """
        self._finishing.set()

    async def run(self) -> None:
        """Connect, bind, keep the bind, bind again after a cut or a refusal, until :meth:`finish`.

        Its helper tasks (one reading each bind's ``deliver_sm``, one handing them to the
        callbacks) are its own, ended before it returns. Cancelled, it drops the bind at once
        without an unbind.
        """
        if self._running:
            raise RuntimeError(f"SMPP provider {self.name} is already running")
        self._running = True
        self._deliveries.open()
        deliveries = asyncio.create_task(self._deliveries.run(), name=f"insider-smpp-{self.name}-deliveries")
        try:
            await self._keep_bound()
            # Give what was received its chance to be written, then let go of it.
            self._deliveries.drain()
            if not await self._within(deliveries, self.timeout_s):
                deliveries.cancel()
            await asyncio.wait({deliveries})
        finally:
            if not deliveries.done():
                deliveries.cancel()
                await asyncio.wait({deliveries})
            if not deliveries.cancelled() and deliveries.exception() is not None:
                log.error("SMPP receipts task crashed", provider=self.name, exc_info=deliveries.exception())
            self._deliveries.report_lost()
            self._smsc = None
            self.state = "down"
            self.bound_since = None
            self._running = False

    async def _keep_bound(self) -> None:
        failures = 0
        outage_since: float | None = None
        while not self._finishing.is_set():
            self.state = "connecting"
            client = smpp34.Client(
                self.host,
                self.port,
                self.system_id,
                self._password,
                bind_type="TRX",
                system_type=self.system_type,
                window_size=self.window,
                inbound_capacity=self._buffer,
                connect_timeout_ms=max(1, round(self.bind_timeout_s * 1000)),
            )
            error = "finishing"
            try:
                smsc = await self._bind(client)
            except asyncio.CancelledError:
                _drop(client)
                raise
            except Exception as exc:
                smsc = None
                error = f"bind failed: {exc}"
            if smsc is None:
                if self._finishing.is_set():
                    break
                self._down(error, outage_since is None)
                outage_since = self._clock.monotonic() if outage_since is None else outage_since
                failures += 1
                await self._pause(self._backoff_s(failures))
                continue
            self._smsc = smsc
            self.state = "bound"
            self.bound_since = self._clock.now()
            self.last_error = None
            bound_at = self._clock.monotonic()
            if outage_since is None:
                log.info("SMPP bound", provider=self.name, host=self.host, port=self.port, system_id=self.system_id)
            else:
                log.info(
                    "SMPP bound again",
                    provider=self.name,
                    host=self.host,
                    port=self.port,
                    down_s=round(bound_at - outage_since, 3),
                )
            outage_since = None
            try:
                lost = await self._serve(client, smsc)
            except asyncio.CancelledError:
                _drop(client)
                raise
            finally:
                self._smsc = None
                self.bound_since = None
            if not lost:
                break
            self._down("the bind was lost (the SMSC unbound or the connection dropped)", True)
            outage_since = self._clock.monotonic()
            if outage_since - bound_at >= self.reconnect_backoff_max_s:
                failures = 0
            failures += 1
            await self._pause(self._backoff_s(failures))
        self.state = "down"

    async def _bind(self, client: smpp34.Client) -> smpp34.Smsc | None:
        """The bound session, or None when finish() came first (the half-made bind is dropped)."""
        binding = asyncio.ensure_future(client.connect())
        finishing = asyncio.ensure_future(self._finishing.wait())
        try:
            await asyncio.wait({binding, finishing}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            binding.add_done_callback(_settled)
            raise
        finally:
            finishing.cancel()
        if not binding.done():
            binding.add_done_callback(_settled)
            _drop(client)
            return None
        smsc: smpp34.Smsc = binding.result()  # raises what connect raised
        if self._finishing.is_set():
            await self._unbind(smsc)
            return None
        return smsc

    def _down(self, error: str, first: bool) -> None:
        self.state = "down"
        self.last_error = error
        if first:  # one line per outage; the attempts within it are not logged
            log.warning(
                "SMPP bind down; binding again with backoff",
                provider=self.name,
                host=self.host,
                port=self.port,
                system_id=self.system_id,
                error=error,
            )

    def _backoff_s(self, failures: int) -> float:
        ceiling = min(self.reconnect_backoff_max_s, self.reconnect_backoff_s * 2.0 ** min(failures - 1, 30))
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def _pause(self, seconds: float) -> None:
        """Sleep on the clock, or less when finish() comes."""
        finishing = asyncio.ensure_future(self._finishing.wait())
        try:
            await self._within(finishing, seconds)
        finally:
            finishing.cancel()

    async def _serve(self, client: smpp34.Client, smsc: smpp34.Smsc) -> bool:
        """Read the bind's deliver_sm until it is lost (True) or finish() unbinds it (False)."""
        reader = asyncio.create_task(self._read(smsc), name=f"insider-smpp-{self.name}-reader")
        finishing = asyncio.ensure_future(self._finishing.wait())
        try:
            while True:
                # smpp34 1.5 drops its Disconnected event when its inbound queue is full, so
                # the reader would wait for ever: whether the session lives is asked too.
                timer = asyncio.ensure_future(self._clock.sleep(LIVENESS_CHECK_S))
                try:
                    await asyncio.wait({reader, finishing, timer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                if reader.done() or finishing.done():
                    break
                if not await client.is_alive():
                    return True
            if reader.done():
                reader.result()  # a reader that crashed ends run() with its error: the supervisor restarts it
                return True
            # finish(): the submits in flight get their answers first, then the unbind.
            await self._within(self._window.idle(), self.timeout_s)
            await self._unbind(smsc)
            await self._within(reader, self.timeout_s)
            return False
        finally:
            finishing.cancel()
            if not reader.done():
                reader.cancel()
                _drop(client)
                await asyncio.wait({reader})

    async def _unbind(self, smsc: smpp34.Smsc) -> None:
        unbinding = asyncio.ensure_future(smsc.unbind())
        unbinding.add_done_callback(_settled)
        if await self._within(unbinding, self.timeout_s):
            log.info("SMPP unbound", provider=self.name, host=self.host, port=self.port)
        else:
            log.warning("SMPP unbind not answered in time; the connection is dropped", provider=self.name)

    async def _read(self, smsc: smpp34.Smsc) -> None:
        """Take the bind's deliver_sm into the inbox until the bind ends; a full inbox holds them back."""
        while True:
            event = await smsc.next()
            if not isinstance(event, smpp34.DeliverSmEvent):
                return
            await self._deliveries.put(event)


def _drop(client: smpp34.Client) -> None:
    """End a session without an unbind; smpp34 does it in its own runtime whether or not it is awaited."""
    stopping = asyncio.ensure_future(client.stop())
    stopping.add_done_callback(_settled)
