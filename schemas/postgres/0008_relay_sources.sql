-- The relay publishes the journal, the fund ledger, the ADL events and the postings from their own tables, each read
-- after a cursor of its own in the order the table keeps (the journal by seq, the others by position), instead of a
-- copy of every row in the outbox. The outbox keeps what has no table of its own (ADL quantile records, dead
-- letters) under relay_cursor as before. The single writer commits its batches one after another, so each source's
-- rows become visible in increasing order and "every row of this source up to N is in Kafka" is the relay's whole
-- state per source.

CREATE TABLE relay_sources (
    source          text   PRIMARY KEY CHECK (source IN ('journal', 'fund_ledger', 'adl_events', 'postings')),
    published_up_to bigint NOT NULL CHECK (published_up_to >= 0)
);

-- Every row written before this migration has its copy in the outbox, which publishes it (or did): each source
-- starts after its last row.
INSERT INTO relay_sources (source, published_up_to) VALUES
    ('journal', (SELECT coalesce(max(seq), 0) FROM journal)),
    ('fund_ledger', (SELECT coalesce(max(position), 0) FROM fund_ledger)),
    ('adl_events', (SELECT coalesce(max(position), 0) FROM adl_events)),
    ('postings', (SELECT coalesce(max(position), 0) FROM postings));

-- Outbox rows up to legacy_up_to may be copies of table rows: the relay publishes them all before any row it reads
-- from a table, so that per key the older records still come first.
ALTER TABLE relay_cursor ADD COLUMN legacy_up_to bigint NOT NULL DEFAULT 0;
UPDATE relay_cursor SET legacy_up_to = (SELECT coalesce(max(id), 0) FROM outbox);

GRANT SELECT, UPDATE ON relay_sources TO backstop_service;
GRANT SELECT ON relay_sources TO backstop_auditor;
