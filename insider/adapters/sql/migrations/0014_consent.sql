-- Consent: the `suppressed` status (a message never sent because its number is on the
-- suppression list, or over a frequency cap), the columns of waiting (sending hours, caps)
-- and of consent, the suppression list, and the replies.

ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS suppression_reason text,
    -- Why a pending message waits (sending-hours, cap): it may go at next_attempt_at.
    ADD COLUMN IF NOT EXISTS wait_reason text,
    ADD COLUMN IF NOT EXISTS respect_sending_hours boolean NOT NULL DEFAULT true,
    -- A confirmation of an opt-out or opt-in: never held back by a suppression.
    ADD COLUMN IF NOT EXISTS consent_reply boolean NOT NULL DEFAULT false,
    -- When a frequency cap let this commercial message go.
    ADD COLUMN IF NOT EXISTS cap_admitted_at timestamptz;

ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_status_check;
ALTER TABLE messages
    ADD CONSTRAINT messages_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired', 'cancelled', 'delivered', 'undelivered',
                      'suppressed'));

-- The commercial messages a frequency cap let go, per recipient, by when.
CREATE INDEX IF NOT EXISTS messages_cap_idx
    ON messages (recipient_phone, cap_admitted_at) WHERE cap_admitted_at IS NOT NULL;

-- Numbers that must not be sent to: scope `all` (nothing), or `commercial` (no commercial message).
CREATE TABLE IF NOT EXISTS insider_suppressions (
    phone text PRIMARY KEY,
    scope text NOT NULL DEFAULT 'all' CHECK (scope IN ('commercial', 'all')),
    reason text NOT NULL,
    source text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS insider_suppressions_created_idx ON insider_suppressions (created_at DESC, phone DESC);

-- The one rule of suppression, as every statement reads it: the (number, category) pairs not
-- to send, with the reason.
CREATE OR REPLACE VIEW insider_suppressed_for (phone, category, reason) AS
SELECT phone, 'commercial'::text, reason FROM insider_suppressions
UNION ALL
SELECT phone, 'transactional'::text, reason FROM insider_suppressions WHERE scope = 'all';

-- Whatever inserts a message (the API, a file load, another program), a number suppressed for
-- its category is marked at once: accepted, stored, never sent.
CREATE OR REPLACE FUNCTION insider_suppress_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    why text;
BEGIN
    IF NEW.status = 'pending' AND NOT NEW.consent_reply THEN
        SELECT f.reason INTO why FROM insider_suppressed_for f
        WHERE f.phone = NEW.recipient_phone AND f.category = NEW.category;
        IF FOUND THEN
            NEW.status := 'suppressed';
            NEW.suppression_reason := why;
            NEW.wait_reason := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS insider_suppress_insert ON messages;
CREATE TRIGGER insider_suppress_insert BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION insider_suppress_inserted();

-- Replies: what recipients sent back, as providers forwarded them.
CREATE TABLE IF NOT EXISTS insider_inbound (
    id bigserial PRIMARY KEY,
    from_phone text NOT NULL,
    to_phone text,
    text text NOT NULL,
    provider text,
    provider_message_id text,
    action text CHECK (action IS NULL OR action IN ('opt-out', 'opt-in')),
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS insider_inbound_from_idx ON insider_inbound (from_phone, id DESC);
