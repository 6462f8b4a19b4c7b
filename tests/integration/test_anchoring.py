"""Rewritten history is detectable: the owner of the tables can switch the append-only triggers off and rewrite the
record with every hash chain recomputed, but cannot sign; `backstop audit verify --dsn --anchor-key-file` checks the
stored history against the checkpoints the service signed with every batch, and the service will not sign on from
a head it did not sign."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from service_harness import ANCHOR_KEY_FILE, as_role, in_process, settings_for, stored, wait_caught_up

from backstop.adapters.kafka.tools import produce_file
from backstop.core.hashing import canonical_json, chain_hash, combine
from backstop.core.numbers import text
from backstop.entrypoints.audit import derive
from backstop.entrypoints.cli import main as cli
from backstop.service.app import ServeRefused, preflight
from backstop.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "06-bad-debt.jsonl"  # 14 records; lines 8-14 come after the first 7 in event time
LEDGER_COLUMNS = ["position", "id", "seq", "ts", "fund_id", "kind", "amount", "balance_after", "liquidation_id",
                  "counter_account", "prev_hash", "hash", "record"]
ADL_COLUMNS = ["position", "id", "seq", "ts", "symbol", "liquidation_id", "fund_id", "account_id", "side", "qty",
               "price", "rank", "score", "quantile", "prev_hash", "hash", "record"]
NUMERIC = {"amount", "balance_after", "qty", "price", "score", "debit_balance_after", "credit_balance_after"}


async def run_service(settings: Settings, owner_dsn: str, tmp_path: Path) -> None:
    """The example in two parts, the second produced once the first is in: checkpoints at seq 7 or before, and 14."""
    lines = EXAMPLE.read_bytes().splitlines(keepends=True)
    async with in_process(settings):
        for number, part in enumerate((lines[:7], lines[7:])):
            path = tmp_path / f"part{number}.jsonl"
            path.write_bytes(b"".join(part))
            await produce_file(settings, path)
            await wait_caught_up(owner_dsn, applied=7 if number == 0 else 14)


def verify(dsn: str, capsys: pytest.CaptureFixture[str], *keys: Path) -> tuple[int, list[str]]:
    code = cli(["audit", "verify", "--dsn", dsn, *(a for key in keys for a in ("--anchor-key-file", str(key)))])
    return code, capsys.readouterr().out.splitlines()


def failure(lines: list[str]) -> str:
    failed = [line for line in lines if line.startswith("FAIL  ")]
    assert len(failed) == 1, lines
    return failed[0].removeprefix("FAIL  ")


async def checkpoint_seqs(dsn: str) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        return [r["seq"] for r in await connection.fetch("SELECT seq FROM checkpoints ORDER BY seq")]
    finally:
        await connection.close()


def rechain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a forger does after changing an amount: every balance after it and every hash made consistent again."""
    previous, balances = "0" * 64, {}
    for record in records:
        balance = balances[record["fund_id"]] = balances.get(record["fund_id"], Decimal(0)) + Decimal(record["amount"])
        record["balance_after"] = text(balance)
        record["prev_hash"] = previous
        record["hash"] = previous = chain_hash({k: v for k, v in record.items() if k != "hash"})
    return records


async def rewrite_as_owner(owner_dsn: str, *, ledger: list[dict[str, Any]], adl_events: list[dict[str, Any]],
                           journal: dict[int, bytes], state: str | None,
                           postings: list[dict[str, Any]] | None = None) -> None:
    """As the tables' owner: the triggers off, the journal rows, the fund ledger, the ADL events, (given) the
    postings, the fund balances and the engine head replaced by a consistent forgery, the triggers on again."""
    tables = ("journal", "fund_ledger", "adl_events", "posting_blocks")
    ledger_head = ledger[-1]["hash"] if ledger else "0" * 64
    adl_head = adl_events[-1]["hash"] if adl_events else "0" * 64
    connection = await asyncpg.connect(owner_dsn)
    try:
        async with connection.transaction():
            for table in tables:
                await connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            for seq, payload in journal.items():
                await connection.execute("UPDATE journal SET payload = $2, payload_hash = $3 WHERE seq = $1", seq,
                                         payload.decode(), hashlib.sha256(payload).hexdigest())
            if postings is not None:  # one block of them all (migration 0017)
                await connection.execute("DELETE FROM posting_blocks")
                if postings:
                    await connection.execute(
                        "INSERT INTO posting_blocks (last_position, postings, first_seq, last_seq, records) "
                        "VALUES ($1, $2, $3, $4, $5)", len(postings), len(postings), postings[0]["seq"],
                        postings[-1]["seq"], "".join(canonical_json(p).decode() + "\n" for p in postings))
            for table, columns, records in (("fund_ledger", LEDGER_COLUMNS, ledger),
                                            ("adl_events", ADL_COLUMNS, adl_events)):
                await connection.execute(f"DELETE FROM {table}")
                rows = [[position, *(Decimal(r[c]) if c in NUMERIC else r[c] for c in columns[1:-1]),
                         canonical_json(r).decode()] for position, r in enumerate(records, start=1)]
                await connection.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join(f'${n}' for n in range(1, len(columns) + 1))})", rows)
            balances = {r["fund_id"]: Decimal(r["balance_after"]) for r in ledger}
            for fund_id, balance in balances.items():
                await connection.execute("UPDATE funds SET balance = $2, bad_debt = greatest(-$2::numeric, 0) "
                                         "WHERE fund_id = $1", fund_id, balance)
            await connection.execute("UPDATE engine_head SET ledger_head = $1, adl_head = $2, head_hash = $3, "
                                     "state_hash = coalesce($4, state_hash)", ledger_head, adl_head,
                                     combine(ledger_head, adl_head), state)
            for table in tables:
                await connection.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    finally:
        await connection.close()


async def forge_journal(owner_dsn: str, change: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrites the first journal record `change` alters (in place), and replays the forged journal into every
    derived table, as a careful owner would: the stored history is consistent again. Returns the seq changed."""
    connection = await asyncpg.connect(owner_dsn)
    try:
        payloads = {r["seq"]: r["payload"].encode() for r in
                    await connection.fetch("SELECT seq, payload FROM journal ORDER BY seq")}
    finally:
        await connection.close()
    changed = {}
    for seq, payload in payloads.items():
        record = orjson.loads(payload)
        if change(record):
            changed[seq] = canonical_json(record)
            break
    postings: list[dict[str, Any]] = []
    derived, ledger, adl_events = derive([changed.get(seq, p) for seq, p in payloads.items()], postings,
                                         adl_quantiles=True)  # as the service runs it
    await rewrite_as_owner(owner_dsn, ledger=ledger, adl_events=adl_events, journal=changed,
                           state=derived.state_hash(), postings=postings)
    return next(iter(changed))


@pytest.fixture
async def auditor_dsn(migrated_database: str) -> Any:
    role = f"bt_aud_{secrets.token_hex(3)}"
    connection = await asyncpg.connect(migrated_database)
    try:
        await connection.execute(f"CREATE ROLE {role} LOGIN IN ROLE backstop_auditor")
        yield as_role(migrated_database, role)
    finally:
        await connection.execute(f"DROP ROLE IF EXISTS {role}")
        await connection.close()


async def test_an_untouched_history_verifies_against_its_checkpoints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str, topic_prefix: str,
        migrated_database: str, auditor_dsn: str) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}anchor{secrets.token_hex(2)}.")
    await run_service(settings, migrated_database, tmp_path)
    seqs = await checkpoint_seqs(migrated_database)
    assert seqs[-1] == 14 and 7 in seqs  # one per batch that appended to the journal

    code, lines = await asyncio.to_thread(verify, auditor_dsn, capsys, ANCHOR_KEY_FILE)  # an auditor's role reads
    assert code == 0, lines
    head = (await stored(migrated_database))["head"]["head_hash"]
    assert (f"ok    checkpoints: {len(seqs)} signed, the last at seq 14 with head hash {head}; the journal's digest "
            f"at each is the signed one") in lines
    assert lines[-1] == "ledger verified"

    code, lines = await asyncio.to_thread(verify, auditor_dsn, capsys)
    assert code == 0
    assert lines[-1].startswith("ledger verified (not against the signed checkpoints: give --anchor-key-file")

    other_key = tmp_path / "other.key"
    other_key.write_text(secrets.token_hex(32))
    code, lines = await asyncio.to_thread(verify, auditor_dsn, capsys, other_key)
    assert code == 1
    assert failure(lines).startswith(f"checkpoint at seq {seqs[0]}: signed with key id ")


async def test_a_rewritten_fund_ledger_amount_is_named_by_its_seq(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str, topic_prefix: str,
        migrated_database: str) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}anchor{secrets.token_hex(2)}.")
    await run_service(settings, migrated_database, tmp_path)
    assert (await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE))[0] == 0

    before = await stored(migrated_database)
    ledger = [dict(r) for r in before["fund_ledger"]]
    first = before["fund_ledger"][0]
    ledger[0]["amount"] = text(Decimal(first["amount"]) * 10)
    await rewrite_as_owner(migrated_database, ledger=rechain(ledger), adl_events=before["adl_events"], journal={},
                           state=None)

    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert code == 1
    assert failure(lines).startswith(
        f"fund-ledger record 1 ({first['id']}, seq {first['seq']}): differs from the replay: amount: stored "
        f'"{ledger[0]["amount"]}", replay gives "{first["amount"]}"'), lines


@pytest.mark.parametrize(("table", "tampering"), [
    ("fund_ledger", "UPDATE fund_ledger SET amount = amount * 10, balance_after = balance_after * 10 "
                    "WHERE position = 1"),
    ("adl_events", "UPDATE adl_events SET qty = qty * 100, price = 1 WHERE position = 1"),
    ("journal", "INSERT INTO journal (seq, source_topic, source_partition, source_offset, type, ts, payload, "
                "payload_hash) SELECT seq + 1, source_topic, source_partition, source_offset + 100, type, ts, payload, "
                "payload_hash FROM journal WHERE seq = (SELECT max(seq) FROM journal)"),
    ("funds", "UPDATE funds SET bad_debt = 7"),
])
async def test_columns_unlike_their_records_and_a_journal_past_the_head_fail_without_a_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str, topic_prefix: str,
        migrated_database: str, table: str, tampering: str) -> None:
    """Queries read the columns, the chains and checkpoints cover the records: the two must agree. A journal row the
    service's commit did not write (the engine head is behind it) fails too, and a fund's bad debt that is not its
    balance's negative part."""
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}anchor{secrets.token_hex(2)}.")
    await run_service(settings, migrated_database, tmp_path)
    assert (await asyncio.to_thread(verify, migrated_database, capsys))[0] == 0
    connection = await asyncpg.connect(migrated_database)
    try:
        async with connection.transaction():
            await connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            await connection.execute(tampering)
            await connection.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    finally:
        await connection.close()
    code, lines = await asyncio.to_thread(verify, migrated_database, capsys)
    assert code == 1
    if table == "journal":
        assert failure(lines) == "the journal runs to seq 15, the engine head is at seq 14", lines
    elif table == "funds":  # the projection a query reads: its bad debt is the balance's negative part
        assert failure(lines).startswith("the database: fund MAIN bad_debt 7 but its balance is "), lines
    else:
        assert failure(lines).startswith(f"{table} row 1 (") and failure(lines).endswith(
            "its columns differ from its record (the record is what the chain and the checkpoints cover; queries "
            "read the columns)"), lines


async def test_a_history_rewritten_consistently_is_caught_only_by_the_checkpoints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str, topic_prefix: str,
        migrated_database: str) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}anchor{secrets.token_hex(2)}.")
    await run_service(settings, migrated_database, tmp_path)
    before = await stored(migrated_database)

    def cheaper_execution(record: dict[str, Any]) -> bool:  # the fund sold liq-b's lot for less: a bigger loss
        if record.get("liquidation_id") != "liq-b":
            return False
        record["executions"][0]["price"] = "3150"
        return True

    changed = await forge_journal(migrated_database, cheaper_execution)
    after = await stored(migrated_database)
    assert after["fund_ledger"] != before["fund_ledger"]
    assert after["head"]["head_hash"] != before["head"]["head_hash"]

    code, lines = await asyncio.to_thread(verify, migrated_database, capsys)  # without the key: nothing to see
    assert code == 0, lines

    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert code == 1
    seqs = await checkpoint_seqs(migrated_database)
    signed_at = min(s for s in seqs if s >= changed)
    matching = max((s for s in seqs if s < changed), default=0)
    where = f"at seq {signed_at}" if matching + 1 == signed_at else f"between seq {matching + 1} and seq {signed_at}"
    assert failure(lines) == (f"journal rewritten {where}: the stored rows do not give the journal digest signed in "
                              f"the checkpoint at seq {signed_at} (the checkpoint at seq {matching} matches)")
    assert matching >= 7  # the rewrite is placed after the first part's checkpoint


async def test_the_service_signs_on_only_from_a_head_it_signed_or_an_operator_adopted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str, topic_prefix: str,
        migrated_database: str) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}anchor{secrets.token_hex(2)}.")
    await run_service(settings, migrated_database, tmp_path)
    _, lines = await asyncio.to_thread(verify, migrated_database, capsys)
    digest = next(line for line in lines if "journal digest at seq 14: " in line).rsplit(" ", 1)[1]

    owner = await asyncpg.connect(migrated_database)
    try:
        async def as_owner(statement: str) -> None:
            async with owner.transaction():
                await owner.execute("ALTER TABLE checkpoints DISABLE TRIGGER USER")
                await owner.execute(statement)
                await owner.execute("ALTER TABLE checkpoints ENABLE TRIGGER USER")

        await as_owner("UPDATE checkpoints SET ledger_entries = ledger_entries + 1 WHERE seq = 14")
        code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
        assert code == 1
        assert failure(lines) == "checkpoint at seq 14: its signature does not verify: the checkpoint was altered"
        with pytest.raises(ServeRefused, match=r"^the checkpoint at the journal's head \(seq 14\) does not verify"):
            await preflight(settings)

        # Removing the checkpoints of a rewritten history must not get it signed at the next start.
        await as_owner("DELETE FROM checkpoints")
        code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
        assert failure(lines) == "no signed checkpoint: the journal's head (seq 14) is not anchored"
        with pytest.raises(ServeRefused, match=r"^no checkpoint signs the journal's head \(seq 14\): the history may "):
            await preflight(settings)
    finally:
        await owner.close()

    wrong = settings.model_copy(update={"anchor_adopt": f"14:{'0' * 64}"})
    with pytest.raises(ServeRefused, match=f"names journal digest {'0' * 64} at seq 14, but the stored journal "
                                           f"gives {digest}"):
        await preflight(wrong)

    adopted = settings.model_copy(update={"anchor_adopt": f"14:{digest}"})
    await preflight(adopted)
    mark = tmp_path / "mark.jsonl"
    mark.write_bytes(orjson.dumps({"type": "mark", "ts": 1760126470000, "symbol": "ETHUSDT", "mark_price": "3600"})
                     + b"\n")
    async with in_process(adopted):
        await produce_file(adopted, mark)
        await wait_caught_up(migrated_database, applied=15)
    await preflight(settings)  # the head is signed again: no adoption needed
    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert code == 0, lines
    assert ("ok    checkpoint at seq 15: the history up to seq 14 was adopted by an operator (BACKSTOP_ANCHOR_ADOPT), "
            "not signed as it was written") in lines


async def owner_rows(owner_dsn: str, query: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(owner_dsn)
    try:
        return [dict(r) for r in await connection.fetch(query)]
    finally:
        await connection.close()


async def test_the_checkpoints_sign_the_postings_and_a_rewritten_posting_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str, topic_prefix: str,
        migrated_database: str) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}anchor{secrets.token_hex(2)}.")
    lines_of = EXAMPLE.read_bytes().splitlines(keepends=True)
    for number, part in enumerate((lines_of[:7], lines_of[7:])):  # a restart between: it signs on from seq 7
        path = tmp_path / f"part{number}.jsonl"
        path.write_bytes(b"".join(part))
        async with in_process(settings):
            await produce_file(settings, path)
            await wait_caught_up(migrated_database, applied=7 if number == 0 else 14)
    postings = [orjson.loads(r["record"]) for r in
                await owner_rows(migrated_database, "SELECT record FROM postings ORDER BY position")]
    signed = await owner_rows(migrated_database, "SELECT seq, postings_head, postings_count FROM checkpoints")
    assert postings and signed
    for row in signed:  # every checkpoint signs the postings chain as it stood at its seq
        upto = [p for p in postings if p["seq"] <= row["seq"]]
        assert (row["postings_count"], row["postings_head"]) == (len(upto), upto[-1]["hash"] if upto else "0" * 64)
    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert code == 0, lines
    assert f"ok    postings: head and count as signed at each of the {len(signed)} checkpoints that sign them" in lines

    # The owner rewrites one posting (a bigger amount) and makes the chain consistent again.
    before = await stored(migrated_database)
    forged = [dict(p) for p in postings]
    target = forged[-1]
    target["amount"] = text(Decimal(target["amount"]) * 2)
    previous = forged[-2]["hash"] if len(forged) > 1 else "0" * 64
    target["prev_hash"] = previous
    target["hash"] = chain_hash({k: v for k, v in target.items() if k != "hash"})
    await rewrite_as_owner(migrated_database, ledger=before["fund_ledger"], adl_events=before["adl_events"],
                           journal={}, state=None, postings=forged)
    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert code == 1
    assert "postings" in failure(lines) and target["id"] in failure(lines), lines

    # The owner moves the signed postings head along with it: the signature no longer verifies.
    connection = await asyncpg.connect(migrated_database)
    try:
        async with connection.transaction():
            await connection.execute("ALTER TABLE checkpoints DISABLE TRIGGER USER")
            await connection.execute("UPDATE checkpoints SET postings_head = $1 WHERE seq = 14", target["hash"])
            await connection.execute("ALTER TABLE checkpoints ENABLE TRIGGER USER")
    finally:
        await connection.close()
    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert failure(lines) == "checkpoint at seq 14: its signature does not verify: the checkpoint was altered"


async def test_checkpoints_signed_before_migration_0009_still_verify_after_the_upgrade(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str, topic_prefix: str,
        migrated_database: str) -> None:
    """The first part signed as a service before 0009 did (no postings columns, the MAC over the fields it had); the
    database is then upgraded (0009 applied), the service restarted on it signs the second part with the postings,
    and the whole history verifies: the old checkpoints as they were signed, the new ones with their postings."""
    from backstop.adapters.postgres.migrations import migrate
    from backstop.core.anchor import AnchorKey, Checkpoint

    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}anchor{secrets.token_hex(2)}.")
    lines_of = EXAMPLE.read_bytes().splitlines(keepends=True)
    first = tmp_path / "first.jsonl"
    first.write_bytes(b"".join(lines_of[:7]))
    async with in_process(settings):
        await produce_file(settings, first)
        await wait_caught_up(migrated_database, applied=7)
    key = AnchorKey.from_bytes(ANCHOR_KEY_FILE.read_bytes(), source="test key")
    connection = await asyncpg.connect(migrated_database)
    try:
        old = await connection.fetch("SELECT * FROM checkpoints ORDER BY seq")
        async with connection.transaction():  # the database as 0008 left it, with the checkpoints 0008 signed
            await connection.execute("ALTER TABLE checkpoints DISABLE TRIGGER USER")
            await connection.execute("ALTER TABLE checkpoints DROP COLUMN postings_head, DROP COLUMN postings_count")
            for row in old:
                resigned = key.sign(Checkpoint(*(row[c] for c in (
                    "seq", "prev_seq", "adopted_seq", "journal_digest", "head_hash", "ledger_head", "ledger_entries",
                    "adl_head", "adl_events"))))
                await connection.execute("UPDATE checkpoints SET mac = $2 WHERE seq = $1", row["seq"], resigned.mac)
            await connection.execute("ALTER TABLE checkpoints ENABLE TRIGGER USER")
            await connection.execute("DELETE FROM schema_migrations WHERE version = '0009'")
        assert await migrate(migrated_database) == ["0009"]
        assert all(r["postings_head"] is None and r["postings_count"] is None
                   for r in await connection.fetch("SELECT * FROM checkpoints"))
    finally:
        await connection.close()
    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert code == 0, lines
    assert (f"ok    postings: head and count as signed at each of the 0 checkpoints that sign them (the {len(old)} "
            f"signed before migration 0009 do not)") in lines

    second = tmp_path / "second.jsonl"
    second.write_bytes(b"".join(lines_of[7:]))
    async with in_process(settings):
        await produce_file(settings, second)
        await wait_caught_up(migrated_database, applied=14)
    rows = await owner_rows(migrated_database,
                            "SELECT seq, postings_head, postings_count FROM checkpoints ORDER BY seq")
    assert [r["seq"] for r in rows[:len(old)]] == [r["seq"] for r in old]
    assert all(r["postings_count"] is None for r in rows[:len(old)])
    postings = await owner_rows(migrated_database, "SELECT position, hash FROM postings ORDER BY position")
    assert (rows[-1]["seq"], rows[-1]["postings_count"], rows[-1]["postings_head"]) == (
        14, len(postings), postings[-1]["hash"])
    code, lines = await asyncio.to_thread(verify, migrated_database, capsys, ANCHOR_KEY_FILE)
    assert code == 0, lines
    signing = len(rows) - len(old)
    assert (f"ok    postings: head and count as signed at each of the {signing} checkpoints that sign them (the "
            f"{len(old)} signed before migration 0009 do not)") in lines
