"""Drains through several providers, side by side with the one-provider drain of bench/run.py.

    .venv/bin/python -m bench.providers                        # 20,000 messages, three rounds
    .venv/bin/python -m bench.providers --messages 5000 --repeat 1   # a quick look

Each round drains the same backlog three ways, one after the other, so that all three see
the same machine: **one** webhook provider (``INSIDER_WEBHOOK_URL``, bench/provider.py: the
drain of bench/run.py), **two** webhook providers from a providers file (two bench/provider.py
processes, a ``weighted`` route 50/50, each with its breaker), and **smpp**: one ``smpp``
provider bound to ``python -m insider simulate --smpp-port`` (its receipts held back an hour,
out of the figure, as the webhooks send none). It prints each drain's messages per second
and the service's CPU per message, their medians, and each round's ratio to the one-provider
drain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bench.run import ROOT, Drain, drain, free_port, provider, wait_http, webhook_env

KINDS = ("one", "two", "smpp")


@asynccontextmanager
async def smsc() -> AsyncIterator[int]:
    """``python -m insider simulate`` with its SMSC, answering at once; the SMPP port."""
    http_port, smpp_port = free_port(), free_port()
    command = [sys.executable, "-m", "insider", "simulate", "--port", str(http_port), "--smpp-port", str(smpp_port)]
    command += ["--latency", "0", "--dlr-delay", "3600s"]  # receipts out of the way of the figure
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIDER_")} | {"INSIDER_LOG_LEVEL": "warning"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_http(f"http://127.0.0.1:{http_port}/healthz", process)
        yield smpp_port
    finally:
        process.terminate()
        process.wait(timeout=10)


def two_webhooks(first: str, second: str) -> str:
    return f"""
[[providers]]
name = "alpha"
url = "{first}"
auth_key = "bench"

[[providers]]
name = "beta"
url = "{second}"
auth_key = "bench"

[[routes]]
strategy = "weighted"
providers = ["alpha", "beta"]
weights = [50, 50]
"""


def one_bind(port: int, window: int) -> str:
    return f"""
[[providers]]
name = "carrier"
kind = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "bench"
password = "bench"
source = "INSIDER"
window = {window}
"""


def line(kind: str, runs: list[Drain], ratios: list[float] | None) -> str:
    rates = [d.messages_per_s for d in runs]
    cpus = [d.cpu_us_per_message for d in runs]
    text = (
        f"{kind:>5}: {statistics.median(rates):6.0f} messages/s (runs {', '.join(f'{r:.0f}' for r in rates)}); "
        f"service CPU {statistics.median(cpus):.0f} us/message (runs {', '.join(f'{c:.0f}' for c in cpus)}); "
        f"PostgreSQL {statistics.median(d.postgres_us_per_message for d in runs):.0f} us; "
        f"peak RSS {max(d.peak_rss_mb for d in runs):.0f} MB"
    )
    if ratios:
        text += f"; / one: {statistics.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    return text


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64, help="INSIDER_SEND_CONCURRENCY (and each webhook's)")
    parser.add_argument("--window", type=int, default=64, help="the SMPP provider's window of outstanding submit_sm")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"which drains, of {', '.join(KINDS)}")
    parser.add_argument("--log-level", default="info", help="the service's INSIDER_LOG_LEVEL during the drain")
    parser.add_argument(
        "--admin-url", default=os.environ.get("INSIDER_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--redis-url", default=os.environ.get("INSIDER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the drains; the medians are reported")
    args = parser.parse_args()
    args.processes, args.profile = 1, None  # what bench.run's drain also reads
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"--kinds: unknown {', '.join(sorted(unknown))}")
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(
        f"drain: {args.messages} messages, batch {args.batch_size}, interval 0, concurrency {args.concurrency}, "
        f"SMPP window {args.window}; drains of each round: {', '.join(kinds)}"
    )
    runs: dict[str, list[Drain]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"two": Path(tmp, "two.toml"), "smpp": Path(tmp, "smpp.toml")}
        async with provider(0.0) as first, provider(0.0) as second, smsc() as smpp_port:
            files["two"].write_text(two_webhooks(first, second))
            files["smpp"].write_text(one_bind(smpp_port, args.window))
            envs = {
                "one": webhook_env(first),
                "two": {"INSIDER_PROVIDERS_FILE": str(files["two"])},
                "smpp": {"INSIDER_PROVIDERS_FILE": str(files["smpp"])},
            }
            for round_ in range(1, args.repeat + 1):
                for kind in kinds:
                    result = await drain(args.admin_url, args.redis_url, envs[kind], args, log_dir)
                    runs[kind].append(result)
                    print(
                        f"round {round_} {kind:>4}: {result.messages_per_s:6.0f} messages/s, "
                        f"service CPU {result.cpu_us_per_message:.0f} us/message",
                        flush=True,
                    )
    for kind in kinds:
        ratios = None
        if kind != "one" and "one" in runs:
            ratios = [d.messages_per_s / o.messages_per_s for d, o in zip(runs[kind], runs["one"], strict=True)]
        print(line(kind, runs[kind], ratios))


if __name__ == "__main__":
    asyncio.run(main())
