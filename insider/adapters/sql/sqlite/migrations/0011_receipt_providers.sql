-- Receipts matched by provider and provider id together, on SQLite (see the PostgreSQL migration).
--
-- A waiting receipt keeps the provider that sent it (NULL: it named none). SQLite cannot
-- change a table's unique constraint, so the waiting table is rebuilt with the column and
-- its key (provider id, provider, identity), keeping every row and its number (`seq`).

CREATE TABLE insider_pending_receipts_0011 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    provider_message_id TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    receipt_status TEXT NOT NULL,
    delivery_status TEXT,
    final_status TEXT,
    error_code TEXT,
    done_at TEXT,
    received_at TEXT NOT NULL,
    provider TEXT
);

INSERT INTO insider_pending_receipts_0011
    (seq, provider_message_id, dedupe_key, receipt_status, delivery_status, final_status, error_code, done_at,
     received_at)
SELECT seq, provider_message_id, dedupe_key, receipt_status, delivery_status, final_status, error_code, done_at,
       received_at
FROM insider_pending_receipts;

DROP TABLE insider_pending_receipts;
ALTER TABLE insider_pending_receipts_0011 RENAME TO insider_pending_receipts;
CREATE INDEX insider_pending_receipts_received_idx ON insider_pending_receipts (received_at);
CREATE UNIQUE INDEX insider_pending_receipts_key_idx
    ON insider_pending_receipts (provider_message_id, (COALESCE(provider, '')), dedupe_key);
