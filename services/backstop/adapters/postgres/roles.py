"""The service's login role: created by `backstop db migrate` (which runs as the tables' owner), and checked before
the service starts: a role that owns the record's tables (or may act as their owner, or is a superuser) could switch
the append-only triggers off and rewrite the record, and `serve` refuses to run as one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field

import asyncpg

from backstop.adapters.postgres.migrations import MigrationError
from backstop.settings import dsn_password, dsn_user

SERVICE_GROUP = "backstop_service"  # the group role of 0002_roles.sql: append to the record, never rewrite it
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


@dataclass(frozen=True, slots=True)
class ServiceLogin:
    """The login role `serve` connects as, and its password (None: left as it is, or none at all)."""

    role: str
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_dsn(cls, dsn: str) -> ServiceLogin:
        role = dsn_user(dsn)
        if not role:
            raise MigrationError("the service's DSN (BACKSTOP_PG_DSN) names no user: name the service's login role "
                                 "in it, e.g. postgresql://backstop_svc@host/db")
        return cls(role, dsn_password(dsn))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _saslprep(password: str) -> bytes:
    """SASLprep (RFC 4013) as PostgreSQL applies it to a SCRAM password: ASCII as it is; otherwise mapped and
    NFKC-normalized, and when the result holds a prohibited character the raw bytes are used, as PostgreSQL does."""
    if password.isascii():
        return password.encode()
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c))
    normalized = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
                  stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1)
    if not normalized or any(test(c) for c in normalized for test in prohibited):
        return password.encode()
    if any(stringprep.in_table_d1(c) for c in normalized) and (
            any(stringprep.in_table_d2(c) for c in normalized)
            or not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1]))):
        return password.encode()
    return normalized.encode()


def scram_verifier(password: str, *, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802, 7677). Sent instead of the password,
    as psql's \\password does, so that the password never reaches the server, its logs or its statistics."""
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def rewrite_powers(connection: asyncpg.Connection, role: str) -> str | None:
    """Why `role` could rewrite the record (None: it cannot): it is a superuser, may create roles (and so join the
    owner's), or owns (or may act as the owner of) a table of the service or their schema."""
    if await connection.fetchval("SELECT to_regclass('journal')") is None:
        return "the database has no journal table: migrate it first (backstop db migrate, as the tables' owner)"
    row = await connection.fetchrow(
        "SELECT r.rolsuper, r.rolcreaterole, n.nspname, pg_has_role(r.oid, n.nspowner, 'MEMBER') AS owns_schema, "
        "array(SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p') "
        "      AND pg_has_role(r.oid, c.relowner, 'MEMBER') ORDER BY c.relname) AS owned "
        "FROM pg_roles r, pg_namespace n "
        "WHERE r.rolname = $1 AND n.oid = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass('journal'))",
        role)
    if row is None:
        return f"there is no role {role}"
    if row["rolsuper"]:
        return f"{role} is a superuser: it could switch the append-only triggers off and rewrite the record"
    if row["owned"]:
        tables = row["owned"]
        named = ", ".join(tables[:4]) + (f" and {len(tables) - 4} more" if len(tables) > 4 else "")
        return (f"{role} owns (or may act as the owner of) {named}: it could switch the append-only triggers off "
                f"and rewrite the record")
    if row["owns_schema"]:
        return f"{role} owns (or may act as the owner of) the schema {row['nspname']}: it could drop the record"
    if row["rolcreaterole"]:
        return f"{role} has CREATEROLE: it could make itself a member of the tables' owner and rewrite the record"
    return None


async def _create_or_alter(connection: asyncpg.Connection, login: ServiceLogin, existed: bool) -> bool:
    password = ("" if login.password is None else
                " PASSWORD '" + scram_verifier(login.password, salt=secrets.token_bytes(16)) + "'")
    role = quote_ident(login.role)
    if not existed:
        try:
            await connection.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT"
                                     f"{password} IN ROLE {SERVICE_GROUP}")
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            existed = True  # created meanwhile by a migration of another database on this server
    if existed:
        await connection.execute(f"ALTER ROLE {role} LOGIN{password}")
        await connection.execute(f"GRANT {SERVICE_GROUP} TO {role}")
    return existed


async def ensure_service_role(dsn: str, login: ServiceLogin) -> str:
    """Create the service's login role (or bring an existing one in line): LOGIN, a member of backstop_service,
    with the password given (if one is). Idempotent. Runs as the tables' owner, after the migrations; returns what
    it did, in one line. Raises MigrationError when the role would be able to rewrite the record."""
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        me = await connection.fetchval("SELECT current_user")
        if login.role == me:
            raise MigrationError(f"the service's DSN (BACKSTOP_PG_DSN) names {me}, the role migrations run as: "
                                 f"`backstop serve` runs as a login role of its own that cannot rewrite the record; "
                                 f"name another user in BACKSTOP_PG_DSN, e.g. backstop_svc")
        existed = await connection.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", login.role) or False
        if existed:
            problem = await rewrite_powers(connection, login.role)
            if problem:
                raise MigrationError(f"the service's login role (BACKSTOP_PG_DSN): {problem}")
        try:
            existed = await _create_or_alter(connection, login, existed)
        except asyncpg.PostgresError as error:
            raise MigrationError(f"cannot create or update the service's login role {login.role} "
                                 f"({type(error).__name__}: {error}); the role migrations run as needs CREATEROLE, "
                                 f"or an administrator creates it") from None
        problem = await rewrite_powers(connection, login.role)
        if problem:
            raise MigrationError(f"the service's login role (BACKSTOP_PG_DSN): {problem}")
    finally:
        await connection.close()
    done = "exists" if existed else "created"
    secret = ("password left as it was (BACKSTOP_PG_DSN has none)" if login.password is None and existed else
              "no password (BACKSTOP_PG_DSN has none)" if login.password is None else "password set")
    return f"service login role {login.role}: {done}, member of {SERVICE_GROUP}, {secret}"
