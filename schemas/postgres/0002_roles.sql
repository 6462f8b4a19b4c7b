-- Least privilege: group roles (NOLOGIN) that operators grant to login roles, e.g.
--   CREATE ROLE backstop_svc LOGIN PASSWORD '...' IN ROLE backstop_service;
--   CREATE ROLE audit_jane LOGIN PASSWORD '...' IN ROLE backstop_auditor;
-- Migrations run as the owner of the tables (the role `backstop db migrate` connects as). The service's role may
-- append to the record and rewrite only derived state: it can never UPDATE, DELETE or TRUNCATE the journal, the
-- fund ledger or the ADL events, nor switch their triggers off (only an owner can). Auditors read everything.
-- A later migration that adds a table grants on it here too.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'backstop_service') THEN
        CREATE ROLE backstop_service NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'backstop_auditor') THEN
        CREATE ROLE backstop_auditor NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO backstop_service, backstop_auditor;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO backstop_auditor;

-- the record: append and read, nothing else
GRANT SELECT, INSERT ON journal, fund_ledger, adl_events, findings, dead_letter, snapshots TO backstop_service;
-- bookkeeping the service moves forward
GRANT SELECT, INSERT, UPDATE ON outbox, consumed_offsets, engine_head TO backstop_service;
-- derived state, rewritten as it changes
GRANT SELECT, INSERT, UPDATE, DELETE ON account_wallets, positions, funds, fund_lots, adl_queue TO backstop_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO backstop_service;
GRANT SELECT ON schema_migrations TO backstop_service, backstop_auditor;
