"""The benchmark of issue 14: how fast delivery receipts are applied, against the local PostgreSQL and Redis.

    apt-get install wrk                                     # the load generator (else the aiohttp client)
    .venv/bin/python -m bench.receipts                      # one receipt per request, then 100 per request
    .venv/bin/python -m bench.receipts --repeat 1 --seconds 4   # a quick look
    .venv/bin/python -m bench.receipts --client aiohttp --receipts 20000   # posted by Python instead

It starts the service (python -m insider) in a database of its own holding that many
`sent` messages (with their `insider:sent:<messageId>` entries in Redis, as the sender
leaves them), posts a `delivered` receipt for each to POST /api/v1/delivery-reports, and
reports receipts applied per second: every receipt is answered 200 only once it is in
the database. The drain's figure (bench/run.py) is the pace to keep up with.

The load comes from wrk when it is installed (``--client wrk``: C, a few microseconds per
request, as a provider's own servers would be elsewhere), else from the benchmark's own
aiohttp client (``--client aiohttp``: about as much CPU per request as the service itself,
taken from the same two cores, so the service gets less). With
wrk a run lasts ``--seconds`` (``--array-seconds`` for arrays of 100), and ``--receipts`` must
exceed what it can post meanwhile; the receipts in the database are counted against what
wrk saw answered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import psycopg
import redis.asyncio as aioredis

from bench.run import ROOT, cpu_s, database, py_spy, server_cpu_s, service

TOKEN = "bench-dlr-token"


async def seed(db_url: str, redis_url: str, prefix: str, n: int) -> None:
    """``n`` sent messages with provider ids pm-1..pm-n, and their cache entries."""
    import sys

    subprocess.run(
        [sys.executable, "-m", "insider", "migrate"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("INSIDER_")}, "INSIDER_DATABASE_URL": db_url},
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, sent_at, message_id) "
            "SELECT '+90530' || lpad(g::text, 7, '0'), 'Benchmark message ' || g, 'sent', now(), 'pm-' || g "
            "FROM generate_series(1, %s::bigint) g",
            (n,),
        )
        conn.execute("VACUUM ANALYZE messages")
    if redis_url:
        client = aioredis.Redis.from_url(redis_url)
        try:
            sent_at = datetime.now(UTC).isoformat()
            async with client.pipeline(transaction=False) as pipe:
                for i in range(1, n + 1):
                    key = f"{prefix}:sent:pm-{i}"
                    pipe.hset(key, mapping={"messageId": f"pm-{i}", "sentAt": sent_at, "id": str(i)})
                    pipe.expire(key, 600)
                await pipe.execute()
        finally:
            await client.aclose()


async def post_all(base: str, n: int, per_request: int, concurrency: int) -> float:
    """Receipts per second: ``n`` receipts, ``per_request`` to a request, ``concurrency`` requests at a time."""
    url = f"{base}/api/v1/delivery-reports"
    chunks = iter(range(1, n + 1, per_request))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for first in chunks:
                body = [
                    {"messageId": f"pm-{i}", "status": "DELIVRD"} for i in range(first, min(first + per_request, n + 1))
                ]
                payload: object = body[0] if per_request == 1 else body
                async with session.post(
                    url,
                    data=orjson.dumps(payload),
                    headers={"x-ins-auth-key": TOKEN, "Content-Type": "application/json"},
                ) as response:
                    assert response.status == 200, await response.text()
                    answer = await response.json(loads=orjson.loads)
                    assert all(r["result"] == "applied" for r in answer["results"]), answer

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)


# wrk's script: receipts for pm-1, pm-2, ... in order (one wrk thread: one counter), PER to a request.
WRK_SCRIPT = """
local next_id, per, n = 1, tonumber(os.getenv("BENCH_PER")), tonumber(os.getenv("BENCH_N"))
local headers = {["Content-Type"] = "application/json", ["x-ins-auth-key"] = os.getenv("BENCH_TOKEN")}
request = function()
  local items = {}
  for i = next_id, next_id + per - 1 do
    items[#items + 1] = '{"messageId":"pm-' .. math.min(i, n + 1) .. '","status":"DELIVRD"}'
  end
  next_id = next_id + per
  local body = table.concat(items, ",")
  if per > 1 then body = "[" .. body .. "]" end
  return wrk.format("POST", nil, headers, body)
end
"""


def post_with_wrk(base: str, args: argparse.Namespace, per_request: int, concurrency: int) -> tuple[float, int]:
    """Receipts per second answered by the service under wrk for ``args.seconds``, and how many."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--client wrk needs wrk on the PATH (apt-get install wrk)")
    seconds = args.seconds if per_request == 1 else args.array_seconds
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        done = subprocess.run(
            [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", script.name,
             f"{base}/api/v1/delivery-reports"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "BENCH_PER": str(per_request), "BENCH_N": str(args.receipts), "BENCH_TOKEN": TOKEN},
        )  # fmt: skip
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw errors:\n{done.stdout}")
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", done.stdout)
    if found is None:
        raise RuntimeError(f"unexpected wrk output:\n{done.stdout}")
    requests = int(found.group(1))
    seconds = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
    return requests * per_request / seconds, requests * per_request


async def run_once(
    args: argparse.Namespace, per_request: int, concurrency: int, log_dir: Path
) -> tuple[float, float, float]:
    """Receipts per second, and the service's and PostgreSQL's CPU per receipt (µs)."""
    prefix = f"insider-bench-{uuid.uuid4().hex[:6]}"
    with database(args.admin_url, "receipts") as db_url:
        await seed(db_url, args.redis_url, prefix, args.receipts)
        env = {
            "INSIDER_DATABASE_URL": db_url,
            "INSIDER_REDIS_URL": args.redis_url,
            "INSIDER_REDIS_PREFIX": prefix,
            "INSIDER_WEBHOOK_URL": "http://127.0.0.1:9/unused",
            "INSIDER_AUTOSTART": "false",
            "INSIDER_DLR_TOKEN": TOKEN,
            "INSIDER_LOG_LEVEL": args.log_level,
        }
        async with service(env, log_dir / "receipts.log") as (base, process):
            profiler = None
            if args.profile and per_request == 1:  # py-spy samples the service (collapsed stacks)
                profiler = subprocess.Popen(
                    [py_spy(), "record", "--pid", str(process.pid), "--format", "raw", "--rate", "1000",
                     # BENCH_NATIVE=1: C frames too (py-spy then pauses the process: slower, syscalls inflated)
                     *(["--native"] if os.environ.get("BENCH_NATIVE") else ["--nonblocking"]),
                     "--output", args.profile],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                await asyncio.sleep(1.0)
            before, pg_before = cpu_s(process.pid), server_cpu_s()
            if args.client == "wrk":
                rate, answered = await asyncio.to_thread(post_with_wrk, base, args, per_request, concurrency)
            else:
                rate, answered = await post_all(base, args.receipts, per_request, concurrency), args.receipts
            cpu_us = (cpu_s(process.pid) - before) / answered * 1e6
            pg_us = (server_cpu_s() - pg_before) / answered * 1e6
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=30)
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM messages WHERE status = 'delivered'").fetchone()
            assert row is not None
            # wrk stops with up to one request per connection unanswered, which the service may still apply.
            assert answered <= row[0] <= answered + concurrency * per_request, f"{row[0]} applied, {answered} answered"
            if args.client == "wrk":  # past the last message, receipts would be for an unknown id
                assert row[0] < args.receipts, f"all {args.receipts} receipts posted before the end: raise --receipts"
        if args.redis_url:
            client = aioredis.Redis.from_url(args.redis_url)
            try:
                keys = [key async for key in client.scan_iter(f"{prefix}:*", count=1000)]
                for i in range(0, len(keys), 1000):
                    await client.delete(*keys[i : i + 1000])
            finally:
                await client.aclose()
        return rate, cpu_us, pg_us


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--receipts", type=int, default=200_000, help="sent messages to receipt (with wrk: more than it posts)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--client",
        choices=("wrk", "aiohttp"),
        default="wrk" if shutil.which("wrk") else "aiohttp",
        help="what posts the receipts (default: wrk when it is installed)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests at a time, one receipt each")
    parser.add_argument("--single-only", action="store_true", help="only one receipt per request")
    parser.add_argument("--seconds", type=int, default=10, help="with --client wrk: how long it posts single receipts")
    parser.add_argument("--array-seconds", type=int, default=2, help="with --client wrk: how long it posts arrays")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--admin-url", default=os.environ.get("INSIDER_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--redis-url", default=os.environ.get("INSIDER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--profile", metavar="FILE", help="record one receipt per request with py-spy into FILE")
    args = parser.parse_args()
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    redis_state = "on" if args.redis_url else "off"
    load = f"wrk for {args.seconds}s" if args.client == "wrk" else "the aiohttp client"
    print(f"receipts: {args.receipts} sent messages, one delivered receipt each, Redis {redis_state}, posted by {load}")
    for per_request, concurrency in ((1, args.concurrency), (100, 8))[: 1 if args.single_only else 2]:
        rates, cpus, pgs = [], [], []
        for _ in range(args.repeat):
            rate, cpu_us, pg_us = await run_once(args, per_request, concurrency, log_dir)
            rates.append(rate)
            cpus.append(cpu_us)
            pgs.append(pg_us)
        print(
            f"{per_request:>4} per request, {concurrency:>2} at a time: {statistics.median(rates):7.0f} receipts/s "
            f"(runs {', '.join(f'{r:.0f}' for r in rates)}), service CPU {statistics.median(cpus):.0f} us per receipt, "
            f"PostgreSQL {statistics.median(pgs):.0f} us"
        )


if __name__ == "__main__":
    asyncio.run(main())
