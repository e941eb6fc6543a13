-- Several providers, on SQLite (see the PostgreSQL migration): new columns only, so the
-- tables are not rebuilt.

ALTER TABLE messages ADD COLUMN provider TEXT;
ALTER TABLE messages ADD COLUMN provider_pin TEXT;
ALTER TABLE messages ADD COLUMN cost REAL;
ALTER TABLE messages ADD COLUMN category TEXT NOT NULL DEFAULT 'transactional'
    CHECK (category IN ('transactional', 'commercial'));

ALTER TABLE insider_message_events ADD COLUMN provider TEXT;

CREATE TABLE IF NOT EXISTS insider_providers (
    name TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL,
    changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

-- The next free send time in whole microseconds since the epoch (simpler arithmetic than text).
CREATE TABLE IF NOT EXISTS insider_provider_rates (
    name TEXT PRIMARY KEY,
    tat_us INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS insider_provider_totals (
    provider TEXT PRIMARY KEY,
    sent INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    segments INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0
);
