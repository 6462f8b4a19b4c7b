"""`backstop audit verify`: check a replay output directory against its journal, or the service's database against
its journal and the checkpoints the service signed."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from backstop.core.anchor import (
    AnchorKey,
    AnchorKeyError,
    SignedCheckpoint,
    check_heads,
    check_journal,
    check_signatures,
)
from backstop.core.engine import Engine
from backstop.core.errors import InvariantViolation
from backstop.core.hashing import canonical_json, record_dict
from backstop.core.processor import Applied, Processor
from backstop.core.snapshot import state_hash
from backstop.core.verify import Problem, check_chain, check_fund_balances, compare_streams
from backstop.wire.decode import InvalidRecord, decode_record


class AuditError(Exception):
    """The inputs of the audit cannot be read (exit 2)."""


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    except (OSError, orjson.JSONDecodeError) as error:
        raise AuditError(f"cannot read {path}: {error}") from None


def derive(lines: list[bytes]) -> tuple[Processor, list[dict[str, Any]], list[dict[str, Any]]]:
    """Replay the journal with conservation checked after every event."""
    processor = Processor(Engine(check_conservation=True))
    ledger: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            outcome = processor.process(decode_record(raw))
        except InvalidRecord:
            processor.reject_unparsed()
            continue
        if isinstance(outcome, Applied):
            ledger.extend(orjson.loads(canonical_json(record_dict(e))) for e in outcome.effects.fund_entries)
            events.extend(orjson.loads(canonical_json(record_dict(e))) for e in outcome.effects.adl_events)
    return processor, ledger, events


def verify_output(out: Path, journal: Path | None) -> tuple[list[str], Problem | str | None]:
    """A replay output directory (and the journal it came from). Returns (what was checked, the first problem)."""
    ledger = _jsonl(out / "fund-ledger.jsonl")
    events = _jsonl(out / "adl-events.jsonl")
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError) as error:
        raise AuditError(f"cannot read {out / 'summary.json'}: {error}") from None
    lines = None
    if journal is not None:
        try:
            lines = journal.read_bytes().splitlines()
        except OSError as error:
            raise AuditError(f"cannot read journal {journal}: {error}") from None
    return verify_records(ledger, events, summary, lines, source="summary.json")


def verify_journal(journal: Path) -> tuple[list[str], Problem | str | None]:
    """A journal file alone: replay it with conservation checked after every event and check what it derives."""
    try:
        lines = journal.read_bytes().splitlines()
    except OSError as error:
        raise AuditError(f"cannot read journal {journal}: {error}") from None
    try:
        processor, ledger, events = derive(lines)
    except InvariantViolation as error:
        return [], f"replaying {journal}: conservation broken: {error}"
    checked, problem = verify_records(ledger, events, {}, None, source=str(journal))
    checked.insert(0, f"conservation: checked after each of {processor.events_applied} events; head hash "
                      f"{processor.engine.head_hash}")
    return checked, problem


async def verify_postgres(dsn: str, anchor_key_files: list[Path] | None = None
                          ) -> tuple[list[str], Problem | str | None]:
    """The service's database: its stored journal (rows without gaps, payload hashes), its records against that
    journal and its head; with anchor keys, all of it against the checkpoints the service signed (docs/
    operations-security.md)."""
    import asyncpg

    from backstop.adapters.postgres.store import Store

    keys = [_anchor_key(path) for path in anchor_key_files or ()]
    try:
        store = await Store.open(dsn)
    except (OSError, Exception) as error:
        raise AuditError(f"cannot connect to PostgreSQL: {error}") from None
    try:
        ledger = await store.records("fund_ledger")
        events = await store.records("adl_events")
        stored = await store.stored_hashes()
        head = await store.head()
        funds = {r["fund_id"]: {"balance": str(r["balance"])} for r in await store.pool.fetch("SELECT * FROM funds")}
        rows = [row async for row in store.journal_rows()]
        checkpoints = await store.checkpoints()
    except asyncpg.UndefinedTableError as error:
        raise AuditError(f"the database is not a migrated backstop database ({error}): backstop db migrate") from None
    except (asyncpg.PostgresError, OSError) as error:
        raise AuditError(f"cannot read the database: {type(error).__name__}: {error}") from None
    finally:
        await store.close()
    checked: list[str] = []
    problem = check_signatures(checkpoints, keys) if keys else None
    if problem:
        return checked, problem
    journal_problem, last_seq, digest = check_journal(rows, checkpoints if keys else [])
    if journal_problem:
        return checked, journal_problem
    checked.append(f"journal: {last_seq} rows without gaps, each payload_hash that of its payload; journal digest "
                   f"at seq {last_seq}: {digest}")
    if keys:
        problem = _anchored_head(checkpoints, last_seq, stored.get("seq"))
        if problem:
            return checked, problem
        checked.extend(_anchor_lines(checkpoints, digest))
    summary = {"funds": funds, "ledger_head_hash": head.ledger_head if ledger else None,
               "head_hash": stored.get("head_hash"),
               "state_hash": stored.get("state_hash") if stored.get("state_hash_seq") == stored.get("seq") else None}
    more, record_problem = verify_records(ledger, events, summary, [row[4] for row in rows], source="the database")
    checked.extend(more)
    if record_problem is not None or not keys:
        return checked, record_problem
    problem = check_heads(checkpoints, ledger, events)
    if problem is None:
        checked.append(f"fund ledger and ADL events: heads and counts as signed at each of the {len(checkpoints)} "
                       f"checkpoints")
    return checked, problem


def _anchor_key(path: Path) -> AnchorKey:
    try:
        return AnchorKey.from_bytes(path.read_bytes(), source=str(path))
    except OSError as error:
        raise AuditError(f"cannot read the anchor key {path}: {error}") from None
    except AnchorKeyError as error:
        raise AuditError(str(error)) from None


def _anchored_head(checkpoints: list[SignedCheckpoint], journal_seq: int, head_seq: object) -> str | None:
    """The journal's head carries a checkpoint: rows after the last one could have been written by anyone."""
    if not checkpoints:
        return (f"no signed checkpoint: the journal's head (seq {journal_seq}) is not anchored"
                if journal_seq else None)
    last = checkpoints[-1].checkpoint.seq
    if last != journal_seq:
        return (f"the journal's head (seq {journal_seq}) is not anchored: the last checkpoint is at seq {last}, so "
                f"seq {last + 1} to {journal_seq} could have been written by anyone")
    if head_seq != journal_seq:
        return f"the stored engine head is at seq {head_seq}, the journal and its last checkpoint at seq {journal_seq}"
    return None


def _anchor_lines(checkpoints: list[SignedCheckpoint], digest: str) -> list[str]:
    last = checkpoints[-1].checkpoint if checkpoints else None
    lines = [f"checkpoints: {len(checkpoints)} signed"
             + (f", the last at seq {last.seq} with head hash {last.head_hash}; the journal's digest at each is the "
                f"signed one" if last else " (an empty journal)")]
    lines.extend(f"checkpoint at seq {signed.checkpoint.seq}: the history up to seq {signed.checkpoint.adopted_seq} "
                 f"was adopted by an operator (BACKSTOP_ANCHOR_ADOPT), not signed as it was written"
                 for signed in checkpoints if signed.checkpoint.adopted_seq)
    return lines


def verify_records(ledger: list[dict[str, Any]], events: list[dict[str, Any]], summary: dict[str, Any],
                   lines: list[bytes] | None, *, source: str) -> tuple[list[str], Problem | str | None]:
    checked: list[str] = []
    for stream, records in (("fund-ledger", ledger), ("adl-events", events)):
        problem = check_chain(stream, records)
        if problem:
            return checked, problem
        checked.append(f"{stream}: hash chain of {len(records)} records")
    problem, balances = check_fund_balances(ledger)
    if problem:
        return checked, problem
    for fund_id, fund in summary.get("funds", {}).items():
        if balances.get(fund_id, Decimal(0)) != Decimal(fund["balance"]):
            return checked, (f"{source}: fund {fund_id} balance {fund['balance']} but its ledger entries add up "
                             f"to {balances.get(fund_id, Decimal(0))}")
    checked.append(f"fund balances: {len(balances)} fund(s) equal the sum of their entries")
    if ledger and "ledger_head_hash" in summary and summary["ledger_head_hash"] != ledger[-1]["hash"]:
        return checked, f"{source}: ledger_head_hash is not the hash of the last fund-ledger entry"
    if lines is None:
        return checked, None
    try:
        processor, derived_ledger, derived_events = derive(lines)
    except InvariantViolation as error:
        return checked, f"replaying the journal: conservation broken: {error}"
    checked.append(f"conservation: checked after each of {processor.events_applied} events")
    for stream, stored, derived in (("fund-ledger", ledger, derived_ledger), ("adl-events", events, derived_events)):
        problem = compare_streams(stream, stored, derived)
        if problem:
            return checked, problem
        checked.append(f"{stream}: all {len(stored)} records re-derived from the journal")
    engine = processor.engine
    for key, value in (("head_hash", engine.head_hash), ("state_hash", state_hash(engine))):
        if summary.get(key) is not None and summary.get(key) != value:
            return checked, f"{source}: {key} {summary.get(key)} but the replay gives {value}"
    checked.append("head hash" + (" and state hash" if summary.get("state_hash") else "") + " reproduced")
    return checked, None
