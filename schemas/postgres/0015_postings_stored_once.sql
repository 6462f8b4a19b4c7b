-- Each posting is stored once: its record (the canonical JSON exactly as published, which holds every field) and
-- the few columns the write path and the relay need: its position (the primary key: the chain's order, the relay's
-- cursor), its journal seq (checked per statement: migration 0011), its id (the relay's record id header) and its
-- asset (the relay's Kafka key). Until now every field was stored twice, once as a column and once in the record:
-- a posting row was about 1,000 bytes of heap, index and WAL, the postings 1.7 rows per input record, the largest
-- single part of what PostgreSQL spends on one (docs/service.md, "What bounds its speed"). The table keeps the rows
-- and is renamed `posting_records`; `postings` becomes a view with every column migration 0007 defined, derived
-- from the record, so a reader's SQL (an auditor's query, `audit verify --dsn`) reads the same relation as before.
--
-- The id's UNIQUE index goes too (a random place in a B-tree of text per posting: about a third of what a posting
-- row still cost). A posting's id is `p-<seq>-<n>`, its journal seq (the journal's primary key) and its place among
-- its event's postings; `backstop audit verify --dsn` compares the stored postings one by one with a fresh replay's,
-- which finds a repeated id (and any other wrong field) where the index could only find a repeated id. So does the
-- partial index by liquidation: no reader of the service uses it (explain reads a replay's files); a database that
-- answers ad hoc queries by account or liquidation indexes its reporting replica (migration 0010).
--
-- All of it changes the catalog only: dropped columns are not rewritten (their bytes in the rows already written
-- stay until a VACUUM FULL), so the migration is as short on a large table as on an empty one.

ALTER TABLE postings RENAME TO posting_records;
ALTER INDEX postings_pkey RENAME TO posting_records_pkey;
ALTER TRIGGER postings_append_only ON posting_records RENAME TO posting_records_append_only;
ALTER TRIGGER postings_no_truncate ON posting_records RENAME TO posting_records_no_truncate;
ALTER TRIGGER postings_seq_in_journal ON posting_records RENAME TO posting_records_seq_in_journal;
ALTER TABLE posting_records DROP CONSTRAINT postings_id_key;
DROP INDEX postings_liquidation;
ALTER TABLE posting_records
    DROP COLUMN ts, DROP COLUMN kind, DROP COLUMN debit_account, DROP COLUMN credit_account, DROP COLUMN amount,
    DROP COLUMN debit_balance_after, DROP COLUMN credit_balance_after, DROP COLUMN transfer_id, DROP COLUMN fill_id,
    DROP COLUMN liquidation_id, DROP COLUMN adl_event_id, DROP COLUMN fund_entry_id, DROP COLUMN prev_hash,
    DROP COLUMN hash;

-- Every column of migration 0007, in its order and type, from the record (JSON null is SQL NULL). A query that
-- names only position, id, seq, asset or record parses no record.
CREATE VIEW postings AS
SELECT p.position, p.id, p.seq, (f.r ->> 'ts')::bigint AS ts, f.r ->> 'kind' AS kind,
       f.r ->> 'debit_account' AS debit_account, f.r ->> 'credit_account' AS credit_account, p.asset,
       (f.r ->> 'amount')::numeric AS amount, (f.r ->> 'debit_balance_after')::numeric AS debit_balance_after,
       (f.r ->> 'credit_balance_after')::numeric AS credit_balance_after, f.r ->> 'transfer_id' AS transfer_id,
       f.r ->> 'fill_id' AS fill_id, f.r ->> 'liquidation_id' AS liquidation_id,
       f.r ->> 'adl_event_id' AS adl_event_id, f.r ->> 'fund_entry_id' AS fund_entry_id,
       f.r ->> 'prev_hash' AS prev_hash, f.r ->> 'hash' AS hash, p.record
FROM posting_records p CROSS JOIN LATERAL (SELECT p.record::jsonb AS r) AS f;

-- the view reads with its owner's rights; who may read it is granted here (the table keeps its grants: the service
-- appends and reads, the auditor reads)
GRANT SELECT ON postings TO backstop_service, backstop_auditor;
