"""The application layer between the pure core and the adapters: a consumed batch in, rows to persist out."""
