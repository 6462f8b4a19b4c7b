-- Identities applied, held forever (docs/design.md §4, Admission): every fill, transfer, liquidation and funding the
-- journal applied, as the 16-byte digest of its identity, the 8-byte digest of its content and the seq that holds
-- it. The primary key is the last word on "at most once, ever": a batch that would hold an identity twice fails and
-- is never committed. The service answers "is this identity held?" from an in-memory filter over this table and one
-- query per batch for what the filter cannot rule out. Append-only, like the journal it indexes.
CREATE TABLE applied_ids (
    id_digest      bytea  PRIMARY KEY CHECK (octet_length(id_digest) = 16),
    content_digest bytea  NOT NULL CHECK (octet_length(content_digest) = 8),
    seq            bigint NOT NULL REFERENCES journal (seq)
);

CREATE TRIGGER applied_ids_append_only BEFORE UPDATE OR DELETE ON applied_ids
    FOR EACH ROW EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER applied_ids_no_truncate BEFORE TRUNCATE ON applied_ids
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_append_only();

GRANT SELECT, INSERT ON applied_ids TO backstop_service;
GRANT SELECT ON applied_ids TO backstop_auditor;

-- What an auditor filters dead letters by (backstop.core.errors.RejectionKind; NULL on rows written before), and the
-- journal seq each was decided after: the journal with each dead letter's record put back after its seq is the
-- service's input in the order it decided it, and replays to the same journal and the same dead letters.
ALTER TABLE dead_letter ADD COLUMN kind text;
ALTER TABLE dead_letter ADD COLUMN after_seq bigint;
