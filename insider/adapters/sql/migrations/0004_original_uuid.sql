-- The UUID of every row of the original Go service's table, kept in `uuid` (0001 moved
-- it there) so that a row can still be found by the id its users saw. Rows added since
-- get one too (the original's INSERT, insider's API); rows that insider queued before
-- this migration have none (NULL): filling them would rewrite the whole table.

ALTER TABLE messages ADD COLUMN IF NOT EXISTS uuid uuid;
ALTER TABLE messages ALTER COLUMN uuid SET DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX IF NOT EXISTS messages_uuid_key ON messages (uuid);
