"""Messages per second through the SMPP client against the simulator's SMSC (a subprocess), with a window.

``python -m bench.smpp --messages 5000 --window 10``: starts ``python -m insider simulate
--smpp-port P --latency 0`` (or ``--latency`` as given), binds one SmppSmsClient, sends the
messages from as many concurrent senders as the window holds, and prints the rate. A rough
figure for one bind on this machine, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time

from insider.adapters.smpp import SmppSmsClient
from insider.domain import Outcome


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drain(port: int, messages: int, window: int, text: str) -> tuple[float, int]:
    client = SmppSmsClient("bench", "127.0.0.1", port, "bench", "bench", source="INSIDER", window=window)
    running = asyncio.create_task(client.run())
    deadline = time.monotonic() + 20
    while client.state != "bound":
        if time.monotonic() > deadline or running.done():
            raise SystemExit("the simulator's SMSC did not take the bind")
        await asyncio.sleep(0.05)
    numbers = iter(range(messages))
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for n in numbers:
            result = await client.send("+905301234567", text, f"k{n}")
            sent += result.outcome is Outcome.SENT

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(window)))
    elapsed = time.perf_counter() - started
    client.finish()
    await running
    return elapsed, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--latency", default="0", help="the SMSC's answer time, as simulate takes it (0, 5ms, ...)")
    parser.add_argument("--text", default="Merhaba, kodunuz 123456", help="the message (GSM-7 by default)")
    args = parser.parse_args()
    http_port, smpp_port = _free_port(), _free_port()
    command = ["simulate", "--port", str(http_port), "--smpp-port", str(smpp_port), "--latency", args.latency]
    simulator = subprocess.Popen(
        [sys.executable, "-m", "insider", *command, "--dlr-delay", "3600s"],  # receipts out of the way of the figure
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        elapsed, sent = asyncio.run(_drain(smpp_port, args.messages, args.window, args.text))
    finally:
        simulator.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            simulator.wait(timeout=10)
    print(
        f"{sent} of {args.messages} messages sent in {elapsed:.2f}s: {sent / elapsed:,.0f} messages/s "
        f"(window {args.window}, SMSC latency {args.latency})"
    )


if __name__ == "__main__":
    main()
