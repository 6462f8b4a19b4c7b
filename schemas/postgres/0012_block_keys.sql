-- A quantile block's records' Kafka keys and record ids, stored with the block as the engine gave them: for each
-- record in the block's order, its key (the account of a position's quantile, the symbol of a risk level) and then
-- its id, each ended by a newline (identifiers hold none). The relay splits them beside the block's lines instead of
-- parsing every line for them. NULL for a block written before this migration: the relay reads its lines, as before.
ALTER TABLE outbox ADD COLUMN keys text;
-- NOT VALID: no row before this migration has keys, so every one holds it; not scanning them keeps it short.
ALTER TABLE outbox ADD CONSTRAINT outbox_keys_of_a_block CHECK (keys IS NULL OR records IS NOT NULL) NOT VALID;

DO $$
BEGIN
    ALTER TABLE outbox ALTER COLUMN keys SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: the block keys keep the default compression';
END $$;
