-- The postings are the most numerous rows the service writes, and their two indexes by account are a large part of
-- what a posting costs PostgreSQL: each posting lands at a random place in both (an account is any wallet, position
-- or fund). No reader of the service uses them: the relay reads by position, `audit verify --dsn` walks the chain by
-- position, explain finds postings by the ids of what caused them in the replay's files, and `backstop statement
-- --account` reads `postings.jsonl` of a replay. So the write path keeps what the record's integrity needs (the
-- position, the unique id and hash, the journal seq it follows from) and the partial index by liquidation (few
-- rows); a database that answers ad hoc per-account queries indexes its reporting replica instead
-- (docs/service.md, "What bounds its speed").

DROP INDEX postings_debit;
DROP INDEX postings_credit;
