"""`backstop audit verify`: check a replay output directory against its journal."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

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


async def verify_postgres(dsn: str) -> tuple[list[str], Problem | str | None]:
    """The service's database: its stored records against its own journal and head."""
    from backstop.adapters.postgres.store import Store

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
        lines = [payload async for _, payload in store.journal()]
    finally:
        await store.close()
    summary = {"funds": funds, "ledger_head_hash": head.ledger_head if ledger else None,
               "head_hash": stored.get("head_hash"),
               "state_hash": stored.get("state_hash") if stored.get("state_hash_seq") == stored.get("seq") else None}
    return verify_records(ledger, events, summary, lines, source="the database")


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
