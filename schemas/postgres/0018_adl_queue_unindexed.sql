-- The ADL queue projection is replaced whole by each full refresh (every open position's rank, score and quantile
-- as of one seq: one transaction deletes every row and copies the new ones in). Its primary key made that the
-- refresh's costliest statement: each new row's entry went into an index that still held the entries of every row
-- the same transaction had just deleted (they cannot be removed before it commits), about 5 µs of the server's time
-- a row against about 1.2 without it (27,000 rows; docs/service.md, "What bounds its speed"). The key guarded
-- nothing the writer needs: the queue's rows are written only by the engine's ranking, one row per open position
-- of a symbol and side, which `tests/property` and the differential tests check; two replacements at once are put in
-- turn by a lock each takes (backstop.adapters.postgres.store.REPLACE_ADL_QUEUE_SQL). A reader's query scans the
-- table (a few milliseconds per 100,000 rows); a database that answers many ad hoc queries on it indexes a copy.
ALTER TABLE adl_queue DROP CONSTRAINT adl_queue_pkey;
