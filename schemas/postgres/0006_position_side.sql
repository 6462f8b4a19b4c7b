-- Hedge mode (docs/design.md §7): an account may hold a long and a short position in one symbol, each its own row.
-- position_side is 'both' for a one-way position (every row before this migration), 'long' or 'short' for a hedge
-- side; the key becomes (account_id, symbol, position_side). Numbered after h-dedupe's 0005_applied_ids.
ALTER TABLE positions ADD COLUMN position_side text NOT NULL DEFAULT 'both'
    CHECK (position_side IN ('both', 'long', 'short'));
ALTER TABLE positions DROP CONSTRAINT positions_pkey;
ALTER TABLE positions ADD PRIMARY KEY (account_id, symbol, position_side);
