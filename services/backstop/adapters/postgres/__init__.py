"""PostgreSQL adapter (asyncpg)."""
