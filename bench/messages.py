"""The benchmark of issue 13: bulk loads (COPY) and the claim with a million messages scheduled ahead.

    .venv/bin/python -m bench.messages                    # 1,000,000 rows
    .venv/bin/python -m bench.messages --rows 100000      # a quick look

In a PostgreSQL database of its own (dropped at the end), it measures:

1. **load**: ``PostgresMessageRepository.load`` (one COPY per chunk) of ``--rows`` messages,
   already checked, in chunks of ``--chunk`` rows, two chunks in flight (as ``enqueue --file``
   does): rows per second;
2. **enqueue --file**: ``python -m insider enqueue --file`` on a CSV of ``--file-rows`` lines
   (each line parsed and checked as the API checks a message: libphonenumber, GSM 03.38),
   as a subprocess: rows per second, end to end;
3. **claim**: 500 due messages queued, then one claim of 500 timed (median of ``--samples``),
   first in an empty table (the baseline), then beside the ``--rows`` messages scheduled a
   week ahead (priorities 0 to 9); and the plan of one priority's due range (EXPLAIN
   ANALYZE) showing that it reads one index range, not the scheduled rows.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench.run import ROOT, database
from insider.adapters.postgres import PostgresMessageRepository, open_postgres_pool
from insider.domain import NewMessage, SendOrder


def messages(n: int, *, send_at: datetime | None = None) -> list[NewMessage]:
    return [
        NewMessage.of(
            f"+90530{i % 10_000_000:07d}", f"Kampanya {i}: bu hafta %20 indirim", priority=i % 10, send_at=send_at
        )
        for i in range(n)
    ]


async def load(url: str, rows: int, chunk: int, send_at: datetime | None) -> float:
    async with open_postgres_pool(url) as pool:
        repository = PostgresMessageRepository(pool)
        await repository.migrate()
        batch = messages(chunk, send_at=send_at)
        parts = [batch[: min(chunk, rows - start)] for start in range(0, rows, chunk)]
        slots = asyncio.Semaphore(2)  # as enqueue --file: two chunks in flight

        async def one(part: list[NewMessage]) -> int:
            async with slots:
                return await repository.load(part)

        started = time.perf_counter()
        assert sum(await asyncio.gather(*(one(p) for p in parts))) == rows
        return rows / (time.perf_counter() - started)


def enqueue_file(url: str, rows: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "messages.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["to", "content", "priority"])
            for i in range(rows):
                writer.writerow([f"+90 530 {i % 10_000_000:07d}", f"Hatırlatma {i}: randevunuz yarın", i % 10])
        env = {**os.environ, "INSIDER_DATABASE_URL": url, "INSIDER_LOG_LEVEL": "warning"}
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "insider", "enqueue", "--file", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"enqueue --file failed: {result.stderr[-2000:]}")
        return rows / elapsed


async def claims(url: str, samples: int) -> tuple[float, float, str]:
    async with open_postgres_pool(url) as pool:
        repository = PostgresMessageRepository(pool)
        async with pool.connection() as conn:
            await conn.execute("ANALYZE messages")
        times = []
        for _ in range(samples):
            await repository.enqueue_many([NewMessage.of("+905301234001", "due", priority=p % 10) for p in range(500)])
            started = time.perf_counter()
            got = await repository.claim(500, 60.0, SendOrder.OLDEST)
            times.append((time.perf_counter() - started) * 1000)
            assert len(got) == 500, len(got)
        from insider.adapters.postgres import _QUERIES

        due = _QUERIES["due_oldest"].replace("__PRIORITY__", "5").replace("FOR UPDATE SKIP LOCKED", "")
        async with pool.connection() as conn:
            await repository.enqueue_many([NewMessage.of("+905301234001", "due") for _ in range(500)])
            cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + due, {"limit": 500})
            plan = "\n".join(row[0] for row in await cur.fetchall())
        return statistics.median(times), max(times), plan


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--file-rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument(
        "--admin-url", default=os.environ.get("INSIDER_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    with psycopg.connect(args.admin_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    print(f"PostgreSQL {version[0] if version else '?'}, Python {sys.version.split()[0]}, {os.cpu_count()} cores")

    with database(args.admin_url, "load") as url:
        rate = await load(url, args.rows, args.chunk, None)
        print(f"load: {args.rows} rows in chunks of {args.chunk} (COPY): {rate:,.0f} rows/s")
    with database(args.admin_url, "file") as url:
        rate = enqueue_file(url, args.file_rows)
        print(f"enqueue --file: {args.file_rows} CSV lines, end to end (parse, check, COPY): {rate:,.0f} rows/s")
    with database(args.admin_url, "empty") as url:
        async with open_postgres_pool(url) as pool:
            await PostgresMessageRepository(pool).migrate()
        median_ms, max_ms, _ = await claims(url, args.samples)
        print(f"claim of 500 with nothing scheduled (baseline): median {median_ms:.1f} ms, max {max_ms:.1f} ms")
    with database(args.admin_url, "claim") as url:
        future = datetime.now(UTC) + timedelta(days=7)
        await load(url, args.rows, args.chunk, future)
        median_ms, max_ms, plan = await claims(url, args.samples)
        print(
            f"claim of 500 beside {args.rows} messages scheduled ahead: median {median_ms:.1f} ms, max {max_ms:.1f} ms"
        )
        print("plan of one priority's due range:")
        print(plan)


if __name__ == "__main__":
    asyncio.run(main())
