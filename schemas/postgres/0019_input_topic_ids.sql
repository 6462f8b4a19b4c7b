-- Each input topic's Kafka topic id, as the service first read the topic. A topic deleted and created again has a
-- new id and a new log from offset 0, and the positions stored in consumed_offsets were read in the old one: read on
-- from them, the new topic's records below them would be passed over without a trace; read from its start, they
-- would repeat the (topic, partition, offset) of records the journal holds. The service compares the ids before it
-- reads (backstop.service.ledger_loop) and holds there (InputGap) unless told to read the new topic on from the
-- stored positions (BACKSTOP_INPUT_GAP=skip), which stores the new id. A database migrated while the topics already
-- existed takes their ids at the service's next start.

CREATE TABLE input_topics (
    topic    text PRIMARY KEY,
    topic_id uuid NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON input_topics TO backstop_service;
GRANT SELECT ON input_topics TO backstop_auditor;
