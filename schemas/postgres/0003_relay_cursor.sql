-- The relay's progress as one cursor instead of a flag on every outbox row. The relay publishes rows in id order
-- and moves the cursor only after Kafka acknowledged every row up to it; the single writer commits its batches one
-- after another, so outbox ids become visible in increasing order and "every row up to id N is in Kafka" is the
-- relay's whole state. Marking a batch is one row's update instead of rewriting thousands of outbox rows, and the
-- outbox becomes insert-only for the service.

CREATE TABLE relay_cursor (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    published_up_to bigint  NOT NULL CHECK (published_up_to >= 0)
);

-- unpublished rows were always a suffix of the outbox (rows were marked a batch at a time, in id order)
INSERT INTO relay_cursor (singleton, published_up_to)
SELECT true, coalesce((SELECT min(id) - 1 FROM outbox WHERE NOT published), (SELECT max(id) FROM outbox), 0);

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published;

REVOKE UPDATE ON outbox FROM backstop_service;
GRANT SELECT, UPDATE ON relay_cursor TO backstop_service;
GRANT SELECT ON relay_cursor TO backstop_auditor;
