-- Named queries of SqliteMessageRepository; each starts at a `-- name --` line.
-- Every query returning messages returns the same columns, in the same order.
-- Times come in as parameters (the adapter's clock), in the fixed-width text form of
-- the schema, so text comparison is time order.

-- ping --
-- The database answers.
SELECT 1

-- enqueue --
-- Store pending messages, given as one JSON array, in its order; due at sendAt, or at once
-- (or when their sending hours allow, with the reason). A number suppressed for its category
-- (insider_suppressed_for) is stored `suppressed` at once, never sent.
INSERT INTO messages (recipient_phone, content, created_at, updated_at, idempotency_key,
                      send_at, priority, valid_until, encoding, segments, category,
                      respect_sending_hours, consent_reply, status, suppression_reason, next_attempt_at, wait_reason)
SELECT phone, content, :now, :now, insider_uuid4(), send_at, priority, valid_until, encoding, segments, category,
       respect_sending_hours, consent_reply,
       CASE WHEN reason IS NULL THEN 'pending' ELSE 'suppressed' END, reason,
       CASE WHEN reason IS NULL THEN next_attempt_at END, CASE WHEN reason IS NULL THEN wait_reason END
FROM (
    SELECT m.*, (SELECT f.reason FROM insider_suppressed_for f
                 WHERE f.phone = m.phone AND f.category = m.category AND NOT m.consent_reply) AS reason
    FROM (
        SELECT key, json_extract(value, '$.recipient_phone') AS phone, json_extract(value, '$.content') AS content,
               json_extract(value, '$.send_at') AS send_at, json_extract(value, '$.priority') AS priority,
               json_extract(value, '$.valid_until') AS valid_until, json_extract(value, '$.encoding') AS encoding,
               json_extract(value, '$.segments') AS segments, json_extract(value, '$.category') AS category,
               json_extract(value, '$.respect_sending_hours') AS respect_sending_hours,
               json_extract(value, '$.consent_reply') AS consent_reply,
               json_extract(value, '$.next_attempt_at') AS next_attempt_at,
               json_extract(value, '$.wait_reason') AS wait_reason
        FROM json_each(:messages)
    ) m
)
ORDER BY key
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- load --
-- Store one pending message without reading it back (bulk loads, with executemany); as
-- enqueue, one whose number is suppressed for its category is stored `suppressed`.
INSERT INTO messages (recipient_phone, content, created_at, updated_at, idempotency_key,
                      send_at, priority, valid_until, encoding, segments, category,
                      respect_sending_hours, consent_reply, status, suppression_reason, next_attempt_at, wait_reason)
SELECT :recipient_phone, :content, :now, :now, insider_uuid4(),
       :send_at, :priority, :valid_until, :encoding, :segments, :category, :respect_sending_hours, :consent_reply,
       CASE WHEN reason IS NULL THEN 'pending' ELSE 'suppressed' END, reason,
       CASE WHEN reason IS NULL THEN :next_attempt_at END, CASE WHEN reason IS NULL THEN :wait_reason END
FROM (SELECT (SELECT f.reason FROM insider_suppressed_for f
              WHERE f.phone = :recipient_phone AND f.category = :category AND NOT :consent_reply) AS reason)

-- get --
-- One message in any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE id = :id

-- get_many --
-- Messages by id (a JSON array), any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE id IN (SELECT value FROM json_each(:ids))

-- claim --
-- Lease up to :limit due messages, in one statement: expired leases (their holder died)
-- first, then the due pending rows of each priority, highest first (__DUE__ is one
-- `due_oldest` or `due_newest` branch per priority, 9 down to 0, each an index range).
-- A write statement holds SQLite's write lock from its start, so concurrent claimers
-- take turns and never take the same row.
-- Consent can be withdrawn after a message was queued: a number suppressed for the
-- message's category (insider_suppressed_for) ends it here, `suppressed`, never sent (the
-- adapter writes that to its history in the same transaction).
UPDATE messages
SET (status, suppression_reason, attempts, lease_expires_at, claim_token, next_attempt_at) = (
        SELECT CASE WHEN reason IS NULL THEN 'sending' ELSE 'suppressed' END, reason,
               CASE WHEN reason IS NULL THEN attempts + 1 ELSE attempts END,
               CASE WHEN reason IS NULL THEN :lease_expires_at END,
               CASE WHEN reason IS NULL THEN insider_uuid4() END,
               CASE WHEN reason IS NULL THEN next_attempt_at END
        FROM (SELECT (SELECT f.reason FROM insider_suppressed_for f
                      WHERE f.phone = messages.recipient_phone AND f.category = messages.category
                        AND NOT messages.consent_reply) AS reason)
    ),
    wait_reason = NULL,
    updated_at = :now
WHERE id IN (
    SELECT id FROM (
        SELECT id FROM (
            SELECT id FROM messages
            WHERE status = 'sending' AND lease_expires_at <= :now
            ORDER BY lease_expires_at
            LIMIT :limit
        )
        UNION ALL
        __DUE__
    )
    LIMIT :limit
)
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- due_oldest --
-- The due pending rows of priority __PRIORITY__, the longest due first, not past their
-- validUntil (due: at the retry time, else sendAt, else creation; messages_due_idx).
SELECT id FROM (
    SELECT id FROM messages
    WHERE status = 'pending' AND priority = __PRIORITY__ AND COALESCE(next_attempt_at, send_at, created_at) <= :now
      AND (valid_until IS NULL OR valid_until > :now)
    ORDER BY COALESCE(next_attempt_at, send_at, created_at), id
    LIMIT :limit
)

-- due_newest --
-- As due_oldest, the most recently due first (INSIDER_SEND_ORDER=newest).
SELECT id FROM (
    SELECT id FROM messages
    WHERE status = 'pending' AND priority = __PRIORITY__ AND COALESCE(next_attempt_at, send_at, created_at) <= :now
      AND (valid_until IS NULL OR valid_until > :now)
    ORDER BY COALESCE(next_attempt_at, send_at, created_at) DESC, id DESC
    LIMIT :limit
)

-- expire --
-- Pending rows past their validUntil become expired (bounded), and come back to be reported.
UPDATE messages
SET status = 'expired',
    last_error = insider_last_error('expired', valid_until, last_error),
    next_attempt_at = NULL,
    updated_at = :now
WHERE id IN (
    SELECT id FROM messages
    WHERE status = 'pending' AND valid_until IS NOT NULL AND valid_until <= :now
    ORDER BY valid_until
    LIMIT 1000
)
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- resolve --
-- Write back a batch of outcomes, given as one JSON array. A row is written while the
-- claim token still holds it, or by a `sent` outcome when the provider has not accepted
-- it yet (the send happened regardless; a delivered or undelivered message stays so) and
-- it is not cancelled (a 200 to a cancel is final). The adapter writes the attempts to
-- the history in the same transaction.
WITH v AS (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.claim_token') AS claim_token,
           json_extract(value, '$.status') AS status,
           json_extract(value, '$.sent_at') AS sent_at,
           json_extract(value, '$.message_id') AS message_id,
           json_extract(value, '$.last_error') AS last_error,
           json_extract(value, '$.next_attempt_at') AS next_attempt_at,
           json_extract(value, '$.uncount') AS uncount,
           json_extract(value, '$.retry_in_s') AS retry_in_s,
           json_extract(value, '$.segments') AS segments,
           json_extract(value, '$.encoding') AS encoding,
           json_extract(value, '$.provider') AS provider,
           json_extract(value, '$.provider_pin') AS provider_pin,
           json_extract(value, '$.cost') AS cost,
           json_extract(value, '$.wait_reason') AS wait_reason,
           json_extract(value, '$.suppression_reason') AS suppression_reason
    FROM json_each(:resolutions)
)
UPDATE messages AS m
SET status = v.status,
    sent_at = v.sent_at,
    message_id = v.message_id,
    -- An expired outcome gives the last failure: the reason is worded as the sweep's.
    last_error = insider_last_error(v.status, m.valid_until, COALESCE(v.last_error, m.last_error)),
    next_attempt_at = v.next_attempt_at,
    segments = COALESCE(m.segments, v.segments),
    encoding = COALESCE(m.encoding, v.encoding),
    provider = COALESCE(v.provider, m.provider),
    cost = COALESCE(v.cost, m.cost),
    provider_pin = v.provider_pin,
    wait_reason = v.wait_reason,
    suppression_reason = COALESCE(v.suppression_reason, m.suppression_reason),
    lease_expires_at = NULL,
    claim_token = NULL,
    attempts = CASE WHEN v.uncount THEN m.attempts - 1 ELSE m.attempts END,
    updated_at = :now
FROM v
WHERE m.id = v.id
  AND ((m.status = 'sending' AND m.claim_token = v.claim_token)
       OR (v.status = 'sent' AND m.status NOT IN ('sent', 'delivered', 'undelivered', 'cancelled')))
RETURNING id, message_id, status, segments

-- retry --
-- A failed message back to pending, its attempts reset.
UPDATE messages
SET status = 'pending', attempts = 0, next_attempt_at = NULL, updated_at = :now
WHERE id = :id AND status = 'failed'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- cancel --
-- A pending message (scheduled or waiting for a retry) taken back; a claimed row is left alone.
UPDATE messages
SET status = 'cancelled', next_attempt_at = NULL, updated_at = :now
WHERE id = :id AND status = 'pending'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- idempotency_drop_stale --
-- A key older than 24 hours is forgotten: the same key may be used again. (The time 24
-- hours before :now keeps its fraction of a second: text order is time order.)
DELETE FROM insider_idempotency_keys
WHERE key = :key AND created_at <= strftime('%Y-%m-%dT%H:%M:%S', :now, '-24 hours') || substr(:now, 20)

-- idempotency_clean --
-- Forget a bounded number of keys older than 24 hours.
DELETE FROM insider_idempotency_keys
WHERE key IN (
    SELECT key FROM insider_idempotency_keys
    WHERE created_at <= strftime('%Y-%m-%dT%H:%M:%S', :now, '-24 hours') || substr(:now, 20)
    ORDER BY created_at
    LIMIT 1000
)

-- idempotency_take --
-- Take the key for this request (inside the write transaction, so nobody else can).
INSERT INTO insider_idempotency_keys (key, request_hash, status_code, message_ids, created_at)
VALUES (:key, :request_hash, :status_code, '[]', :now)
ON CONFLICT (key) DO NOTHING
RETURNING key

-- idempotency_get --
-- What the first request with the key answered.
SELECT request_hash, status_code, message_ids FROM insider_idempotency_keys WHERE key = :key

-- idempotency_store --
-- The messages the first request with the key created.
UPDATE insider_idempotency_keys SET message_ids = :message_ids WHERE key = :key

-- acquire_slot --
-- Take the slot :name when due (inside a write transaction, :now read once the lock was
-- held): due one interval (:interval_us, the caller's current one) after the last batch; a
-- new slot at once. A row back: taken. On time (up to :tolerance_us late) the batch counts
-- as sent when due, keeping the grid (no drift); later, as sent now, so two batches are
-- never less than one interval apart. Times are reckoned in whole microseconds, as the
-- schema's fixed-width text holds them: seconds since the epoch, then the fraction.
WITH slot AS (
    SELECT strftime('%s', substr(last_at, 1, 19)) * 1000000 + substr(last_at, 21, 6) + :interval_us AS due_us,
           strftime('%s', substr(:now, 1, 19)) * 1000000 + substr(:now, 21, 6) AS now_us
    FROM insider_slots
    WHERE name = :name
)
INSERT INTO insider_slots (name, last_at) VALUES (:name, :now)
ON CONFLICT (name) DO UPDATE
SET last_at = (
    SELECT CASE WHEN now_us - due_us <= :tolerance_us
                THEN strftime('%Y-%m-%dT%H:%M:%S', due_us / 1000000, 'unixepoch') || printf('.%06dZ', due_us % 1000000)
                ELSE excluded.last_at END
    FROM slot
)
WHERE (SELECT due_us <= now_us FROM slot)
RETURNING last_at

-- slot_wait --
-- The seconds until the slot :name is due, when acquire_slot did not take it (same transaction).
WITH slot AS (
    SELECT strftime('%s', substr(last_at, 1, 19)) * 1000000 + substr(last_at, 21, 6) + :interval_us AS due_us,
           strftime('%s', substr(:now, 1, 19)) * 1000000 + substr(:now, 21, 6) AS now_us
    FROM insider_slots
    WHERE name = :name
)
SELECT (due_us - now_us) / 1000000.0 AS wait_s FROM slot

-- cap_lock --
-- A frequency cap's admission runs in one write transaction: SQLite's one writer at a time
-- is the lock of every recipient. The time, read once it is held.
SELECT :now AS now

-- cap_admissions --
-- What counts against the cap of each recipient: its admitted messages since :since that
-- reach or reached it (one put back to pending, or failed, never did), the candidates
-- themselves aside. One range of messages_cap_idx per recipient.
-- (A message claimed again after a retry counts with its earlier admission until it is
-- admitted anew: a count too high for a moment, never too low.)
SELECT recipient_phone, cap_admitted_at
FROM messages
WHERE recipient_phone IN (SELECT value FROM json_each(:phones))
  AND cap_admitted_at > :since
  AND status IN ('sending', 'sent', 'delivered', 'undelivered')
  AND id NOT IN (SELECT value FROM json_each(:ids))
ORDER BY recipient_phone, cap_admitted_at

-- cap_admit --
-- The admitted ones, as of :now (still claimed).
UPDATE messages
SET cap_admitted_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'sending'

-- list_sent --
-- The first page of sent messages, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_sent_after --
-- A later page of sent messages: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (:key, :id)
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_by_created --
-- The first page of messages in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = :status
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- list_by_created_after --
-- A later page: those after the cursor's (created_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = :status AND (created_at, id) < (:key, :id)
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- list_sent_to --
-- The first page of sent messages to one recipient, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = :to AND status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_sent_to_after --
-- A later page of sent messages to one recipient.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = :to AND status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (:key, :id)
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_by_created_to --
-- The first page of messages to one recipient in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = :to AND status = :status
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- list_by_created_to_after --
-- A later page of messages to one recipient in one (not sent) status.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = :to AND status = :status AND (created_at, id) < (:key, :id)
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
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_accepted_after --
-- A later page of what the provider accepted: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL AND (sent_at, id) < (:key, :id)
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_accepted_to --
-- The first page of what the provider accepted for one recipient, newest sent first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = :to AND status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- list_accepted_to_after --
-- A later page of what the provider accepted for one recipient.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = :to AND status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL
  AND (sent_at, id) < (:key, :id)
ORDER BY sent_at DESC, id DESC
LIMIT :limit

-- suppressed_event --
-- A message the claim found suppressed, in its history.
INSERT INTO insider_message_events (message_id, at, kind, outcome, attempt, error)
VALUES (:id, :now, 'attempt', 'suppressed', :attempts, 'suppressed: ' || :reason)

-- attempt_event --
-- One attempt in the message's history (written with its outcome, in one transaction).
INSERT INTO insider_message_events
    (message_id, at, kind, outcome, attempt, status_code, duration_ms, error, provider_message_id, provider)
VALUES (:id, :at, 'attempt', :outcome, :attempt, :status_code, :duration_ms, :error, :message_id, :provider)

-- provider_totals --
-- What one batch adds to a provider's totals (accepted messages, their segments and cost,
-- its failed tries).
INSERT INTO insider_provider_totals AS t (provider, sent, failed, segments, cost)
VALUES (:provider, :sent, :failed, :segments, :cost)
ON CONFLICT (provider) DO UPDATE
SET sent = t.sent + excluded.sent, failed = t.failed + excluded.failed,
    segments = t.segments + excluded.segments, cost = t.cost + excluded.cost

-- receipts_table --
-- The scratch table of one application of receipts (apply_receipts): a temporary table of
-- the connection's own, emptied when the application ends (receipts_done).
CREATE TEMP TABLE IF NOT EXISTS insider_receipts_in (
    src INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    hint INTEGER,
    provider_message_id TEXT NOT NULL,
    provider TEXT,
    receipt_status TEXT NOT NULL,
    delivery_status TEXT,
    final_status TEXT,
    error_code TEXT,
    done_at TEXT,
    received_at TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    message_id INTEGER,
    ambiguous INTEGER NOT NULL,
    nth INTEGER NOT NULL,
    fresh INTEGER NOT NULL,
    applied INTEGER NOT NULL,
    PRIMARY KEY (src, pos)
)

-- receipts_plan --
-- Apply delivery receipts, each message's in the order they arrived: what each receipt
-- does, decided in one statement, before anything is written (receipts_take, _log, _move,
-- _wait write it, receipts_results answers; all in one write transaction, so nothing runs
-- between them).
--
-- The receipts given (:receipts, a JSON array in the order they came; none for a pass over
-- the waiting ones) go after every receipt still waiting for one of the provider ids :ids
-- (a JSON array) whose message now has that id, oldest (lowest `seq`) first, up to :limit
-- of them (-1: all): src 0 and their seq, then src 1 and their index. Each finds its
-- message by the provider's id (the cached id `hint` first, checked against the row, then
-- the index on message_id) and, when the receipt names its provider, that provider: ids
-- are unique only per provider. A receipt that names none matches while the messages with
-- its id are all one provider's (a message recorded with no provider counts as none);
-- when two providers' messages have it, it is `ambiguous` and touches neither (nor
-- waits); with one provider configured (:several false) that is not asked. A found one
-- is new (`fresh`) unless the same receipt is in its history or earlier in this list for
-- the same message (`nth` > 1); the first new final one of a `sent` message moves it to
-- delivered or undelivered (`applied`; a final status never moves back). A given one with no message yet waits. SQLite runs one write transaction
-- at a time, so no other write comes between a waiting receipt and the ones given after
-- it. A row back per receipt planned: none, nothing to do.
INSERT INTO temp.insider_receipts_in
    (src, pos, hint, provider_message_id, provider, receipt_status, delivery_status, final_status, error_code,
     done_at, received_at, dedupe_key, message_id, ambiguous, nth, fresh, applied)
WITH given AS (
    SELECT CAST(key AS INTEGER) AS idx,
           json_extract(value, '$.hint') AS hint,
           json_extract(value, '$.provider_message_id') AS provider_message_id,
           json_extract(value, '$.provider') AS provider,
           json_extract(value, '$.receipt_status') AS receipt_status,
           json_extract(value, '$.delivery_status') AS delivery_status,
           json_extract(value, '$.final_status') AS final_status,
           json_extract(value, '$.error_code') AS error_code,
           json_extract(value, '$.done_at') AS done_at,
           json_extract(value, '$.received_at') AS received_at,
           json_extract(value, '$.dedupe_key') AS dedupe_key
    FROM json_each(:receipts)
), taken AS (
    SELECT p.seq, p.provider_message_id, p.provider, p.receipt_status, p.delivery_status, p.final_status,
           p.error_code, p.done_at, p.received_at, p.dedupe_key
    FROM insider_pending_receipts p
    WHERE p.provider_message_id IN (SELECT value FROM json_each(:ids))
      AND EXISTS (
          SELECT 1 FROM messages m
          WHERE m.message_id = p.provider_message_id AND (p.provider IS NULL OR m.provider = p.provider)
      )
    ORDER BY p.seq
    LIMIT :limit
), r AS (
    SELECT 0 AS src, seq AS pos, NULL AS hint, provider_message_id, provider, receipt_status, delivery_status,
           final_status, error_code, done_at, received_at, dedupe_key
    FROM taken
    UNION ALL
    SELECT 1, idx, hint, provider_message_id, provider, receipt_status, delivery_status, final_status, error_code,
           done_at, received_at, dedupe_key
    FROM given
), matched AS (
    SELECT r.*,
           CASE WHEN r.provider IS NULL AND :several
                THEN (SELECT count(DISTINCT m.provider) FROM messages m WHERE m.message_id = r.provider_message_id) > 1
                ELSE 0 END AS ambiguous,
           COALESCE(
               (SELECT m.id FROM messages m
                WHERE m.id = r.hint AND m.message_id = r.provider_message_id
                  AND (r.provider IS NULL OR m.provider = r.provider)),
               (SELECT m.id FROM messages m
                WHERE m.message_id = r.provider_message_id AND (r.provider IS NULL OR m.provider = r.provider)
                ORDER BY m.id LIMIT 1)
           ) AS candidate
    FROM r
), found AS (
    SELECT x.*,
           row_number() OVER (
               PARTITION BY x.message_id, x.ambiguous,
                            CASE WHEN x.message_id IS NULL THEN x.provider_message_id END,
                            CASE WHEN x.message_id IS NULL THEN x.provider END,
                            x.dedupe_key
               ORDER BY x.src, x.pos
           ) AS nth
    FROM (SELECT matched.*, CASE WHEN matched.ambiguous THEN NULL ELSE matched.candidate END AS message_id
          FROM matched) x
), judged AS (
    SELECT found.*,
           found.message_id IS NOT NULL AND found.nth = 1 AND NOT EXISTS (
               SELECT 1 FROM insider_message_events e
               WHERE e.message_id = found.message_id AND e.dedupe_key = found.dedupe_key
           ) AS fresh
    FROM found
), ranked AS (
    SELECT judged.*,
           row_number() OVER (
               PARTITION BY judged.message_id, judged.fresh AND judged.final_status IS NOT NULL
               ORDER BY judged.src, judged.pos
           ) AS final_rank
    FROM judged
)
SELECT src, pos, hint, provider_message_id, provider, receipt_status, delivery_status, final_status, error_code,
       done_at, received_at, dedupe_key, message_id, ambiguous, nth, fresh,
       fresh AND final_status IS NOT NULL AND final_rank = 1
       AND EXISTS (SELECT 1 FROM messages m WHERE m.id = ranked.message_id AND m.status = 'sent') AS applied
FROM ranked
RETURNING src

-- receipts_take --
-- The waiting receipts planned, out of the waiting table.
DELETE FROM insider_pending_receipts
WHERE seq IN (SELECT pos FROM temp.insider_receipts_in WHERE src = 0)

-- receipts_log --
-- The new receipts in their messages' history, in order.
INSERT INTO insider_message_events
    (message_id, at, kind, outcome, error_code, provider_message_id, receipt_status, done_at, dedupe_key)
SELECT message_id, received_at, 'receipt', delivery_status, error_code, provider_message_id, receipt_status, done_at,
       dedupe_key
FROM temp.insider_receipts_in
WHERE fresh
ORDER BY src, pos

-- receipts_move --
-- A sent message to delivered or undelivered by its first new final receipt.
UPDATE messages AS m
SET status = t.final_status,
    delivered_at = COALESCE(t.done_at, t.received_at),
    delivery_status = t.delivery_status,
    delivery_error = t.error_code,
    updated_at = :now
FROM temp.insider_receipts_in AS t
WHERE t.applied AND m.id = t.message_id AND m.status = 'sent'

-- receipts_wait --
-- Receipts for a provider id no message has yet (of their provider, when they name one):
-- they wait, numbered in the order they came.
INSERT INTO insider_pending_receipts
    (provider_message_id, provider, dedupe_key, receipt_status, delivery_status, final_status, error_code, done_at,
     received_at)
SELECT provider_message_id, provider, dedupe_key, receipt_status, delivery_status, final_status, error_code, done_at,
       received_at
FROM temp.insider_receipts_in
WHERE message_id IS NULL AND NOT ambiguous AND nth = 1
ORDER BY src, pos
ON CONFLICT DO NOTHING

-- receipts_results --
-- What each receipt did: the waiting ones taken (src 0), then those given (src 1), in order.
SELECT t.src, t.message_id,
       CASE WHEN t.ambiguous THEN 'ambiguous'
            WHEN t.message_id IS NULL THEN 'waiting'
            WHEN t.applied THEN 'applied'
            WHEN NOT t.fresh THEN 'duplicate'
            ELSE 'recorded' END AS result,
       m.status, m.sent_at, m.delivered_at
FROM temp.insider_receipts_in t
LEFT JOIN messages m ON t.applied AND m.id = t.message_id
ORDER BY t.src, t.pos

-- receipts_done --
-- The scratch table emptied for the next application.
DELETE FROM temp.insider_receipts_in

-- waiting_ids --
-- Provider ids of waiting receipts that a message now has (that receipt's provider's, when
-- it names one), those waiting longest first: what the periodic pass applies (with
-- receipts_plan, which takes them in order).
SELECT p.provider_message_id
FROM insider_pending_receipts p
WHERE EXISTS (
    SELECT 1 FROM messages m
    WHERE m.message_id = p.provider_message_id AND (p.provider IS NULL OR m.provider = p.provider)
)
GROUP BY p.provider_message_id
ORDER BY min(p.seq)
LIMIT :limit

-- drop_waiting --
-- Waiting receipts received before :before: no message got their id in time.
DELETE FROM insider_pending_receipts
WHERE rowid IN (SELECT rowid FROM insider_pending_receipts WHERE received_at < :before LIMIT :limit)
RETURNING provider_message_id, provider, receipt_status, received_at

-- events --
-- A message's history, oldest first, up to a limit (a message's receipts are not bounded).
SELECT id, message_id, at, kind, outcome, attempt, status_code, duration_ms, error, provider_message_id,
       receipt_status, error_code, done_at, provider
FROM insider_message_events
WHERE message_id = :id
ORDER BY at, id
LIMIT :limit

-- prune_events --
-- Up to :limit events older than :before.
DELETE FROM insider_message_events
WHERE id IN (SELECT id FROM insider_message_events WHERE at < :before LIMIT :limit)

-- segments_sent --
-- The segments of every message the provider accepted (one if not stored).
SELECT coalesce(sum(coalesce(segments, 1)), 0) AS segments FROM messages
WHERE status IN ('sent', 'delivered', 'undelivered')

-- file_load_drop --
-- The staging table of a file load (a temporary table: its connection's alone, gone with it).
-- __STAGE__ is the load's own name for it: several loads may share the connection.
DROP TABLE IF EXISTS temp.__STAGE__

-- file_load_stage --
-- A file's checked messages wait here, in file order (rowid), until the load publishes them.
-- Writing it takes no lock on the database file: other processes write on meanwhile.
CREATE TEMPORARY TABLE __STAGE__ (
    recipient_phone TEXT NOT NULL,
    content TEXT NOT NULL,
    send_at TEXT,
    priority INTEGER NOT NULL,
    valid_until TEXT,
    encoding TEXT NOT NULL,
    segments INTEGER NOT NULL,
    category TEXT NOT NULL DEFAULT 'transactional',
    respect_sending_hours INTEGER NOT NULL DEFAULT 1,
    consent_reply INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    wait_reason TEXT
)

-- file_load_add --
-- One staged message (with executemany).
INSERT INTO temp.__STAGE__ (recipient_phone, content, send_at, priority, valid_until, encoding, segments, category,
                           respect_sending_hours, consent_reply, next_attempt_at, wait_reason)
VALUES (:recipient_phone, :content, :send_at, :priority, :valid_until, :encoding, :segments, :category,
        :respect_sending_hours, :consent_reply, :next_attempt_at, :wait_reason)

-- file_load_record --
-- Remember a file being stored; no row back when a file with its digest was stored before.
INSERT INTO insider_file_loads (digest, name, lines, stored, rejected, loaded_at)
VALUES (:digest, :name, :lines, :stored, :rejected, :now)
ON CONFLICT (digest) DO NOTHING
RETURNING digest, name, lines, stored, rejected, loaded_at, loads

-- file_load_again --
-- Remember a file being stored, counting it once more if it was stored before (--again).
INSERT INTO insider_file_loads AS f (digest, name, lines, stored, rejected, loaded_at)
VALUES (:digest, :name, :lines, :stored, :rejected, :now)
ON CONFLICT (digest) DO UPDATE
SET name = excluded.name, lines = excluded.lines, stored = excluded.stored, rejected = excluded.rejected,
    loaded_at = excluded.loaded_at, loads = f.loads + 1
RETURNING digest, name, lines, stored, rejected, loaded_at, loads

-- file_load_get --
-- The file stored with a digest.
SELECT digest, name, lines, stored, rejected, loaded_at, loads
FROM insider_file_loads
WHERE digest = :digest

-- file_load_publish --
-- The staged messages into the queue, in file order (their ids follow the lines).
INSERT INTO messages (recipient_phone, content, created_at, updated_at, idempotency_key,
                      send_at, priority, valid_until, encoding, segments, category,
                      respect_sending_hours, consent_reply, status, suppression_reason, next_attempt_at, wait_reason)
SELECT recipient_phone, content, :now, :now, insider_uuid4(), send_at, priority, valid_until, encoding, segments,
       category, respect_sending_hours, consent_reply,
       CASE WHEN reason IS NULL THEN 'pending' ELSE 'suppressed' END, reason,
       CASE WHEN reason IS NULL THEN next_attempt_at END, CASE WHEN reason IS NULL THEN wait_reason END
FROM (
    SELECT s.rowid AS n, s.*, (SELECT f.reason FROM insider_suppressed_for f
                               WHERE f.phone = s.recipient_phone AND f.category = s.category
                                 AND NOT s.consent_reply) AS reason
    FROM temp.__STAGE__ s
)
ORDER BY n

-- take_send --
-- One send of provider :name, at most one per :interval_us microseconds (the generic cell
-- rate algorithm: the row holds the provider's next free time); taken only when that is at
-- most :max_wait_us away: the seconds to wait, or no row (nothing taken).
INSERT INTO insider_provider_rates (name, tat_us) VALUES (:name, :now_us + :interval_us)
ON CONFLICT (name) DO UPDATE
SET tat_us = max(tat_us, :now_us) + :interval_us
WHERE tat_us <= :now_us + :max_wait_us
RETURNING max(0, tat_us - :interval_us - :now_us) / 1000000.0 AS wait_s

-- next_turn_in --
-- The seconds until provider :name's next free turn (no row: it has never sent).
SELECT max(0, tat_us - :now_us) / 1000000.0 AS wait_s FROM insider_provider_rates WHERE name = :name

-- switch_provider --
-- Take a provider out of rotation, or put it back.
INSERT INTO insider_providers (name, enabled, changed_at) VALUES (:name, :enabled, :now)
ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, changed_at = excluded.changed_at
RETURNING name, enabled

-- provider_states --
-- Each provider's operator switch and the pause it asked of the deployment (the seconds left,
-- NULL when none was asked).
SELECT name, enabled,
       CASE WHEN throttled_until_us IS NULL THEN NULL
            ELSE max(0, throttled_until_us - :now_us) / 1000000.0 END AS throttled_s
FROM insider_providers

-- throttle_provider --
-- Provider :name asked for a pause of :seconds seconds (until :until_us): every process keeps it.
INSERT INTO insider_providers (name, enabled, changed_at, throttled_until_us) VALUES (:name, 1, :now, :until_us)
ON CONFLICT (name) DO UPDATE SET throttled_until_us = max(coalesce(throttled_until_us, 0), excluded.throttled_until_us)

-- provider_member_seen --
-- Process :member is alive (it says so every few seconds).
INSERT INTO insider_provider_members (member, joined_at_us, seen_at_us) VALUES (:member, :now_us, :now_us)
ON CONFLICT (member) DO UPDATE SET seen_at_us = excluded.seen_at_us

-- provider_members --
-- The processes seen in the last :ttl_us microseconds, in a fixed order (each one's rank), and
-- how long ago each joined.
SELECT member, (:now_us - joined_at_us) / 1000000.0 AS age_s FROM insider_provider_members WHERE seen_at_us > :now_us - :ttl_us ORDER BY member

-- provider_member_gone --
-- Process :member stops (and processes unseen for a day are forgotten).
DELETE FROM insider_provider_members WHERE member = :member OR seen_at_us < :now_us - 86400000000

-- provider_totals_read --
-- What each provider accepted (messages, segments, cost) and how many of its tries failed.
SELECT provider, sent, failed, segments, cost FROM insider_provider_totals ORDER BY provider

-- category_counts --
-- How many messages of each category are in each status.
SELECT category, status, count(*) AS n
FROM messages
GROUP BY category, status

-- waiting_counts --
-- Pending messages held back, per reason (sending-hours, cap): through messages_waiting_idx.
SELECT wait_reason, count(*) AS n
FROM messages
WHERE status = 'pending' AND wait_reason IS NOT NULL
GROUP BY wait_reason

-- suppression_add --
-- Put numbers on the suppression list (a JSON array of entries), those not on it yet; the
-- ones added come back. An entry's created_at, when given, is kept (an import of an export).
-- (WHERE true: SQLite reads ON CONFLICT after a bare FROM as part of a join.)
INSERT INTO insider_suppressions (phone, scope, reason, source, created_at)
SELECT json_extract(value, '$.phone'), json_extract(value, '$.scope'), json_extract(value, '$.reason'),
       json_extract(value, '$.source'), COALESCE(json_extract(value, '$.created_at'), :now)
FROM json_each(:entries)
WHERE true
ON CONFLICT (phone) DO NOTHING
RETURNING phone, scope, reason, source, created_at

-- suppression_update --
-- Change the entries of numbers already on the list (a JSON array): scope, reason and source;
-- each keeps the time it was first put on the list. The ones changed come back.
UPDATE insider_suppressions
SET scope = v.scope, reason = v.reason, source = v.source
FROM (
    SELECT json_extract(value, '$.phone') AS phone, json_extract(value, '$.scope') AS scope,
           json_extract(value, '$.reason') AS reason, json_extract(value, '$.source') AS source
    FROM json_each(:entries)
) AS v
WHERE insider_suppressions.phone = v.phone
RETURNING phone, scope, reason, source, created_at

-- suppression_delete --
-- Take a number off the list (messages it already ended stay suppressed).
DELETE FROM insider_suppressions WHERE phone = :phone RETURNING phone

-- suppression_get --
-- A number's entry on the list.
SELECT phone, scope, reason, source, created_at FROM insider_suppressions WHERE phone = :phone

-- suppression_count --
-- How many numbers are on the list.
SELECT count(*) AS n FROM insider_suppressions

-- suppressions_page --
-- The list, most recently added first (insider_suppressions_created_idx): one page and one row more.
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
ORDER BY created_at DESC, phone DESC
LIMIT :limit

-- suppressions_page_after --
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
WHERE (created_at, phone) < (:key, :phone)
ORDER BY created_at DESC, phone DESC
LIMIT :limit

-- suppressions_page_to --
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
WHERE phone = :to
ORDER BY created_at DESC, phone DESC
LIMIT :limit

-- suppressions_page_to_after --
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
WHERE phone = :to AND (created_at, phone) < (:key, :phone)
ORDER BY created_at DESC, phone DESC

-- inbound_record --
-- Store a reply; one whose provider and provider id were stored before is not stored again.
INSERT INTO insider_inbound (from_phone, to_phone, text, provider, provider_message_id, action, received_at)
VALUES (:from_phone, :to_phone, :text, :provider, :provider_message_id, :action, :now)
ON CONFLICT ((coalesce(provider, '')), provider_message_id) WHERE provider_message_id IS NOT NULL DO NOTHING
RETURNING id, from_phone, to_phone, text, provider, provider_message_id, action, received_at

-- inbound_stored --
-- The reply stored before with this provider and provider id.
SELECT id, from_phone, to_phone, text, provider, provider_message_id, action, received_at
FROM insider_inbound
WHERE coalesce(provider, '') = coalesce(:provider, '') AND provider_message_id = :provider_message_id

-- inbound_list --
-- A page of replies, newest first, after the cursor's id (or from the newest).
SELECT id, from_phone, to_phone, text, provider, provider_message_id, action, received_at
FROM insider_inbound
WHERE id < :before
ORDER BY id DESC
LIMIT :limit

-- inbound_list_from --
-- A page of one sender's replies, newest first.
SELECT id, from_phone, to_phone, text, provider, provider_message_id, action, received_at
FROM insider_inbound
WHERE from_phone = :from_phone AND id < :before
ORDER BY id DESC
LIMIT :limit
