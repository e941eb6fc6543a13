-- Waiting receipts in the order they arrived, on SQLite (see the PostgreSQL migration).
--
-- SQLite cannot add a numbered column to a table: the waiting table is rebuilt with one,
-- `seq`, numbered as receipts are stored (AUTOINCREMENT: a number is never used twice);
-- rows already waiting are numbered by arrival time.

CREATE TABLE insider_pending_receipts_0007 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    provider_message_id TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    receipt_status TEXT NOT NULL,
    delivery_status TEXT,
    final_status TEXT,
    error_code TEXT,
    done_at TEXT,
    received_at TEXT NOT NULL,
    UNIQUE (provider_message_id, dedupe_key)
);

INSERT INTO insider_pending_receipts_0007
    (provider_message_id, dedupe_key, receipt_status, delivery_status, final_status, error_code, done_at, received_at)
SELECT provider_message_id, dedupe_key, receipt_status, delivery_status, final_status, error_code, done_at, received_at
FROM insider_pending_receipts
ORDER BY received_at, rowid;

DROP TABLE insider_pending_receipts;
ALTER TABLE insider_pending_receipts_0007 RENAME TO insider_pending_receipts;
CREATE INDEX insider_pending_receipts_received_idx ON insider_pending_receipts (received_at);
