"""`backstop serve`: the ledger processor and the outbox relay, hosted by a faust-streaming app."""
