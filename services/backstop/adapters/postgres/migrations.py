"""Versioned SQL migrations (schemas/postgres/NNNN_name.sql), applied once each, in order, under a lock.

`schema_migrations` records each applied version with the SHA-256 of its file; a file that changed after it was
applied is refused, never re-run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATION_LOCK = 0x6261636B73746F70  # "backstop": one migrator at a time
DEFAULT_DIR = Path(__file__).resolve().parents[4] / "schemas" / "postgres"


class MigrationError(Exception):
    """A migration cannot be applied safely; nothing was changed by this run."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path
    sql: str

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def checksum(self) -> str:
        # Line endings normalized, so a checkout with CRLF endings does not look like an edited migration.
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode()).hexdigest()


def migrations_dir() -> Path:
    return Path(os.environ.get("BACKSTOP_MIGRATIONS_DIR", DEFAULT_DIR))


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory} (set BACKSTOP_MIGRATIONS_DIR)")
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        version = path.stem.split("_", 1)[0]
        if not version.isdigit():
            raise MigrationError(f"{path.name}: a migration file is named NNNN_description.sql")
        found.append(Migration(version, path, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version in {directory}")
    if not found:
        raise MigrationError(f"no migration files (NNNN_description.sql) in {directory}")
    return found


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations, each in its own transaction, holding an advisory lock so that two
    migrators never interleave; returns the versions applied now (empty when up to date).

    Raises MigrationError, before changing anything, when an applied file changed or the database knows
    migrations this directory does not."""
    pending = discover(directory)
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, checksum text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())")
            applied = {r["version"]: r["checksum"] for r in
                       await connection.fetch("SELECT version, checksum FROM schema_migrations")}
            unknown = sorted(set(applied) - {m.version for m in pending})
            if unknown:
                raise MigrationError(f"the database has migration(s) {', '.join(unknown)} applied that are not in "
                                     f"{pending[0].path.parent}: it was migrated by a newer (or different) backstop")
            done: list[str] = []
            for migration in pending:
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(f"migration {migration.path.name} changed after it was applied "
                                             f"(checksum {applied[migration.version][:12]} in the database, "
                                             f"{migration.checksum[:12]} on disk): write a new migration instead")
                    continue
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                                             migration.version, migration.checksum)
                done.append(migration.version)
            return done
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await connection.close()
