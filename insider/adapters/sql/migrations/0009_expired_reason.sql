-- Why a message past its validUntil became expired, as its last_error says: one rule for every
-- statement that expires one (the claim's sweep, the expiry on read, and a sender's outcome
-- for a message it found past its time). The time in UTC to the second, with a Z; the last
-- failure, if there was one, after it. The SQLite adapter gives its connections a function of
-- the same name and meaning.

CREATE OR REPLACE FUNCTION insider_expired_reason(valid_until timestamptz, last_error text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT 'expired: not sent before validUntil '
           || to_char(valid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           || COALESCE(' (last error: ' || last_error || ')', '')
$$;
