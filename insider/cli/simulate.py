"""The simulate command: a simulated SMS provider over HTTP, answering like the webhook (and an SMSC), until stopped."""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from insider import __version__
from insider.cli.process import EXIT_FAILED, EXIT_USAGE, install_stop_signals, listen, say, until_stopped
from insider.cli.summary import display_host, python_command
from insider.config import format_duration
from insider.logs import get_logger
from insider.simulator import (
    ReceiptOptions,
    ReceiptReporter,
    SimulatedProvider,
    SimulatorOptions,
    create_control_app,
    create_simulator_app,
    http_receipt_sink,
)
from insider.simulator_control import DOWN_GRACE_S, FaultSwitch, parse_fault

log = get_logger("insider")

STOP_TIMEOUT_S = 1.0  # how long requests still being answered may take once the simulator is told to stop


def run(args: argparse.Namespace) -> int:
    """Serve the simulated provider until stopped; the exit code."""
    return until_stopped(simulate(args))


async def simulate(args: argparse.Namespace) -> int:
    """Listen, print where and how it answers, and serve until a signal."""
    options = SimulatorOptions(
        latency_s=args.latency,
        fail_rate=args.fail_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after,
        auth_key=args.auth_key,
    )
    receipts = ReceiptOptions(delay_s=args.dlr_delay, undelivered_rate=args.undelivered_rate)
    session = aiohttp.ClientSession() if args.dlr_url else None
    reporter = (
        ReceiptReporter(http_receipt_sink(session, args.dlr_url, args.dlr_token), receipts)
        if session is not None
        else None
    )
    provider = SimulatedProvider(options, reporter=reporter)
    fault = parse_fault(args.fault or "up", retry_after_s=options.retry_after_s)
    if fault.mode == "down" and args.control_port is None:
        say("insider: error: --fault down needs --control-port PORT, the port to bring the webhook up again on")
        return EXIT_USAGE
    # The webhook's port and, with --control-port, a second one that stays up while the first is down.
    apps = [create_simulator_app(provider)]
    port_switch: WebhookPort | None = None
    if args.control_port is not None:
        port_switch = WebhookPort(args.host)
        apps.append(create_control_app(provider, port_switch))
    smsc = None
    if args.smpp_port is not None:
        from insider.smsc import SimulatedSmsc, add_smsc_routes  # smpp34 starts its runtime when imported

        smsc = SimulatedSmsc(args.host, args.smpp_port, options, receipts, system_id=args.smpp_system_id)
        for app in apps:
            add_smsc_routes(app, smsc)
    # A request held by hang (or a slow answer) is cut after this long when the simulator stops, not 60 s.
    runners = [
        web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=STOP_TIMEOUT_S) for app in apps
    ]
    runner = runners[0]
    for each in runners:
        await each.setup()
    stop = asyncio.Event()
    install_stop_signals(stop)
    # The receipts are reported by a task of this command's own, cancelled on the way out; the SMSC likewise.
    reporting = asyncio.create_task(reporter.run(), name="insider-simulated-receipts") if reporter else None
    serving: asyncio.Task[None] | None = None
    try:
        port = await listen(runner, args.host, args.port)
        if port is None:
            return EXIT_FAILED
        control_port = None
        if port_switch is not None:
            port_switch.attach(runner, port)
            control_port = await listen(runners[1], args.host, args.control_port, names=" (--control-port)")
            if control_port is None:
                return EXIT_FAILED
        if fault.mode != "up":
            await FaultSwitch(provider, port_switch).set(fault)
        if smsc is not None:
            try:
                await smsc.start()
            except Exception as exc:
                say(f"insider: error: cannot listen on {args.host}:{args.smpp_port} (SMPP): {exc}")
                return EXIT_FAILED
            serving = asyncio.create_task(smsc.run(), name="insider-simulated-smsc")
        base_url = f"http://{display_host(args.host)}:{port}"
        low, high = options.latency_s
        latency = format_duration(low) if low == high else f"{format_duration(low)} to {format_duration(high)}"
        answers = [f"202 after {latency}"]
        if options.rate_limit_rate:
            retry_after = format_duration(float(math.ceil(options.retry_after_s)))
            answers.append(f"{options.rate_limit_rate:.0%} 429 (Retry-After {retry_after})")
        if options.fail_rate:
            answers.append(f"{options.fail_rate:.0%} 500")
        control_url = base_url if control_port is None else f"http://{display_host(args.host)}:{control_port}"
        # The key itself is not printed: this block ends up in logs.
        key_hint = " INSIDER_WEBHOOK_AUTH_KEY=<the --auth-key>" if options.auth_key else ""
        log.info("simulator listening", url=f"{base_url}/webhook")
        say(
            "\n".join(
                [
                    f"insider {__version__} simulated SMS provider is up — nothing leaves this machine",
                    f"  Webhook   POST {base_url}/webhook (or POST {base_url}/)",
                    f"  Messages  GET {base_url}/messages",
                    f"  Health    GET {base_url}/healthz",
                    f"  Answers   {'; '.join(answers)}",
                    f"  Auth key  {'required (x-ins-auth-key)' if options.auth_key else 'not checked'}",
                    f"  Mode      {fault.describe()}",
                    f"  Control   GET {control_url}/simulator; POST {control_url}/simulator/mode "
                    '{"mode": "error", "status": 503} (or down, up, hang, slow, throttle)',
                    f"  Receipts  {_receipts_line(args.dlr_url, receipts)}",
                    *_smsc_lines(args, base_url, receipts),
                    f"Send to it: INSIDER_WEBHOOK_URL={base_url}/webhook{key_hint} {python_command()} -m insider",
                    "Stop with Ctrl+C.",
                ]
            )
        )
        await stop.wait()
    finally:
        for each in reversed(runners):
            await each.cleanup()
        if serving is not None:
            serving.cancel()
            await asyncio.wait({serving})
        if smsc is not None:
            await smsc.close()
        if reporting is not None:
            reporting.cancel()
            await asyncio.wait({reporting})
        if session is not None:
            await session.close()
    return 0


class WebhookPort:
    """The webhook's listening port: ``down`` stops listening and cuts its connections, ``up`` listens again."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self._runner: web.AppRunner | None = None

    def attach(self, runner: web.AppRunner, port: int) -> None:
        """The runner serving the webhook, listening on ``port`` now."""
        self._runner, self.port = runner, port

    async def stop(self) -> None:
        if self._runner is None:
            return
        for site in self._runner.sites:
            await site.stop()
        if self._runner.server is not None:  # the connections open now, idle keep-alive ones included
            await self._runner.server.shutdown(DOWN_GRACE_S)

    async def start(self) -> None:
        if self._runner is not None and not self._runner.sites:
            await web.TCPSite(self._runner, self.host, self.port).start()


def _smsc_lines(args: argparse.Namespace, base_url: str, receipts: ReceiptOptions) -> list[str]:
    """Where the SMSC listens, what it answers, and how to bind insider to it."""
    if args.smpp_port is None:
        return []
    low, high = receipts.delay_s
    delay = format_duration(low) if low == high else f"{format_duration(low)} to {format_duration(high)}"
    system_id = args.smpp_system_id or "any"
    return [
        f"  SMSC      smpp://{display_host(args.host)}:{args.smpp_port} (SMPP 3.4, bind as a transceiver; "
        f"system_id {system_id}, password not checked)",
        f"            answers as above (ESME_RTHROTTLED, ESME_RSYSERR); receipts as deliver_sm after {delay}, "
        f"{receipts.undelivered_rate:.0%} undelivered",
        f"            GET {base_url}/smsc; POST {base_url}/smsc/down refuses binds, POST {base_url}/smsc/up again; "
        f'POST {base_url}/smsc/replies {{"from", "text"}} sends a handset\'s reply',
        f'Bind to it: an smpp provider with host = "{display_host(args.host)}", port = {args.smpp_port}, '
        f'system_id = "{args.smpp_system_id or "insider"}", any password of up to 8 characters',
    ]


def _receipts_line(url: str | None, options: Any) -> str:
    if not url:
        return "none (--dlr-url URL posts a delivery receipt for each message)"
    low, high = options.delay_s
    delay = format_duration(low) if low == high else f"{format_duration(low)} to {format_duration(high)}"
    # The URL is shown without its query: a ?token= there is a secret.
    shown = urlunsplit(urlsplit(url)._replace(query="", fragment=""))
    return f"POST {shown} after {delay}, {options.undelivered_rate:.0%} undelivered"
