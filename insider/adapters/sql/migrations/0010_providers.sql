-- Several providers: which one accepted each message and what it cost, the message's
-- category (routes match it), the provider an ambiguous attempt leaves a message pinned to,
-- each attempt's provider, the operators' choices, each provider's deployment-wide rate and
-- its totals.

ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS provider text,
    ADD COLUMN IF NOT EXISTS provider_pin text,
    ADD COLUMN IF NOT EXISTS cost double precision,
    ADD COLUMN IF NOT EXISTS category text NOT NULL DEFAULT 'transactional';
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_category_check;
ALTER TABLE messages ADD CONSTRAINT messages_category_check CHECK (category IN ('transactional', 'commercial'));

ALTER TABLE insider_message_events ADD COLUMN IF NOT EXISTS provider text;

-- A provider an operator took out of rotation (or put back), for the whole deployment.
CREATE TABLE IF NOT EXISTS insider_providers (
    name text PRIMARY KEY,
    enabled boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- Each rate-limited provider's next free send time (the generic cell rate algorithm's
-- theoretical arrival time), shared by every process of the deployment.
CREATE TABLE IF NOT EXISTS insider_provider_rates (
    name text PRIMARY KEY,
    tat timestamptz NOT NULL
);

-- What each provider accepted (messages, segments, cost) and how many of its tries failed,
-- kept by the statement that records the outcomes: the stats read a row per provider.
CREATE TABLE IF NOT EXISTS insider_provider_totals (
    provider text PRIMARY KEY,
    sent bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    segments bigint NOT NULL DEFAULT 0,
    cost double precision NOT NULL DEFAULT 0
);
