-- Receipts matched by provider and provider id together: ids are unique only per provider.
--
-- A waiting receipt keeps the provider that sent it (NULL: it named none, as every receipt
-- did before this migration, and as a provider that only knows the id still does). Two
-- providers' receipts for the same id, even with the same status and time, are two
-- receipts: the waiting table's key becomes (provider id, provider, identity), with an
-- unnamed receipt's provider read as '' (no provider's name is empty), so a NULL never
-- makes two copies of one receipt. The lookups by provider id keep their index (its
-- first column), and a message is still found by the index on messages.message_id, a
-- provider id being held by one message or a very few.

ALTER TABLE insider_pending_receipts ADD COLUMN IF NOT EXISTS provider text;

ALTER TABLE insider_pending_receipts DROP CONSTRAINT IF EXISTS insider_pending_receipts_pkey;
CREATE UNIQUE INDEX IF NOT EXISTS insider_pending_receipts_key_idx
    ON insider_pending_receipts (provider_message_id, (COALESCE(provider, '')), dedupe_key);
