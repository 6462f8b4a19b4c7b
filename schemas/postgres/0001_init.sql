-- backstop service schema, version 1.
-- One writer (the ledger processor, holding an advisory lock) appends journal rows, effects and outbox rows and
-- moves the consumed offsets in ONE transaction per batch. Ledger tables are append-only, enforced here.

CREATE TABLE journal (
    seq              bigint PRIMARY KEY,
    source_topic     text   NOT NULL,
    source_partition int    NOT NULL,
    source_offset    bigint NOT NULL,
    type             text   NOT NULL,
    ts               bigint NOT NULL,
    payload          text   NOT NULL,   -- the record's canonical JSON: a line `backstop replay` reads
    payload_hash     text   NOT NULL,   -- sha256 of payload
    UNIQUE (source_topic, source_partition, source_offset)
);

CREATE TABLE consumed_offsets (
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,        -- the next offset to read: Kafka's convention, never the current one
    PRIMARY KEY (topic, partition)
);

CREATE TABLE engine_head (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq         bigint  NOT NULL,
    head_hash   text    NOT NULL,
    state_hash  text,                   -- set at snapshots and whenever the processor catches up (not every batch:
    state_hash_seq bigint,              -- hashing all state is O(state)); state_hash is the hash at state_hash_seq
    ledger_head text    NOT NULL,
    adl_head    text    NOT NULL,
    duplicates  bigint  NOT NULL,
    rejected    bigint  NOT NULL
);

CREATE TABLE fund_ledger (
    position        bigint  PRIMARY KEY,    -- 1, 2, 3 ... in chain order
    id              text    NOT NULL UNIQUE,
    seq             bigint  NOT NULL REFERENCES journal (seq),
    ts              bigint  NOT NULL,
    fund_id         text    NOT NULL,
    kind            text    NOT NULL,
    amount          numeric NOT NULL,
    balance_after   numeric NOT NULL,
    liquidation_id  text,
    counter_account text    NOT NULL,
    prev_hash       text    NOT NULL,
    hash            text    NOT NULL UNIQUE,
    record          text    NOT NULL        -- the canonical JSON exactly as published
);
CREATE INDEX fund_ledger_fund ON fund_ledger (fund_id, position);
CREATE INDEX fund_ledger_liquidation ON fund_ledger (liquidation_id) WHERE liquidation_id IS NOT NULL;

CREATE TABLE adl_events (
    position       bigint  PRIMARY KEY,
    id             text    NOT NULL UNIQUE,
    seq            bigint  NOT NULL REFERENCES journal (seq),
    ts             bigint  NOT NULL,
    symbol         text    NOT NULL,
    liquidation_id text    NOT NULL,
    fund_id        text    NOT NULL,
    account_id     text    NOT NULL,
    side           text    NOT NULL,
    qty            numeric NOT NULL,
    price          numeric NOT NULL,
    rank           int     NOT NULL,
    score          numeric NOT NULL,
    quantile       int     NOT NULL,
    prev_hash      text    NOT NULL,
    hash           text    NOT NULL UNIQUE,
    record         text    NOT NULL
);
CREATE INDEX adl_events_liquidation ON adl_events (liquidation_id);

CREATE TABLE findings (
    id             text   PRIMARY KEY,
    seq            bigint NOT NULL REFERENCES journal (seq),
    ts             bigint NOT NULL,
    kind           text   NOT NULL,
    account_id     text,
    liquidation_id text,
    symbol         text,
    details        jsonb  NOT NULL
);

CREATE TABLE dead_letter (
    id               bigserial PRIMARY KEY,
    source_topic     text   NOT NULL,
    source_partition int    NOT NULL,
    source_offset    bigint NOT NULL,
    reason           text   NOT NULL,
    raw              bytea  NOT NULL,
    UNIQUE (source_topic, source_partition, source_offset)
);

CREATE TABLE outbox (
    id        bigserial PRIMARY KEY,
    topic     text    NOT NULL,
    key       text    NOT NULL,
    record_id text    NOT NULL UNIQUE,
    payload   text    NOT NULL,
    published boolean NOT NULL DEFAULT false
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE NOT published;

CREATE TABLE snapshots (
    seq        bigint PRIMARY KEY,
    state_hash text   NOT NULL,
    document   text   NOT NULL
);

-- Projections: derived state, rewritten as it changes (not part of the append-only record).
CREATE TABLE account_wallets (
    account_id text    NOT NULL,
    asset      text    NOT NULL,
    wallet     numeric NOT NULL,
    seq        bigint  NOT NULL,
    PRIMARY KEY (account_id, asset)
);

CREATE TABLE positions (
    account_id        text    NOT NULL,
    symbol            text    NOT NULL,
    qty               numeric NOT NULL,
    entry_price       numeric NOT NULL,
    margin_mode       text    NOT NULL,
    leverage          numeric NOT NULL,
    isolated_margin   numeric NOT NULL,
    mark_price        numeric NOT NULL,
    liquidation_price numeric,
    bankruptcy_price  numeric NOT NULL,
    seq               bigint  NOT NULL,     -- as of this journal seq
    PRIMARY KEY (account_id, symbol)
);

CREATE TABLE funds (
    fund_id             text    PRIMARY KEY,
    settle_asset        text    NOT NULL,
    surplus             text    NOT NULL,
    max_inventory_ratio numeric NOT NULL,
    balance             numeric NOT NULL,
    bad_debt            numeric NOT NULL,
    inventory_notional  numeric NOT NULL,
    seq                 bigint  NOT NULL
);

CREATE TABLE fund_lots (
    fund_id            text    NOT NULL,
    liquidation_id     text    NOT NULL,
    symbol             text    NOT NULL,
    side               text    NOT NULL,
    qty                numeric NOT NULL,
    cost               numeric NOT NULL,
    bankruptcy_price   numeric NOT NULL,
    liquidated_account text    NOT NULL,
    seq                bigint  NOT NULL,
    PRIMARY KEY (fund_id, liquidation_id)
);

CREATE TABLE adl_queue (
    symbol     text    NOT NULL,
    side       text    NOT NULL,
    account_id text    NOT NULL,
    rank       int     NOT NULL,
    score      numeric NOT NULL,
    quantile   int     NOT NULL,
    seq        bigint  NOT NULL,            -- refreshed as of this journal seq
    PRIMARY KEY (symbol, side, account_id)
);

-- Append-only, enforced by the database itself: no UPDATE, DELETE or TRUNCATE of the record.
CREATE FUNCTION backstop_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
    FOR EACH ROW EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER fund_ledger_append_only BEFORE UPDATE OR DELETE ON fund_ledger
    FOR EACH ROW EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER fund_ledger_no_truncate BEFORE TRUNCATE ON fund_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER adl_events_append_only BEFORE UPDATE OR DELETE ON adl_events
    FOR EACH ROW EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER adl_events_no_truncate BEFORE TRUNCATE ON adl_events
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_append_only();
