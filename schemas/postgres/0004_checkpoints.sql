-- Checkpoints anchor the record outside the database. In the transaction of every batch that appends to the
-- journal, the service signs (HMAC-SHA256, with a key the database never sees) the journal digest, the fund-ledger
-- and ADL heads and counts as of the batch's last seq. The owner of these tables can switch the append-only
-- triggers off and rewrite the record with every hash chain recomputed, but cannot sign: `backstop audit verify
-- --dsn --anchor-key-file` finds the rewrite (docs/operations-security.md).

CREATE TABLE checkpoints (
    seq            bigint PRIMARY KEY REFERENCES journal (seq),
    prev_seq       bigint NOT NULL,     -- the checkpoint this one follows; 0: the first one, or an adoption
    adopted_seq    bigint NOT NULL,     -- > 0: the history up to this seq was adopted by an operator
    journal_digest text   NOT NULL,     -- chain over every journal row up to seq (seq, source, payload hash)
    head_hash      text   NOT NULL,
    ledger_head    text   NOT NULL,
    ledger_entries bigint NOT NULL,
    adl_head       text   NOT NULL,
    adl_events     bigint NOT NULL,
    key_id         text   NOT NULL,     -- names the key that signed (a hash of it, never the key)
    mac            text   NOT NULL      -- HMAC-SHA256 over the fields above
);

CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_append_only();

GRANT SELECT, INSERT ON checkpoints TO backstop_service;
GRANT SELECT ON checkpoints TO backstop_auditor;
