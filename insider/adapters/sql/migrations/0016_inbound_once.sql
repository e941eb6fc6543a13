-- A reply is stored once per provider and provider id (Twilio's MessageSid): a provider that
-- sends it again, not having had the answer, finds it there and nothing is done twice.
CREATE UNIQUE INDEX IF NOT EXISTS insider_inbound_provider_id_idx
    ON insider_inbound ((coalesce(provider, '')), provider_message_id)
    WHERE provider_message_id IS NOT NULL;
