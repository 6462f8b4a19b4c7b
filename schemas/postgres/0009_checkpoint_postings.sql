-- Checkpoints sign the postings chain too (docs/design.md section 10, "Postings"): its head hash and count as of the
-- checkpoint's seq, beside the fund-ledger and ADL heads, so that a rewrite of the general ledger is found against
-- the signature as a rewrite of the fund ledger is. A checkpoint signed before this migration has both NULL: its MAC
-- covers the fields it was signed with, so it verifies as before, and the postings are checked at the checkpoints
-- signed since (the first batch after the upgrade signs the postings head the table holds then).

ALTER TABLE checkpoints ADD COLUMN postings_head text;     -- hash of the last posting up to seq (NULL: before 0009)
ALTER TABLE checkpoints ADD COLUMN postings_count bigint;  -- postings up to seq (NULL: before 0009)
ALTER TABLE checkpoints ADD CONSTRAINT checkpoints_postings_together
    CHECK ((postings_head IS NULL) = (postings_count IS NULL));
