-- The listings filtered by category, through an index (see the PostgreSQL migration).

CREATE INDEX IF NOT EXISTS messages_category_sent_idx ON messages (category, sent_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS messages_category_status_created_idx ON messages (category, status, created_at DESC, id DESC);
