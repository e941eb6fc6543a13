"""A simulated SMSC on smpp34's server: binds, submit_sm answered as the simulated provider does, receipts too.

It plays the SMPP side of ``python -m insider simulate --smpp-port N`` beside the HTTP
provider, with the same options: ``latency_s`` delays each ``submit_sm_resp``, a share
``rate_limit_rate`` is refused with ``ESME_RTHROTTLED`` and a share ``fail_rate`` with
``ESME_RSYSERR``; the others are accepted with a fresh message id. A submit asking for a
receipt (``registered_delivery``) gets one as a ``deliver_sm`` after the receipt delay
(appendix B text and the ``receipted_message_id``/``message_state`` TLVs), on the session
it came from or, when that one is gone, another of the same ``system_id``; a receipt the
ESME refuses (an error ``deliver_sm_resp``) or that finds no session is tried twice more, a
second apart, then counted lost. ``set_down(True)`` stops listening and drops every bind
(an SMSC that is down); ``set_down(False)`` listens again. :meth:`SimulatedSmsc.reply` plays a
handset's reply: a ``deliver_sm`` that is no receipt, to a bound ESME.

smpp34's server accepts every bind and does not show the password, so only the
``system_id`` can be checked: a bind with another one is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import smpp34
from aiohttp import web

from insider.clock import SystemClock
from insider.domain import mask_phone
from insider.logs import get_logger
from insider.ports import Clock
from insider.simulator import LISTED_MESSAGES, ReceiptOptions, ReceiptReporter, Received, SimulatorOptions

log = get_logger("insider.simulator")

ESME_RSYSERR: Final = 0x08
ESME_RTHROTTLED: Final = 0x58
TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_MESSAGE_STATE: Final = 0x0427
MESSAGE_STATE: Final = {"delivered": (2, "DELIVRD"), "undelivered": (5, "UNDELIV")}
RECEIPT_ATTEMPTS: Final = 3
RECEIPT_RETRY_S: Final = 1.0
REMEMBERED_IDS: Final = 100_000  # accepted messages whose receipt is still to come, at most
# The kinds of answer GET /smsc counts.
SMSC_COUNTS: Final = (
    "binds",
    "bindsRefused",
    "accepted",
    "failed",
    "throttled",
    "receiptsSent",
    "receiptsRefused",
    "receiptsLost",
    "repliesSent",
)
# A handset's reply: GSM 7-bit when the default alphabet has it, else UCS-2.
DATA_CODING_GSM7: Final = 0x00
DATA_CODING_UCS2: Final = 0x08


@dataclass(frozen=True, slots=True)
class _Submitted:
    session_id: str
    system_id: str
    source: str
    destination: str
    text: str
    at: datetime


def _text(event: smpp34.SubmitSmEvent) -> str:
    body = event.short_message
    if event.esm_class & 0x40 and body:  # a part: its UDH off
        body = body[1 + body[0] :]
    codec = "utf-16-be" if event.data_coding == 0x08 else "gsm03.38" if event.data_coding == 0 else "latin-1"
    return body.decode(codec, "replace")


def _smpp_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%y%m%d%H%M")


class SimulatedSmsc:
    """An SMSC on ``host:port`` that answers like :class:`insider.simulator.SimulatedProvider`.

    :meth:`start` listens (raises ``smpp34.SmppError`` or ``OSError`` when it cannot);
    :meth:`run` serves until cancelled (its owner runs it). ``clock`` and ``rng`` are
    injectable.
    """

    def __init__(
        self,
        host: str,
        port: int,
        options: SimulatorOptions | None = None,
        receipts: ReceiptOptions | None = None,
        *,
        system_id: str = "",
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.options = options or SimulatorOptions()
        self.system_id = system_id
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.reporter = ReceiptReporter(self._send_receipts, receipts or ReceiptOptions(), clock=self._clock, rng=rng)
        self._server: smpp34.Server | None = None
        self._sessions: dict[str, smpp34.Esme] = {}
        self._submitted: dict[str, _Submitted] = {}
        self._answers: set[asyncio.TimerHandle] = set()
        self.received: deque[Received] = deque(maxlen=LISTED_MESSAGES)
        self.counts = dict.fromkeys(SMSC_COUNTS, 0)
        self.down = False

    @property
    def binds(self) -> int:
        """ESMEs bound now."""
        return len(self._sessions)

    async def start(self) -> None:
        """Listen on host:port; ``host`` may be a name (smpp34 takes addresses only)."""
        infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        address = str(infos[0][4][0])
        self._server = smpp34.Server(address, self.port, system_id="INSIDERSIM")
        await self._server.start()

    async def run(self) -> None:
        """Answer binds and submits, and report receipts, until cancelled."""
        server = self._server
        if server is None:
            raise RuntimeError("start() the SMSC first")
        reporting = asyncio.create_task(self.reporter.run(), name="insider-smsc-receipts")
        try:
            while True:
                event = await server.next()
                if isinstance(event, smpp34.Esme):
                    await self._bound(event)
                elif isinstance(event, smpp34.Unbound):
                    self._sessions.pop(event.session_id, None)
                else:
                    self._submit(event)
        finally:
            reporting.cancel()
            for handle in self._answers:
                handle.cancel()
            await asyncio.wait({reporting})

    async def close(self) -> None:
        """Stop listening and drop every bind."""
        await self.set_down(True)

    async def set_down(self, down: bool) -> None:
        """Down: stop listening and drop every bind (connections are refused). Up: listen again."""
        if self._server is None or down == self.down:
            return
        self.down = down
        if down:
            await self._server.stop()
            for esme in list(self._sessions.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(esme.unbind(), 2.0)
            self._sessions.clear()
        else:
            await self._server.start()
        log.info("simulated SMSC " + ("down: binds refused" if down else "up: binds accepted"))

    async def _bound(self, esme: smpp34.Esme) -> None:
        if self.down or (self.system_id and esme.system_id != self.system_id):
            self.counts["bindsRefused"] += 1
            log.warning("simulated SMSC dropped a bind", system_id=esme.system_id, down=self.down)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(esme.unbind(), 2.0)
            return
        self.counts["binds"] += 1
        self._sessions[esme.session_id] = esme
        log.info("simulated SMSC bound", system_id=esme.system_id)

    def _submit(self, event: smpp34.SubmitSmEvent) -> None:
        draw = self._rng.random()
        if draw < self.options.rate_limit_rate:
            self.counts["throttled"] += 1
            self._later(event, ESME_RTHROTTLED, "")
            return
        if draw < self.options.rate_limit_rate + self.options.fail_rate:
            self.counts["failed"] += 1
            self._later(event, ESME_RSYSERR, "")
            return
        message_id = uuid.uuid4().hex
        text = _text(event)
        now = self._clock.now()
        self.received.append(Received(message_id, "+" + event.destination_addr, text, None, now))
        self.counts["accepted"] += 1
        esme = self._sessions.get(event.session_id)
        if event.registered_delivery & 1:
            system_id = esme.system_id if esme is not None else ""
            self._submitted[message_id] = _Submitted(
                event.session_id, system_id, event.source_addr, event.destination_addr, text[:20], now
            )
            if len(self._submitted) > REMEMBERED_IDS:
                self._submitted.pop(next(iter(self._submitted)))
            self.reporter.schedule(message_id)
        log.info("simulated submit_sm", to=mask_phone("+" + event.destination_addr), provider_message_id=message_id)
        self._later(event, 0, message_id)

    def _later(self, event: smpp34.SubmitSmEvent, status: int, message_id: str) -> None:
        """Answer after the latency (a timer of the event loop: answers do not wait for each other)."""
        low, high = self.options.latency_s
        delay = self._rng.uniform(low, high) if high > 0 else 0.0

        def answer() -> None:
            self._answers.discard(handle)
            if status:
                event.reject(status)
            else:
                event.accept(message_id=message_id)

        handle = asyncio.get_running_loop().call_later(delay, answer)
        self._answers.add(handle)

    async def reply(self, sender: str, to: str, text: str) -> bool:
        """A handset's reply from ``sender`` (E.164) to ``to``, as a deliver_sm (no receipt) to a bound ESME;
        whether one took it."""
        try:
            body, coding = text.encode("gsm03.38"), DATA_CODING_GSM7
        except UnicodeEncodeError:
            body, coding = text.encode("utf-16-be"), DATA_CODING_UCS2
        for esme in list(self._sessions.values()):
            try:
                response = await esme.deliver_sm(
                    to,
                    body,
                    source_addr=sender.removeprefix("+"),
                    source_addr_ton=1 if sender.startswith("+") else 0,
                    source_addr_npi=1,
                    data_coding=coding,
                )
            except smpp34.SmppError:
                continue
            if response.command_status == 0:
                self.counts["repliesSent"] += 1
                log.info("simulated reply sent as deliver_sm", sender=mask_phone(sender), length=len(text))
                return True
        return False

    async def _send_receipts(self, receipts: list[dict[str, Any]]) -> None:
        """The reporter's sink: each receipt as a deliver_sm, tried again a second apart when refused."""
        waiting = [r for r in receipts if r["messageId"] in self._submitted]
        for attempt in range(1, RECEIPT_ATTEMPTS + 1):
            refused = [r for r in waiting if not await self._deliver(r)]
            if not refused:
                return
            if attempt < RECEIPT_ATTEMPTS:
                self.counts["receiptsRefused"] += len(refused)
                await self._clock.sleep(RECEIPT_RETRY_S)
            waiting = refused
        self.counts["receiptsLost"] += len(waiting)
        for receipt in waiting:
            self._submitted.pop(receipt["messageId"], None)
        log.warning("simulated receipts not taken by any bind", count=len(waiting))

    async def _deliver(self, receipt: dict[str, Any]) -> bool:
        submitted = self._submitted[receipt["messageId"]]
        esme = self._sessions.get(submitted.session_id) or next(
            (e for e in self._sessions.values() if e.system_id == submitted.system_id), None
        )
        if esme is None:
            return False
        state, stat = MESSAGE_STATE[receipt["status"]]
        delivered = receipt["status"] == "delivered"
        text = (
            f"id:{receipt['messageId']} sub:001 dlvrd:{'001' if delivered else '000'} "
            f"submit date:{_smpp_time(submitted.at)} done date:{_smpp_time(self._clock.now())} "
            f"stat:{stat} err:{'000' if delivered else '001'} text:{submitted.text}"
        )
        try:
            response = await esme.deliver_sm(
                submitted.source,
                text.encode("latin-1", "replace"),
                source_addr=submitted.destination,
                source_addr_ton=1,
                source_addr_npi=1,
                esm_class=0x04,
                tlvs=[
                    smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, receipt["messageId"].encode() + b"\x00"),
                    smpp34.Tlv(TLV_MESSAGE_STATE, bytes((state,))),
                ],
            )
        except smpp34.SmppError:
            return False
        if response.command_status != 0:
            return False
        self._submitted.pop(receipt["messageId"], None)
        self.counts["receiptsSent"] += 1
        return True


SMSC: Final = web.AppKey("smsc", SimulatedSmsc)


async def _state(request: web.Request) -> web.Response:
    smsc = request.app[SMSC]
    return web.json_response(
        {
            "state": "down" if smsc.down else "up",
            "binds": smsc.binds,
            "counts": smsc.counts,
            "receiptsScheduled": smsc.reporter.scheduled,
        }
    )


async def _down(request: web.Request) -> web.Response:
    await request.app[SMSC].set_down(True)
    return await _state(request)


async def _up(request: web.Request) -> web.Response:
    await request.app[SMSC].set_down(False)
    return await _state(request)


async def _reply(request: web.Request) -> web.Response:
    """``{"from", "to"?, "text"}``: a handset's reply sent to a bound ESME (409 when none took it)."""
    try:
        body = await request.json()
        sender, to, text = body["from"], body.get("to", "INSIDER"), body["text"]
        if not all(isinstance(v, str) for v in (sender, to, text)):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        return web.json_response({"error": 'the body must be {"from", "to"?, "text"}, strings'}, status=400)
    if not await request.app[SMSC].reply(sender, to, text):
        return web.json_response({"error": "no bound ESME took the reply"}, status=409)
    return await _state(request)


def add_smsc_routes(app: web.Application, smsc: SimulatedSmsc) -> None:
    """``GET /smsc`` (state and counts), ``POST /smsc/down``, ``POST /smsc/up`` and ``POST /smsc/replies``
    on the simulator's app."""
    app[SMSC] = smsc
    app.router.add_post("/smsc/replies", _reply)
    app.router.add_get("/smsc", _state, allow_head=False)
    app.router.add_post("/smsc/down", _down)
    app.router.add_post("/smsc/up", _up)
