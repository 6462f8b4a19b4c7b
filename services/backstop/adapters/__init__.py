"""Thin adapters around the core: files, PostgreSQL, Kafka. They translate and persist; no domain rules."""
