-- What the processes of one deployment share about each provider beyond its rate: a pause a
-- provider asked for (a 429, Retry-After, ESME_RTHROTTLED) that one process was told, so the
-- others pause too; and which processes are alive, so that a provider's concurrency is split
-- between them (each process's share; the shares add up to the provider's concurrency).

ALTER TABLE insider_providers ADD COLUMN IF NOT EXISTS throttled_until timestamptz;

CREATE TABLE IF NOT EXISTS insider_provider_members (
    member text PRIMARY KEY,
    joined_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL
);
