-- A batch's quantile records (most of what the outbox holds, several per input record) are written as ONE outbox
-- row, a block: their canonical JSON lines in order, as the engine wrote them. The relay splits a block into the same
-- Kafka records as one row per record gave (topic, key, headers and bytes unchanged). A block of n records takes n
-- ids of the outbox's sequence, the last of which is its row's id: each record keeps an outbox id of its own (its
-- `backstop-outbox-id` header), ids still grow with the outbox's order, and the relay's cursor (relay_cursor) still
-- means "every record up to this id is in Kafka". Rows written before (one record each) are read as they were; dead
-- letters stay one row each.

-- records: NULL for a row that is one record (topic, key, record_id, payload); n for a block of n records, its
-- payload their lines (each ended by a newline), its key and record_id NULL (each record's are in its line).
ALTER TABLE outbox ADD COLUMN records integer CHECK (records > 0);
ALTER TABLE outbox ALTER COLUMN key DROP NOT NULL, ALTER COLUMN record_id DROP NOT NULL;
-- NOT VALID: the rows already there had key and record_id NOT NULL and no block, so they hold it; not scanning them
-- keeps the migration as short as an outbox from before migration 0008 (a copy of every record) is long.
ALTER TABLE outbox ADD CONSTRAINT outbox_record_or_block
    CHECK ((records IS NULL) = (key IS NOT NULL AND record_id IS NOT NULL)) NOT VALID;

-- A block is megabytes of text, compressed when stored: lz4 costs the server about a third of the CPU of the
-- default (pglz) for such a block, writing and reading. Kept at the default on a server built without lz4.
DO $$
BEGIN
    ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: the outbox keeps the default compression';
END $$;

-- The writer takes a block's ids in one statement: setval(nextval() + n - 1), which needs UPDATE on the sequence.
GRANT UPDATE ON SEQUENCE outbox_id_seq TO backstop_service;

-- Every effect row names the journal seq it follows from. A foreign key checked that row by row: one lookup, and a
-- lock on the journal row, per posting, held identity, finding, fund-ledger entry and ADL event (several per input
-- record, a large part of what a batch cost PostgreSQL). The same rule is now checked once per statement, over all
-- the rows it inserted (a batch writes each table with one COPY): a row whose seq is not in the journal fails the
-- statement with foreign_key_violation, as the foreign key did. The journal refuses UPDATE, DELETE and TRUNCATE
-- (0001), so a seq once there stays there: the foreign key's other half had nothing left to guard.
CREATE FUNCTION backstop_seq_in_journal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT n.seq INTO missing FROM inserted n WHERE NOT EXISTS (SELECT 1 FROM journal j WHERE j.seq = n.seq) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert into % refused: seq % is not in the journal', TG_TABLE_NAME, missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

ALTER TABLE postings DROP CONSTRAINT postings_seq_fkey;
ALTER TABLE applied_ids DROP CONSTRAINT applied_ids_seq_fkey;
ALTER TABLE findings DROP CONSTRAINT findings_seq_fkey;
ALTER TABLE fund_ledger DROP CONSTRAINT fund_ledger_seq_fkey;
ALTER TABLE adl_events DROP CONSTRAINT adl_events_seq_fkey;
CREATE TRIGGER postings_seq_in_journal AFTER INSERT ON postings REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_seq_in_journal();
CREATE TRIGGER applied_ids_seq_in_journal AFTER INSERT ON applied_ids REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_seq_in_journal();
CREATE TRIGGER findings_seq_in_journal AFTER INSERT ON findings REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_seq_in_journal();
CREATE TRIGGER fund_ledger_seq_in_journal AFTER INSERT ON fund_ledger REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_seq_in_journal();
CREATE TRIGGER adl_events_seq_in_journal AFTER INSERT ON adl_events REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_seq_in_journal();
