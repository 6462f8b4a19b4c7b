"""Prometheus metrics of the service (no account data: counts, latencies, fund balances only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

EVENTS_IN = Counter("backstop_events_in_total", "Input records consumed", ["type"], registry=REGISTRY)
EVENTS_APPLIED = Counter("backstop_events_applied_total", "Records applied to the journal", ["type"],
                         registry=REGISTRY)
EVENTS_DUPLICATE = Counter("backstop_events_duplicate_total", "Records dropped as duplicates", ["type"],
                           registry=REGISTRY)
EVENTS_REJECTED = Counter("backstop_events_rejected_total", "Records sent to dead-letter", ["topic"],
                          registry=REGISTRY)
ADL_EVENTS = Counter("backstop_adl_events_total", "ADL events produced", registry=REGISTRY)
FUND_ENTRIES = Counter("backstop_fund_ledger_entries_total", "Fund-ledger entries produced", registry=REGISTRY)
BATCH_SECONDS = Histogram("backstop_batch_seconds", "Time to apply and commit one batch", registry=REGISTRY,
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_RECORDS = Histogram("backstop_batch_records", "Records per batch", registry=REGISTRY,
                          buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000))
MERGE_BUFFERED = Gauge("backstop_merge_buffered", "Records fetched and waiting in the merge buffer", registry=REGISTRY)
MERGE_BACKPRESSURE = Counter("backstop_merge_backpressure_total", "Fetches held to the partitions that hold the merge "
                             "order back, because the merge buffer was full", registry=REGISTRY)
CONSUMER_LAG = Gauge("backstop_consumer_lag", "Records not yet applied, per input partition",
                     ["topic", "partition"], registry=REGISTRY)
FUND_BALANCE = Gauge("backstop_fund_balance", "Insurance fund balance", ["fund_id"], registry=REGISTRY)
JOURNAL_SEQ = Gauge("backstop_journal_seq", "Last applied journal seq", registry=REGISTRY)
OUTBOX_BACKLOG = Gauge("backstop_outbox_backlog", "Rows not yet published, over every relay source", registry=REGISTRY)
RELAY_PUBLISHED = Counter("backstop_relay_published_total", "Records published by the relay", ["topic"],
                          registry=REGISTRY)
RELAY_ROUNDS = Counter("backstop_relay_rounds_total", "Relay rounds that published rows, by where the rows came from: "
                       "handed over by the commit that wrote them, or read from the store", ["rows"],
                       registry=REGISTRY)
RESTARTS = Counter("backstop_loop_restarts_total", "Loop restarts after an error", ["loop"], registry=REGISTRY)
BACKGROUND_SECONDS = Histogram("backstop_background_seconds", "Forked whole-state work (refresh, snapshot), from the "
                               "fork to its result taken", ["kind"], registry=REGISTRY,
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
PROJECTION_ROWS_REMOVED = Counter("backstop_projection_rows_removed_total", "Position rows a full refresh removed: "
                                  "closed by its seq while the batches' rows waited", registry=REGISTRY)
BACKGROUND_FAILURES = Counter("backstop_background_failures_total", "Forked whole-state work whose child did not "
                              "deliver", ["kind"], registry=REGISTRY)
