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
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error

-- get --
-- One message in any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error
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
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error

-- resolve --
-- Write back a batch of outcomes, given as one JSON array. A row is written while the
-- claim token still holds it, or by a `sent` outcome when the provider has not accepted
-- it yet (the send happened regardless; a delivered or undelivered message stays so).
-- The adapter writes the attempts to the history in the same transaction.
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
       OR (v.status = 'sent' AND m.status NOT IN ('sent', 'delivered', 'undelivered')))
RETURNING id, message_id, status

-- retry --
-- A failed message back to pending, its attempts reset.
UPDATE messages
SET status = 'pending', attempts = 0, next_attempt_at = NULL, updated_at = :now
WHERE id = :id AND status = 'failed'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error

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
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_sent_after --
-- A later page of sent messages: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (:key, :id)
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_by_created --
-- The first page of messages in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error
FROM messages
WHERE status = :status
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- list_by_created_after --
-- A later page: those after the cursor's (created_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          delivered_at, delivery_status, delivery_error
FROM messages
WHERE status = :status AND (created_at, id) < (:key, :id)
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- counts --
-- How many messages are in each status.
SELECT status, count(*) AS n
FROM messages
GROUP BY status

-- list_accepted --
-- The first page of what the provider accepted (sent, delivered, undelivered), newest sent first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       delivered_at, delivery_status, delivery_error
FROM messages
WHERE status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_accepted_after --
-- A later page of what the provider accepted: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       delivered_at, delivery_status, delivery_error
FROM messages
WHERE status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL AND (sent_at, id) < (:key, :id)
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- attempt_event --
-- One attempt in the message's history (written with its outcome, in one transaction).
INSERT INTO insider_message_events
    (message_id, at, kind, outcome, attempt, status_code, duration_ms, error, provider_message_id)
VALUES (:id, :at, 'attempt', :outcome, :attempt, :status_code, :duration_ms, :error, :message_id)

-- has_waiting --
-- Whether a receipt waits for the provider id :provider_message_id.
SELECT 1 FROM insider_pending_receipts WHERE provider_message_id = :provider_message_id LIMIT 1

-- receipt_by_hint --
-- The message the cache names, if it really has the provider's id.
SELECT id FROM messages WHERE id = :hint AND message_id = :provider_message_id

-- receipt_by_provider_id --
-- The message with the provider's id (indexed).
SELECT id FROM messages WHERE message_id = :provider_message_id ORDER BY id LIMIT 1

-- receipt_event --
-- A receipt in the message's history; nothing when the same receipt is there already.
INSERT INTO insider_message_events
    (message_id, at, kind, outcome, error_code, provider_message_id, receipt_status, done_at, dedupe_key)
VALUES (:id, :received_at, 'receipt', :delivery_status, :error_code, :provider_message_id, :receipt_status,
        :done_at, :dedupe_key)
ON CONFLICT DO NOTHING

-- receipt_move --
-- A sent message to delivered or undelivered; a final status never moves back.
UPDATE messages
SET status = :final_status,
    delivered_at = :delivered_at,
    delivery_status = :delivery_status,
    delivery_error = :error_code,
    updated_at = :now
WHERE id = :id AND status = 'sent'
RETURNING status, sent_at, delivered_at

-- receipt_wait --
-- A receipt for a provider id no message has yet.
INSERT INTO insider_pending_receipts
    (provider_message_id, dedupe_key, receipt_status, delivery_status, final_status, error_code, done_at, received_at)
VALUES (:provider_message_id, :dedupe_key, :receipt_status, :delivery_status, :final_status, :error_code, :done_at,
        :received_at)
ON CONFLICT DO NOTHING

-- take_waiting --
-- Waiting receipts whose provider id a message now has (those of the JSON array :ids, or
-- all when it is null), taken out of the waiting table to be applied in the same transaction.
DELETE FROM insider_pending_receipts
WHERE rowid IN (
    SELECT p.rowid
    FROM insider_pending_receipts p
    WHERE EXISTS (SELECT 1 FROM messages m WHERE m.message_id = p.provider_message_id)
      AND (:ids IS NULL OR p.provider_message_id IN (SELECT value FROM json_each(:ids)))
    ORDER BY p.received_at
    LIMIT :limit
)
RETURNING provider_message_id, receipt_status, error_code, done_at, received_at

-- drop_waiting --
-- Waiting receipts received before :before: no message got their id in time.
DELETE FROM insider_pending_receipts
WHERE rowid IN (SELECT rowid FROM insider_pending_receipts WHERE received_at < :before LIMIT :limit)
RETURNING provider_message_id, receipt_status, received_at

-- events --
-- A message's history, oldest first, up to a limit (a message's receipts are not bounded).
SELECT id, message_id, at, kind, outcome, attempt, status_code, duration_ms, error, provider_message_id,
       receipt_status, error_code, done_at
FROM insider_message_events
WHERE message_id = :id
ORDER BY at, id
LIMIT :limit

-- prune_events --
-- Up to :limit events older than :before.
DELETE FROM insider_message_events
WHERE id IN (SELECT id FROM insider_message_events WHERE at < :before LIMIT :limit)
