-- The rate slot records when the last batch went (last_at), no longer when the next may
-- go (next_at): the next is due one *current* interval after it, so a restart with a
-- shorter INSIDER_SEND_INTERVAL obeys the new interval instead of the old one.
ALTER TABLE insider_slots ADD COLUMN IF NOT EXISTS last_at timestamptz;

-- next_at was "last batch + the interval of that time", which is unknown now. Taking the
-- last batch as no earlier than next_at (or now, if that is sooner) never sends faster
-- than the current interval after the real last batch.
UPDATE insider_slots SET last_at = LEAST(next_at, now()) WHERE last_at IS NULL;

ALTER TABLE insider_slots ALTER COLUMN last_at SET NOT NULL;
ALTER TABLE insider_slots DROP COLUMN IF EXISTS next_at;
