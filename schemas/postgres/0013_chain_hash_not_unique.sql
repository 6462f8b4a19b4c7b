-- The postings, fund-ledger entries and ADL events each carry their chain's hash (SHA-256 over the entry and the hash
-- before it) under a UNIQUE constraint. Its index is a random place in a B-tree for a 64-character key per row: for
-- the postings (1.7 per input record, the most numerous rows the service writes) about a tenth of what PostgreSQL
-- spends per input record and an eighth of its WAL (docs/service.md, "What bounds its speed"). It guards nothing the
-- record lacks without it: an entry's identity is its id (still UNIQUE) and its place is its position (the primary
-- key); the hashes are checked by walking the chain by position (`backstop audit verify --dsn`, the relay's
-- checkpoints), which finds a wrong or repeated hash where the index could only find a repeated one. No reader looks
-- an entry up by its hash.
ALTER TABLE postings DROP CONSTRAINT postings_hash_key;
ALTER TABLE fund_ledger DROP CONSTRAINT fund_ledger_hash_key;
ALTER TABLE adl_events DROP CONSTRAINT adl_events_hash_key;
