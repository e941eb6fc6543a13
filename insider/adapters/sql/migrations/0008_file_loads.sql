-- Files loaded by `enqueue --file`, by the SHA-256 digest of their bytes. The row is written
-- in the transaction that stores the file's messages, so a file is stored once: the same
-- bytes again are refused (unless --again, which counts them once more), and two loads of
-- one file at the same time wait on this key for each other.

CREATE TABLE IF NOT EXISTS insider_file_loads (
    digest text PRIMARY KEY,
    name text NOT NULL,
    lines bigint NOT NULL,
    stored bigint NOT NULL,
    rejected bigint NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    loads integer NOT NULL DEFAULT 1
);
