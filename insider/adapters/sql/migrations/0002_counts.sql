-- Messages per status, kept by triggers, so the dashboard and /metrics read four rows
-- instead of counting the whole table. Statement-level triggers with transition tables:
-- one aggregate per statement (a claim or a batch's outcomes is one statement), in the
-- same transaction as the change, so the counts are exact.

CREATE TABLE IF NOT EXISTS insider_message_counts (
    status text PRIMARY KEY,
    n bigint NOT NULL DEFAULT 0
);

-- Apply per-status deltas in status order, so concurrent statements lock the count rows
-- in the same order and cannot deadlock.
CREATE OR REPLACE FUNCTION insider_apply_count_deltas(deltas jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    FOR d IN SELECT key AS status, value::bigint AS n FROM jsonb_each_text(deltas) ORDER BY key LOOP
        IF d.n <> 0 THEN
            INSERT INTO insider_message_counts AS c (status, n) VALUES (d.status, d.n)
            ON CONFLICT (status) DO UPDATE SET n = c.n + EXCLUDED.n;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_count_deltas(
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
            (SELECT status, count(*) AS n FROM new_rows GROUP BY status) s));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_count_deltas(
        (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
            (SELECT status, sum(n) AS n FROM (
                SELECT status, 1 AS n FROM new_rows
                UNION ALL
                SELECT status, -1 AS n FROM old_rows) t
             GROUP BY status) s));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_count_deltas(
        (SELECT coalesce(jsonb_object_agg(status, -n), '{}') FROM
            (SELECT status, count(*) AS n FROM old_rows GROUP BY status) s));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE insider_message_counts SET n = 0;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS insider_count_insert ON messages;
CREATE TRIGGER insider_count_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION insider_count_inserted();
DROP TRIGGER IF EXISTS insider_count_update ON messages;
CREATE TRIGGER insider_count_update AFTER UPDATE ON messages
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION insider_count_updated();
DROP TRIGGER IF EXISTS insider_count_delete ON messages;
CREATE TRIGGER insider_count_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION insider_count_deleted();
DROP TRIGGER IF EXISTS insider_count_truncate ON messages;
CREATE TRIGGER insider_count_truncate AFTER TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION insider_count_truncated();

-- The counts of the rows already there. The migration runs under the advisory lock and
-- in one transaction with the triggers, but other writers may insert meanwhile: lock the
-- table against writes for this one count.
LOCK TABLE messages IN SHARE MODE;
DELETE FROM insider_message_counts;
INSERT INTO insider_message_counts (status, n)
SELECT status, count(*) FROM messages GROUP BY status;
