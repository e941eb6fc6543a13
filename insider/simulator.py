"""A simulated SMS provider, in process (the default SmsClient) or as an HTTP server; nothing leaves the machine."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import math
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from insider.clock import SystemClock
from insider.domain import Outcome, SendResult, mask_phone
from insider.logs import get_logger
from insider.ports import Clock
from insider.simulator_control import Fault, FaultSwitch, Listener, add_control_routes

log = get_logger("insider.simulator")

AUTH_HEADER: Final = "x-ins-auth-key"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
# How many idempotency keys, and how many accepted messages for GET /messages, are kept:
# enough for any demo or test, and memory stays bounded however long it runs.
REMEMBERED_KEYS: Final = 100_000
LISTED_MESSAGES: Final = 1_000

Sleep = Callable[[float], Awaitable[None]]

# The kinds of answer GET /messages counts: 202 new, 202 again for a known Idempotency-Key, 500, 429,
# 400 (not a message), 401 (missing or wrong auth key), 413 (a body over the size limit).
ANSWER_KINDS: Final = ("accepted", "replayed", "failed", "rateLimited", "rejected", "unauthorized", "tooLarge")
MAX_BODY_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """How the simulated provider behaves.

    ``latency_s`` is the (shortest, longest) time an answer takes, drawn uniformly.
    Of all requests, a share ``rate_limit_rate`` gets ``429`` with ``Retry-After:
    retry_after_s``, then a share ``fail_rate`` gets ``500``; the others are accepted.
    With ``auth_key`` set, requests must carry it in ``x-ins-auth-key``.
    """

    latency_s: tuple[float, float] = (0.02, 0.05)
    fail_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    auth_key: str = ""

    def __post_init__(self) -> None:
        low, high = self.latency_s
        if not 0 <= low <= high or not math.isfinite(high):
            raise ValueError(f"latency_s must be 0 <= shortest <= longest, not {self.latency_s!r}")
        for name in ("fail_rate", "rate_limit_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be from 0 to 1, not {getattr(self, name)!r}")
        if not 0 <= self.retry_after_s < math.inf:
            raise ValueError(f"retry_after_s must be a number of seconds, not {self.retry_after_s!r}")


@dataclass(frozen=True, slots=True)
class Received:
    """One message the simulated provider accepted."""

    message_id: str
    to: str
    content: str
    idempotency_key: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Answer:
    """What the provider answers one request: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def message_id(self) -> str | None:
        value = self.body.get("messageId")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class ReceiptOptions:
    """When and what the simulated provider reports on the messages it accepted.

    Each accepted message gets one receipt after a delay drawn uniformly from
    ``delay_s``: ``undelivered`` (error code ``1``) for a share ``undelivered_rate``,
    ``delivered`` for the others.
    """

    delay_s: tuple[float, float] = (1.0, 5.0)
    undelivered_rate: float = 0.05

    def __post_init__(self) -> None:
        low, high = self.delay_s
        if not 0 <= low <= high or not math.isfinite(high):
            raise ValueError(f"delay_s must be 0 <= shortest <= longest, not {self.delay_s!r}")
        if not 0.0 <= self.undelivered_rate <= 1.0:
            raise ValueError(f"undelivered_rate must be from 0 to 1, not {self.undelivered_rate!r}")


# Receipts, in the JSON shape of POST /api/v1/delivery-reports, to wherever they go.
ReceiptSink = Callable[[list[dict[str, Any]]], Awaitable[None]]
# How often the reporter looks for due receipts at most, and how far ahead it takes them:
# receipts due within one window go in one call (one POST), a little early rather than alone.
REPORT_TICK_S: Final = 0.25
REPORT_WINDOW_S: Final = 0.1


class ReceiptReporter:
    """Reports a delivery receipt for each accepted message, after its delay.

    Receipts that fall due together go to ``sink`` in one call (one POST of an array, or
    one in-process write). A sink that fails is logged and its receipts are not sent again:
    a real provider's retries are not simulated. ``clock`` is injectable, so tests do not
    wait. :meth:`run` reports until it is cancelled; its owner runs it (the service's
    supervisor as one of its children, the ``simulate`` command in a task of its own).
    """

    def __init__(
        self,
        sink: ReceiptSink,
        options: ReceiptOptions | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options or ReceiptOptions()
        self._sink = sink
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._due: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._scheduled = asyncio.Event()  # set when a receipt is added: run() looks at the earliest again
        self.counts = {"delivered": 0, "undelivered": 0, "failed": 0}

    def schedule(self, message_id: str) -> None:
        """Report on ``message_id`` after a delay."""
        low, high = self.options.delay_s
        undelivered = self._rng.random() < self.options.undelivered_rate
        receipt: dict[str, Any] = {"messageId": message_id, "status": "undelivered" if undelivered else "delivered"}
        if undelivered:
            receipt["errorCode"] = "1"
        heapq.heappush(self._due, (self._clock.monotonic() + self._rng.uniform(low, high), next(self._seq), receipt))
        self._scheduled.set()

    @property
    def scheduled(self) -> int:
        """Receipts not reported yet."""
        return len(self._due)

    async def run(self) -> None:
        """Report each receipt when it falls due, until cancelled; receipts not yet due are then not sent."""
        while True:
            if not self._due:
                self._scheduled.clear()
                await self._scheduled.wait()
                continue
            wait_s = self._due[0][0] - self._clock.monotonic()
            if wait_s > 0:
                await self._clock.sleep(min(wait_s, REPORT_TICK_S))
                continue
            batch = []
            while self._due and self._due[0][0] <= self._clock.monotonic() + REPORT_WINDOW_S:
                _, _, receipt = heapq.heappop(self._due)
                receipt["doneAt"] = self._clock.now().isoformat()
                batch.append(receipt)
            try:
                await self._sink(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counts["failed"] += len(batch)
                log.warning("simulated receipts not delivered", count=len(batch), error=f"{type(exc).__name__}: {exc}")
                continue
            for receipt in batch:
                self.counts[receipt["status"]] += 1


def http_receipt_sink(session: Any, url: str, token: str, *, timeout_s: float = 10.0, attempts: int = 3) -> ReceiptSink:
    """A sink that POSTs receipts as one JSON array to ``url`` with ``x-ins-auth-key: token``.

    A transport error or a 5xx is tried again (up to ``attempts`` times, a second apart),
    so receipts due while the service starts are not lost; other answers raise at once.
    """
    import aiohttp

    async def post(receipts: list[dict[str, Any]]) -> None:
        headers = {AUTH_HEADER: token} if token else {}
        for attempt in range(1, attempts + 1):
            try:
                async with session.post(
                    url, json=receipts, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
                ) as response:
                    if response.status < 500:
                        if response.status >= 300:
                            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
                        return
                    problem: str = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == attempts:
                raise RuntimeError(problem)
            await asyncio.sleep(1.0)

    return post


class SimulatedProvider:
    """The provider's behaviour, shared by the in-process client and the HTTP server.

    It answers like the real provider: ``202`` with ``{"message": "Accepted",
    "messageId": <uuid>}`` after a little latency, and the same ``messageId`` again for a
    repeated ``Idempotency-Key``; on demand, a share of ``500`` answers and of ``429``
    answers with ``Retry-After``, so that retries can be tried out. ``sleep`` and ``rng``
    are injectable, so tests neither wait nor depend on chance.
    """

    def __init__(
        self,
        options: SimulatorOptions | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        reporter: ReceiptReporter | None = None,
    ) -> None:
        self.options = options or SimulatorOptions()
        self.reporter = reporter  # None: no receipts
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._keys: OrderedDict[str, str] = OrderedDict()
        self.received: deque[Received] = deque(maxlen=LISTED_MESSAGES)
        # One count per kind of answer, so that their sum is every request the webhook answered.
        self.counts = dict.fromkeys(ANSWER_KINDS, 0)
        self.fault = Fault(retry_after_s=self.options.retry_after_s)
        self._fault_changed = asyncio.Event()  # set (and replaced) whenever the mode changes
        self.held = 0  # requests hang is holding now

    def set_fault(self, fault: Fault) -> None:
        """Misbehave as ``fault`` says from now on; requests held by ``hang`` are answered as the new mode says."""
        self.fault = fault
        changed, self._fault_changed = self._fault_changed, asyncio.Event()
        changed.set()

    async def answer(self, to: Any, content: Any, idempotency_key: str | None) -> Answer:
        """Decide the answer at once (so concurrent repeats of a key agree), then take the latency.

        In ``hang`` mode the request is held, undecided, until the mode changes.
        """
        if self.fault.mode == "hang":
            self.held += 1
            try:
                while self.fault.mode == "hang":
                    await self._fault_changed.wait()
            finally:
                self.held -= 1
        fault = self.fault
        answer = self._decide(to, content, idempotency_key)
        low, high = (fault.latency_s, fault.latency_s) if fault.mode == "slow" else self.options.latency_s
        if high > 0:
            await self._sleep(self._rng.uniform(low, high))
        return answer

    def _decide(self, to: Any, content: Any, idempotency_key: str | None) -> Answer:
        if not isinstance(to, str) or not to.strip() or not isinstance(content, str):
            self.counts["rejected"] += 1
            return Answer(400, {"error": 'the body must be {"to": string, "content": string}'}, {})
        fault = self.fault
        if fault.mode == "throttle":
            self.counts["rateLimited"] += 1
            retry_after = str(math.ceil(fault.retry_after_s))
            return Answer(429, {"error": "rate limited (simulated: throttle mode)"}, {"Retry-After": retry_after})
        if fault.mode in ("error", "down"):  # down: a request that came in as it went down
            self.counts["failed"] += 1
            return Answer(fault.status, {"error": f"simulated: {fault.mode} mode"}, {})
        if idempotency_key and idempotency_key in self._keys:
            # The same request again (a retry after a lost answer): the same message, not a new one.
            self._keys.move_to_end(idempotency_key)
            self.counts["replayed"] += 1
            return Answer(202, {"message": "Accepted", "messageId": self._keys[idempotency_key]}, {})
        draw = self._rng.random()
        if draw < self.options.rate_limit_rate:
            self.counts["rateLimited"] += 1
            retry_after = str(math.ceil(self.options.retry_after_s))
            return Answer(429, {"error": "rate limited (simulated)"}, {"Retry-After": retry_after})
        if draw < self.options.rate_limit_rate + self.options.fail_rate:
            self.counts["failed"] += 1
            return Answer(500, {"error": "internal error (simulated)"}, {})
        message_id = str(uuid.uuid4())
        if idempotency_key:
            self._keys[idempotency_key] = message_id
            if len(self._keys) > REMEMBERED_KEYS:
                self._keys.popitem(last=False)
        self.received.append(Received(message_id, to, content, idempotency_key, datetime.now(UTC)))
        self.counts["accepted"] += 1
        if self.reporter is not None:
            self.reporter.schedule(message_id)
        return Answer(202, {"message": "Accepted", "messageId": message_id}, {})


class SimulatedSmsClient(SimulatedProvider):
    """The SmsClient port on the simulated provider, in process: nothing leaves the machine.

    Answers as the webhook client would report the real provider's answers: ``SENT``
    with a fresh provider message id (the same one for a repeated idempotency key),
    ``RETRY`` for the injected 500s and 429s (with ``retry_after_s``). What the provider
    received and counted is this object's own.
    """

    async def send(self, to: str, content: str, idempotency_key: str) -> SendResult:
        if self.fault.mode == "down":
            return SendResult(Outcome.RETRY, error="connection error: connection refused (simulated: down mode)")
        answer = await self.answer(to, content, idempotency_key)
        if 200 <= answer.status < 300:
            return SendResult(Outcome.SENT, status_code=answer.status, provider_message_id=answer.message_id)
        error = f"HTTP {answer.status}: {json.dumps(answer.body)}"
        if answer.status == 429:
            retry_after_s = float(answer.headers["Retry-After"])
            return SendResult(Outcome.RETRY, status_code=429, error=error, retry_after_s=retry_after_s)
        if answer.status >= 500:
            return SendResult(Outcome.RETRY, status_code=answer.status, error=error)
        return SendResult(Outcome.FAILED, status_code=answer.status, error=error)


SIMULATOR: Final = web.AppKey("simulator", SimulatedProvider)


async def _webhook(request: web.Request) -> web.Response:
    provider = request.app[SIMULATOR]
    auth_key = provider.options.auth_key
    if auth_key and request.headers.get(AUTH_HEADER, "") != auth_key:
        provider.counts["unauthorized"] += 1
        log.warning("simulated send", outcome="unauthorized", status_code=401)
        return web.json_response({"error": f"missing or wrong {AUTH_HEADER}"}, status=401)
    try:
        payload = await request.json(loads=json.loads)
    except web.HTTPRequestEntityTooLarge:
        provider.counts["tooLarge"] += 1
        return web.json_response({"error": f"the body is larger than {MAX_BODY_BYTES} bytes"}, status=413)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        provider.counts["rejected"] += 1
        return web.json_response({"error": "the body must be a JSON object"}, status=400)
    answer = await provider.answer(payload.get("to"), payload.get("content"), request.headers.get(IDEMPOTENCY_HEADER))
    to = payload.get("to")
    log.info(
        "simulated send",
        status_code=answer.status,
        to=mask_phone(to) if isinstance(to, str) else None,
        provider_message_id=answer.message_id,
    )
    return web.json_response(answer.body, status=answer.status, headers=answer.headers)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _messages(request: web.Request) -> web.Response:
    provider = request.app[SIMULATOR]
    data = [
        {
            "messageId": r.message_id,
            "to": r.to,
            "content": r.content,
            "idempotencyKey": r.idempotency_key,
            "receivedAt": r.received_at.isoformat(),
        }
        for r in reversed(provider.received)
    ]
    body: dict[str, Any] = {"data": data, "counts": provider.counts}
    if provider.reporter is not None:
        body["receipts"] = provider.reporter.counts | {"scheduled": provider.reporter.scheduled}
    return web.json_response(body)


def create_simulator_app(provider: SimulatedProvider | None = None) -> web.Application:
    """The simulated provider as an aiohttp app.

    ``POST /`` and ``POST /webhook`` take ``{"to", "content"}`` like the real webhook;
    ``GET /healthz`` answers while it runs; ``GET /messages`` lists what it accepted,
    newest first, with counts of every kind of answer. ``GET /simulator`` shows its fault
    mode and ``POST /simulator/mode`` (``/down``, ``/up``) switches it, except to ``down``,
    which would cut the way back: that is done on :func:`create_control_app`'s port.
    """
    provider = provider or SimulatedProvider()
    app = create_control_app(provider)
    app.router.add_post("/", _webhook)
    app.router.add_post("/webhook", _webhook)
    return app


def create_control_app(provider: SimulatedProvider, listener: Listener | None = None) -> web.Application:
    """The simulator without its webhook: ``/healthz``, ``/messages`` and the fault switch, for a port of its own
    that stays up while the webhook's is down; ``down`` stops and ``up`` restarts the webhook's ``listener``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SIMULATOR] = provider
    app.router.add_get("/healthz", _healthz, allow_head=False)
    app.router.add_get("/messages", _messages, allow_head=False)
    add_control_routes(app, FaultSwitch(provider, listener))
    return app
