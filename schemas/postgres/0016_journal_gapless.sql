-- The journal's seqs are gapless, from 1: the engine gives each applied event the seq after the last, the batch's
-- commit checks the head it follows (engine_head), and the relay's backlog and cursors count on it. From here the
-- database holds it too: an INSERT into the journal (one statement per batch: a COPY) must continue the journal
-- exactly, its rows' seqs following the journal's last without a gap or a repeat, or the statement fails. The check
-- reads the statement's rows once and the journal's index once, whatever the batch's size.
--
-- With the journal gapless from 1, a seq is in the journal exactly when it lies between 1 and the journal's last.
-- So every effect row's seq (postings, held identities, findings, fund-ledger entries, ADL events: migration 0011)
-- is checked against that range, once per statement, instead of looked up in the journal's index row by row (about
-- 1.1 µs of the server's CPU per row, 2.9 such rows per input record: docs/service.md, "What bounds its speed"). The
-- rule and its error are unchanged: a row whose seq is not in the journal fails its statement with
-- foreign_key_violation, naming that seq.
--
-- A journal written before is checked once here, so the range rule never stands on a gap: the migration fails,
-- changing nothing, if the journal's row count is not its last seq (an index-only count: a few seconds per hundred
-- million rows).

DO $$
DECLARE
    last bigint;
    rows bigint;
BEGIN
    SELECT coalesce(max(seq), 0), count(*) INTO last, rows FROM journal;
    IF rows <> last OR EXISTS (SELECT 1 FROM journal WHERE seq < 1) THEN
        RAISE EXCEPTION 'the journal is not gapless from seq 1 (% rows, the last seq %): it cannot be upgraded as it is',
            rows, last USING ERRCODE = 'data_exception';
    END IF;
END $$;

CREATE FUNCTION backstop_journal_continues() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    first bigint;
    last bigint;
    rows bigint;
    before bigint;
BEGIN
    SELECT min(seq), max(seq), count(*) INTO first, last, rows FROM inserted;
    IF rows = 0 THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(max(seq), 0) INTO before FROM journal WHERE seq < first;
    IF before <> first - 1 OR last - first + 1 <> rows THEN
        RAISE EXCEPTION 'insert into journal refused: its seqs % to % (% rows) do not continue the journal at seq % '
                        'without a gap', first, last, rows, before + 1
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER journal_continues AFTER INSERT ON journal REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_journal_continues();

CREATE OR REPLACE FUNCTION backstop_seq_in_journal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    missing bigint;
BEGIN
    SELECT coalesce(max(seq), 0) INTO last FROM journal;
    SELECT n.seq INTO missing FROM inserted n WHERE n.seq < 1 OR n.seq > last LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert into % refused: seq % is not in the journal', TG_TABLE_NAME, missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
