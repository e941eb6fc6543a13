-- Named queries of PostgresMessageRepository; each starts at a `-- name --` line.
-- Every query returning messages returns the same columns, in the same order.

-- ping --
-- The database answers.
SELECT 1

-- enqueue --
-- Store pending messages, given as one JSON array, in its order; due at sendAt, or at once.
INSERT INTO messages (recipient_phone, content, send_at, priority, valid_until, encoding, segments)
SELECT v.recipient_phone, v.content, v.send_at, v.priority, v.valid_until, v.encoding, v.segments
FROM ROWS FROM (jsonb_to_recordset(%(messages)s::jsonb) AS (
    recipient_phone text, content text, send_at timestamptz, priority smallint, valid_until timestamptz,
    encoding text, segments integer
)) WITH ORDINALITY AS v(recipient_phone, content, send_at, priority, valid_until, encoding, segments, ord)
ORDER BY v.ord
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments, uuid

-- get_many --
-- Messages by id, any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE id = ANY(%(ids)s)

-- get --
-- One message in any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE id = %(id)s

-- get_by_uuid --
-- One message in any state, by the UUID the original Go service gave it.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE uuid = %(uuid)s

-- claim --
-- Lease up to %(limit)s due messages in one statement: expired leases (their holder died)
-- first, then the due pending rows of each priority, highest first (__DUE__ is one
-- `due_oldest` or `due_newest` branch per priority, 9 down to 0; the Append stops at the
-- limit, so lower priorities are not even read when higher ones fill the batch). Pending
-- rows past their validUntil become `expired` in the same statement (a bounded sweep)
-- and come back too, with status `expired`, so the sender can report them. The locking
-- select is materialized so that it runs exactly once; SKIP LOCKED lets concurrent
-- claimers take disjoint rows.
WITH expired AS (
    UPDATE messages m
    SET status = 'expired',
        last_error = 'expired: not sent before validUntil ' || to_char(m.valid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                     || COALESCE(' (last error: ' || m.last_error || ')', ''),
        next_attempt_at = NULL,
        updated_at = now()
    WHERE m.id IN (
        SELECT id FROM messages
        WHERE status = 'pending' AND valid_until IS NOT NULL AND valid_until <= now()
        ORDER BY valid_until
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    )
    RETURNING m.id, m.recipient_phone, m.content, m.status, m.created_at, m.sent_at, m.message_id,
              m.last_error, m.attempts, m.next_attempt_at, m.lease_expires_at,
              m.idempotency_key::text AS idempotency_key, m.claim_token::text AS claim_token,
              m.send_at, m.priority, m.valid_until, m.encoding, m.segments, m.uuid::text AS uuid
), due AS MATERIALIZED (
    SELECT id FROM (
        SELECT id FROM (
            SELECT id FROM messages
            WHERE status = 'sending' AND lease_expires_at <= now()
            ORDER BY lease_expires_at
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) leases
        UNION ALL
        __DUE__
    ) d
    LIMIT %(limit)s
), claimed AS (
    UPDATE messages m
    SET status = 'sending',
        attempts = m.attempts + 1,
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        claim_token = gen_random_uuid(),
        updated_at = now()
    FROM due
    WHERE m.id = due.id
    RETURNING m.id, m.recipient_phone, m.content, m.status, m.created_at, m.sent_at, m.message_id,
              m.last_error, m.attempts, m.next_attempt_at, m.lease_expires_at,
              m.idempotency_key::text AS idempotency_key, m.claim_token::text AS claim_token,
              m.send_at, m.priority, m.valid_until, m.encoding, m.segments, m.uuid::text AS uuid
)
-- The UUIDs come back as text: the Message holds text, and a uuid.UUID made per column and
-- row only to be turned into text cost a third of reading a claimed row.
SELECT * FROM expired
UNION ALL
SELECT * FROM claimed

-- due_oldest --
-- The due pending rows of priority __PRIORITY__, the longest due first, not past their
-- validUntil. A row is due at its retry time, else its sendAt, else its creation: the
-- expression of messages_due_idx, so this is one index range.
SELECT id FROM (
    SELECT id FROM messages
    WHERE status = 'pending' AND priority = __PRIORITY__ AND COALESCE(next_attempt_at, send_at, created_at) <= now()
      AND (valid_until IS NULL OR valid_until > now())
    ORDER BY COALESCE(next_attempt_at, send_at, created_at), id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) p__PRIORITY__

-- due_newest --
-- As due_oldest, the most recently due first (INSIDER_SEND_ORDER=newest).
SELECT id FROM (
    SELECT id FROM messages
    WHERE status = 'pending' AND priority = __PRIORITY__ AND COALESCE(next_attempt_at, send_at, created_at) <= now()
      AND (valid_until IS NULL OR valid_until > now())
    ORDER BY COALESCE(next_attempt_at, send_at, created_at) DESC, id DESC
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) p__PRIORITY__

-- resolve --
-- Write back a batch of outcomes. A row is written while the claim token still holds
-- it, or by a `sent` outcome when it is not sent yet (the send happened regardless) and
-- not cancelled (a 200 to a cancel is final).
UPDATE messages m
SET status = v.status,
    sent_at = v.sent_at,
    message_id = v.message_id,
    last_error = COALESCE(v.last_error, m.last_error),
    next_attempt_at = now() + make_interval(secs => v.retry_in_s),
    segments = COALESCE(m.segments, v.segments),
    encoding = COALESCE(m.encoding, v.encoding),
    lease_expires_at = NULL,
    claim_token = NULL,
    attempts = CASE WHEN v.uncount THEN m.attempts - 1 ELSE m.attempts END,
    updated_at = now()
-- The outcomes come as one JSON array: encoding it costs the client a fortieth of
-- encoding eight arrays, which showed in the profile of a drain.
FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS v(
    id bigint, claim_token uuid, status text, sent_at timestamptz, message_id text, last_error text,
    retry_in_s float8, uncount bool, segments integer, encoding text
)
WHERE m.id = v.id
  AND ((m.status = 'sending' AND m.claim_token = v.claim_token)
       OR (v.status = 'sent' AND m.status NOT IN ('sent', 'cancelled')))

-- retry --
-- A failed message back to pending, its attempts reset.
UPDATE messages
SET status = 'pending', attempts = 0, next_attempt_at = NULL, updated_at = now()
WHERE id = %(id)s AND status = 'failed'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments, uuid

-- cancel --
-- A pending message (scheduled or waiting for a retry) taken back. A claimed row is
-- `sending` and is left alone: it cannot be cancelled any more.
UPDATE messages
SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()
WHERE id = %(id)s AND status = 'pending'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments, uuid

-- expire --
-- Pending rows past their validUntil become expired (bounded; the claim does the same).
UPDATE messages m
SET status = 'expired',
    last_error = 'expired: not sent before validUntil ' || to_char(m.valid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                 || COALESCE(' (last error: ' || m.last_error || ')', ''),
    next_attempt_at = NULL,
    updated_at = now()
WHERE m.id IN (
    SELECT id FROM messages
    WHERE status = 'pending' AND valid_until IS NOT NULL AND valid_until <= now()
    ORDER BY valid_until
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)

-- idempotency_drop_stale --
-- A key older than 24 hours is forgotten: the same key may be used again.
DELETE FROM insider_idempotency_keys
WHERE key = %(key)s AND created_at <= now() - interval '24 hours'

-- idempotency_clean --
-- Forget a bounded number of keys older than 24 hours.
DELETE FROM insider_idempotency_keys
WHERE key IN (
    SELECT key FROM insider_idempotency_keys
    WHERE created_at <= now() - interval '24 hours'
    ORDER BY created_at
    LIMIT 1000
)

-- idempotency_take --
-- Take the key for this request; another transaction inserting the same key waits here
-- until this one ends, then finds the key taken.
INSERT INTO insider_idempotency_keys (key, request_hash, status_code, message_ids)
VALUES (%(key)s, %(request_hash)s, %(status_code)s, '[]')
ON CONFLICT (key) DO NOTHING
RETURNING key

-- idempotency_get --
-- What the first request with the key answered.
SELECT request_hash, status_code, message_ids
FROM insider_idempotency_keys
WHERE key = %(key)s

-- idempotency_store --
-- The messages the first request with the key created.
UPDATE insider_idempotency_keys SET message_ids = %(message_ids)s::jsonb WHERE key = %(key)s

-- acquire_slot --
-- Take the slot %(name)s when due, in one statement: due one interval (the caller's
-- current one) after the last batch. A brand-new row is taken by its inserter; an
-- existing one by whoever updates it while due: the row lock and the recheck of the
-- due time after waiting on it make that one process only.
-- `wait_s` comes from the statement's snapshot, so it is NULL (row inserted by another
-- process meanwhile) or not positive (taken meanwhile) when a concurrent taker won;
-- the caller runs the statement again then.
WITH inserted AS (
    INSERT INTO insider_slots (name, last_at)
    VALUES (%(name)s, now())
    ON CONFLICT (name) DO NOTHING
    RETURNING name
), updated AS (
    UPDATE insider_slots
    -- On time (within the tolerance): the batch counts as sent when due, keeping the grid
    -- (no drift). Late: as sent now, so two batches are never less than one interval
    -- apart (domain.slot_batch_at).
    SET last_at = CASE WHEN now() - (last_at + make_interval(secs => %(interval_s)s)) <= make_interval(secs => %(tolerance_s)s)
                       THEN last_at + make_interval(secs => %(interval_s)s)
                       ELSE now() END
    WHERE name = %(name)s AND last_at + make_interval(secs => %(interval_s)s) <= now()
    RETURNING name
)
-- The wait is counted from the clock, not now(): now() is when this statement's
-- transaction began, possibly before it waited on the winner's row lock.
SELECT EXISTS (SELECT 1 FROM inserted) OR EXISTS (SELECT 1 FROM updated) AS taken,
       (SELECT EXTRACT(EPOCH FROM last_at + make_interval(secs => %(interval_s)s) - clock_timestamp())::float8
        FROM insider_slots WHERE name = %(name)s) AS wait_s

-- list_sent --
-- The first page of sent messages, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_sent_after --
-- A later page of sent messages: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (%(key)s, %(id)s)
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created --
-- The first page of messages in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE status = %(status)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created_after --
-- A later page: those after the cursor's (created_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE status = %(status)s AND (created_at, id) < (%(key)s, %(id)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- list_sent_to --
-- The first page of sent messages to one recipient, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE recipient_phone = %(to)s AND status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_sent_to_after --
-- A later page of sent messages to one recipient.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE recipient_phone = %(to)s AND status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (%(key)s, %(id)s)
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created_to --
-- The first page of messages to one recipient in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE recipient_phone = %(to)s AND status = %(status)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created_to_after --
-- A later page of messages to one recipient in one (not sent) status.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid
FROM messages
WHERE recipient_phone = %(to)s AND status = %(status)s AND (created_at, id) < (%(key)s, %(id)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- counts --
-- How many messages are in each status: kept by triggers (migration 0002), so this
-- reads a few rows whatever the size of the table.
SELECT status, n
FROM insider_message_counts

-- segments_sent --
-- The segments of every sent message, kept by the same triggers (migration 0005).
SELECT coalesce(sum(segments), 0)::bigint AS segments
FROM insider_message_counts
WHERE status = 'sent'
