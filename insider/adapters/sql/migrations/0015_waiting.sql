-- The messages waiting for their sending hours or a frequency cap, counted per reason for the
-- stats and the metrics through an index of those rows alone (a handful of index pages, not
-- the table, whatever its size).
CREATE INDEX IF NOT EXISTS messages_waiting_idx
    ON messages (wait_reason)
    WHERE status = 'pending' AND wait_reason IS NOT NULL;
