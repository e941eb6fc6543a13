"""The benchmark of issue 6: drain throughput and its ceiling, list latency at 1k and 1M rows, peak memory.

Run it with the project's own tools, against the local PostgreSQL and Redis:

    .venv/bin/python -m bench.run                  # defaults: 20,000 messages, 1,000,000 rows
    .venv/bin/python -m bench.run --messages 2000 --big-rows 100000   # a quick look

It starts a fast local provider (bench/provider.py) and the service (python -m insider)
as subprocesses, in databases of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def database(admin_url: str, label: str) -> Iterator[str]:
    name = f"insider_bench_{label}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s}s")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def provider(latency_s: float) -> AsyncIterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "bench.provider", "--port", str(port), "--latency", str(latency_s)]
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=10)


@asynccontextmanager
async def service(env: dict[str, str], log_path: Path) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("INSIDER_")}
    full.update(env, INSIDER_PORT=str(port), INSIDER_LOG_FORMAT="json")
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "insider"], cwd=ROOT, env=full, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(base + "/api/v1/sender", process)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def py_spy() -> str:
    """py-spy on the PATH or beside this Python (pip install py-spy into the venv)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = shutil.which("py-spy") or (str(beside) if beside.is_file() else None)
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def _stat(text: str) -> tuple[str, float]:
    """The command name and CPU seconds (user and system) of one /proc/<pid>/stat."""
    comm, _, rest = text.partition(" (")[2].rpartition(")")
    fields = rest.split()
    return comm, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far (user and system)."""
    return _stat(Path(f"/proc/{pid}/stat").read_text())[1]


def server_cpu_s(name: str = "postgres") -> float:
    """CPU seconds used so far by every live process named ``name`` (PostgreSQL's backends, say).

    A backend that exits between two readings takes its seconds with it: read around a run
    whose connections stay open (the service's pool does).
    """
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, seconds = _stat(stat.read_text())
        except OSError:  # gone meanwhile
            continue
        if comm == name:
            total += seconds
    return total


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


Post = Callable[[bytes, dict[str, str]], Awaitable[int]]


async def requests_per_s(post: Post, requests: int, concurrency: int) -> float:
    """Requests per second of ``concurrency`` workers sharing ``requests`` webhook-shaped POSTs."""
    remaining = iter(range(requests))

    async def worker() -> None:
        for i in remaining:
            body = orjson.dumps({"to": "+905301234001", "content": f"message {i}"})
            headers = {"Content-Type": "application/json", "x-ins-auth-key": "k", "Idempotency-Key": str(i)}
            assert await post(body, headers) == 202

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def ceiling(url: str, requests: int, concurrency: int) -> float:
    """Requests per second of a bare aiohttp client: the issue's ceiling.

    As lean as aiohttp allows (no cookie jar, the body encoded with orjson, as the service's
    session), so that it is aiohttp's ceiling, not a slow client's.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def post(body: bytes, headers: dict[str, str]) -> int:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        return await requests_per_s(post, requests, concurrency)


class Drain(NamedTuple):
    messages_per_s: float
    peak_rss_mb: float
    cpu_us_per_message: float  # of the service processes: the figure least shaken by the machine's noise
    postgres_us_per_message: float  # of every PostgreSQL process, the benchmark's own polling included


def webhook_env(url: str) -> dict[str, str]:
    """The service's settings for the one provider of INSIDER_WEBHOOK_URL."""
    return {"INSIDER_WEBHOOK_URL": url, "INSIDER_WEBHOOK_AUTH_KEY": "bench"}


async def drain(
    admin_url: str, redis_url: str, provider_env: dict[str, str], args: argparse.Namespace, log_dir: Path
) -> Drain:
    """Messages per second while draining a backlog, the service's peak memory and CPU per message.

    ``provider_env`` names the providers (:func:`webhook_env`, or ``INSIDER_PROVIDERS_FILE``).
    A message counts once it has left the queue as sent (or, with receipts, delivered).
    """
    with database(admin_url, "drain") as db_url:
        subprocess.run(
            [sys.executable, "-m", "insider", "migrate"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("INSIDER_")},
                "INSIDER_DATABASE_URL": db_url,
                "INSIDER_REDIS_URL": "",
            },
        )
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO messages (recipient_phone, content, created_at) "
                "SELECT '+90530' || lpad(g::text, 7, '0'), 'Benchmark message ' || g, "
                "now() - make_interval(secs => %s - g) FROM generate_series(1, %s::bigint) g",
                (args.messages, args.messages),
            )
        env = {
            "INSIDER_DATABASE_URL": db_url,
            "INSIDER_REDIS_URL": redis_url,
            "INSIDER_REDIS_PREFIX": f"insider-bench-{uuid.uuid4().hex[:6]}",
            "INSIDER_REDIS_TTL": "5m",
            **provider_env,
            "INSIDER_BATCH_SIZE": str(args.batch_size),
            "INSIDER_SEND_INTERVAL": "0",
            "INSIDER_SEND_CONCURRENCY": str(args.concurrency),
            "INSIDER_AUTOSTART": "false",
            "INSIDER_LOG_LEVEL": args.log_level,
        }
        async with AsyncExitStack() as stack:
            services = [
                await stack.enter_async_context(service(env, log_dir / f"drain-{i}.log")) for i in range(args.processes)
            ]
            session = await stack.enter_async_context(aiohttp.ClientSession())
            process = services[0][1]
            profiler = None
            if args.profile:  # py-spy samples the service while it drains (collapsed stacks)
                profiler = subprocess.Popen(
                    [
                        py_spy(),
                        "record",
                        "--pid",
                        str(process.pid),
                        "--format",
                        "raw",
                        "--rate",
                        "250",
                        "--nonblocking",
                        "--output",
                        args.profile,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1.0)  # let py-spy attach before the clock starts
            with psycopg.connect(db_url, autocommit=True) as conn:
                cpu_before, pg_before = sum(cpu_s(p.pid) for _, p in services), server_cpu_s()
                started = time.perf_counter()
                for base, _ in services:  # several processes on one database share the backlog
                    async with session.post(base + "/api/v1/messages/start") as response:
                        assert response.status == 200
                while True:  # cheap: the queue's partial index holds only what is left
                    row = conn.execute(
                        "SELECT count(*) FROM messages WHERE status IN ('pending', 'sending')"
                    ).fetchone()
                    assert row is not None
                    if row[0] == 0:
                        break
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(timeout=30)
                failed = conn.execute(
                    "SELECT count(*) FROM messages WHERE status NOT IN ('sent', 'delivered')"
                ).fetchone()
                assert failed == (0,), f"{failed} messages not sent"
            cpu_us = (sum(cpu_s(p.pid) for _, p in services) - cpu_before) / args.messages * 1e6
            pg_us = (server_cpu_s() - pg_before) / args.messages * 1e6
            return Drain(args.messages / elapsed, max(peak_rss_mb(p.pid) for _, p in services), cpu_us, pg_us)


async def page_latency_ms(session: aiohttp.ClientSession, base: str, samples: int) -> float:
    url = base + "/api/v1/messages?limit=100"
    for _ in range(20):  # warm up the pool, the plan cache and the page cache
        async with session.get(url) as response:
            await response.read()
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        async with session.get(url) as response:
            body = await response.read()
            assert response.status == 200 and body
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def insert_sent(db_url: str, first: int, last: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO messages (recipient_phone, content, status, created_at, sent_at, message_id) "
            "SELECT '+90530' || lpad((g %% 10000000)::text, 7, '0'), 'Sent message ' || g, 'sent', "
            "now() - make_interval(secs => 2e6 - g), now() - make_interval(secs => 2e6 - g) + interval '1 second', "
            "'pm-' || g FROM generate_series(%s::bigint, %s::bigint) g",
            (first, last),
        )
        conn.execute("VACUUM ANALYZE messages")


async def pages(admin_url: str, args: argparse.Namespace, log_dir: Path) -> tuple[float, float]:
    """Median first-page latency (ms) with 1 thousand rows, then with ``big_rows`` rows."""
    with database(admin_url, "pages") as db_url:
        env = {
            "INSIDER_DATABASE_URL": db_url,
            "INSIDER_REDIS_URL": "",
            "INSIDER_AUTOSTART": "false",
            "INSIDER_WEBHOOK_URL": "http://127.0.0.1:9/unused",
            "INSIDER_LOG_LEVEL": "warning",
        }
        async with service(env, log_dir / "pages.log") as (base, _), aiohttp.ClientSession() as session:
            insert_sent(db_url, 1, 1000)
            small = await page_latency_ms(session, base, args.samples)
            insert_sent(db_url, 1001, args.big_rows)
            big = await page_latency_ms(session, base, args.samples)
            return small, big


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--log-level", default="info", help="the service's INSIDER_LOG_LEVEL during the drain")
    parser.add_argument(
        "--admin-url", default=os.environ.get("INSIDER_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("INSIDER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        help="Redis for the sent cache during the drain; empty for the in-process cache",
    )
    parser.add_argument(
        "--provider-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="every provider answer waits this long, like a provider across a network",
    )
    parser.add_argument("--processes", type=int, default=1, help="service processes draining one database")
    parser.add_argument("--repeat", type=int, default=3, help="drain and ceiling runs; the medians are reported")
    parser.add_argument("--skip-pages", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="record the drain with py-spy into FILE (collapsed stacks)")
    args = parser.parse_args()
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(
        f"drain: {args.messages} messages, batch {args.batch_size}, interval 0, concurrency {args.concurrency}, "
        f"{args.processes} process(es), "
        f"provider latency {args.provider_latency * 1000:g} ms"
    )
    ceilings, drains, peaks, cpus, pgs = [], [], [], [], []
    async with provider(args.provider_latency) as url:
        for _ in range(args.repeat):  # alternated, so that all see the same machine
            ceilings.append(await ceiling(url, args.messages, args.concurrency))
            result = await drain(args.admin_url, args.redis_url, webhook_env(url), args, log_dir)
            drains.append(result.messages_per_s)
            peaks.append(result.peak_rss_mb)
            cpus.append(result.cpu_us_per_message)
            pgs.append(result.postgres_us_per_message)
    ceiling_rps, drain_mps, peak_mb = statistics.median(ceilings), statistics.median(drains), max(peaks)
    if args.repeat > 1:
        print(f"   runs: drain {', '.join(f'{d:.0f}' for d in drains)}")
        print(f"         aiohttp ceiling {', '.join(f'{c:.0f}' for c in ceilings)}")
    print(f"1. drain throughput:      {drain_mps:8.0f} messages/s (median of {args.repeat})")
    print(
        f"   service CPU per message: {statistics.median(cpus):.0f} us (runs {', '.join(f'{c:.0f}' for c in cpus)}), "
        f"PostgreSQL {statistics.median(pgs):.0f} us"
    )
    print(
        f"2. bare-client ceiling:   {ceiling_rps:8.0f} requests/s   ratio {drain_mps / ceiling_rps:.2f} (target >= 0.5)"
    )
    if not args.skip_pages:
        small, big = await pages(args.admin_url, args, log_dir)
        print(f"3. first page, 1k rows:   {small:8.2f} ms (median of {args.samples})")
        print(f"   first page, {args.big_rows // 1000}k rows: {big:8.2f} ms   ratio {big / small:.2f} (target <= 3)")
    print(f"4. peak RSS of the service during the drain: {peak_mb:.0f} MB (target < 200)")


if __name__ == "__main__":
    asyncio.run(main())
