-- The last_error a message keeps when it becomes `status`: for `expired`, why (one rule for
-- every statement that expires one: the claim's sweep, the expiry on read, and a sender's
-- outcome for a message it found past its time): validUntil in UTC to the second, with a Z,
-- then the last failure, if there was one. Any other status keeps the failure as given.
-- The SQLite adapter gives its connections a function of the same name and meaning.

CREATE OR REPLACE FUNCTION insider_last_error(status text, valid_until timestamptz, last_error text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN status = 'expired'
                THEN 'expired: not sent before validUntil '
                     || to_char(valid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                     || COALESCE(' (last error: ' || last_error || ')', '')
                ELSE last_error END
$$;
