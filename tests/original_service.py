"""The original Go service's database (frkntplglu/insider), built from its own statements.

Its ``db.sql`` (run by its docker-compose) and the statements its code runs: GORM's
``UPDATE messages SET sent_at=..., status=... WHERE id = ...`` after each send, on a
session with ``TimeZone=Asia/Istanbul`` (its DSN).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

# db.sql of the original, as it is.
ORIGINAL_SCHEMA = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'message_status') THEN
        CREATE TYPE message_status AS ENUM ('pending', 'failed', 'sent');
    END IF;
END$$;

CREATE TABLE messages (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient_phone VARCHAR(20) NOT NULL,
    content VARCHAR(255) NOT NULL,
    status message_status NOT NULL DEFAULT 'pending',
    created_at TIMESTAMP DEFAULT NOW(),
    sent_at TIMESTAMP
);
"""


def original_insert(first: int, last: int) -> str:
    """The INSERT of db.sql (its users add rows with it), for messages ``first`` to ``last``."""
    rows = ",\n".join(f"('+9053012340{n:02d}', 'Message content {n}', 'pending')" for n in range(first, last + 1))
    return f"INSERT INTO messages (recipient_phone, content, status)\nVALUES\n{rows};"


@dataclass(frozen=True)
class OriginalRow:
    """One row as the original service left it (times as stored: no zone)."""

    uuid: str
    recipient_phone: str
    content: str
    status: str
    created_at: datetime | None
    sent_at: datetime | None


def build_original_database(
    url: str, *, timezone: str | None = "Asia/Istanbul", pending: int = 50, sent: int = 3, failed: int = 2
) -> list[OriginalRow]:
    """The original's database used for a while: its 50 rows, ``sent`` sent and ``failed`` failed.

    ``timezone`` becomes the database's own TimeZone (ALTER DATABASE), as a server
    configured for Turkey would have it. Returns every row as stored.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        if timezone is not None:
            dbname = conn.info.dbname
            conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO {}").format(sql.Identifier(dbname), timezone))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ORIGINAL_SCHEMA)
        conn.execute(original_insert(1, pending))
        # Distinct creation times, as rows inserted over days would have (the INSERT gives them one).
        conn.execute(
            "UPDATE messages SET created_at = TIMESTAMP '2026-03-01 09:00:00' "
            "+ make_interval(mins => substring(content from '[0-9]+$')::int)"
        )
        # What its ticker did: the newest pending first, 'sent' or 'failed', with sent_at on both.
        done = conn.execute(
            "SELECT id FROM messages WHERE status = 'pending' ORDER BY created_at DESC LIMIT %s", (sent + failed,)
        ).fetchall()
        for n, (row_id,) in enumerate(done):
            status = "sent" if n < sent else "failed"
            conn.execute(
                "UPDATE messages SET sent_at = %s, status = %s WHERE id = %s",
                (datetime(2026, 3, 2, 12, 0, n), status, row_id),
            )
        return read_original_rows(conn)


def read_original_rows(conn: psycopg.Connection) -> list[OriginalRow]:
    rows = conn.execute(
        "SELECT id::text, recipient_phone, content, status::text, created_at, sent_at FROM messages ORDER BY created_at"
    ).fetchall()
    return [OriginalRow(*row) for row in rows]


def column_types(url: str) -> dict[str, str]:
    """The columns of ``messages`` and their types (enum columns show their type's name)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT column_name, CASE WHEN data_type = 'USER-DEFINED' THEN udt_name ELSE data_type END "
            "FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'messages'"
        ).fetchall()
    return dict(rows)
