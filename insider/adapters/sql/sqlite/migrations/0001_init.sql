-- The messages queue and the rate slots, on SQLite: the same columns as on PostgreSQL.
--
-- Timestamps are text in one fixed-width form, UTC with microseconds
-- (2026-01-01T12:00:00.000000Z), so that comparing them as text orders them in time.
-- The defaults let another program insert rows with only recipient_phone and content,
-- as the original Go service's users do.

CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_phone TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    sent_at TEXT,
    message_id TEXT,
    last_error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_expires_at TEXT,
    claim_token TEXT,
    -- A version 4 UUID, in the form PostgreSQL's gen_random_uuid() gives.
    idempotency_key TEXT NOT NULL DEFAULT (
        lower(
            hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-'
            || substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))
        )
    ),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

-- The queue: due pending rows and expired leases, oldest first.
CREATE INDEX IF NOT EXISTS messages_queue_idx
    ON messages (created_at, id)
    WHERE status IN ('pending', 'sending');

-- The list endpoint, newest first: sent ones by sent_at, the others by created_at.
CREATE INDEX IF NOT EXISTS messages_sent_idx
    ON messages (sent_at DESC, id DESC)
    WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS messages_status_created_idx
    ON messages (status, created_at DESC, id DESC);

-- One row per named rate slot: when it can next be taken.
CREATE TABLE IF NOT EXISTS insider_slots (
    name TEXT PRIMARY KEY,
    next_at TEXT NOT NULL
);
