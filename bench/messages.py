"""The benchmark of issue 13: bulk loads (COPY) and the claim with a million messages scheduled ahead.

    .venv/bin/python -m bench.messages                    # 1,000,000 rows
    .venv/bin/python -m bench.messages --rows 100000      # a quick look

In a PostgreSQL database of its own (dropped at the end), it measures:

1. **load**: ``PostgresMessageRepository.load`` (one COPY per chunk, each its own
   transaction) of ``--rows`` messages, already checked, in chunks of ``--chunk`` rows, two
   chunks in flight: rows per second;
2. **file load**: the same messages as ``enqueue --file`` stores a file, all at once
   (``file_load``): staged chunk by chunk (COPY into a temporary table), then stored by one
   ``INSERT ... SELECT`` with the file's record: rows per second of each step and of both;
   the same on a SQLite file (``--sqlite-rows``), whose last step holds the write lock;
3. **enqueue --file**: ``python -m insider enqueue --file`` on a CSV of ``--file-rows`` lines
   (each line parsed and checked as the API checks a message: libphonenumber, GSM 03.38),
   as a subprocess: rows per second, end to end;
4. **claim**: 500 due messages queued, then one claim of 500 timed (median of ``--samples``),
   first in an empty table (the baseline), then beside the ``--rows`` messages scheduled a
   week ahead (priorities 0 to 9); and the plan of one priority's due range (EXPLAIN
   ANALYZE) showing that it reads one index range, not the scheduled rows;
5. **beside an open load**: what a file load held in one open transaction of COPY into
   ``messages`` would cost the sender (the design not taken): claims of an almost empty
   queue timed while ``--stall-rows`` uncommitted rows sit in its index, and an enqueue
   once that COPY has ended (the count trigger's row lock is held until the commit).
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
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench.run import ROOT, database
from insider.adapters.postgres import PostgresMessageRepository, open_postgres_pool
from insider.adapters.sqlite import SqliteMessageRepository, open_sqlite
from insider.domain import NewMessage, SendOrder
from insider.ports import FileLoads, LoadedFile


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


async def file_load(loads: FileLoads, rows: int, chunk: int) -> tuple[float, float, float]:
    """Rows per second staged, stored (the one transaction at the end), and both."""
    batch = messages(chunk)
    started = time.perf_counter()
    async with loads.file_load() as load:
        for start in range(0, rows, chunk):
            await load.add(batch[: min(chunk, rows - start)])
        staged = time.perf_counter()
        await load.publish(LoadedFile(uuid.uuid4().hex * 2, "bench.csv", rows + 1, rows, 0))
    done = time.perf_counter()
    return rows / (staged - started), rows / (done - staged), rows / (done - started)


async def postgres_file_load(url: str, rows: int, chunk: int) -> tuple[float, float, float]:
    async with open_postgres_pool(url) as pool:
        repository = PostgresMessageRepository(pool)
        await repository.migrate()
        return await file_load(repository, rows, chunk)


async def sqlite_file_load(rows: int, chunk: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_sqlite(f"sqlite:///{Path(tmp) / 'insider.db'}") as db:
            repository = SqliteMessageRepository(db)
            await repository.migrate()
            return await file_load(repository, rows, chunk)


async def beside_an_open_load(url: str, rows: int, samples: int) -> tuple[float, float, str]:
    """What a load held in one open transaction of COPY into ``messages`` would cost others (the
    design not taken): the median claim (ms) of a queue of one, alone and while ``rows`` rows of
    the COPY are in the table uncommitted; and what an enqueue meets once that COPY has ended
    but its transaction has not."""
    from insider.adapters.postgres import _COPY, _copy_row

    async with open_postgres_pool(url) as pool:
        repository = PostgresMessageRepository(pool)
        await repository.migrate()

        async def claim_ms() -> float:
            times = []
            for _ in range(samples):
                await repository.enqueue("+905301234001", "due")
                started = time.perf_counter()
                assert len(await repository.claim(500, 60.0, SendOrder.OLDEST)) == 1
                times.append((time.perf_counter() - started) * 1000)
            return statistics.median(times)

        alone = await claim_ms()
        batch = messages(10_000)
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SET LOCAL statement_timeout = 0")
            async with conn.cursor() as cur, cur.copy(_COPY) as copy:
                for start in range(0, rows, len(batch)):
                    for m in batch[: min(len(batch), rows - start)]:
                        await copy.write_row(_copy_row(m))
                beside = await claim_ms()  # the COPY still open: its rows are in the index, uncommitted
            # The COPY ended (its statement trigger counted its rows); the transaction goes on.
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
                await other.execute("SET lock_timeout = '1s'")
                started = time.perf_counter()
                try:
                    await other.execute("INSERT INTO messages (recipient_phone, content) VALUES ('+905301234001', 'x')")
                    enqueue = f"an enqueue took {(time.perf_counter() - started) * 1000:.0f} ms"
                except psycopg.errors.LockNotAvailable:
                    enqueue = (
                        "an enqueue waited for the load's commit (lock_timeout of 1 s hit: the pending count's row)"
                    )
            await conn.execute("ROLLBACK")
        return alone, beside, enqueue


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
    parser.add_argument("--sqlite-rows", type=int, default=100_000)
    parser.add_argument("--stall-rows", type=int, default=300_000)
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
    with database(args.admin_url, "fileload") as url:
        staged, stored, both = await postgres_file_load(url, args.rows, args.chunk)
        print(
            f"file load: {args.rows} rows staged (COPY into a temporary table): {staged:,.0f} rows/s; "
            f"stored (INSERT ... SELECT, one transaction): {stored:,.0f} rows/s; both: {both:,.0f} rows/s"
        )
    staged, stored, both = await sqlite_file_load(args.sqlite_rows, args.chunk)
    print(
        f"file load on SQLite: {args.sqlite_rows} rows staged: {staged:,.0f} rows/s; "
        f"stored (write lock held {args.sqlite_rows / stored:.2f} s): {stored:,.0f} rows/s; both: {both:,.0f} rows/s"
    )
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
    with database(args.admin_url, "stall") as url:
        alone, beside, enqueue = await beside_an_open_load(url, args.stall_rows, args.samples)
        print(
            f"beside a load of {args.stall_rows} rows in one open transaction (not what enqueue --file does): "
            f"a claim of a queue of one took {beside:.1f} ms (alone: {alone:.1f} ms, medians); "
            f"after its COPY, {enqueue}"
        )


if __name__ == "__main__":
    asyncio.run(main())
