-- Categories seen everywhere: the listings filtered by category through an index, and the
-- messages per category and status kept by triggers (as migration 0002 keeps them per
-- status), so the stats read a few rows whatever the size of the table.

-- The default listing (what the provider accepted, newest sent first) of one category; the
-- listing of sent messages takes it too (`sent` is one of the statuses it covers).
CREATE INDEX IF NOT EXISTS messages_category_accepted_idx
    ON messages (category, sent_at DESC, id DESC)
    WHERE status IN ('sent', 'delivered', 'undelivered');
-- The listing of one status and one category, newest first.
CREATE INDEX IF NOT EXISTS messages_category_status_created_idx
    ON messages (category, status, created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS insider_category_counts (
    category text NOT NULL,
    status text NOT NULL,
    n bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (category, status)
);

-- Apply (category, status) deltas in key order, so concurrent statements lock the count
-- rows in the same order and cannot deadlock.
CREATE OR REPLACE FUNCTION insider_apply_category_deltas(deltas jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    FOR d IN SELECT e->>0 AS category, e->>1 AS status, (e->>2)::bigint AS n
             FROM jsonb_array_elements(deltas) e ORDER BY 1, 2 LOOP
        IF d.n <> 0 THEN
            INSERT INTO insider_category_counts AS c (category, status, n) VALUES (d.category, d.status, d.n)
            ON CONFLICT (category, status) DO UPDATE SET n = c.n + EXCLUDED.n;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_categories_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_category_deltas(
        (SELECT coalesce(jsonb_agg(jsonb_build_array(category, status, n)), '[]') FROM
            (SELECT category, status, count(*) AS n FROM new_rows GROUP BY category, status) s));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_categories_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_category_deltas(
        (SELECT coalesce(jsonb_agg(jsonb_build_array(category, status, n)), '[]') FROM
            (SELECT category, status, sum(n) AS n FROM (
                SELECT category, status, 1 AS n FROM new_rows
                UNION ALL
                SELECT category, status, -1 AS n FROM old_rows) t
             GROUP BY category, status) s));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_categories_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM insider_apply_category_deltas(
        (SELECT coalesce(jsonb_agg(jsonb_build_array(category, status, -n)), '[]') FROM
            (SELECT category, status, count(*) AS n FROM old_rows GROUP BY category, status) s));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION insider_count_categories_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE insider_category_counts SET n = 0;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS insider_count_categories_insert ON messages;
CREATE TRIGGER insider_count_categories_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION insider_count_categories_inserted();
DROP TRIGGER IF EXISTS insider_count_categories_update ON messages;
CREATE TRIGGER insider_count_categories_update AFTER UPDATE ON messages
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION insider_count_categories_updated();
DROP TRIGGER IF EXISTS insider_count_categories_delete ON messages;
CREATE TRIGGER insider_count_categories_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION insider_count_categories_deleted();
DROP TRIGGER IF EXISTS insider_count_categories_truncate ON messages;
CREATE TRIGGER insider_count_categories_truncate AFTER TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION insider_count_categories_truncated();

-- The counts of the rows already there (other writers held off for this one count).
LOCK TABLE messages IN SHARE MODE;
DELETE FROM insider_category_counts;
INSERT INTO insider_category_counts (category, status, n)
SELECT category, status, count(*) FROM messages GROUP BY category, status;
