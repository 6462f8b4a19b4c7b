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

-- The writer takes a block's ids in one statement: setval(nextval() + n - 1), which needs UPDATE on the sequence.
GRANT UPDATE ON SEQUENCE outbox_id_seq TO backstop_service;
