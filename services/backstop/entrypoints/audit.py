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


def derive(journal: Path) -> tuple[Processor, list[dict[str, Any]], list[dict[str, Any]]]:
    """Replay the journal with conservation checked after every event."""
    processor = Processor(Engine(check_conservation=True))
    ledger: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    try:
        lines = journal.read_bytes().splitlines()
    except OSError as error:
        raise AuditError(f"cannot read journal {journal}: {error}") from None
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
    """Returns (what was checked, the first problem or None)."""
    checked: list[str] = []
    ledger = _jsonl(out / "fund-ledger.jsonl")
    events = _jsonl(out / "adl-events.jsonl")
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError) as error:
        raise AuditError(f"cannot read {out / 'summary.json'}: {error}") from None
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
            return checked, (f"summary.json: fund {fund_id} balance {fund['balance']} but its ledger entries add up "
                             f"to {balances.get(fund_id, Decimal(0))}")
    checked.append(f"fund balances: {len(balances)} fund(s) equal the sum of their entries")
    if ledger and summary.get("ledger_head_hash") != ledger[-1]["hash"]:
        return checked, "summary.json: ledger_head_hash is not the hash of the last fund-ledger entry"
    if journal is None:
        return checked, None
    try:
        processor, derived_ledger, derived_events = derive(journal)
    except InvariantViolation as error:
        return checked, f"replaying {journal}: conservation broken: {error}"
    checked.append(f"conservation: checked after each of {processor.events_applied} events")
    for stream, stored, derived in (("fund-ledger", ledger, derived_ledger), ("adl-events", events, derived_events)):
        problem = compare_streams(stream, stored, derived)
        if problem:
            return checked, problem
        checked.append(f"{stream}: all {len(stored)} records re-derived from the journal")
    engine = processor.engine
    for key, value in (("head_hash", engine.head_hash), ("state_hash", state_hash(engine))):
        if summary.get(key) != value:
            return checked, f"summary.json: {key} {summary.get(key)} but the replay gives {value}"
    checked.append("head hash and state hash reproduced")
    return checked, None
