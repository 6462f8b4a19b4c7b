-- The whole double-entry ledger (docs/design.md section 10, "Postings"): every posting between two ledger accounts,
-- with both balances after it and the ids of what caused it, chained like the fund ledger. Part of the record:
-- append-only like the fund ledger, appended by the service in the transaction of its batch, read by auditors.

CREATE TABLE postings (
    position             bigint  PRIMARY KEY,    -- 1, 2, 3 ... in chain order
    id                   text    NOT NULL UNIQUE,
    seq                  bigint  NOT NULL REFERENCES journal (seq),
    ts                   bigint  NOT NULL,
    kind                 text    NOT NULL,
    debit_account        text    NOT NULL,
    credit_account       text    NOT NULL,
    asset                text    NOT NULL,
    amount               numeric NOT NULL CHECK (amount > 0),
    debit_balance_after  numeric NOT NULL,
    credit_balance_after numeric NOT NULL,
    transfer_id          text,
    fill_id              text,
    liquidation_id       text,
    adl_event_id         text,
    fund_entry_id        text,
    prev_hash            text    NOT NULL,
    hash                 text    NOT NULL UNIQUE,
    record               text    NOT NULL        -- the canonical JSON exactly as published
);
CREATE INDEX postings_debit ON postings (debit_account, position);
CREATE INDEX postings_credit ON postings (credit_account, position);
CREATE INDEX postings_liquidation ON postings (liquidation_id) WHERE liquidation_id IS NOT NULL;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION backstop_append_only();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION backstop_append_only();

-- the record: append and read, nothing else (as 0002_roles.sql grants on the fund ledger)
GRANT SELECT, INSERT ON postings TO backstop_service;
GRANT SELECT ON postings TO backstop_auditor;
