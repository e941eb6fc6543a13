"""The simulated provider's fault modes (down, slow, hang, error status, throttle), switched at run time over HTTP."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiohttp import web

from insider.config import format_duration, parse_duration
from insider.logs import get_logger

if TYPE_CHECKING:
    from insider.simulator import SimulatedProvider

log = get_logger("insider.simulator")

# up: as its options say; down: connections refused; slow: every answer after `latency`;
# hang: no answer until the mode changes; error: every request answered `status`;
# throttle: every request answered 429 with Retry-After.
MODES: Final = ("up", "down", "slow", "hang", "error", "throttle")
FAULT_SYNTAX: Final = "up, down, hang, slow:DURATION, error[:STATUS] or throttle[:DURATION]"
# How long a request still being answered may finish when the provider goes down; then it is cut.
DOWN_GRACE_S: Final = 0.5


class FaultError(ValueError):
    """A fault mode that cannot be used, with a message fit for an operator."""


@dataclass(frozen=True, slots=True)
class Fault:
    """How the simulated provider misbehaves now; ``mode`` ``up`` is not at all.

    ``status`` is the answer of ``error`` mode (400 to 599), ``latency_s`` the time every
    answer takes in ``slow`` mode, ``retry_after_s`` the ``Retry-After`` of ``throttle`` mode.
    """

    mode: str = "up"
    status: int = 503
    latency_s: float = 5.0
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FaultError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 400 <= self.status <= 599:
            raise FaultError(f"status must be an error status from 400 to 599, not {self.status!r}")
        for name in ("latency_s", "retry_after_s"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise FaultError(f"{name.removesuffix('_s')} must be a duration, not {value!r}")

    def describe(self) -> str:
        """One phrase for the start-up lines and the log."""
        if self.mode == "down":
            return "down: connections refused"
        if self.mode == "slow":
            return f"slow: every answer after {format_duration(self.latency_s)}"
        if self.mode == "hang":
            return "hang: no answer until the mode changes"
        if self.mode == "error":
            return f"error: every request answered {self.status}"
        if self.mode == "throttle":
            return f"throttle: every request answered 429 (Retry-After {format_duration(self.retry_after_s)})"
        return "up: answers as its options say"

    def as_json(self) -> dict[str, Any]:
        """The mode and the one value it uses, as ``POST /simulator/mode`` takes it."""
        shown: dict[str, Any] = {"mode": self.mode}
        if self.mode == "error":
            shown["status"] = self.status
        elif self.mode == "slow":
            shown["latency"] = format_duration(self.latency_s)
        elif self.mode == "throttle":
            shown["retryAfter"] = format_duration(self.retry_after_s)
        return shown


def parse_fault(text: str, *, retry_after_s: float = 1.0) -> Fault:
    """A fault from the command line: ``down``, ``hang``, ``slow:5s``, ``error``, ``error:500``, ``throttle:2s``."""
    mode, _, value = text.strip().partition(":")
    mode = mode.strip().lower()
    if mode not in MODES:
        raise FaultError(f"expected {FAULT_SYNTAX}, got {text!r}")
    if mode == "error" and value:
        try:
            return Fault(mode, status=int(value))
        except ValueError:
            raise FaultError(f"error:STATUS takes a status from 400 to 599, got {value!r}") from None
    if mode in ("slow", "throttle") and value:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise FaultError(f"{mode}:DURATION: {exc}") from None
        return Fault(mode, latency_s=seconds) if mode == "slow" else Fault(mode, retry_after_s=seconds)
    if mode == "slow":
        raise FaultError("slow needs a duration: slow:5s")
    if value:
        raise FaultError(f"{mode} takes no value, got {text!r}")
    return Fault(mode, retry_after_s=retry_after_s) if mode == "throttle" else Fault(mode)


def fault_from_json(body: Any, *, retry_after_s: float = 1.0) -> Fault:
    """A fault from ``POST /simulator/mode``'s body: ``{"mode": "error", "status": 503}``, ``{"mode": "slow",
    "latency": "5s"}``, ``{"mode": "throttle", "retryAfter": "2s"}``, ``{"mode": "down"}``, ..."""
    if not isinstance(body, dict) or not isinstance(body.get("mode"), str):
        raise FaultError(f'the body must be a JSON object with "mode": one of {", ".join(MODES)}')
    allowed = {"mode", "status", "latency", "retryAfter"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise FaultError(f"unknown field {unknown[0]!r}: expected {', '.join(sorted(allowed))}")
    mode = body["mode"]
    status = body.get("status", 503)
    if isinstance(status, bool) or not isinstance(status, int):
        raise FaultError(f"status must be a whole number from 400 to 599, not {status!r}")
    if mode == "slow" and "latency" not in body:
        raise FaultError('slow needs "latency": a duration such as "5s"')
    return Fault(
        mode,
        status=status,
        latency_s=_seconds(body, "latency", 5.0),
        retry_after_s=_seconds(body, "retryAfter", retry_after_s),
    )


def _seconds(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FaultError(f'{key} must be a duration ("5s", "500ms") or seconds, not {value!r}')
    try:
        return parse_duration(value) if isinstance(value, str) else float(value)
    except ValueError as exc:
        raise FaultError(f"{key}: {exc}") from None


class Listener(Protocol):
    """The webhook's listening socket, which ``down`` closes and ``up`` opens again."""

    async def stop(self) -> None:
        """Stop listening (new connections are refused) and close the connections open now."""

    async def start(self) -> None:
        """Listen again on the same address."""


class FaultSwitch:
    """Switches the simulated provider's fault mode; ``down`` and back need the webhook's :class:`Listener`.

    Without one (on the webhook's own port, where ``down`` would also cut the way back, or
    an app served by someone else), ``down`` is refused with :class:`FaultError`.
    """

    def __init__(self, provider: SimulatedProvider, listener: Listener | None = None) -> None:
        self.provider = provider
        self.listener = listener

    @property
    def listening(self) -> bool:
        return self.provider.fault.mode != "down"

    async def set(self, fault: Fault) -> Fault:
        """Switch to ``fault``; the mode that was."""
        before = self.provider.fault
        if fault.mode == "down" and before.mode != "down":
            if self.listener is None:
                raise FaultError(
                    "down would stop the port this request came on, and with it the way back: switch it on the "
                    "simulator's control port (start it with --control-port PORT)"
                )
            await self.listener.stop()
        self.provider.set_fault(fault)
        if before.mode == "down" and fault.mode != "down" and self.listener is not None:
            await self.listener.start()
        if fault != before:
            log.info("simulator mode changed", mode=fault.mode, fault=fault.describe())
        return before

    def state(self) -> dict[str, Any]:
        """``GET /simulator``: the mode, whether the webhook listens, the requests held, and the counts of answers."""
        return {
            **self.provider.fault.as_json(),
            "description": self.provider.fault.describe(),
            "listening": self.listening,
            "held": self.provider.held,
            "counts": self.provider.counts,
        }


SWITCH: Final = web.AppKey("simulator_switch", FaultSwitch)


async def _state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SWITCH].state())


async def _switch(request: web.Request, fault: Fault) -> web.Response:
    switch = request.app[SWITCH]
    try:
        await switch.set(fault)
    except FaultError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    return web.json_response(switch.state())


async def _mode(request: web.Request) -> web.Response:
    switch = request.app[SWITCH]
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        body = None
    try:
        fault = fault_from_json(body, retry_after_s=switch.provider.options.retry_after_s)
    except FaultError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return await _switch(request, fault)


async def _down(request: web.Request) -> web.Response:
    return await _switch(request, Fault("down"))


async def _up(request: web.Request) -> web.Response:
    return await _switch(request, Fault("up"))


def add_control_routes(app: web.Application, switch: FaultSwitch) -> None:
    """``GET /simulator`` (the mode and counts), ``POST /simulator/mode`` (``{"mode": ...}``),
    ``POST /simulator/down`` and ``POST /simulator/up`` on an app of the simulator."""
    app[SWITCH] = switch
    app.router.add_get("/simulator", _state, allow_head=False)
    app.router.add_post("/simulator/mode", _mode)
    app.router.add_post("/simulator/down", _down)
    app.router.add_post("/simulator/up", _up)
