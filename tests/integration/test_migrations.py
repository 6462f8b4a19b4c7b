"""`backstop db migrate` against a real PostgreSQL: idempotent, checksummed, serialized by an advisory lock."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
import pytest
from service_harness import MIGRATIONS, migrate_before

from backstop.adapters.postgres.migrations import MigrationError, discover, migrate
from backstop.adapters.postgres.store import JOURNAL_COLUMNS

pytestmark = pytest.mark.integration


async def _cli_migrate(dsn: str, migrations_dir: Path | None = None) -> tuple[int, str, str]:
    env = dict(os.environ)
    env.pop("BACKSTOP_MIGRATIONS_DIR", None)
    if migrations_dir is not None:
        env["BACKSTOP_MIGRATIONS_DIR"] = str(migrations_dir)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backstop.entrypoints.cli", "db", "migrate", "--dsn", dsn, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _applied(dsn: str) -> dict[str, str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    finally:
        await connection.close()
    return {r["version"]: r["checksum"] for r in rows}


async def test_db_migrate_applies_everything_once_then_nothing(empty_database: str) -> None:
    expected = discover(MIGRATIONS)
    code, out, err = await _cli_migrate(empty_database)
    assert code == 0, err
    assert [line.removeprefix("applied ") for line in out.splitlines() if line.startswith("applied ")] == [
        m.version for m in expected]
    assert f"({len(expected)} migration(s) applied now)" in out
    assert await _applied(empty_database) == {m.version: m.checksum for m in expected}

    code, out, err = await _cli_migrate(empty_database)
    assert code == 0, err
    assert "applied 0" not in out
    assert "(0 migration(s) applied now)" in out
    assert await _applied(empty_database) == {m.version: m.checksum for m in expected}


async def test_db_migrate_refuses_a_migration_edited_after_it_was_applied(empty_database: str,
                                                                         tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    code, _, err = await _cli_migrate(empty_database, directory)
    assert code == 0, err
    before = await _applied(empty_database)

    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    code, _, err = await _cli_migrate(empty_database, directory)
    assert code == 1
    assert f"migration {first.name} changed after it was applied" in err
    assert "write a new migration instead" in err
    assert "Traceback" not in err
    assert await _applied(empty_database) == before


async def test_db_migrate_refuses_a_database_migrated_by_a_newer_backstop(empty_database: str,
                                                                         tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9999_from_the_future.sql").write_text("CREATE TABLE from_the_future (x int);\n")
    assert "9999" in await migrate(empty_database, directory)

    (directory / "9999_from_the_future.sql").unlink()
    with pytest.raises(MigrationError, match="9999"):
        await migrate(empty_database, directory)


async def test_a_failing_migration_leaves_nothing_behind(empty_database: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9998_half_done.sql").write_text("CREATE TABLE half_done (x int);\nSELECT no_such_function();\n")
    with pytest.raises(asyncpg.PostgresError):
        await migrate(empty_database, directory)
    applied = await _applied(empty_database)
    assert "9998" not in applied
    assert set(applied) == {m.version for m in discover(MIGRATIONS)}  # the good ones before it stay applied
    connection = await asyncpg.connect(empty_database)
    try:
        assert await connection.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await connection.close()


async def test_two_migrators_at_once_apply_each_migration_once(empty_database: str) -> None:
    first, second = await asyncio.gather(migrate(empty_database), migrate(empty_database))
    expected = [m.version for m in discover(MIGRATIONS)]
    assert sorted([first, second], key=len) == [[], expected]
    assert list(await _applied(empty_database)) == expected


async def test_the_relay_cursor_migration_starts_after_the_rows_already_published(empty_database: str,
                                                                                  tmp_path: Path) -> None:
    """0003 replaces the per-row published flag with one cursor: it starts right before the first unpublished row
    of an outbox that has a published prefix, and no row is published twice or skipped."""
    await migrate_before(empty_database, tmp_path, "0003")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.executemany(
            "INSERT INTO outbox (id, topic, key, record_id, payload, published) VALUES ($1, 't', 'k', $2, '{}', $3)",
            [(n, f"r{n}", n <= 7) for n in range(1, 11)])
        await migrate(empty_database)
        assert await connection.fetchval("SELECT published_up_to FROM relay_cursor") == 7
        columns = {r["column_name"] for r in await connection.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox'")}
        assert "published" not in columns
    finally:
        await connection.close()


POSTING_INSERT = ("INSERT INTO postings (position, id, seq, ts, kind, debit_account, credit_account, asset, amount, "
                  "debit_balance_after, credit_balance_after, prev_hash, hash, record) "
                  "VALUES ($1, $2, $3, 0, 'fee', 'wallet:a:USDT', 'fund:F', 'USDT', 1, -1, 1, 'p', $4, '{}')")
JOURNAL_ROW = "INSERT INTO journal VALUES (1, 't', 0, 0, 'fill', 0, '{}', 'h')"


async def test_the_postings_lose_their_account_indexes_and_keep_their_rows_and_constraints(empty_database: str,
                                                                                         tmp_path: Path) -> None:
    """0010 drops the postings' indexes by account (the write path's largest cost): a database migrated before it
    keeps every posting, and the constraints of the record still refuse a posting twice or one without its seq."""
    await migrate_before(empty_database, tmp_path, "0010")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute(JOURNAL_ROW)
        await connection.executemany(POSTING_INSERT, [(1, "p-1", 1, "h1"), (2, "p-2", 1, "h2")])
        indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'postings'"
        assert {"postings_debit", "postings_credit"} <= {r["indexname"] for r in await connection.fetch(indexes)}
        assert (await migrate_before(empty_database, tmp_path, "0015"))[0] == "0010"  # 0015 tested below
        assert {r["indexname"] for r in await connection.fetch(indexes)} == {  # 0013 dropped the hash's
            "postings_pkey", "postings_id_key", "postings_liquidation"}
        assert [tuple(r) for r in await connection.fetch("SELECT position, id FROM postings ORDER BY position")] == [
            (1, "p-1"), (2, "p-2")]
        await connection.execute(POSTING_INSERT, 3, "p-3", 1, "h3")
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(POSTING_INSERT, 4, "p-1", 1, "h4")
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await connection.execute(POSTING_INSERT, 4, "p-4", 2, "h4")
    finally:
        await connection.close()


async def test_the_chains_hashes_lose_their_unique_indexes_and_the_ids_keep_theirs(empty_database: str,
                                                                                  tmp_path: Path) -> None:
    """0013 drops the UNIQUE constraint on the postings', fund-ledger entries' and ADL events' hash (the chain walk
    checks the hashes): rows written before stay, an id is still refused twice, and nothing else changed."""
    await migrate_before(empty_database, tmp_path, "0013")
    constraints = ("SELECT conrelid::regclass::text AS owner, conname FROM pg_constraint "
                   "WHERE conrelid IN ('postings'::regclass, 'fund_ledger'::regclass, 'adl_events'::regclass) "
                   "AND contype = 'u'")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute(JOURNAL_ROW)
        await connection.execute(POSTING_INSERT, 1, "p-1", 1, "h1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(POSTING_INSERT, 2, "p-2", 1, "h1")
        before = {tuple(r) for r in await connection.fetch(constraints)}
        assert (await migrate_before(empty_database, tmp_path, "0015"))[0] == "0013"  # 0015 tested below
        after = {tuple(r) for r in await connection.fetch(constraints)}
        assert before - after == {("postings", "postings_hash_key"), ("fund_ledger", "fund_ledger_hash_key"),
                                  ("adl_events", "adl_events_hash_key")}
        assert after == {("postings", "postings_id_key"), ("fund_ledger", "fund_ledger_id_key"),
                         ("adl_events", "adl_events_id_key")}
        assert [tuple(r) for r in await connection.fetch("SELECT position, id, hash FROM postings")] == [
            (1, "p-1", "h1")]
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(POSTING_INSERT, 2, "p-1", 1, "h2")
    finally:
        await connection.close()


async def test_the_projections_leave_room_on_each_page_for_their_rows_next_versions(empty_database: str,
                                                                                     tmp_path: Path) -> None:
    """0014 sets the fillfactor of the tables the projections rewrite in place (so an update stays on its page, a
    HOT update); rows written before stay as they are, and nothing else changes."""
    await migrate_before(empty_database, tmp_path, "0014")
    options = "SELECT relname, reloptions FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute("INSERT INTO account_wallets (account_id, asset, wallet, seq) "
                                 "VALUES ('a-1', 'USDT', 10, 1)")
        before = {r["relname"]: r["reloptions"] for r in await connection.fetch(options)}
        assert (await migrate_before(empty_database, tmp_path, "0015"))[0] == "0014"  # 0015 renames a table
        after = {r["relname"]: r["reloptions"] for r in await connection.fetch(options)}
        changed = {name: after[name] for name in after if after[name] != before[name]}
        assert changed == {name: ["fillfactor=70"] for name in ("account_wallets", "positions", "funds", "fund_lots")}
        assert [tuple(r) for r in await connection.fetch("SELECT account_id, asset, seq FROM account_wallets")] == [
            ("a-1", "USDT", 1)]
    finally:
        await connection.close()


POSTING_RECORD = {"adl_event_id": None, "amount": "12.5", "asset": "USDT", "credit_account": "fund:F",
                  "credit_balance_after": "12.5", "debit_account": "wallet:a:USDT", "debit_balance_after": "-12.5",
                  "fill_id": "f-1", "fund_entry_id": None, "hash": "h1", "id": "p-1-0", "kind": "fee",
                  "liquidation_id": None, "prev_hash": "0" * 64, "schema_version": 1, "seq": 1, "transfer_id": None,
                  "ts": 1760000000000}


async def test_the_postings_are_stored_once_and_read_with_every_column_as_before(empty_database: str,
                                                                                 tmp_path: Path) -> None:
    """0015 keeps of each posting its record and the columns the write path and the relay use (position, id, seq,
    asset) in `posting_records`; `postings` becomes a view of every column 0007 defined, from the record. A posting
    written before reads the same through the view; one written after reads as it was written; the table stays
    append-only and its seq checked; the id's UNIQUE index is gone (audit verify compares every stored posting with
    a replay's)."""
    await migrate_before(empty_database, tmp_path, "0015")
    record = orjson.dumps(POSTING_RECORD, option=orjson.OPT_SORT_KEYS).decode()
    every_column = ("SELECT position, id, seq, ts, kind, debit_account, credit_account, asset, amount, "
                    "debit_balance_after, credit_balance_after, transfer_id, fill_id, liquidation_id, adl_event_id, "
                    "fund_entry_id, prev_hash, hash, record FROM postings ORDER BY position")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute(JOURNAL_ROW)
        await connection.execute(
            "INSERT INTO postings (position, id, seq, ts, kind, debit_account, credit_account, asset, amount, "
            "debit_balance_after, credit_balance_after, fill_id, prev_hash, hash, record) "
            "VALUES (1, 'p-1-0', 1, 1760000000000, 'fee', 'wallet:a:USDT', 'fund:F', 'USDT', 12.5, -12.5, 12.5, "
            "'f-1', $1, 'h1', $2)", "0" * 64, record)
        before = [tuple(r) for r in await connection.fetch(every_column)]
        assert await migrate_before(empty_database, tmp_path, "0016") == ["0015"]
        assert [tuple(r) for r in await connection.fetch(every_column)] == before
        assert before[0][:9] == (1, "p-1-0", 1, 1760000000000, "fee", "wallet:a:USDT", "fund:F", "USDT",
                                 Decimal("12.5"))
        columns = [r["column_name"] for r in await connection.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'posting_records' "
            "ORDER BY ordinal_position")]
        assert columns == ["position", "id", "seq", "asset", "record"]
        indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'posting_records'"
        assert {r["indexname"] for r in await connection.fetch(indexes)} == {"posting_records_pkey"}
        again = record.replace('"id":"p-1-0"', '"id":"p-1-1"').replace('"hash":"h1"', '"hash":"h2"')
        insert = "INSERT INTO posting_records (position, id, seq, asset, record) VALUES ($1, $2, $3, 'USDT', $4)"
        await connection.execute(insert, 2, "p-1-1", 1, again)
        assert [r["hash"] for r in await connection.fetch(every_column)] == ["h1", "h2"]
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="seq 2 is not in the journal"):
            await connection.execute(insert, 3, "p-2-0", 2, again)
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(insert, 2, "p-1-2", 1, again)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await connection.execute("DELETE FROM posting_records")
    finally:
        await connection.close()


async def test_every_effect_row_still_names_a_journal_seq_once_checked_per_statement(empty_database: str,
                                                                                    tmp_path: Path) -> None:
    """0011 checks the seq of the postings, held identities, findings, fund-ledger entries and ADL events once per
    statement instead of row by row: a statement with one row whose seq is not in the journal writes nothing and
    fails as the foreign key did; rows written before the upgrade stay."""
    await migrate_before(empty_database, tmp_path, "0011")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute("INSERT INTO journal VALUES (1, 't', 0, 0, 'fill', 0, '{}', 'h'), "
                                 "(2, 't', 0, 1, 'fill', 0, '{}', 'h')")
        await connection.execute("INSERT INTO applied_ids VALUES ($1, $2, 1)", b"a" * 16, b"c" * 8)
        assert (await migrate(empty_database))[0] == "0011"
        inserts = {
            "applied_ids": ("INSERT INTO applied_ids SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[])",
                            lambda n, seq: (b"%015d" % n + b"k", b"c" * 8, seq)),
            "findings": ("INSERT INTO findings (id, seq, ts, kind, details) SELECT * FROM unnest($1::text[], "
                         "$2::bigint[], $3::bigint[], $4::text[], $5::jsonb[])",
                         lambda n, seq: (f"f-{n}", seq, 0, "k", "{}")),
        }
        for sql, row in inserts.values():
            for rows, refused in (([row(1, 1), row(2, 2)], False), ([row(3, 2), row(4, 3)], True)):
                columns = [list(column) for column in zip(*rows, strict=True)]
                if refused:
                    with pytest.raises(asyncpg.ForeignKeyViolationError, match="seq 3 is not in the journal"):
                        await connection.execute(sql, *columns)
                else:
                    await connection.execute(sql, *columns)
        assert await connection.fetchval("SELECT count(*) FROM applied_ids") == 3  # the old row and two new
        assert await connection.fetchval("SELECT count(*) FROM findings") == 2
        compression = await connection.fetchval(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'outbox'::regclass AND attname = 'payload'")
        try:  # a quantile block is stored with lz4 where the server has it
            await connection.execute("CREATE TEMP TABLE lz4_here (t text COMPRESSION lz4)")
            assert compression == b"l"
        except asyncpg.FeatureNotSupportedError:
            assert compression != b"l"
        triggers = {r["tgname"] for r in await connection.fetch("SELECT tgname FROM pg_trigger")}
        assert {f"{t}_seq_in_journal" for t in ("applied_ids", "findings", "fund_ledger", "adl_events")} <= triggers
        assert "posting_blocks_continue" in triggers  # 0017: a block per batch, its seqs checked as it is inserted
    finally:
        await connection.close()


def journal_rows(seqs: range | list[int]) -> list[tuple[int, str, int, int, str, int, str, str]]:
    return [(seq, "t", 0, seq, "fill", 0, "{}", "h") for seq in seqs]


async def test_the_journal_is_held_gapless_and_an_effect_rows_seq_checked_by_its_range(empty_database: str,
                                                                                      tmp_path: Path) -> None:
    """0016: a journal with a gap is not upgraded (nothing changes); once upgraded, an insert into the journal must
    continue it from its last seq without a gap, and an effect row's seq must lie between 1 and the journal's last,
    the same rule and error as the row-by-row lookup it replaces."""
    await migrate_before(empty_database, tmp_path, "0016")
    connection = await asyncpg.connect(empty_database)
    columns = JOURNAL_COLUMNS
    try:
        await connection.copy_records_to_table("journal", columns=columns, records=journal_rows([1, 2, 4]))
        with pytest.raises(asyncpg.DataError, match=r"not gapless from seq 1 \(3 rows, the last seq 4\)"):
            await migrate(empty_database)
        assert "0016" not in await _applied(empty_database)
        async with connection.transaction():  # the gap mended as an owner can, the triggers off
            await connection.execute("ALTER TABLE journal DISABLE TRIGGER USER")
            await connection.execute("DELETE FROM journal WHERE seq = 4")
            await connection.execute("ALTER TABLE journal ENABLE TRIGGER USER")
        assert (await migrate(empty_database))[0] == "0016"

        for seqs, error, message in (([4, 5], asyncpg.IntegrityConstraintViolationError, "seqs 4 to 5 .2 rows. do "
                                      "not continue the journal at seq 3 without a gap"),
                                     ([3, 5], asyncpg.IntegrityConstraintViolationError, "seqs 3 to 5 .2 rows."),
                                     ([2, 3], asyncpg.UniqueViolationError, "journal_pkey")):
            with pytest.raises(error, match=message):
                await connection.copy_records_to_table("journal", columns=columns, records=journal_rows(seqs))
        await connection.copy_records_to_table("journal", columns=columns, records=journal_rows(range(3, 6)))
        await connection.execute("INSERT INTO journal VALUES (6, 't', 0, 6, 'fill', 0, '{}', 'h')")
        assert await connection.fetchval("SELECT count(*) = max(seq) FROM journal")

        insert = "INSERT INTO applied_ids SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[])"
        for number, (seqs, missing) in enumerate((([1, 7], "7"), ([0, 2], "0"), ([6, 9, 8], "(9|8)"))):
            keys = [b"%014d%02d" % (number, i) for i in range(len(seqs))]
            with pytest.raises(asyncpg.ForeignKeyViolationError, match=f"seq {missing} is not in the journal"):
                await connection.execute(insert, keys, [b"c" * 8] * len(seqs), seqs)
        await connection.execute(insert, [b"a" * 16, b"b" * 16], [b"c" * 8] * 2, [1, 6])
        assert await connection.fetchval("SELECT count(*) FROM applied_ids") == 2  # only the statement within range
    finally:
        await connection.close()


def posting_record(position: int, seq: int, asset: str = "USDT") -> str:
    record = POSTING_RECORD | {"id": f"p-{seq}-{position}", "seq": seq, "asset": asset, "hash": f"h{position}"}
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()


EVERY_POSTING_COLUMN = ("SELECT position, id, seq, ts, kind, debit_account, credit_account, asset, amount, "
                        "debit_balance_after, credit_balance_after, transfer_id, fill_id, liquidation_id, "
                        "adl_event_id, fund_entry_id, prev_hash, hash, record FROM postings ORDER BY position")


async def test_the_postings_move_into_blocks_read_as_before_and_a_block_must_continue_them(empty_database: str,
                                                                                          tmp_path: Path) -> None:
    """0017: the postings written before move into blocks and read through the view `postings` as they did, every
    column; a new block (a batch's postings, one row) must continue the positions without a gap and name seqs in the
    journal, none before the last block's; blocks are append-only."""
    await migrate_before(empty_database, tmp_path, "0017")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.executemany("INSERT INTO journal VALUES ($1, 't', 0, $1, 'fill', 0, '{}', 'h')",
                                     [(seq,) for seq in (1, 2, 3)])
        await connection.executemany(
            "INSERT INTO posting_records (position, id, seq, asset, record) VALUES ($1, $2, $3, $4, $5)",
            [(position, f"p-{seq}-{position}", seq, "USDT", posting_record(position, seq))
             for position, seq in ((1, 1), (2, 1), (3, 2))])
        before = [tuple(r) for r in await connection.fetch(EVERY_POSTING_COLUMN)]
        assert [r[:3] for r in before] == [(1, "p-1-1", 1), (2, "p-1-2", 1), (3, "p-2-3", 2)]
        assert await migrate_before(empty_database, tmp_path, "0018") == ["0017"]
        assert [tuple(r) for r in await connection.fetch(EVERY_POSTING_COLUMN)] == before
        assert await connection.fetchval("SELECT to_regclass('posting_records')") is None
        assert [tuple(r) for r in await connection.fetch(
            "SELECT last_position, postings, first_seq, last_seq FROM posting_blocks")] == [(3, 3, 1, 2)]

        insert = ("INSERT INTO posting_blocks (last_position, postings, first_seq, last_seq, records) "
                  "VALUES ($1, $2, $3, $4, $5)")

        def block(first: int, seqs: list[int]) -> tuple[int, int, int, int, str]:
            lines = "".join(posting_record(first + i, seq, "BTC") + "\n" for i, seq in enumerate(seqs))
            return first + len(seqs) - 1, len(seqs), seqs[0], seqs[-1], lines

        await connection.execute(insert, *block(4, [2, 3]))
        rows = await connection.fetch(EVERY_POSTING_COLUMN)
        assert [(r["position"], r["id"], r["seq"], r["asset"]) for r in rows][3:] == [(4, "p-2-4", 2, "BTC"),
                                                                                     (5, "p-3-5", 3, "BTC")]
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="postings 7 to 7 do not continue"):
            await connection.execute(insert, *block(7, [3]))  # position 6 skipped
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="postings 5 to 5 do not continue"):
            await connection.execute(insert, *block(5, [3]))  # position 5 again
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="seq 4 is not in the journal"):
            await connection.execute(insert, *block(6, [3, 4]))
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="seq 2 is not in the journal after seq 3"):
            await connection.execute(insert, *block(6, [2]))  # before the last block's last
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(insert, 6, 1, 3, 2, "x\n")  # its last seq before its first
        await connection.execute(insert, *block(6, [3]))
        assert await connection.fetchval("SELECT count(*) FROM postings") == 6
        for statement in ("UPDATE posting_blocks SET records = ''", "DELETE FROM posting_blocks",
                          "TRUNCATE posting_blocks"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await connection.execute(statement)
        compression = await connection.fetchval(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'posting_blocks'::regclass "
            "AND attname = 'records'")
        try:  # stored with lz4 where the server has it
            await connection.execute("CREATE TEMP TABLE lz4_here (t text COMPRESSION lz4)")
            assert compression == b"l"
        except asyncpg.FeatureNotSupportedError:
            assert compression != b"l"
    finally:
        await connection.close()


async def test_postings_with_a_gap_are_not_moved_into_blocks(empty_database: str, tmp_path: Path) -> None:
    """0017 refuses, changing nothing, postings whose positions are not gapless from 1."""
    await migrate_before(empty_database, tmp_path, "0017")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute(JOURNAL_ROW)
        await connection.executemany(
            "INSERT INTO posting_records (position, id, seq, asset, record) VALUES ($1, $2, 1, 'USDT', $3)",
            [(position, f"p-1-{position}", posting_record(position, 1)) for position in (1, 3)])
        with pytest.raises(asyncpg.DataError, match="not gapless from position 1"):
            await migrate(empty_database)
        assert await connection.fetchval("SELECT count(*) FROM posting_records") == 2
        assert await connection.fetchval("SELECT to_regclass('posting_blocks')") is None
    finally:
        await connection.close()


async def test_the_adl_queue_loses_its_primary_key_and_keeps_its_rows(empty_database: str, tmp_path: Path) -> None:
    """0018: the queue, replaced whole by each refresh, is left without an index (its key cost the refresh most of
    its time); its rows stay, and nothing else changes."""
    await migrate_before(empty_database, tmp_path, "0018")
    indexes = "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'adl_queue'::regclass"
    every_index = "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid " \
                  "WHERE c.relnamespace = 'public'::regnamespace"
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute("INSERT INTO adl_queue VALUES ('BTCUSDT', 'long', 'a-1', 1, 0.5, 5, 7)")
        assert [r[0] for r in await connection.fetch(indexes)] == ["adl_queue_pkey"]
        before = {r[0] for r in await connection.fetch(every_index)}
        assert await migrate_before(empty_database, tmp_path, "0019") == ["0018"]
        assert await connection.fetch(indexes) == []
        assert {r[0] for r in await connection.fetch(every_index)} == before - {"adl_queue_pkey"}
        assert [tuple(r) for r in await connection.fetch("SELECT * FROM adl_queue")] == [
            ("BTCUSDT", "long", "a-1", 1, Decimal("0.5"), 5, 7)]
    finally:
        await connection.close()


async def test_input_topic_ids_start_empty_and_the_service_may_write_them(empty_database: str, tmp_path: Path) -> None:
    """0019: a table of each input topic's id, empty on a database that has read input already (the service takes
    the ids at its next start); the service's role may insert and update it, not delete from it."""
    await migrate_before(empty_database, tmp_path, "0019")
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute("INSERT INTO consumed_offsets VALUES ('bt.transfers', 0, 3)")
        assert await migrate(empty_database) == ["0019"]
        assert await connection.fetch("SELECT * FROM input_topics") == []
        grants = await connection.fetch("SELECT privilege_type FROM information_schema.role_table_grants WHERE "
                                        "table_name = 'input_topics' AND grantee = 'backstop_service'")
        assert sorted(r[0] for r in grants) == ["INSERT", "SELECT", "UPDATE"]
        assert await connection.fetchval("SELECT next_offset FROM consumed_offsets") == 3
    finally:
        await connection.close()
