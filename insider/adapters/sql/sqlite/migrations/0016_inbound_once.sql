-- A reply is stored once per provider and provider id (see the PostgreSQL migration).
CREATE UNIQUE INDEX IF NOT EXISTS insider_inbound_provider_id_idx
    ON insider_inbound ((coalesce(provider, '')), provider_message_id)
    WHERE provider_message_id IS NOT NULL;
