-- Messages as senders see them (issue 13): a time to send, a priority, an expiry, their
-- encoding and segments, cancel, enqueue idempotency keys.
--
-- A pending row may go at COALESCE(next_attempt_at, send_at, created_at): its retry time,
-- else its sendAt, else at once (in creation order), so rows another program inserts are
-- due as before. The claim reads the due rows of each priority, highest first, through one
-- range of an index on that expression per priority: rows scheduled in the future are
-- never read, however many there are.

ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS send_at timestamptz,
    ADD COLUMN IF NOT EXISTS priority smallint NOT NULL DEFAULT 5,
    ADD COLUMN IF NOT EXISTS valid_until timestamptz,
    ADD COLUMN IF NOT EXISTS encoding text,
    ADD COLUMN IF NOT EXISTS segments integer;

ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_priority_check;
ALTER TABLE messages ADD CONSTRAINT messages_priority_check CHECK (priority BETWEEN 0 AND 9);
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_segments_check;
ALTER TABLE messages ADD CONSTRAINT messages_segments_check CHECK (segments IS NULL OR segments >= 1);
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_status_check;
ALTER TABLE messages
    ADD CONSTRAINT messages_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired', 'cancelled'));

-- The queue, per priority, by due time; the expired leases; the expiry sweep.
DROP INDEX IF EXISTS messages_queue_idx;
CREATE INDEX IF NOT EXISTS messages_due_idx
    ON messages (priority, (COALESCE(next_attempt_at, send_at, created_at)), id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS messages_lease_idx ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX IF NOT EXISTS messages_valid_until_idx
    ON messages (valid_until) WHERE status = 'pending' AND valid_until IS NOT NULL;

-- The list filtered by recipient, newest first.
CREATE INDEX IF NOT EXISTS messages_to_sent_idx
    ON messages (recipient_phone, sent_at DESC, id DESC) WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS messages_to_status_created_idx
    ON messages (recipient_phone, status, created_at DESC, id DESC);

-- Idempotency-Key of POST /api/v1/messages and /batch: the first request with a key stores
-- what it created; the primary key makes concurrent requests with one key wait for the
-- first and then answer as it did. Kept 24 hours.
CREATE TABLE IF NOT EXISTS insider_idempotency_keys (
    key text PRIMARY KEY,
    request_hash text NOT NULL,
    status_code integer NOT NULL,
    message_ids jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS insider_idempotency_keys_created_idx ON insider_idempotency_keys (created_at);

-- Segments per status beside the counts (migration 0002), so the stats read the segments
-- sent without counting the table. A row without segments (inserted by another program)
-- counts one until it is sent, when the sender stores its segments.
ALTER TABLE insider_message_counts ADD COLUMN IF NOT EXISTS segments bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION insider_apply_count_deltas(deltas jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    -- Each value is a count, or [count, segments].
    FOR d IN
        SELECT key AS status,
               CASE jsonb_typeof(value) WHEN 'array' THEN (value->>0)::bigint ELSE value::text::bigint END AS n,
               CASE jsonb_typeof(value) WHEN 'array' THEN (value->>1)::bigint ELSE 0 END AS s
        FROM jsonb_each(deltas) ORDER BY key
    LOOP
        IF d.n <> 0 OR d.s <> 0 THEN
            INSERT INTO insider_message_counts AS c (status, n, segments) VALUES (d.status, d.n, d.s)
            ON CONFLICT (status) DO UPDATE SET n = c.n + EXCLUDED.n, segments = c.segments + EXCLUDED.segments;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_count_deltas(
        (SELECT coalesce(jsonb_object_agg(status, jsonb_build_array(n, s)), '{}') FROM
            (SELECT status, count(*) AS n, sum(coalesce(segments, 1)) AS s FROM new_rows GROUP BY status) t));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_count_deltas(
        (SELECT coalesce(jsonb_object_agg(status, jsonb_build_array(n, s)), '{}') FROM
            (SELECT status, sum(n) AS n, sum(s) AS s FROM (
                SELECT status, 1 AS n, coalesce(segments, 1) AS s FROM new_rows
                UNION ALL
                SELECT status, -1 AS n, -coalesce(segments, 1) AS s FROM old_rows) u
             GROUP BY status) t));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_count_deltas(
        (SELECT coalesce(jsonb_object_agg(status, jsonb_build_array(-n, -s)), '{}') FROM
            (SELECT status, count(*) AS n, sum(coalesce(segments, 1)) AS s FROM old_rows GROUP BY status) t));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE insider_message_counts SET n = 0, segments = 0;
    RETURN NULL;
END
$$;

LOCK TABLE messages IN SHARE MODE;
DELETE FROM insider_message_counts;
INSERT INTO insider_message_counts (status, n, segments)
SELECT status, count(*), sum(coalesce(segments, 1)) FROM messages GROUP BY status;
