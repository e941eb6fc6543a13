-- Named queries of SqliteMessageRepository; each starts at a `-- name --` line.
-- Every query returning messages returns the same columns, in the same order.
-- Times come in as parameters (the adapter's clock), in the fixed-width text form of
-- the schema, so text comparison is time order.

-- ping --
-- The database answers.
SELECT 1

-- enqueue --
-- Store one pending message.
INSERT INTO messages (recipient_phone, content, created_at, updated_at, idempotency_key)
VALUES (:recipient_phone, :content, :now, :now, :idempotency_key)
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token

-- get --
-- One message in any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token
FROM messages
WHERE id = :id

-- claim --
-- Lease up to :limit due messages, oldest first, in one statement. A write statement
-- holds SQLite's write lock from its start, so concurrent claimers take turns and
-- never take the same row. `status IN (...)` lets the partial queue index serve.
UPDATE messages
SET status = 'sending',
    attempts = attempts + 1,
    lease_expires_at = :lease_expires_at,
    claim_token = insider_uuid4(),
    updated_at = :now
WHERE id IN (
    SELECT id
    FROM messages
    WHERE status IN ('pending', 'sending')
      AND ((status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= :now))
           OR (status = 'sending' AND lease_expires_at <= :now))
    ORDER BY created_at, id
    LIMIT :limit
)
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token

-- resolve --
-- Write back a batch of outcomes, given as one JSON array. A row is written while the
-- claim token still holds it, or by a `sent` outcome when it is not sent yet (the send
-- happened regardless).
WITH v AS (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.claim_token') AS claim_token,
           json_extract(value, '$.status') AS status,
           json_extract(value, '$.sent_at') AS sent_at,
           json_extract(value, '$.message_id') AS message_id,
           json_extract(value, '$.last_error') AS last_error,
           json_extract(value, '$.next_attempt_at') AS next_attempt_at,
           json_extract(value, '$.uncount') AS uncount
    FROM json_each(:resolutions)
)
UPDATE messages AS m
SET status = v.status,
    sent_at = v.sent_at,
    message_id = v.message_id,
    last_error = COALESCE(v.last_error, m.last_error),
    next_attempt_at = v.next_attempt_at,
    lease_expires_at = NULL,
    claim_token = NULL,
    attempts = CASE WHEN v.uncount THEN m.attempts - 1 ELSE m.attempts END,
    updated_at = :now
FROM v
WHERE m.id = v.id
  AND ((m.status = 'sending' AND m.claim_token = v.claim_token)
       OR (v.status = 'sent' AND m.status <> 'sent'))

-- retry --
-- A failed message back to pending, its attempts reset.
UPDATE messages
SET status = 'pending', attempts = 0, next_attempt_at = NULL, updated_at = :now
WHERE id = :id AND status = 'failed'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token

-- slot_get --
-- When the last batch of the slot :name went (inside the slot's write transaction).
SELECT last_at FROM insider_slots WHERE name = :name

-- slot_set --
-- Take the slot :name: its batch counts as sent at :last_at.
INSERT INTO insider_slots (name, last_at) VALUES (:name, :last_at)
ON CONFLICT (name) DO UPDATE SET last_at = excluded.last_at

-- list_sent --
-- The first page of sent messages, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_sent_after --
-- A later page of sent messages: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (:key, :id)
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_by_created --
-- The first page of messages in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token
FROM messages
WHERE status = :status
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- list_by_created_after --
-- A later page: those after the cursor's (created_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token
FROM messages
WHERE status = :status AND (created_at, id) < (:key, :id)
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- counts --
-- How many messages are in each status.
SELECT status, count(*) AS n
FROM messages
GROUP BY status
