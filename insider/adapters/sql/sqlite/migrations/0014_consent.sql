-- Consent on SQLite (see the PostgreSQL migration): the `suppressed` status and the columns
-- of waiting and consent, the suppression list, and the replies.
--
-- SQLite cannot change a CHECK constraint, so the messages table is rebuilt with the new
-- status and columns (inside the migration's transaction), keeping every row, id and column,
-- and every index.

CREATE TABLE messages_0014 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_phone TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired', 'cancelled', 'delivered', 'undelivered',
                          'suppressed')),
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
    delivery_error TEXT,
    provider TEXT,
    provider_pin TEXT,
    cost REAL,
    category TEXT NOT NULL DEFAULT 'transactional' CHECK (category IN ('transactional', 'commercial')),
    suppression_reason TEXT,
    wait_reason TEXT,
    respect_sending_hours INTEGER NOT NULL DEFAULT 1,
    consent_reply INTEGER NOT NULL DEFAULT 0,
    cap_admitted_at TEXT
);

INSERT INTO messages_0014 (
    id, recipient_phone, content, status, created_at, sent_at, message_id, last_error, attempts,
    next_attempt_at, lease_expires_at, claim_token, idempotency_key, updated_at,
    send_at, priority, valid_until, encoding, segments, delivered_at, delivery_status, delivery_error,
    provider, provider_pin, cost, category
)
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error, attempts,
       next_attempt_at, lease_expires_at, claim_token, idempotency_key, updated_at,
       send_at, priority, valid_until, encoding, segments, delivered_at, delivery_status, delivery_error,
       provider, provider_pin, cost, category
FROM messages;

DROP TABLE messages;
ALTER TABLE messages_0014 RENAME TO messages;

CREATE INDEX messages_due_idx ON messages (priority, (COALESCE(next_attempt_at, send_at, created_at)), id) WHERE status = 'pending';
CREATE INDEX messages_lease_idx ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_valid_until_idx ON messages (valid_until) WHERE status = 'pending' AND valid_until IS NOT NULL;
CREATE INDEX messages_sent_idx ON messages (sent_at DESC, id DESC) WHERE status = 'sent';
CREATE INDEX messages_status_created_idx ON messages (status, created_at DESC, id DESC);
CREATE INDEX messages_to_sent_idx ON messages (recipient_phone, sent_at DESC, id DESC) WHERE status = 'sent';
CREATE INDEX messages_to_status_created_idx ON messages (recipient_phone, status, created_at DESC, id DESC);
CREATE INDEX messages_message_id_idx ON messages (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX messages_accepted_idx ON messages (sent_at DESC, id DESC) WHERE status IN ('sent', 'delivered', 'undelivered');
CREATE INDEX messages_to_accepted_idx
    ON messages (recipient_phone, sent_at DESC, id DESC) WHERE status IN ('sent', 'delivered', 'undelivered');
CREATE INDEX messages_category_sent_idx ON messages (category, sent_at DESC, id DESC);
CREATE INDEX messages_category_status_created_idx ON messages (category, status, created_at DESC, id DESC);
-- The commercial messages a frequency cap let go, per recipient, by when.
CREATE INDEX messages_cap_idx ON messages (recipient_phone, cap_admitted_at) WHERE cap_admitted_at IS NOT NULL;

-- Numbers that must not be sent to: scope `all` (nothing), or `commercial` (no commercial message).
CREATE TABLE IF NOT EXISTS insider_suppressions (
    phone TEXT PRIMARY KEY,
    scope TEXT NOT NULL DEFAULT 'all' CHECK (scope IN ('commercial', 'all')),
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS insider_suppressions_created_idx ON insider_suppressions (created_at DESC, phone DESC);

-- The one rule of suppression, as every statement reads it: the (number, category) pairs not
-- to send, with the reason.
CREATE VIEW IF NOT EXISTS insider_suppressed_for (phone, category, reason) AS
SELECT phone, 'commercial', reason FROM insider_suppressions
UNION ALL
SELECT phone, 'transactional', reason FROM insider_suppressions WHERE scope = 'all';

-- Replies: what recipients sent back, as providers forwarded them.
CREATE TABLE IF NOT EXISTS insider_inbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    from_phone TEXT NOT NULL,
    to_phone TEXT,
    text TEXT NOT NULL,
    provider TEXT,
    provider_message_id TEXT,
    action TEXT CHECK (action IS NULL OR action IN ('opt-out', 'opt-in')),
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS insider_inbound_from_idx ON insider_inbound (from_phone, id DESC);
