-- Files loaded by `enqueue --file`, by the SHA-256 digest of their bytes (see the PostgreSQL
-- migration of the same number): written in the transaction that stores the file's messages.

CREATE TABLE IF NOT EXISTS insider_file_loads (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    lines INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    loaded_at TEXT NOT NULL,
    loads INTEGER NOT NULL DEFAULT 1
);
