"""Kafka adapter: admin (topics), the input batch source, the outbox relay's producer."""
