-- The messages queue, the deployment-wide rate slots.
--
-- Also upgrades in place the `messages` table of the original Go service
-- (frkntplglu/insider, its db.sql): id UUID, recipient_phone VARCHAR(20), content
-- VARCHAR(255), status of the enum type message_status ('pending', 'failed', 'sent'),
-- created_at and sent_at TIMESTAMP without time zone. Every row is kept with its status
-- and times; the UUID stays in the column `uuid` and the row gets a bigint id. So every
-- statement here is written to work whether or not the table already exists. The
-- migrations run in one transaction: applied entirely or not at all.

-- A table that is there already is checked before anything changes. What cannot be
-- upgraded stops the migration (SQLSTATE IN001, which the adapter reports as one line
-- saying what and how to fix it); the rollback leaves the table as it was.
DO $$
DECLARE
    cols jsonb;
    needed text;
    kind text;
    n bigint;
    found text;
BEGIN
    SELECT jsonb_object_agg(
               c.column_name,
               CASE WHEN c.data_type = 'USER-DEFINED' AND EXISTS (
                        SELECT 1 FROM pg_type t JOIN pg_namespace ns ON ns.oid = t.typnamespace
                        WHERE t.typname = c.udt_name AND ns.nspname = c.udt_schema AND t.typtype = 'e')
                    THEN 'enum' ELSE c.data_type END)
    INTO cols
    FROM information_schema.columns c
    WHERE c.table_schema = current_schema() AND c.table_name = 'messages';
    IF cols IS NULL THEN
        RETURN;  -- no table yet: created below
    END IF;

    FOREACH needed IN ARRAY ARRAY['id', 'recipient_phone', 'content', 'status', 'created_at'] LOOP
        IF NOT cols ? needed THEN
            RAISE EXCEPTION USING ERRCODE = 'IN001',
                MESSAGE = format('the existing table "messages" has no column "%s", so it is not the original service''s table', needed),
                HINT = 'point insider at the original service''s database, or rename that table';
        END IF;
    END LOOP;
    FOR needed, kind IN SELECT key, value FROM jsonb_each_text(cols) LOOP
        IF (needed = 'id' AND kind NOT IN ('uuid', 'smallint', 'integer', 'bigint'))
           OR (needed IN ('recipient_phone', 'content', 'message_id')
               AND kind NOT IN ('text', 'character varying', 'character'))
           OR (needed = 'status' AND kind NOT IN ('text', 'character varying', 'character', 'enum'))
           OR (needed IN ('created_at', 'sent_at')
               AND kind NOT IN ('timestamp without time zone', 'timestamp with time zone'))
        THEN
            RAISE EXCEPTION USING ERRCODE = 'IN001',
                MESSAGE = format('column "messages.%s" is of type %s, which insider cannot upgrade', needed, kind),
                HINT = format('give it back the original service''s type (%s) with ALTER TABLE, then start again',
                    CASE needed WHEN 'id' THEN 'UUID' WHEN 'status' THEN 'message_status'
                        WHEN 'created_at' THEN 'TIMESTAMP' WHEN 'sent_at' THEN 'TIMESTAMP' ELSE 'VARCHAR' END);
        END IF;
    END LOOP;

    FOREACH needed IN ARRAY ARRAY['recipient_phone', 'content', 'status'] LOOP
        EXECUTE format('SELECT count(*) FROM messages WHERE %I IS NULL', needed) INTO n;
        IF n > 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'IN001',
                MESSAGE = format('%s row(s) of "messages" have no %s (NULL)', n, needed),
                HINT = format('give them a %s or delete them (SELECT * FROM messages WHERE %s IS NULL), then start again',
                    needed, needed);
        END IF;
    END LOOP;
    SELECT string_agg(DISTINCT quote_literal(status::text), ', ') INTO found
    FROM messages WHERE status::text NOT IN ('pending', 'sending', 'sent', 'failed');
    IF found IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'IN001',
            MESSAGE = format('"messages" has rows with the status %s, which insider does not know', found),
            HINT = 'set them to pending, sent or failed, then start again';
    END IF;
    IF cols->>'id' = 'uuid' AND EXISTS (
        SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid = 'messages'::regclass
    ) THEN
        RAISE EXCEPTION USING ERRCODE = 'IN001',
            MESSAGE = 'foreign keys of other tables point at "messages", whose UUID id must make way for a bigint id',
            HINT = 'drop those foreign keys (afterwards they can point at the column messages.uuid), then start again';
    END IF;
END
$$;

-- The original's table, upgraded. Its enum status and varchar columns become text. Its
-- times (TIMESTAMP without a zone) are read in this session's time zone, which is the
-- database's own unless the connection sets another. A NULL created_at takes sent_at (or
-- now). Its UUID id moves to the column `uuid`, and every row gets a bigint id, numbered
-- in order of creation (rows created together: in the order they are stored). Rows it
-- sent or failed count one attempt; failed ones say why they carry no reason. (The type
-- message_status is left in place: statements that still name it keep working, as an
-- enum value casts to text on assignment.)
DO $$
DECLARE
    cols jsonb;
    pkey text;
    changes text[] := ARRAY[]::text[];
BEGIN
    SELECT jsonb_object_agg(column_name, data_type) INTO cols
    FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = 'messages';
    IF cols IS NULL THEN
        RETURN;
    END IF;
    IF cols->>'id' = 'uuid' THEN
        SELECT conname INTO pkey FROM pg_constraint WHERE contype = 'p' AND conrelid = 'messages'::regclass;
        IF pkey IS NOT NULL THEN
            EXECUTE format('ALTER TABLE messages DROP CONSTRAINT %I', pkey);
        END IF;
        ALTER TABLE messages RENAME COLUMN id TO uuid;
        changes := changes || 'ALTER COLUMN uuid SET NOT NULL'::text || 'ADD COLUMN id bigint'::text;
    END IF;
    -- One ALTER TABLE for every change, so that the table is rewritten once, not per column
    -- (the idempotency key, added below for any table, rewrites it too: so it comes here).
    IF cols->>'status' <> 'text' THEN
        changes := changes || 'ALTER COLUMN status DROP DEFAULT'::text || 'ALTER COLUMN status TYPE text USING status::text'::text;
    END IF;
    IF cols->>'recipient_phone' <> 'text' THEN
        changes := changes || 'ALTER COLUMN recipient_phone TYPE text'::text;
    END IF;
    IF cols->>'content' <> 'text' THEN
        changes := changes || 'ALTER COLUMN content TYPE text'::text;
    END IF;
    IF cols->>'created_at' = 'timestamp without time zone' THEN
        changes := changes || 'ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz'::text;
    END IF;
    IF cols->>'sent_at' = 'timestamp without time zone' THEN
        changes := changes || 'ALTER COLUMN sent_at TYPE timestamptz USING sent_at::timestamptz'::text;
    END IF;
    changes := changes
        || 'ADD COLUMN IF NOT EXISTS sent_at timestamptz'::text
        || 'ADD COLUMN IF NOT EXISTS message_id text'::text
        || 'ADD COLUMN IF NOT EXISTS last_error text'::text
        || 'ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0'::text
        || 'ADD COLUMN IF NOT EXISTS idempotency_key uuid NOT NULL DEFAULT gen_random_uuid()'::text;
    EXECUTE 'ALTER TABLE messages ' || array_to_string(changes, ', ');

    -- One UPDATE for every row that needs one (all of them when ids are given).
    IF cols->>'id' = 'uuid' THEN
        UPDATE messages m
        SET id = r.n,
            created_at = coalesce(m.created_at, m.sent_at, now()),
            attempts = CASE WHEN m.status IN ('sent', 'failed') THEN 1 ELSE m.attempts END,
            last_error = CASE WHEN m.status = 'failed'
                              THEN 'failed under the original service, which kept no reason' END
        FROM (SELECT uuid, row_number() OVER (ORDER BY coalesce(created_at, sent_at, now()), ctid) AS n
              FROM messages) r
        WHERE m.uuid = r.uuid;
        ALTER TABLE messages
            ALTER COLUMN id SET NOT NULL,
            ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY,
            ADD PRIMARY KEY (id);
        PERFORM setval(pg_get_serial_sequence('messages', 'id'), coalesce(max(id), 1), max(id) IS NOT NULL)
        FROM messages;
        -- Said to whoever runs the migration (the adapter logs it).
        SELECT format('%s rows kept: %s pending, %s sent, %s failed; their UUIDs are in the column uuid',
                      count(*), count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'sent'),
                      count(*) FILTER (WHERE status = 'failed'))
        INTO pkey FROM messages;
        RAISE NOTICE 'insider: upgraded the original Go service''s table "messages" in place: %', pkey;
    ELSE
        UPDATE messages
        SET created_at = coalesce(created_at, sent_at, now()),
            attempts = CASE WHEN status IN ('sent', 'failed') AND attempts = 0 THEN 1 ELSE attempts END,
            last_error = CASE WHEN status = 'failed' AND last_error IS NULL
                              THEN 'failed under the original service, which kept no reason'
                              ELSE last_error END
        WHERE created_at IS NULL OR (status IN ('sent', 'failed') AND attempts = 0);
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS messages (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    recipient_phone text NOT NULL,
    content text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    message_id text
);

-- The columns of our own; a volatile default gives every existing row its own key.
ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS last_error text,
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz,
    ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
    ADD COLUMN IF NOT EXISTS claim_token uuid,
    ADD COLUMN IF NOT EXISTS idempotency_key uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

-- A table with an int id: the id becomes a bigint.
DO $$
DECLARE
    id_sequence text;
BEGIN
    IF EXISTS (
        SELECT 1
        FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND table_name = 'messages'
          AND column_name = 'id'
          AND data_type IN ('integer', 'smallint')
    ) THEN
        ALTER TABLE messages ALTER COLUMN id TYPE bigint;
        id_sequence := pg_get_serial_sequence('messages', 'id');
        IF id_sequence IS NOT NULL THEN
            EXECUTE format('ALTER SEQUENCE %s AS bigint', id_sequence);
        END IF;
    END IF;
END
$$;

ALTER TABLE messages
    ALTER COLUMN recipient_phone SET NOT NULL,
    ALTER COLUMN content SET NOT NULL,
    ALTER COLUMN status SET DEFAULT 'pending',
    ALTER COLUMN status SET NOT NULL,
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN created_at SET NOT NULL;

-- Replaced rather than kept: a Go-era check would not allow 'sending'.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_status_check;
ALTER TABLE messages
    ADD CONSTRAINT messages_status_check CHECK (status IN ('pending', 'sending', 'sent', 'failed'));

-- The queue: due pending rows and expired leases, oldest first.
CREATE INDEX IF NOT EXISTS messages_queue_idx
    ON messages (created_at, id)
    WHERE status IN ('pending', 'sending');

-- The list endpoint, newest first: sent ones by sent_at, the others by created_at.
CREATE INDEX IF NOT EXISTS messages_sent_idx
    ON messages (sent_at DESC, id DESC)
    WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS messages_status_created_idx
    ON messages (status, created_at DESC, id DESC);

-- One row per named rate slot: when it can next be taken, shared by every process.
CREATE TABLE IF NOT EXISTS insider_slots (
    name text PRIMARY KEY,
    next_at timestamptz NOT NULL
);
