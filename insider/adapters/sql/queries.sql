-- Named queries of PostgresMessageRepository; each starts at a `-- name --` line.
-- Every query returning messages returns the same columns, in the same order.

-- ping --
-- The database answers.
SELECT 1

-- enqueue --
-- Store pending messages, given as one JSON array, in its order; due at sendAt, or at once
-- (or when their sending hours allow, with the reason). A number suppressed for its category
-- is marked `suppressed` as it is inserted (migration 0014's trigger).
INSERT INTO messages (recipient_phone, content, send_at, priority, valid_until, encoding, segments, category,
                      respect_sending_hours, consent_reply, next_attempt_at, wait_reason)
SELECT v.recipient_phone, v.content, v.send_at, v.priority, v.valid_until, v.encoding, v.segments, v.category,
       v.respect_sending_hours, v.consent_reply, v.next_attempt_at, v.wait_reason
FROM ROWS FROM (jsonb_to_recordset(%(messages)s::jsonb) AS (
    recipient_phone text, content text, send_at timestamptz, priority smallint, valid_until timestamptz,
    encoding text, segments integer, category text, respect_sending_hours boolean, consent_reply boolean,
    next_attempt_at timestamptz, wait_reason text
)) WITH ORDINALITY AS v(recipient_phone, content, send_at, priority, valid_until, encoding, segments, category,
                        respect_sending_hours, consent_reply, next_attempt_at, wait_reason, ord)
ORDER BY v.ord
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- get_many --
-- Messages by id (a JSON array), any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb)::bigint)

-- get --
-- One message in any state.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE id = %(id)s

-- get_by_uuid --
-- One message in any state, by the UUID the original Go service gave it.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE uuid = %(uuid)s

-- claim --
-- Lease up to %(limit)s due messages in one statement: expired leases (their holder died)
-- first, then the due pending rows of each priority, highest first (__DUE__ is one
-- `due_oldest` or `due_newest` branch per priority, 9 down to 0; the Append stops at the
-- limit, so lower priorities are not even read when higher ones fill the batch). Pending
-- rows past their validUntil become `expired` in the same statement (__EXPIRE__ is the
-- `expire` sweep) and come back too, with status `expired`, so the sender can report
-- them. The locking select is materialized so that it runs exactly once; SKIP LOCKED lets
-- concurrent claimers take disjoint rows.
WITH expired AS (
    __EXPIRE__
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
), checked AS (
    -- Consent can be withdrawn after a message was queued: a number suppressed for the
    -- message's category (insider_suppressed_for) ends it here, never sent.
    SELECT due.id, f.reason
    FROM due
    JOIN messages x ON x.id = due.id
    LEFT JOIN insider_suppressed_for f ON f.phone = x.recipient_phone AND f.category = x.category AND NOT x.consent_reply
), suppressed AS (
    -- Each suppressed one's history says so, in the same statement.
    INSERT INTO insider_message_events (message_id, at, kind, outcome, attempt, error)
    SELECT c.id, now(), 'attempt', 'suppressed', x.attempts, 'suppressed: ' || c.reason
    FROM checked c JOIN messages x ON x.id = c.id
    WHERE c.reason IS NOT NULL
), claimed AS (
    UPDATE messages m
    SET status = CASE WHEN c.reason IS NULL THEN 'sending' ELSE 'suppressed' END,
        suppression_reason = c.reason,
        wait_reason = NULL,
        attempts = CASE WHEN c.reason IS NULL THEN m.attempts + 1 ELSE m.attempts END,
        lease_expires_at = CASE WHEN c.reason IS NULL THEN now() + make_interval(secs => %(lease_s)s) END,
        claim_token = CASE WHEN c.reason IS NULL THEN gen_random_uuid() END,
        next_attempt_at = CASE WHEN c.reason IS NULL THEN m.next_attempt_at END,
        updated_at = now()
    FROM checked c
    WHERE m.id = c.id
    RETURNING m.id, m.recipient_phone, m.content, m.status, m.created_at, m.sent_at, m.message_id,
              m.last_error, m.attempts, m.next_attempt_at, m.lease_expires_at,
              m.idempotency_key::text AS idempotency_key, m.claim_token::text AS claim_token,
              m.send_at, m.priority, m.valid_until, m.encoding, m.segments, m.uuid::text AS uuid,
              m.delivered_at, m.delivery_status, m.delivery_error, m.provider, m.provider_pin, m.cost, m.category,
              m.suppression_reason, m.wait_reason, m.respect_sending_hours, m.consent_reply, m.cap_admitted_at
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
-- Write back a batch of outcomes, and each attempt to the message's history, in one
-- statement. A row is written while the claim token still holds it, or by a `sent`
-- outcome when the provider has not accepted it yet (the send happened regardless; a
-- delivered or undelivered message stays so) and it is not cancelled (a 200 to a cancel
-- is final). A sent one records the provider that accepted it and its cost; a retry pins
-- the provider that may have it (or clears the pin); the tries of other providers before
-- it (a failover) go to the history too, and every provider's totals are added to, in
-- provider order (so that concurrent statements lock those rows alike). Returns the
-- provider ids just recorded for which a receipt is already waiting (the receipt beat
-- this write); the caller applies them.
WITH v AS (
    -- The outcomes come as one JSON array: encoding it costs the client a fortieth of
    -- encoding eight arrays, which showed in the profile of a drain.
    SELECT *
    FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS v(
        id bigint, claim_token uuid, status text, sent_at timestamptz, message_id text, last_error text,
        retry_in_s float8, uncount bool, segments integer, encoding text,
        at timestamptz, outcome text, attempt integer, status_code integer, duration_ms float8, error text,
        attempt_provider text, earlier jsonb, provider text, provider_pin text, cost float8,
        wait_reason text, suppression_reason text
    )
), written AS (
    UPDATE messages m
    SET status = v.status,
        sent_at = v.sent_at,
        message_id = v.message_id,
        -- An expired outcome gives the last failure: the reason is worded as the sweep's.
        last_error = insider_last_error(v.status, m.valid_until, COALESCE(v.last_error, m.last_error)),
        next_attempt_at = now() + make_interval(secs => v.retry_in_s),
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
        updated_at = now()
    FROM v
    WHERE m.id = v.id
      AND ((m.status = 'sending' AND m.claim_token = v.claim_token)
           OR (v.status = 'sent' AND m.status NOT IN ('sent', 'delivered', 'undelivered', 'cancelled')))
    RETURNING m.id, m.message_id, m.status, m.segments, v.at, v.outcome, v.attempt, v.status_code, v.duration_ms,
              v.error, v.attempt_provider, v.earlier, v.provider, v.cost
), tried AS (
    -- Every try of the batch: those before the last (a failover), then the last.
    SELECT w.id, e.at, e.outcome, e.attempt, e.status_code, e.duration_ms, e.error, NULL::text AS message_id,
           e.provider, 0 AS last
    FROM written w, jsonb_to_recordset(COALESCE(w.earlier, '[]')) AS e(
        at timestamptz, outcome text, attempt integer, status_code integer, duration_ms float8, error text,
        provider text
    )
    UNION ALL
    SELECT id, at, outcome, attempt, status_code, duration_ms, error, message_id, attempt_provider, 1
    FROM written
    WHERE outcome IS NOT NULL
), logged AS (
    INSERT INTO insider_message_events
        (message_id, at, kind, outcome, attempt, status_code, duration_ms, error, provider_message_id, provider)
    SELECT id, at, 'attempt', outcome, attempt, status_code, duration_ms, error, message_id, provider
    FROM tried
    ORDER BY id, last, at
), totals AS (
    INSERT INTO insider_provider_totals AS t (provider, sent, failed, segments, cost)
    SELECT provider, sum(sent), sum(failed), sum(segments), sum(cost)
    FROM (
        SELECT provider, 1 AS sent, 0 AS failed, COALESCE(segments, 1) AS segments, COALESCE(cost, 0) AS cost
        FROM written
        WHERE provider IS NOT NULL AND status = 'sent'
        UNION ALL
        SELECT provider, 0, 1, 0, 0
        FROM tried
        WHERE provider IS NOT NULL AND outcome IN ('retry', 'failed', 'expired', 'failover')
    ) x
    GROUP BY provider
    ORDER BY provider
    ON CONFLICT (provider) DO UPDATE
    SET sent = t.sent + EXCLUDED.sent, failed = t.failed + EXCLUDED.failed,
        segments = t.segments + EXCLUDED.segments, cost = t.cost + EXCLUDED.cost
)
SELECT DISTINCT w.message_id
FROM written w
JOIN insider_pending_receipts p ON p.provider_message_id = w.message_id
WHERE w.status = 'sent'

-- retry --
-- A failed message back to pending, its attempts reset.
UPDATE messages
SET status = 'pending', attempts = 0, next_attempt_at = NULL, updated_at = now()
WHERE id = %(id)s AND status = 'failed'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- cancel --
-- A pending message (scheduled or waiting for a retry) taken back. A claimed row is
-- `sending` and is left alone: it cannot be cancelled any more.
UPDATE messages
SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()
WHERE id = %(id)s AND status = 'pending'
RETURNING id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
          attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
          send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at

-- expire --
-- Pending rows past their validUntil become expired (bounded), and come back to be reported;
-- the claim runs this too, in its own statement. The UUIDs come back as text, as the claim's.
UPDATE messages m
SET status = 'expired',
    last_error = insider_last_error('expired', m.valid_until, m.last_error),
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
          m.send_at, m.priority, m.valid_until, m.encoding, m.segments, m.uuid::text AS uuid,
          m.delivered_at, m.delivery_status, m.delivery_error, m.provider, m.provider_pin, m.cost, m.category,
              m.suppression_reason, m.wait_reason, m.respect_sending_hours, m.consent_reply, m.cap_admitted_at

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
-- What the first request with the key answered (the ids as a JSON array's text).
SELECT request_hash, status_code, message_ids::text AS message_ids
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
    -- apart. (SQLite's acquire_slot is the same rule in its dialect.)
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

-- cap_lock --
-- A frequency cap's admission, in one transaction: first the advisory lock of each
-- recipient (a hash of the number), taken in the keys' order so that two processes never
-- wait on each other crosswise, then the time, read once they are held (now() would be
-- when the transaction began, before the wait).
SELECT clock_timestamp() AS now
FROM (SELECT count(pg_advisory_xact_lock(k)) AS locked
      FROM (SELECT DISTINCT hashtextextended(p, 0) AS k
            FROM jsonb_array_elements_text(%(phones)s::jsonb) AS p
            ORDER BY k) AS keys) AS held

-- cap_admissions --
-- What counts against the cap of each recipient: its admitted messages since %(since)s
-- that reach or reached it (one put back to pending, or failed, never did), the
-- candidates themselves aside. One range of messages_cap_idx per recipient.
-- (A message claimed again after a retry counts with its earlier admission until it is
-- admitted anew: a count too high for a moment, never too low.)
SELECT recipient_phone, cap_admitted_at
FROM messages
WHERE recipient_phone = ANY (ARRAY(SELECT jsonb_array_elements_text(%(phones)s::jsonb)))
  AND cap_admitted_at > %(since)s
  AND status IN ('sending', 'sent', 'delivered', 'undelivered')
  AND id NOT IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb)::bigint)
ORDER BY recipient_phone, cap_admitted_at

-- cap_admit --
-- The admitted ones, as of the time cap_lock read (still claimed).
UPDATE messages
SET cap_admitted_at = %(now)s
WHERE id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb)::bigint) AND status = 'sending'

-- list_sent --
-- The first page of sent messages, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_sent_after --
-- A later page of sent messages: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (%(key)s, %(id)s)
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created --
-- The first page of messages in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = %(status)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created_after --
-- A later page: those after the cursor's (created_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status = %(status)s AND (created_at, id) < (%(key)s, %(id)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- list_sent_to --
-- The first page of sent messages to one recipient, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = %(to)s AND status = 'sent' AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_sent_to_after --
-- A later page of sent messages to one recipient.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = %(to)s AND status = 'sent' AND sent_at IS NOT NULL AND (sent_at, id) < (%(key)s, %(id)s)
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created_to --
-- The first page of messages to one recipient in one (not sent) status, newest first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = %(to)s AND status = %(status)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- list_by_created_to_after --
-- A later page of messages to one recipient in one (not sent) status.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = %(to)s AND status = %(status)s AND (created_at, id) < (%(key)s, %(id)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- counts --
-- How many messages are in each status: kept by triggers (migration 0002), so this
-- reads a few rows whatever the size of the table.
SELECT status, n
FROM insider_message_counts

-- list_accepted --
-- The first page of what the provider accepted (sent, delivered, undelivered), newest sent first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_accepted_after --
-- A later page of what the provider accepted: those after the cursor's (sent_at, id).
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL AND (sent_at, id) < (%(key)s, %(id)s)
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_accepted_to --
-- The first page of what the provider accepted for one recipient, newest sent first.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = %(to)s AND status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- list_accepted_to_after --
-- A later page of what the provider accepted for one recipient.
SELECT id, recipient_phone, content, status, created_at, sent_at, message_id, last_error,
       attempts, next_attempt_at, lease_expires_at, idempotency_key, claim_token,
       send_at, priority, valid_until, encoding, segments, uuid,
       delivered_at, delivery_status, delivery_error, provider, provider_pin, cost, category,
       suppression_reason, wait_reason, respect_sending_hours, consent_reply, cap_admitted_at
FROM messages
WHERE recipient_phone = %(to)s AND status IN ('sent', 'delivered', 'undelivered') AND sent_at IS NOT NULL
  AND (sent_at, id) < (%(key)s, %(id)s)
ORDER BY sent_at DESC, id DESC
LIMIT %(limit)s

-- apply_receipts --
-- Apply delivery receipts in one statement, each message's in the order they arrived.
--
-- The receipts given (%(receipts)s, in the order they came; none for a pass over the
-- waiting ones) go after every receipt still waiting for one of the provider ids
-- %(ids)s whose message now has that id (up to %(limit)s of them, NULL: all), taken out
-- of the waiting table here, oldest (lowest `seq`) first. Each finds its message by the
-- provider's id (the cached id `hint` first, checked against the row, then the index on
-- message_id) and, when the receipt names its provider, that provider: ids are unique
-- only per provider. A receipt that names none matches while the messages with its id
-- are all one provider's (a message recorded with no provider counts as none); when two
-- providers' messages have it, it is `ambiguous` and touches neither (nor waits). With
-- one provider configured (%(several)s false) that is not asked: it matches as it always
-- did (the hinted message, else the first with the id). A
-- found one becomes an event (the same receipt twice is one event), and the first new
-- final one of a `sent` message moves it to delivered or undelivered (a final status
-- never moves back). A given one with no message yet waits. A result row per receipt:
-- the waiting ones taken first (src 0, by seq), then the given (src 1, by idx).
--
-- Why the order holds under READ COMMITTED. The writer never has one provider id in two
-- of its writes at once and writes each id's receipts in the order they came, so every
-- earlier receipt of an id was committed before this statement began: as an event (its
-- effect visible here) or as a waiting row. If this statement sees a message with the id,
-- it also sees (same snapshot) the waiting rows of that id, and takes them ahead of the
-- given ones. A waiting row that a concurrent resolve or periodic pass is taking is
-- locked: this statement waits for that one to commit and skips the row, and the UPDATE
-- below re-reads the message's newest version, so a final status that row gave it stays
-- and the given receipt is only an event. If it sees no message with the id, the given
-- ones wait too, numbered after the earlier ones. Every taker locks waiting rows in `seq`
-- order, so takers never deadlock on them, and all of them before any message row (the
-- window function in `found` reads every taken row before passing one on). Processes
-- share no order of arrival, but a receipt whose write begins after another's committed
-- still goes after it, whichever process wrote each.
WITH given AS (
    -- The receipts come as one JSON array.
    SELECT *
    FROM jsonb_to_recordset(%(receipts)s::jsonb) AS g(
        idx integer, hint bigint, provider_message_id text, provider text, receipt_status text,
        delivery_status text, final_status text, error_code text, done_at timestamptz, received_at timestamptz,
        dedupe_key text
    )
), taken AS (
    DELETE FROM insider_pending_receipts p
    WHERE p.ctid IN (
        SELECT p2.ctid
        FROM insider_pending_receipts p2
        WHERE p2.provider_message_id = ANY (%(ids)s::text[])
          AND EXISTS (
              SELECT 1 FROM messages m
              WHERE m.message_id = p2.provider_message_id AND (p2.provider IS NULL OR m.provider = p2.provider)
          )
        ORDER BY p2.seq
        LIMIT %(limit)s
        FOR UPDATE
    )
    RETURNING p.seq, p.provider_message_id, p.provider, p.receipt_status, p.delivery_status, p.final_status,
              p.error_code, p.done_at, p.received_at, p.dedupe_key
), r AS (
    SELECT 0 AS src, t.seq AS pos, NULL::bigint AS hint, t.provider_message_id, t.provider, t.receipt_status,
           t.delivery_status, t.final_status, t.error_code, t.done_at, t.received_at, t.dedupe_key
    FROM taken t
    UNION ALL
    SELECT 1, g.idx, g.hint, g.provider_message_id, g.provider, g.receipt_status, g.delivery_status,
           g.final_status, g.error_code, g.done_at, g.received_at, g.dedupe_key
    FROM given g
), matched AS (
    SELECT r.*,
           CASE WHEN r.provider IS NULL AND %(several)s
                THEN (SELECT count(DISTINCT m.provider) FROM messages m WHERE m.message_id = r.provider_message_id) > 1
                ELSE false END AS ambiguous,
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
    -- `nth` > 1: the same receipt earlier in this list, for the same message (or, waiting,
    -- for the same provider id and provider).
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
), logged AS (
    INSERT INTO insider_message_events
        (message_id, at, kind, outcome, error_code, provider_message_id, receipt_status, done_at, dedupe_key)
    SELECT message_id, received_at, 'receipt', delivery_status, error_code, provider_message_id, receipt_status,
           done_at, dedupe_key
    FROM found
    WHERE message_id IS NOT NULL AND nth = 1
    ORDER BY src, pos
    ON CONFLICT (message_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING message_id, dedupe_key
), first_final AS (
    SELECT DISTINCT ON (f.message_id) f.*
    FROM found f
    JOIN logged l ON l.message_id = f.message_id AND l.dedupe_key = f.dedupe_key
    WHERE f.final_status IS NOT NULL AND f.nth = 1
    ORDER BY f.message_id, f.src, f.pos
), moved AS (
    UPDATE messages m
    SET status = ff.final_status,
        delivered_at = COALESCE(ff.done_at, ff.received_at),
        delivery_status = ff.delivery_status,
        delivery_error = ff.error_code,
        updated_at = now()
    FROM first_final ff
    WHERE m.id = ff.message_id AND m.status = 'sent'
    RETURNING m.id, m.status, m.sent_at, m.delivered_at, ff.src, ff.pos
), waiting AS (
    -- Only a given receipt can miss its message: a taken one was taken because its message
    -- has the id, in this statement's snapshot.
    INSERT INTO insider_pending_receipts
        (provider_message_id, provider, dedupe_key, receipt_status, delivery_status, final_status, error_code,
         done_at, received_at)
    SELECT provider_message_id, provider, dedupe_key, receipt_status, delivery_status, final_status, error_code,
           done_at, received_at
    FROM found
    WHERE message_id IS NULL AND NOT ambiguous AND nth = 1
    ORDER BY src, pos
    ON CONFLICT DO NOTHING
)
SELECT f.src, f.pos, f.message_id,
       CASE WHEN f.ambiguous THEN 'ambiguous'
            WHEN f.message_id IS NULL THEN 'waiting'
            WHEN mv.id IS NOT NULL THEN 'applied'
            WHEN l.message_id IS NULL OR f.nth > 1 THEN 'duplicate'
            ELSE 'recorded' END AS result,
       mv.status, mv.sent_at, mv.delivered_at
FROM found f
LEFT JOIN logged l ON f.nth = 1 AND l.message_id = f.message_id AND l.dedupe_key = f.dedupe_key
LEFT JOIN moved mv ON mv.src = f.src AND mv.pos = f.pos
ORDER BY f.src, f.pos

-- waiting_ids --
-- Provider ids of waiting receipts that a message now has (that receipt's provider's, when
-- it names one), those waiting longest first: what the periodic pass applies (with
-- apply_receipts, which takes them in order).
SELECT p.provider_message_id
FROM insider_pending_receipts p
WHERE EXISTS (
    SELECT 1 FROM messages m
    WHERE m.message_id = p.provider_message_id AND (p.provider IS NULL OR m.provider = p.provider)
)
GROUP BY p.provider_message_id
ORDER BY min(p.seq)
LIMIT %(limit)s

-- drop_waiting --
-- Waiting receipts received before %(before)s: no message got their id in time.
DELETE FROM insider_pending_receipts p
WHERE p.ctid IN (
    SELECT p2.ctid FROM insider_pending_receipts p2 WHERE p2.received_at < %(before)s LIMIT %(limit)s
)
RETURNING provider_message_id, provider, receipt_status, received_at

-- events --
-- A message's history, oldest first, up to a limit (a message's receipts are not bounded).
SELECT id, message_id, at, kind, outcome, attempt, status_code, duration_ms, error, provider_message_id,
       receipt_status, error_code, done_at, provider
FROM insider_message_events
WHERE message_id = %(id)s
ORDER BY at, id
LIMIT %(limit)s

-- prune_events --
-- Up to %(limit)s events older than %(before)s.
DELETE FROM insider_message_events
WHERE id IN (SELECT id FROM insider_message_events WHERE at < %(before)s LIMIT %(limit)s)
-- segments_sent --
-- The segments of every message the provider accepted (sent, delivered, undelivered),
-- kept by the same triggers (migration 0005).
SELECT coalesce(sum(segments), 0)::bigint AS segments
FROM insider_message_counts
WHERE status IN ('sent', 'delivered', 'undelivered')

-- file_load_drop --
-- The staging table of a file load (a temporary table: its connection's alone, gone with it).
DROP TABLE IF EXISTS pg_temp.insider_file_load

-- file_load_stage --
-- A file's checked messages wait here, in file order, until the load publishes them.
CREATE TEMPORARY TABLE insider_file_load (
    n bigint GENERATED ALWAYS AS IDENTITY,
    recipient_phone text NOT NULL,
    content text NOT NULL,
    send_at timestamptz,
    priority smallint NOT NULL,
    valid_until timestamptz,
    encoding text NOT NULL,
    segments integer NOT NULL,
    category text NOT NULL DEFAULT 'transactional',
    respect_sending_hours boolean NOT NULL DEFAULT true,
    consent_reply boolean NOT NULL DEFAULT false,
    next_attempt_at timestamptz,
    wait_reason text
)

-- file_load_record --
-- Remember a file being stored; no row back when a file with its digest was stored before.
INSERT INTO insider_file_loads (digest, name, lines, stored, rejected)
VALUES (%(digest)s, %(name)s, %(lines)s, %(stored)s, %(rejected)s)
ON CONFLICT (digest) DO NOTHING
RETURNING digest, name, lines, stored, rejected, loaded_at, loads

-- file_load_again --
-- Remember a file being stored, counting it once more if it was stored before (--again).
INSERT INTO insider_file_loads AS f (digest, name, lines, stored, rejected)
VALUES (%(digest)s, %(name)s, %(lines)s, %(stored)s, %(rejected)s)
ON CONFLICT (digest) DO UPDATE
SET name = EXCLUDED.name, lines = EXCLUDED.lines, stored = EXCLUDED.stored, rejected = EXCLUDED.rejected,
    loaded_at = now(), loads = f.loads + 1
RETURNING digest, name, lines, stored, rejected, loaded_at, loads

-- file_load_get --
-- The file stored with a digest.
SELECT digest, name, lines, stored, rejected, loaded_at, loads
FROM insider_file_loads
WHERE digest = %(digest)s

-- file_load_publish --
-- The staged messages into the queue, in file order (their ids follow the lines).
INSERT INTO messages (recipient_phone, content, send_at, priority, valid_until, encoding, segments, category,
                      respect_sending_hours, consent_reply, next_attempt_at, wait_reason)
SELECT recipient_phone, content, send_at, priority, valid_until, encoding, segments, category,
       respect_sending_hours, consent_reply, next_attempt_at, wait_reason
FROM pg_temp.insider_file_load
ORDER BY n

-- take_send --
-- One send of provider %(name)s, at most one per %(interval_s)s seconds for the whole
-- deployment (the generic cell rate algorithm: the row holds the provider's next free
-- time). It may go at that time, and is taken only when that is at most %(max_wait_s)s
-- away: the seconds to wait, or no row (nothing taken).
INSERT INTO insider_provider_rates AS r (name, tat)
VALUES (%(name)s, clock_timestamp() + make_interval(secs => %(interval_s)s))
ON CONFLICT (name) DO UPDATE
SET tat = GREATEST(r.tat, clock_timestamp()) + make_interval(secs => %(interval_s)s)
WHERE r.tat <= clock_timestamp() + make_interval(secs => %(max_wait_s)s)
RETURNING GREATEST(0, EXTRACT(EPOCH FROM (r.tat - clock_timestamp())) - %(interval_s)s)::float8 AS wait_s

-- next_turn_in --
-- The seconds until provider %(name)s's next free turn (no row: it has never sent).
SELECT GREATEST(0, EXTRACT(EPOCH FROM (tat - clock_timestamp())))::float8 AS wait_s
FROM insider_provider_rates WHERE name = %(name)s

-- switch_provider --
-- Take a provider out of rotation, or put it back.
INSERT INTO insider_providers AS p (name, enabled, changed_at) VALUES (%(name)s, %(enabled)s, now())
ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, changed_at = EXCLUDED.changed_at
RETURNING name, enabled

-- provider_states --
-- Each provider's operator switch and the pause it asked of the deployment (the seconds left,
-- NULL when none was asked).
SELECT name, enabled,
       GREATEST(0, EXTRACT(EPOCH FROM (throttled_until - clock_timestamp())))::float8 AS throttled_s
FROM insider_providers

-- throttle_provider --
-- Provider %(name)s asked for a pause of %(seconds)s seconds: every process keeps it.
INSERT INTO insider_providers AS p (name, enabled, throttled_until)
VALUES (%(name)s, true, clock_timestamp() + make_interval(secs => %(seconds)s))
ON CONFLICT (name) DO UPDATE SET throttled_until = GREATEST(p.throttled_until, EXCLUDED.throttled_until)

-- provider_member_seen --
-- Process %(member)s is alive (it says so every few seconds).
INSERT INTO insider_provider_members (member, joined_at, seen_at) VALUES (%(member)s, clock_timestamp(), clock_timestamp())
ON CONFLICT (member) DO UPDATE SET seen_at = EXCLUDED.seen_at

-- provider_members --
-- The processes seen in the last %(ttl_s)s seconds, in a fixed order (each one's rank), and
-- how long ago each joined.
SELECT member, EXTRACT(EPOCH FROM (clock_timestamp() - joined_at))::float8 AS age_s FROM insider_provider_members
WHERE seen_at > clock_timestamp() - make_interval(secs => %(ttl_s)s)
ORDER BY member

-- provider_member_gone --
-- Process %(member)s stops (and processes unseen for a day are forgotten).
DELETE FROM insider_provider_members WHERE member = %(member)s OR seen_at < clock_timestamp() - interval '1 day'

-- provider_totals_read --
-- What each provider accepted (messages, segments, cost) and how many of its tries failed.
SELECT provider, sent, failed, segments, cost FROM insider_provider_totals ORDER BY provider

-- category_counts --
-- How many messages of each category are in each status: kept by triggers (migration 0013).
SELECT category, status, n
FROM insider_category_counts

-- waiting_counts --
-- Pending messages held back, per reason (sending-hours, cap): through messages_waiting_idx.
SELECT wait_reason, count(*) AS n
FROM messages
WHERE status = 'pending' AND wait_reason IS NOT NULL
GROUP BY wait_reason

-- suppression_add --
-- Put numbers on the suppression list (a JSON array of entries), those not on it yet; the
-- ones added come back. An entry's created_at, when given, is kept (an import of an export).
INSERT INTO insider_suppressions (phone, scope, reason, source, created_at)
SELECT v.phone, v.scope, v.reason, v.source, COALESCE(v.created_at, now())
FROM jsonb_to_recordset(%(entries)s::jsonb) AS v(phone text, scope text, reason text, source text,
                                                 created_at timestamptz)
ON CONFLICT (phone) DO NOTHING
RETURNING phone, scope, reason, source, created_at

-- suppression_update --
-- Change the entries of numbers already on the list (a JSON array): scope, reason and source;
-- each keeps the time it was first put on the list. The ones changed come back.
UPDATE insider_suppressions s
SET scope = v.scope, reason = v.reason, source = v.source
FROM jsonb_to_recordset(%(entries)s::jsonb) AS v(phone text, scope text, reason text, source text)
WHERE s.phone = v.phone
RETURNING s.phone, s.scope, s.reason, s.source, s.created_at

-- suppression_delete --
-- Take a number off the list (messages it already ended stay suppressed).
DELETE FROM insider_suppressions WHERE phone = %(phone)s RETURNING phone

-- suppression_get --
-- A number's entry on the list.
SELECT phone, scope, reason, source, created_at FROM insider_suppressions WHERE phone = %(phone)s

-- suppression_count --
-- How many numbers are on the list.
SELECT count(*) AS n FROM insider_suppressions

-- suppressions_page --
-- The list, most recently added first (insider_suppressions_created_idx): one page and one row more.
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
ORDER BY created_at DESC, phone DESC
LIMIT %(limit)s

-- suppressions_page_after --
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
WHERE (created_at, phone) < (%(key)s, %(phone)s)
ORDER BY created_at DESC, phone DESC
LIMIT %(limit)s

-- suppressions_page_to --
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
WHERE phone = %(to)s
ORDER BY created_at DESC, phone DESC
LIMIT %(limit)s

-- suppressions_page_to_after --
SELECT phone, scope, reason, source, created_at FROM insider_suppressions
WHERE phone = %(to)s AND (created_at, phone) < (%(key)s, %(phone)s)
ORDER BY created_at DESC, phone DESC

-- inbound_record --
-- Store a reply; one whose provider and provider id were stored before is not stored again.
INSERT INTO insider_inbound (from_phone, to_phone, text, provider, provider_message_id, action, received_at)
VALUES (%(from_phone)s, %(to_phone)s, %(text)s, %(provider)s, %(provider_message_id)s, %(action)s, now())
ON CONFLICT ((coalesce(provider, '')), provider_message_id) WHERE provider_message_id IS NOT NULL DO NOTHING
RETURNING id, from_phone, to_phone, text, provider, provider_message_id, action, received_at

-- inbound_stored --
-- The reply stored before with this provider and provider id.
SELECT id, from_phone, to_phone, text, provider, provider_message_id, action, received_at
FROM insider_inbound
WHERE coalesce(provider, '') = coalesce(%(provider)s, '') AND provider_message_id = %(provider_message_id)s

-- inbound_list --
-- A page of replies, newest first, after the cursor's id (or from the newest).
SELECT id, from_phone, to_phone, text, provider, provider_message_id, action, received_at
FROM insider_inbound
WHERE id < %(before)s
ORDER BY id DESC
LIMIT %(limit)s

-- inbound_list_from --
-- A page of one sender's replies, newest first.
SELECT id, from_phone, to_phone, text, provider, provider_message_id, action, received_at
FROM insider_inbound
WHERE from_phone = %(from_phone)s AND id < %(before)s
ORDER BY id DESC
LIMIT %(limit)s
