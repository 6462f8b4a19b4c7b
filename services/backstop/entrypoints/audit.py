"""`backstop audit verify`: check a replay output directory, alone or against its journal, or the service's
database against its journal and the checkpoints the service signed (docs/operations-security.md).

Without the journal every file is checked against summary.json: each hash chain from its start to the head the
summary records, every count (fund-ledger entries, ADL events, findings, dead letters, postings), the head hash as
the combination of the two chain heads, every fund's balance as the sum of its entries, and the postings of the
general ledger (each account's balance follows from its postings, the balances change by a sum of 0 in each seq,
and end at the fund balances and the ledger sum of the summary). With the journal, every file is derived again by a
fresh replay on either engine (`--engine`), under the ADL policy and options summary.json records, with conservation
checked after each event (the reference) or each batch of lines (the compiled engine), and compared with the stored
one: every record of every stream, accounts.json byte for byte, and summary.json field by field.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import orjson

from backstop.adapters.journal_file import JournalFileError, read_journal
from backstop.adapters.output_reader import (
    OutputReadError,
    file_bytes,
    parse_object,
    read_object,
    read_stream,
    read_summary,
)
from backstop.core import adl_policy
from backstop.core.adl_policy import AdlPolicy
from backstop.core.anchor import (
    AnchorKey,
    AnchorKeyError,
    SignedCheckpoint,
    check_heads,
    check_journal,
    check_signatures,
)
from backstop.core.documents import SUMMARY_KEYS
from backstop.core.errors import one_line
from backstop.core.hashing import GENESIS_HASH, combine
from backstop.core.ledger import bad_debt
from backstop.core.ledger import fund as fund_account
from backstop.core.numbers import CONTEXT, text
from backstop.core.verify import (
    ABSENT,
    Problem,
    check_chain,
    check_entries_posted,
    check_fund_balances,
    check_postings,
    compare_streams,
    first_difference,
    json_text,
)
from backstop.engines import EngineFailure, EngineName, EngineOptions, LedgerEngine, invariant_errors, open_engine

Outcome = tuple[list[str], Problem | str | None]
# summary.json's adl sums that add up the funds' amounts (null where the funds settle in more than one asset)
ADL_RUN_SUMS = ("notional", "deficit", "needed", "haircut", "overshoot", "over_use", "socialized")
Records = list[dict[str, Any]]


class AuditError(Exception):
    """The inputs of the audit cannot be read (exit 2)."""


DERIVE_CHUNK_BYTES = 1 << 20  # journal lines handed to the engine at once
# summary.json's counts and heads the checks hold the files to: a replay writes each (its model lets older ones be
# absent, which SUMMARY_KEYS refuses here)
_NEVER_NULL = ("dead_letters", "postings", "postings_head_hash", "last_seq", "adl_quantiles")


@dataclass(frozen=True, slots=True)
class Derived:
    """A fresh replay of the journal: the records the stored ones must equal, its hashes, and how it checked
    conservation."""

    ledger: list[dict[str, Any]]
    events: list[dict[str, Any]]
    postings: list[dict[str, Any]]
    head_hash: str
    state_hash: str
    conservation: str


class Unreproducible(Exception):
    """What the stored outputs say about how they were made cannot be replayed (a problem, not an error)."""


def derive(lines: list[bytes], postings: list[dict[str, Any]] | None = None, *, adl_quantiles: bool = False,
           policy: AdlPolicy | None = None, engine: EngineName = "reference",
           ) -> tuple[LedgerEngine, list[dict[str, Any]], list[dict[str, Any]]]:
    """Replay the journal on the engine named with conservation checked (the postings into `postings` if given),
    with quantile points as the outputs were written (they move the state hash, never the ledger). The reference
    engine checks conservation after every event, the compiled one after every batch of lines."""
    ledger_engine = open_engine(engine, EngineOptions(check_conservation=True, adl_quantiles=adl_quantiles,
                                                      adl_policy=policy or AdlPolicy()))
    ledger: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    batch: list[bytes] = []
    size = 0

    def apply() -> None:
        result = ledger_engine.apply_lines(b"".join(line + b"\n" for line in batch), 1)
        ledger.extend(orjson.loads(line) for line in result.fund_ledger.splitlines())
        events.extend(orjson.loads(line) for line in result.adl_events.splitlines())
        if postings is not None:
            postings.extend(orjson.loads(line) for line in result.postings.splitlines())
        batch.clear()

    for raw in lines:
        batch.append(raw)
        size += len(raw) + 1
        if size >= DERIVE_CHUNK_BYTES:
            apply()
            size = 0
    apply()
    return ledger_engine, ledger, events


def derived_by_engine(lines: list[bytes], summary: dict[str, Any], engine: EngineName) -> Derived:
    """The journal's lines applied in memory under the policy summary.json records."""
    postings: list[dict[str, Any]] = []
    derived, ledger, events = derive(lines, postings, adl_quantiles=quantile_points(summary),
                                     policy=_policy(summary), engine=engine)
    return Derived(ledger, events, postings, derived.summary()["head_hash"], derived.state_hash(),
                   conservation_checked(derived))


def _policy(summary: dict[str, Any]) -> AdlPolicy:
    """The ADL policy the outputs were made under."""
    try:
        return adl_policy.from_document(summary.get("adl_policy") or {})
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise Unreproducible(f"summary.json: adl_policy is not a policy ({error})") from None


def replayed(journal: Path, summary: dict[str, Any], engine: EngineName, into: Path) -> Derived:
    """`backstop replay` of the journal into `into`, with conservation checked, as summary.json says the outputs
    were made (ADL policy and metrics, quantile points), from its first line."""
    from backstop.entrypoints.replay import ReplayError, ReplayOptions, replay

    adl = summary.get("adl")
    options = ReplayOptions(journal=journal, out=into, check_conservation=True, adl_policy=_policy(summary),
                            adl_quantiles=quantile_points(summary), engine=engine,
                            full_adl_metrics=isinstance(adl, dict) and adl.get("metrics") == "full")
    try:
        result = replay(options)
    except ReplayError as error:
        raise AuditError(f"replaying {journal}: {error}") from None
    try:
        ledger, events, postings = (read_stream(into, name)
                                    for name in ("fund-ledger.jsonl", "adl-events.jsonl", "postings.jsonl"))
    except OutputReadError as error:
        raise AuditError(f"reading the replay of {journal}: {error}") from None
    return Derived(ledger, events, postings, result["head_hash"], result["state_hash"],
                   conservation_said(engine, result["events_applied"]))


def resumed_summary(journal: Path, summary: dict[str, Any], engine: EngineName, scratch: Path) -> dict[str, Any]:
    """The summary.json of a replay from the snapshot the outputs say they took over from: the journal's lines up to
    the snapshot's replayed with a snapshot at its seq, then the whole journal resumed from it, as `backstop replay
    --from-snapshot` does. Its `from_snapshot`, `dead_letters` and `adl` (the rounds after the snapshot) are what
    the outputs' must be; a start the journal does not reach is Unreproducible."""
    from backstop.engines import snapshot_name
    from backstop.entrypoints.replay import ReplayError, ReplayOptions, replay

    start = summary["from_snapshot"]
    seq, line = start["seq"], start["input_line"]
    head = scratch / "to-snapshot.jsonl"
    try:  # its first `line` lines, byte for byte (the last may end the file without a line break)
        with journal.open("rb") as source, head.open("wb") as target:
            for _ in range(line):
                text = source.readline()
                if not text:
                    raise Unreproducible(f"from_snapshot: input_line {line}, but the journal has fewer lines")
                target.write(text)
    except OSError as error:
        raise AuditError(f"cannot read {journal}: {error.strerror or error}") from None
    adl = summary.get("adl")
    full = isinstance(adl, dict) and adl.get("metrics") == "full"
    try:
        replay(ReplayOptions(journal=head, out=scratch / "to-snapshot", snapshot_every=seq, engine=engine,
                             adl_policy=_policy(summary), adl_quantiles=quantile_points(summary),
                             full_adl_metrics=full))
        snapshot = scratch / "to-snapshot" / "snapshots" / f"{snapshot_name(seq)}.json"
        if not snapshot.exists():
            raise Unreproducible(f"from_snapshot: seq {seq} at input_line {line}, but the journal's first {line} "
                                 f"lines apply another number of events")
        replay(ReplayOptions(journal=journal, out=scratch / "resumed", from_snapshot=snapshot, engine=engine,
                             adl_quantiles=quantile_points(summary), full_adl_metrics=full))
    except ReplayError as error:
        if error.exit_code == 2:  # the journal or the scratch directory cannot be read or written
            raise AuditError(f"replaying {journal} from a snapshot: {error}") from None
        raise Unreproducible(f"from_snapshot: a replay from a snapshot at seq {seq} fails: {error}") from None
    try:
        return read_summary(scratch / "resumed")
    except OutputReadError as error:
        raise AuditError(f"reading the replay of {journal} from a snapshot: {error}") from None


def conservation_checked(engine: LedgerEngine) -> str:
    return conservation_said(engine.name, engine.events_applied)


def conservation_said(engine: EngineName, events: int) -> str:
    return (f"conservation: checked after each of {events} events" if engine == "reference"
            else f"conservation: checked after every batch of lines ({events} events)")


def _journal(journal: Path) -> list[bytes]:
    try:
        return [raw for _, raw in read_journal(journal)]
    except JournalFileError as error:
        raise AuditError(str(error)) from None


def verify_output(out: Path, journal: Path | None, engine: EngineName = "reference") -> Outcome:
    """A replay output directory (and the journal it came from, replayed on `engine`). Returns (what was checked,
    the first problem)."""
    if not out.is_dir():
        raise AuditError(f"{out} is not a directory (give a `backstop replay` output directory)")
    try:
        missing = sorted(SUMMARY_KEYS - read_object(out / "summary.json").keys())  # a check (exit 1) for every key
        if missing:
            return [], (f"summary.json has no {', '.join(missing)}: every replay writes them (a summary cut down, or "
                        f"one written by an older backstop: replay its journal again)")
        summary = read_summary(out)
        nulls = sorted(key for key in _NEVER_NULL if summary[key] is None)
        if nulls:
            return [], f"summary.json: {', '.join(nulls)} null: every replay writes a value (the checks need it)"
        ledger = read_stream(out, "fund-ledger.jsonl")
        events = read_stream(out, "adl-events.jsonl")
        findings = read_stream(out, "findings.jsonl")
        dead_letters = read_stream(out, "dead-letter.jsonl")
        postings = read_stream(out, "postings.jsonl")
    except OutputReadError as error:
        raise AuditError(str(error)) from None
    counted = {"findings": findings, "dead_letters": dead_letters}
    if journal is None:
        try:  # its contents only a replay of the journal can check; its shape is checked here
            read_object(out / "accounts.json")
        except OutputReadError as error:
            raise AuditError(str(error)) from None
        checked, problem = verify_records(ledger, events, summary, None, source="summary.json", counted=counted,
                                          postings=postings)
        if problem is not None:
            return checked, problem
        more, problem = verify_adl_files(out, summary)
        return checked + more, problem
    with tempfile.TemporaryDirectory(prefix="backstop-audit-") as scratch:
        into = Path(scratch) / "derived"
        checked, problem = verify_records(ledger, events, summary, lambda: replayed(journal, summary, engine, into),
                                          source="summary.json", counted=counted, postings=postings)
        if problem is not None:
            return checked, problem
        more, problem = verify_other_files(out, into, summary, {"findings.jsonl": findings,
                                                                "dead-letter.jsonl": dead_letters},
                                           lambda: resumed_summary(journal, summary, engine, Path(scratch)))
        return checked + more, problem


def _without_zero_wallets(document: Any) -> Any:
    """accounts.json with every wallet at zero left out (and an account left with nothing, too)."""
    if not isinstance(document, dict):
        return document  # compared as it is: not the shape a replay writes
    kept = {}
    for name, account in document.items():
        if isinstance(account, dict) and isinstance(account.get("wallets"), dict):
            account = {**account, "wallets": {asset: v for asset, v in account["wallets"].items() if v != "0"}}
            if not account["wallets"] and not account.get("positions"):
                continue
        kept[name] = account
    return kept


def _difference_text(difference: tuple[str, Any, Any]) -> str:
    """`path stored-value but the replay of the journal gives derived-value`, each value's JSON cut at 200."""
    path, have, want = difference

    def shown(value: Any) -> str:
        return "(absent)" if value is ABSENT else json_text(value)

    return f"{path or '(the whole document)'} {shown(have)} but the replay of the journal gives {shown(want)}"


def verify_adl_files(out: Path, summary: dict[str, Any]) -> Outcome:
    """Without the journal: adl-rounds.jsonl and adl-quantiles.jsonl hold records, as many as summary.json
    counts (older outputs have neither file)."""
    start = summary.get("from_snapshot") or {}
    adl = summary.get("adl")
    expected = {"adl-rounds.jsonl": adl.get("rounds") if isinstance(adl, dict) else None,
                "adl-quantiles.jsonl": None if summary.get("adl_quantiles") is None
                else summary["adl_quantiles"] - start.get("adl_quantiles", 0)}
    checked: list[str] = []
    for name, count in expected.items():
        if not (out / name).exists() and count is None:
            continue
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            key = "adl.rounds" if name == "adl-rounds.jsonl" else "adl_quantiles"
            return checked, f"summary.json: {key} {orjson.dumps(count).decode()[:40]} is not a count"
        try:
            records = read_stream(out, name)
        except OutputReadError as error:
            raise AuditError(str(error)) from None
        if count is not None and len(records) != count:
            return checked, (f"summary.json counts {count} record(s) of {name} but it holds {len(records)}: records "
                             f"were removed or added")
        checked.append(f"{name}: {len(records)} records, as summary.json counts")
    return checked, None


def verify_other_files(out: Path, derived: Path, summary: dict[str, Any], read: dict[str, Records],
                       resumed: Callable[[], dict[str, Any]]) -> Outcome:
    """The files without a hash chain, against the fresh replay's: findings, dead letters, ADL rounds and quantile
    records one by one (after the snapshot the outputs started from), accounts.json byte for byte and summary.json
    field by field (outputs of a replay from a snapshot: against `resumed()`, the summary of a replay from a snapshot
    of the journal at the same seq). `read`: the stored streams already read, by file name."""
    start, carried = summary.get("from_snapshot") or {}, summary.get("carried") or {}
    seq, line = start.get("seq", 0), start.get("input_line", 0)
    after: dict[str, Callable[[Records], Records]] = {
        "findings.jsonl": lambda records: records[start.get("findings", 0):],
        "dead-letter.jsonl": lambda records: [r for r in records if r.get("line", line + 1) > line],
        "adl-rounds.jsonl": lambda records: [r for r in records if r["seq"] > seq],
        "adl-quantiles.jsonl": lambda records: [r for r in records if r["seq"] > seq]}
    checked: list[str] = []
    for name, kept in after.items():
        try:
            stored = read[name] if name in read else read_stream(out, name)
            derived_records = kept(read_stream(derived, name))
            if name == "dead-letter.jsonl":  # the service's own come first: the journal does not hold them
                stored = stored[carried.get("dead_letters", 0):]
                if stored:
                    derived_records = [_as_written(letter, stored[0]) for letter in derived_records]
            problem = compare_streams(name.removesuffix(".jsonl"), stored, derived_records)
        except OutputReadError as error:
            raise AuditError(str(error)) from None
        if problem:
            return checked, problem
        aside = carried.get("dead_letters", 0) if name == "dead-letter.jsonl" else 0
        checked.append(f"{name}: all {len(stored)} records re-derived from the journal" + (
            f" (the service's {aside} before them set aside: its journal does not hold them)" if aside else ""))
    try:
        stored_accounts = file_bytes(out / "accounts.json")
        derived_accounts = file_bytes(derived / "accounts.json")
        replay_summary = read_summary(derived)
    except OutputReadError as error:
        raise AuditError(str(error)) from None
    older = bool(start) and "wallets_at_zero" not in start
    try:
        stored_document: Any = parse_object(out / "accounts.json", stored_accounts)
    except OutputReadError as error:
        raise AuditError(str(error)) from None
    derived_document = orjson.loads(derived_accounts)
    if older:  # a snapshot of an older backstop carried no wallet at zero, so a replay from it listed none
        stored_document, derived_document = (_without_zero_wallets(stored_document),
                                             _without_zero_wallets(derived_document))
    difference = first_difference(stored_document, derived_document)
    if difference is not None:
        return checked, f"accounts.json: {_difference_text(difference)}"
    checked.append("accounts.json: as the replay of the journal writes it" + (
        " (wallets at zero aside: the snapshot these outputs resumed from did not carry them)" if older
        else ", byte for byte" if stored_accounts == derived_accounts else " (the same JSON, formatted otherwise)"))
    if start:
        try:
            replay_summary = resumed()
        except Unreproducible as error:
            return checked, f"summary.json: {error}"
        if older:  # an older backstop's from_snapshot: the fields it wrote
            replay_summary["from_snapshot"] = {k: v for k, v in replay_summary["from_snapshot"].items() if k in start}
    for key, count in carried.items():  # the totals hold what the service counted beside the journal
        if key != "dead_letters" and isinstance(summary.get(key), int):
            replay_summary[key] = replay_summary.get(key, 0) + count
    if carried:
        replay_summary["carried"] = carried
        replay_summary["dead_letters"] = replay_summary.get("dead_letters", 0) + carried.get("dead_letters", 0)
    older_fields = []  # fields an older backstop did not write, left out of the comparison (and said)
    compared = summary
    for fund_id, fund in (summary.get("funds") or {}).items():
        replayed = (replay_summary.get("funds") or {}).get(fund_id)
        if isinstance(fund, dict) and "inventory_upnl" not in fund and isinstance(replayed, dict):
            replayed.pop("inventory_upnl", None)  # written before the funds' inventory uPnL was
            older_fields.append(f"funds.{fund_id}.inventory_upnl")
    stored_adl, replay_adl = summary.get("adl"), replay_summary.get("adl")
    if isinstance(stored_adl, dict) and "rounds_without_takers" not in stored_adl and isinstance(replay_adl, dict):
        # written before rounds without a taker were counted apart: its sums are this replay's when there were none
        older_fields.append("adl.rounds_without_takers")
        without = replay_adl.pop("rounds_without_takers", 0)
        if without:
            return checked, (f"summary.json: adl was written by an older backstop, which summed the deficit of the "
                             f"{without} round(s) without a taker too: replay the journal with this one")
    if isinstance(stored_adl, dict) and "by_fund" not in stored_adl and isinstance(replay_adl, dict):
        # written before each fund's sums were: its run-wide sums added the amounts of every fund
        older_fields.append("adl.by_fund")
        by_fund = replay_adl.pop("by_fund", None) or {}
        if len({fund.get("asset") for fund in by_fund.values()}) > 1:
            # its run-wide sums added amounts of different assets, which this backstop writes as null
            older_fields.append("adl's sums over funds of different assets")
            for key in ADL_RUN_SUMS:
                replay_adl.pop(key, None)
            compared = {**summary, "adl": {k: v for k, v in stored_adl.items() if k not in ADL_RUN_SUMS}}
    difference = first_difference(compared, replay_summary)
    if difference is not None:
        return checked, f"summary.json: {_difference_text(difference)}"
    checked.append("summary.json: every field as the replay of the journal gives it" + (
        f" (from a snapshot of it at seq {start['seq']}, as these outputs were made)" if start else "") + (
        f" (the service's counts set aside: {', '.join(f'{k} {v}' for k, v in carried.items())})" if carried
        else "") + (f"; as an older backstop wrote it, without {', '.join(older_fields)}" if older_fields else ""))
    return checked, None


def _as_written(letter: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """A derived dead letter with the fields of the stored ones: an older backstop wrote no raw_base64 (its raw was
    the text alone), so outputs of it compare without it; nor did it escape its reason to one line, so the stored
    one counts when it escapes to the derived one (one_line changes an escaped reason no more)."""
    if isinstance(stored.get("reason"), str) and one_line(stored["reason"]) == letter["reason"]:
        letter = {**letter, "reason": stored["reason"]}
    return letter if "raw_base64" in stored else {k: v for k, v in letter.items() if k != "raw_base64"}


def quantile_points(summary: dict[str, Any]) -> bool:
    """Whether the outputs were written with quantile points: as summary.json records it; a summary from before it
    was an option had them whenever it counts adl_quantiles."""
    recorded = summary.get("adl_quantile_points")
    return bool(recorded) if recorded is not None else "adl_quantiles" in summary


def verify_counts(summary: dict[str, Any], *, ledger: list[dict[str, Any]], events: list[dict[str, Any]],
                  findings: list[dict[str, Any]], dead_letters: list[dict[str, Any]]) -> Outcome:
    """Each file holds as many records as summary.json counts (after the snapshot a replay started from): a
    record removed from the end of a chain, or a whole file emptied, leaves the chain itself intact."""
    start = summary.get("from_snapshot") or {}
    for name, key, records in (("fund-ledger.jsonl", "fund_ledger_entries", ledger),
                               ("adl-events.jsonl", "adl_events", events), ("findings.jsonl", "findings", findings)):
        expected = summary[key] - start.get(key, 0)
        if len(records) != expected:
            return [], (f"summary.json: {key} {summary[key]}" + (f" ({start[key]} before the snapshot)" if start
                                                                  else "") +
                        f" but {name} holds {len(records)} record(s): records were removed or added")
    if summary.get("dead_letters") is None:
        return [f"counts: {len(ledger)} fund-ledger entries, {len(events)} ADL events and {len(findings)} findings, "
                f"as summary.json says (it does not count dead letters: written by an older backstop)"], None
    if len(dead_letters) != summary["dead_letters"]:
        return [], (f"summary.json: dead_letters {summary['dead_letters']} but dead-letter.jsonl holds "
                    f"{len(dead_letters)} record(s): records were removed or added")
    return [f"counts: {len(ledger)} fund-ledger entries, {len(events)} ADL events, {len(findings)} findings and "
            f"{len(dead_letters)} dead letters, as summary.json says"], None


def verify_journal(journal: Path, engine: EngineName = "reference") -> Outcome:
    """A journal file alone: replay it on `engine` with conservation checked and check what it derives."""
    lines = _journal(journal)
    postings: list[dict[str, Any]] = []
    try:
        derived, ledger, events = derive(lines, postings, engine=engine)
    except EngineFailure as error:
        raise AuditError(error.of(journal)) from None
    except invariant_errors() as error:
        return [], f"replaying {journal}: conservation broken: {error}"
    checked, problem = verify_records(ledger, events, {}, None, source=str(journal), postings=postings)
    checked.insert(0, f"{conservation_checked(derived)}; head hash {derived.summary()['head_hash']}")
    return checked, problem


async def verify_postgres(dsn: str, anchor_key_files: list[Path] | None = None,
                          engine: EngineName = "reference") -> Outcome:
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
        postings = await store.records("postings")
        stored = await store.stored_hashes()
        head = await store.head()
        funds = {r["fund_id"]: {"balance": str(r["balance"]), "bad_debt": str(r["bad_debt"])}
                 for r in await store.pool.fetch("SELECT * FROM funds")}
        rows = [row async for row in store.journal_rows()]
        checkpoints = await store.checkpoints()
        unlike = [found for table in ("fund_ledger", "adl_events")
                  if (found := await store.columns_unlike_record(table)) is not None]
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
    if stored.get("seq") is not None and last_seq != stored["seq"]:  # a row the service's commit did not write
        return checked, f"the journal runs to seq {last_seq}, the engine head is at seq {stored['seq']}"
    checked.append(f"journal: {last_seq} rows without gaps, each payload_hash that of its payload; journal digest "
                   f"at seq {last_seq}: {digest}")
    if unlike:
        return checked, (f"{unlike[0]}: its columns differ from its record (the record is what the chain and the "
                         f"checkpoints cover; queries read the columns)")
    checked.append("fund ledger and ADL events: every row's columns as its record says")
    if keys:
        problem = _anchored_head(checkpoints, last_seq, stored.get("seq"))
        if problem:
            return checked, problem
        checked.extend(_anchor_lines(checkpoints, digest))
    from backstop.settings import Settings

    summary = {"funds": funds, "ledger_head_hash": head.ledger_head if ledger else None,
               "head_hash": stored.get("head_hash"),
               "state_hash": stored.get("state_hash") if stored.get("state_hash_seq") == stored.get("seq") else None,
               # the service's setting (BACKSTOP_ADL_QUANTILES, as it runs here): its state hash depends on it
               "adl_quantile_points": Settings().adl_quantiles}
    lines = [row[4] for row in rows]
    more, record_problem = verify_records(ledger, events, summary, lambda: derived_by_engine(lines, summary, engine),
                                          source="the database", postings=postings)
    checked.extend(more)
    if record_problem is not None or not keys:
        return checked, record_problem
    problem = check_heads(checkpoints, ledger, events, postings)
    if problem is None:
        checked.append(f"fund ledger and ADL events: heads and counts as signed at each of the {len(checkpoints)} "
                       f"checkpoints")
        signing = sum(1 for signed in checkpoints if signed.checkpoint.postings_head is not None)
        checked.append(f"postings: head and count as signed at each of the {signing} checkpoints that sign them"
                       + (f" (the {len(checkpoints) - signing} signed before migration 0009 do not)"
                          if signing < len(checkpoints) else ""))
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


def _heads(ledger: list[dict[str, Any]], events: list[dict[str, Any]], summary: dict[str, Any], *,
           source: str) -> Outcome:
    """Each chain ends at the head the summary records (so a cut-off tail is seen), and the head hash combines
    the two."""
    start = summary.get("from_snapshot") or {}
    for stream, key, records in (("fund-ledger", "ledger_head_hash", ledger), ("adl-events", "adl_head_hash", events)):
        if summary.get(key) is None:
            continue
        last = records[-1]["hash"] if records else start.get(key, GENESIS_HASH)
        if summary[key] != last:
            return [], (f"{source}: {key} {summary[key]} but the {stream} chain ends at {last}: records were "
                        f"removed, added or rewritten")
    if summary.get("ledger_head_hash") and summary.get("adl_head_hash") and summary.get("head_hash") is not None:
        combined = combine(summary["ledger_head_hash"], summary["adl_head_hash"])
        if summary["head_hash"] != combined:
            return [], f"{source}: head_hash {summary['head_hash']} is not the hash of the two chain heads"
        return ["chain heads and head hash: as summary.json records them"], None
    return [], None


def verify_records(ledger: list[dict[str, Any]], events: list[dict[str, Any]], summary: dict[str, Any],
                   derive_again: Callable[[], Derived] | None, *, source: str,
                   counted: dict[str, list[dict[str, Any]]] | None = None,
                   postings: list[dict[str, Any]] | None = None) -> Outcome:
    """The chains, (with `counted`: the findings and dead letters) every count, the heads, the fund balances, (with
    `postings`) the general ledger and (with `derive_again`, a fresh replay of the journal, run once the rest holds)
    every record re-derived and the hashes reproduced."""
    checked: list[str] = []
    start = summary.get("from_snapshot") or {}
    for stream, key, records in (("fund-ledger", "ledger_head_hash", ledger), ("adl-events", "adl_head_hash", events)):
        problem = check_chain(stream, records, first_prev=start.get(key, GENESIS_HASH))
        if problem:
            return checked, problem
        checked.append(f"{stream}: hash chain of {len(records)} records" + (
            f" from the snapshot at seq {start['seq']}" if start else ""))
    if counted is not None:
        more, count_problem = verify_counts(summary, ledger=ledger, events=events, **counted)
        checked += more
        if count_problem:
            return checked, count_problem
    more, head_problem = _heads(ledger, events, summary, source=source)
    checked += more
    if head_problem:
        return checked, head_problem
    opening = {fund_id: Decimal(balance) for fund_id, balance in start.get("fund_balances", {}).items()}
    balance_problem, balances = check_fund_balances(ledger, opening=opening)
    if balance_problem:
        return checked, balance_problem
    unlisted = sorted(balances.keys() - summary["funds"].keys()) if "funds" in summary else []
    if unlisted:
        return checked, f"{source}: fund {unlisted[0]} has ledger entries but is not among its funds"
    for fund_id, fund in summary.get("funds", {}).items():
        if balances.get(fund_id, Decimal(0)) != Decimal(fund["balance"]):
            return checked, (f"{source}: fund {fund_id} balance {fund['balance']} but its ledger entries add up "
                             f"to {balances.get(fund_id, Decimal(0))}")
        if "bad_debt" in fund and Decimal(fund["bad_debt"]) != bad_debt(Decimal(fund["balance"])):
            return checked, (f"{source}: fund {fund_id} bad_debt {fund['bad_debt']} but its balance is "
                             f"{fund['balance']} (bad debt is a negative balance)")
    checked.append(f"fund balances: {len(balances)} fund(s) equal the sum of their entries, bad debt their negative "
                   f"balance")
    if postings is not None and derive_again is None:
        more, postings_problem = verify_postings(postings, summary, source=source, entries=ledger)
        return checked + more, postings_problem
    if derive_again is None:
        return checked, None
    try:
        derived = derive_again()
    except Unreproducible as error:
        return checked, f"{source}: {error}"
    except EngineFailure as error:
        raise AuditError(error.of(f"the journal of {source}")) from None
    except invariant_errors() as error:
        return checked, f"replaying the journal: conservation broken: {error}"
    checked.append(derived.conservation)
    for stream, key, stored, records in (("fund-ledger", "fund_ledger_entries", ledger, derived.ledger),
                                         ("adl-events", "adl_events", events, derived.events)):
        problem = compare_streams(stream, stored, records[start.get(key, 0):])
        if problem:
            return checked, problem
        checked.append(f"{stream}: all {len(stored)} records re-derived from the journal")
    if postings is not None:  # after the fund ledger and the ADL events: a rewrite of those is named by its record
        more, postings_problem = verify_postings(postings, summary, source=source, entries=ledger)
        checked += more
        if postings_problem:
            return checked, postings_problem
        problem = compare_streams("postings", postings, derived.postings[start.get("postings", 0):])
        if problem:
            return checked, problem
        checked.append(f"postings: all {len(postings)} records re-derived from the journal")
    for key, value in (("head_hash", derived.head_hash), ("state_hash", derived.state_hash)):
        if summary.get(key) is not None and summary.get(key) != value:
            return checked, f"{source}: {key} {summary.get(key)} but the replay gives {value}"
    checked.append("head hash" + (" and state hash" if summary.get("state_hash") else "") + " reproduced")
    return checked, None


def verify_postings(postings: list[dict[str, Any]], summary: dict[str, Any], *, source: str,
                    entries: list[dict[str, Any]]) -> Outcome:
    """The general ledger: its chain, count and head as the summary records them; every account's balance follows
    from its postings and the balances change by a sum of 0 in each seq (core.verify.check_postings); the fund
    accounts end at the funds' balances and (from the start of the ledger) all accounts at the ledger sum; each
    fund-ledger entry (`entries`) shown by its one posting (core.verify.check_entries_posted)."""
    start = summary.get("from_snapshot") or {}
    problem = check_chain("postings", postings, first_prev=start.get("postings_head_hash", GENESIS_HASH))
    if problem:
        return [], problem
    checked = [f"postings: hash chain of {len(postings)} records" + (
        f" from the snapshot at seq {start['seq']}" if start else "")]
    if summary.get("postings") is not None and len(postings) != summary["postings"] - start.get("postings", 0):
        return checked, (f"{source}: postings {summary['postings']}" + (
            f" ({start.get('postings', 0)} before the snapshot)" if start else "") +
            f" but postings.jsonl holds {len(postings)} record(s): records were removed or added")
    head = postings[-1]["hash"] if postings else start.get("postings_head_hash", GENESIS_HASH)
    if summary.get("postings_head_hash") is not None and summary["postings_head_hash"] != head:
        return checked, (f"{source}: postings_head_hash {summary['postings_head_hash']} but the postings chain ends "
                         f"at {head}: records were removed, added or rewritten")
    problem, balances, seqs = check_postings(postings, opening_known=not start)
    if problem:
        return checked, problem
    checked.append(f"postings: every account's balance follows from its postings; the balances change by a sum of "
                   f"0 in each of {seqs} seq(s)")
    funds = summary.get("funds", {})
    unlisted = sorted(account for account in balances if account.startswith("fund:")
                      and account.removeprefix("fund:") not in funds) if "funds" in summary else []
    if unlisted:
        return checked, f"{source}: {unlisted[0]} has postings but its fund is not among the summary's funds"
    for fund_id, fund in funds.items():
        account = fund_account(fund_id)
        if (account in balances or not start) and balances.get(account, Decimal(0)) != Decimal(fund["balance"]):
            return checked, (f"{source}: fund {fund_id} balance {fund['balance']} but its postings leave "
                             f"{account} at {balances.get(account, Decimal(0))}")
    if not start and summary.get("ledger_sum") is not None:
        with localcontext(CONTEXT):  # exact: a default context rounds wide balances
            total = sum(balances.values(), Decimal(0))
        if total != Decimal(summary["ledger_sum"]):
            return checked, (f"{source}: ledger_sum {summary['ledger_sum']} but the postings leave a sum of "
                             f"{text(total)}")
    if summary.get("funds"):
        checked.append("postings: the fund accounts end at the funds' balances" + (
            "" if start else ", all accounts at the ledger sum"))
    problem = check_entries_posted(entries, postings)
    if problem:
        return checked, problem
    checked.append(f"postings: each of the {len(entries)} fund-ledger entries shown by its posting")
    return checked, None
