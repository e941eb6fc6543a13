-- What the processes of one deployment share about each provider beyond its rate (see the
-- PostgreSQL migration); times in whole microseconds since the epoch, as the rates'.

ALTER TABLE insider_providers ADD COLUMN throttled_until_us INTEGER;

CREATE TABLE IF NOT EXISTS insider_provider_members (
    member TEXT PRIMARY KEY,
    joined_at_us INTEGER NOT NULL,
    seen_at_us INTEGER NOT NULL
);
