"""PostgreSQL connections for the repository: a pool of autocommit connections that give up in time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[Any]]

# libpq's connect_timeout (whole seconds, at least 2) when the URL sets none: an address
# that drops packets must not hold a connection attempt for minutes.
CONNECT_TIMEOUT_S: Final = 5
# How long closing the pool waits for its workers.
CLOSE_TIMEOUT_S: Final = 0.5


def connection_options(
    url: str,
    *,
    statement_timeout_s: float = 30.0,
    keepalives_idle_s: float = 30.0,
    keepalives_interval_s: float = 10.0,
    keepalives_count: int = 3,
) -> dict[str, Any]:
    """libpq parameters for the pool's connections: a statement timeout, TCP keepalives, a
    connect timeout. What the URL itself sets (``?keepalives_idle=5``) wins."""
    given = conninfo_to_dict(url)
    wanted: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(keepalives_idle_s)),
        "keepalives_interval": max(1, math.ceil(keepalives_interval_s)),
        "keepalives_count": keepalives_count,
    }
    options = {key: value for key, value in wanted.items() if key not in given}
    if statement_timeout_s > 0:
        # The URL's own options go last: a -c given there overrides this one.
        ours = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
        options["options"] = f"{ours} {given['options']}" if given.get("options") else ours
    return options


# What a server that answered says when the URL itself is wrong (not merely a server that is
# down or starting): no such database or role, credentials refused.
_WRONG_URL_SIGNS: Final = ("does not exist", "authentication failed", "pg_hba.conf", "not permitted to log in")


async def wrong_url_reason(url: str, *, timeout_s: float = 1.0) -> str | None:
    """Why ``url`` can never work (a bad option, no such database or role, a refused password),
    or None when it works or the server is only unreachable now (down, starting, not resolvable:
    the service starts then, and waits for it). Never waits longer than ``timeout_s``.
    """
    try:
        async with asyncio.timeout(timeout_s):
            conn = await AsyncConnection.connect(url, connect_timeout=max(2, math.ceil(timeout_s)))
            await conn.close()
    except TimeoutError:
        return None
    except psycopg.ProgrammingError as exc:  # a URL psycopg cannot read
        return str(exc).strip()
    except psycopg.OperationalError as exc:
        text = " ".join(str(exc).split())
        if "invalid" in text and "connection option" in text:
            return text.removeprefix("connection is bad: ")
        if "FATAL:" in text and any(sign in text for sign in _WRONG_URL_SIGNS):
            return text[text.index("FATAL:") + len("FATAL:") :].strip()
        return None
    return None


@asynccontextmanager
async def open_postgres_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    timeout_s: float = 5.0,
    reconnect_timeout_s: float = 5.0,
    statement_timeout_s: float = 30.0,
    keepalives_idle_s: float = 30.0,
    keepalives_interval_s: float = 10.0,
    keepalives_count: int = 3,
) -> AsyncIterator[Pool]:
    """A connection pool for PostgresMessageRepository, closed on exit.

    The pool opens without waiting for a connection, so a service can start while the
    database is down; until it is back, calls fail after ``timeout_s`` with
    RepositoryUnavailable. Connections are autocommit and checked when taken, so a
    restarted server costs no failed call.

    A lost connection is retried with a doubling backoff for ``reconnect_timeout_s``,
    then given up; the next call then connects afresh at once. (With psycopg_pool's
    own default, 5 minutes, the service stayed idle after an outage for up to half
    as long as the outage had lasted, up to two minutes.)

    Connections render times in UTC, carry a statement timeout (the server cancels a
    statement running longer; migrations lift it) and TCP keepalives, so that neither a stuck statement nor
    a peer that vanished without a word can hold a call for good.
    """
    options = connection_options(
        url,
        statement_timeout_s=statement_timeout_s,
        keepalives_idle_s=keepalives_idle_s,
        keepalives_interval_s=keepalives_interval_s,
        keepalives_count=keepalives_count,
    )
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, **options},
        open=False,
        timeout=timeout_s,
        reconnect_timeout=reconnect_timeout_s,
        check=AsyncConnectionPool.check_connection,
        configure=_in_utc,
        name="insider",
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        # Bounded: a worker stuck connecting to a server that went away must not hold up a
        # shutdown (the stop's promise is INSIDER_SHUTDOWN_TIMEOUT plus a few seconds).
        await pool.close(timeout=CLOSE_TIMEOUT_S)


async def _in_utc(conn: AsyncConnection[Any]) -> None:
    """Each connection renders times in UTC: every storable time (``domain.TIME_RANGE``) then
    reads back, where a server zone east of UTC would carry 9999-12-31T23:59:59Z past the
    year 9999 Python's datetime ends with. (Migrations read in the database's own zone.)"""
    await conn.execute("SET TimeZone = 'UTC'")
