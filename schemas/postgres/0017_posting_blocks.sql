-- A batch's postings are written as ONE row, a block: their records (the canonical JSON exactly as published, in
-- chain order, each line ended by a newline), the position of the last (the first is last_position - postings + 1)
-- and the journal seqs of the first and the last. They were a row each, 1.7 per input record and the largest single
-- part of what PostgreSQL spent on one (docs/service.md, "What bounds its speed"): a heap row, an index entry and
-- their WAL per posting. A block is one row and one index entry per batch, its text compressed (lz4 where the server
-- has it), as the quantile records have been since migration 0011. The view `postings` keeps every column migration
-- 0007 defined, one row per posting, so a reader's SQL (an auditor's query, `audit verify --dsn`) reads the same
-- relation as before; `posting_records` (migration 0015) is moved into blocks of 10,000 postings and dropped.
--
-- The rules the rows held are held per block: append-only; positions gapless from 1 (a block continues the last
-- exactly); a posting's seq in the journal and never before an earlier posting's (the block's seqs lie between the
-- last block's last seq and the journal's last). Each line's own fields are the writer's, as before: `backstop audit
-- verify --dsn` compares the stored postings one by one with a fresh replay's.

DO $$
DECLARE
    last bigint;
    rows bigint;
BEGIN
    SELECT coalesce(max(position), 0), count(*) INTO last, rows FROM posting_records;
    IF rows <> last OR EXISTS (SELECT 1 FROM posting_records WHERE position < 1) THEN
        RAISE EXCEPTION 'the postings are not gapless from position 1 (% rows, the last position %): they cannot be '
                        'moved into blocks as they are', rows, last USING ERRCODE = 'data_exception';
    END IF;
END $$;

CREATE TABLE posting_blocks (
    last_position bigint  PRIMARY KEY,
    postings      integer NOT NULL CHECK (postings > 0 AND last_position >= postings),
    first_seq     bigint  NOT NULL CHECK (first_seq >= 1),
    last_seq      bigint  NOT NULL CHECK (last_seq >= first_seq),
    records       text    NOT NULL
);

DO $$
BEGIN
    ALTER TABLE posting_blocks ALTER COLUMN records SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: the posting blocks keep the default compression';
END $$;

INSERT INTO posting_blocks (last_position, postings, first_seq, last_seq, records)
SELECT max(position), count(*), min(seq), max(seq), string_agg(record || E'\n', '' ORDER BY position)
FROM posting_records GROUP BY (position - 1) / 10000;

DROP VIEW postings;
DROP TABLE posting_records;

CREATE FUNCTION backstop_posting_block_continues() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before_position bigint := 0;
    before_seq bigint := 1;
    last bigint;
BEGIN
    SELECT b.last_position, b.last_seq INTO before_position, before_seq
    FROM posting_blocks b ORDER BY b.last_position DESC LIMIT 1;
    IF NOT FOUND THEN
        before_position := 0;
        before_seq := 1;
    END IF;
    IF NEW.last_position - NEW.postings <> before_position THEN
        RAISE EXCEPTION 'insert into posting_blocks refused: postings % to % do not continue the postings at %',
            NEW.last_position - NEW.postings + 1, NEW.last_position, before_position + 1
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT coalesce(max(seq), 0) INTO last FROM journal;
    IF NEW.first_seq < before_seq OR NEW.last_seq > last THEN
        RAISE EXCEPTION 'insert into posting_blocks refused: seq % is not in the journal after seq %',
            CASE WHEN NEW.last_seq > last THEN NEW.last_seq ELSE NEW.first_seq END, before_seq
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER posting_blocks_continue BEFORE INSERT ON posting_blocks
    FOR EACH ROW EXECUTE FUNCTION backstop_posting_block_continues();
CREATE TRIGGER posting_blocks_append_only BEFORE UPDATE OR DELETE ON posting_blocks
    FOR EACH ROW EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER posting_blocks_no_truncate BEFORE TRUNCATE ON posting_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_append_only();

-- Every column of migration 0007, in its order and type, one row per posting, from its line (JSON null is SQL NULL).
CREATE VIEW postings AS
SELECT b.last_position - b.postings + l.n AS position, f.r ->> 'id' AS id, (f.r ->> 'seq')::bigint AS seq,
       (f.r ->> 'ts')::bigint AS ts, f.r ->> 'kind' AS kind, f.r ->> 'debit_account' AS debit_account,
       f.r ->> 'credit_account' AS credit_account, f.r ->> 'asset' AS asset, (f.r ->> 'amount')::numeric AS amount,
       (f.r ->> 'debit_balance_after')::numeric AS debit_balance_after,
       (f.r ->> 'credit_balance_after')::numeric AS credit_balance_after, f.r ->> 'transfer_id' AS transfer_id,
       f.r ->> 'fill_id' AS fill_id, f.r ->> 'liquidation_id' AS liquidation_id,
       f.r ->> 'adl_event_id' AS adl_event_id, f.r ->> 'fund_entry_id' AS fund_entry_id,
       f.r ->> 'prev_hash' AS prev_hash, f.r ->> 'hash' AS hash, l.line AS record
FROM posting_blocks b
CROSS JOIN LATERAL unnest(string_to_array(rtrim(b.records, E'\n'), E'\n')) WITH ORDINALITY AS l(line, n)
CROSS JOIN LATERAL (SELECT l.line::jsonb AS r) AS f;

-- the record: append and read, nothing else (as 0002_roles.sql grants on the fund ledger)
GRANT SELECT, INSERT ON posting_blocks TO backstop_service;
GRANT SELECT ON posting_blocks TO backstop_auditor;
GRANT SELECT ON postings TO backstop_service, backstop_auditor;
