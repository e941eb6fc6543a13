-- The rate slot records when the last batch went (last_at), no longer when the next may
-- go (next_at): the next is due one *current* interval after it, so a restart with a
-- shorter INSIDER_SEND_INTERVAL obeys the new interval instead of the old one.
ALTER TABLE insider_slots ADD COLUMN last_at TEXT;

-- next_at was "last batch + the interval of that time", which is unknown now. Taking the
-- last batch as no earlier than next_at (or now, if that is sooner) never sends faster
-- than the current interval after the real last batch.
UPDATE insider_slots SET last_at = min(next_at, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));

ALTER TABLE insider_slots DROP COLUMN next_at;
