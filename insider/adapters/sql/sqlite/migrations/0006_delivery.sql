-- Delivery receipts and every message's history (issue 14), on SQLite.
--
-- SQLite cannot change a CHECK constraint, so the messages table is rebuilt with the new
-- statuses and columns (inside the migration's transaction), keeping every row, id and
-- column: migration 0005's table and indexes, plus this one's.

CREATE TABLE messages_0006 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_phone TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired', 'cancelled', 'delivered', 'undelivered')),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    sent_at TEXT,
    message_id TEXT,
    last_error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_expires_at TEXT,
    claim_token TEXT,
    idempotency_key TEXT NOT NULL DEFAULT (
        lower(
            hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-'
            || substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))
        )
    ),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    send_at TEXT,
    priority INTEGER NOT NULL DEFAULT 5 CHECK (priority BETWEEN 0 AND 9),
    valid_until TEXT,
    encoding TEXT,
    segments INTEGER CHECK (segments IS NULL OR segments >= 1),
    delivered_at TEXT,
    delivery_status TEXT,
    delivery_error TEXT
);

INSERT INTO messages_0006 (
    id, recipient_phone, content, status, created_at, sent_at, message_id, last_error, attempts,
    next_attempt_at, lease_expires_at, claim_token, idempotency_key, updated_at,
    send_at, priority, valid_until, encoding, segments
)
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error, attempts,
       next_attempt_at, lease_expires_at, claim_token, idempotency_key, updated_at,
       send_at, priority, valid_until, encoding, segments
FROM messages;

DROP TABLE messages;
ALTER TABLE messages_0006 RENAME TO messages;

-- Migration 0005's indexes (dropped with its table), then this one's.
CREATE INDEX messages_due_idx ON messages (priority, (COALESCE(next_attempt_at, send_at, created_at)), id) WHERE status = 'pending';
CREATE INDEX messages_lease_idx ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_valid_until_idx ON messages (valid_until) WHERE status = 'pending' AND valid_until IS NOT NULL;
CREATE INDEX messages_sent_idx ON messages (sent_at DESC, id DESC) WHERE status = 'sent';
CREATE INDEX messages_status_created_idx ON messages (status, created_at DESC, id DESC);
CREATE INDEX messages_to_sent_idx ON messages (recipient_phone, sent_at DESC, id DESC) WHERE status = 'sent';
CREATE INDEX messages_to_status_created_idx ON messages (recipient_phone, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS messages_message_id_idx ON messages (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_accepted_idx
    ON messages (sent_at DESC, id DESC)
    WHERE status IN ('sent', 'delivered', 'undelivered');
CREATE INDEX IF NOT EXISTS messages_to_accepted_idx
    ON messages (recipient_phone, sent_at DESC, id DESC)
    WHERE status IN ('sent', 'delivered', 'undelivered');

CREATE TABLE IF NOT EXISTS insider_message_events (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('attempt', 'receipt')),
    outcome TEXT,
    attempt INTEGER,
    status_code INTEGER,
    duration_ms REAL,
    error TEXT,
    provider_message_id TEXT,
    receipt_status TEXT,
    error_code TEXT,
    done_at TEXT,
    dedupe_key TEXT
);
CREATE INDEX IF NOT EXISTS insider_message_events_message_idx ON insider_message_events (message_id, at, id);
CREATE UNIQUE INDEX IF NOT EXISTS insider_message_events_receipt_idx
    ON insider_message_events (message_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS insider_message_events_at_idx ON insider_message_events (at);

CREATE TABLE IF NOT EXISTS insider_pending_receipts (
    provider_message_id TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    receipt_status TEXT NOT NULL,
    delivery_status TEXT,
    final_status TEXT,
    error_code TEXT,
    done_at TEXT,
    received_at TEXT NOT NULL,
    PRIMARY KEY (provider_message_id, dedupe_key)
);
CREATE INDEX IF NOT EXISTS insider_pending_receipts_received_idx ON insider_pending_receipts (received_at);
