-- Named queries of PostgresMessageRepository; each starts at a `-- name --` line.
-- Every query returning messages returns the same columns, in the same order.

-- ping --
-- The database answers.
SELECT 1

-- enqueue --
-- Store one pending message.
INSERT INTO messages (recipient_phone, content)
VALUES (%(recipient_phone)s, %(content)s)
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid

-- get --
-- One message in any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid
FROM messages
WHERE id = %(id)s

-- get_by_uuid --
-- One message in any state, by the UUID the original Go service gave it.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid
FROM messages
WHERE uuid = %(uuid)s

-- claim --
-- Lease up to %(limit)s due messages, oldest first. The locking select is materialized
-- so that it runs exactly once (an `id IN (subquery ... LIMIT)` may be re-evaluated by
-- some plans); SKIP LOCKED lets concurrent claimers take disjoint rows.
WITH due AS MATERIALIZED (
    SELECT id
    FROM messages
    WHERE status IN ('pending', 'sending')
      AND ((status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= now()))
           OR (status = 'sending' AND lease_expires_at <= now()))
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE messages m
SET status = 'sending',
    attempts = m.attempts + 1,
    lease_expires_at = now() + make_interval(secs => %(lease_s)s),
    claim_token = gen_random_uuid(),
    updated_at = now()
FROM due
WHERE m.id = due.id
-- The UUIDs come back as text: the Message holds text, and a uuid.UUID made per column and
-- row only to be turned into text cost a third of reading a claimed row.
RETURNING m.id, m.recipient_phone, m.content, m.status, m.created_at, m.sent_at, m.message_id,
          m.last_error, m.attempts, m.next_attempt_at, m.lease_expires_at,
          m.idempotency_key::text AS idempotency_key, m.claim_token::text AS claim_token,
          m.uuid::text AS uuid

-- resolve --
-- Write back a batch of outcomes. A row is written while the claim token still holds
-- it, or by a `sent` outcome when it is not sent yet (the send happened regardless).
UPDATE messages m
SET status = v.status,
    sent_at = v.sent_at,
    message_id = v.message_id,
    last_error = COALESCE(v.last_error, m.last_error),
    next_attempt_at = now() + make_interval(secs => v.retry_in_s),
    lease_expires_at = NULL,
    claim_token = NULL,
    attempts = CASE WHEN v.uncount THEN m.attempts - 1 ELSE m.attempts END,
    updated_at = now()
-- The outcomes come as one JSON array: encoding it costs the client a fortieth of
-- encoding eight arrays, which showed in the profile of a drain.
FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS v(
    id bigint, claim_token uuid, status text, sent_at timestamptz, message_id text, last_error text,
    retry_in_s float8, uncount bool
)
WHERE m.id = v.id
  AND ((m.status = 'sending' AND m.claim_token = v.claim_token)
       OR (v.status = 'sent' AND m.status <> 'sent'))

-- retry --
-- A failed message back to pending, its attempts reset.
UPDATE messages
SET status = 'pending', attempts = 0, next_attempt_at = NULL, updated_at = now()
WHERE id = %(id)s AND status = 'failed'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid

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
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_sent_after --
-- A later page of sent messages: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (%(key)s, %(id)s)
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created --
-- The first page of messages in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid
FROM messages
WHERE status = %(status)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created_after --
-- A later page: those after the cursor's (created_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token, uuid
FROM messages
WHERE status = %(status)s AND (created_at, id) < (%(key)s, %(id)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- counts --
-- How many messages are in each status: kept by triggers (migration 0002), so this
-- reads a few rows whatever the size of the table.
SELECT status, n
FROM insider_message_counts
