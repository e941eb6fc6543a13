-- Messages as senders see them (issue 13): a time to send, a priority, an expiry, their
-- encoding and segments, cancel, enqueue idempotency keys. See the PostgreSQL migration.
--
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt with the new
-- status set and columns, keeping every row and id.

CREATE TABLE messages_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_phone TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired', 'cancelled')),
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
    segments INTEGER CHECK (segments IS NULL OR segments >= 1)
);

INSERT INTO messages_new (
    id, recipient_phone, content, status, created_at, sent_at, message_id, last_error, attempts,
    next_attempt_at, lease_expires_at, claim_token, idempotency_key, updated_at
)
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error, attempts,
       next_attempt_at, lease_expires_at, claim_token, idempotency_key, updated_at
FROM messages;

DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;

CREATE INDEX messages_due_idx ON messages (priority, (COALESCE(next_attempt_at, send_at, created_at)), id) WHERE status = 'pending';
CREATE INDEX messages_lease_idx ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_valid_until_idx ON messages (valid_until) WHERE status = 'pending' AND valid_until IS NOT NULL;
CREATE INDEX messages_sent_idx ON messages (sent_at DESC, id DESC) WHERE status = 'sent';
CREATE INDEX messages_status_created_idx ON messages (status, created_at DESC, id DESC);
CREATE INDEX messages_to_sent_idx ON messages (recipient_phone, sent_at DESC, id DESC) WHERE status = 'sent';
CREATE INDEX messages_to_status_created_idx ON messages (recipient_phone, status, created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS insider_idempotency_keys (
    key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    message_ids TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS insider_idempotency_keys_created_idx ON insider_idempotency_keys (created_at);
