-- The messages waiting for their sending hours or a frequency cap, counted per reason through
-- an index of those rows alone (see the PostgreSQL migration).
CREATE INDEX IF NOT EXISTS messages_waiting_idx
    ON messages (wait_reason)
    WHERE status = 'pending' AND wait_reason IS NOT NULL;
