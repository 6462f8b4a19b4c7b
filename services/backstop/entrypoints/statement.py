"""`backstop statement` and `backstop reconcile` over a replay output directory (or the service's database)."""

from __future__ import annotations

import csv
import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from backstop.adapters.files import write_file_atomically
from backstop.adapters.output_reader import read_stream, read_summary
from backstop.core.fund_statement import OPEN_END, Statement, StatementError, statement
from backstop.core.hashing import GENESIS_HASH
from backstop.core.ledger import bad_debt
from backstop.core.ledger import fund as fund_account
from backstop.core.verify import check_chain, check_postings

ENTRY_COLUMNS = ("id", "seq", "ts", "fund_id", "kind", "amount", "balance_after", "liquidation_id", "counter_account",
                 "symbol", "hash")
ACCOUNT_COLUMNS = ("id", "seq", "ts", "account", "kind", "amount", "balance_after", "counter_account", "symbol",
                   "transfer_id", "fill_id", "liquidation_id", "adl_event_id", "fund_entry_id", "hash")


LATEST_MS = 2**53  # the latest event time the wire takes (backstop.wire.inputs.Timestamp)


def parse_time(value: str) -> int:
    """Milliseconds since the epoch (at most LATEST_MS), or an ISO date/time (UTC unless it says otherwise);
    ValueError says what is wrong."""
    if value.isascii() and value.isdigit():  # str.isdigit() takes other scripts' digits too
        if len(value) > 16 or int(value) > LATEST_MS:
            raise ValueError(f"time {value[:40]} is after the latest event time, {LATEST_MS} ms")
        return int(value)
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {value[:40]!r} (ms since the epoch, or ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    if moment.microsecond % 1000:
        raise ValueError(f"time {value[:40]} is finer than a millisecond (event times are whole milliseconds)")
    since = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)  # exact: no float on the way
    ms = since.days * 86_400_000 + since.seconds * 1000 + since.microseconds // 1000
    if not 0 <= ms <= LATEST_MS:
        raise ValueError(f"time {value[:40]} is outside the event times, 1970-01-01 to {LATEST_MS} ms")
    return ms


def read_entries(out_dir: Path) -> list[dict[str, Any]]:
    """The fund-ledger entries of a replay output directory, each checked (OutputReadError names a bad line)."""
    return read_stream(out_dir, "fund-ledger.jsonl")


def default_target(fund_id: str, fmt: str) -> Path:
    """statement-<fund>.<format> in the current directory; a fund id may hold `/`, which is escaped (%2F)."""
    return Path(f"statement-{quote(fund_id, safe=':@')}.{fmt}")


def _columns(result: Statement) -> tuple[str, ...]:
    return ACCOUNT_COLUMNS if result.names == "account" else ENTRY_COLUMNS


def _rows(result: Statement) -> list[dict[str, Any]]:
    from backstop.core.fund_statement import symbol_of

    return [{**{c: e.get(c) for c in _columns(result) if c != "symbol"}, "symbol": symbol_of(e)}
            for e in result.entries]


def write_statement(result: Statement, target: Path, fmt: str, *, inputs: list[Path]) -> None:
    """The statement written beside `target` and renamed over it (never a half-written file)."""
    write_file_atomically(target, lambda path: write(result, path, fmt), inputs=inputs)


def write(result: Statement, target: Path, fmt: str) -> None:
    if fmt == "json":
        target.write_bytes(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2) + b"\n")
    elif fmt == "csv":
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_columns(result))
            writer.writeheader()
            writer.writerows(_rows(result))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = _rows(result)
        # amounts as exact decimals (38 digits, 8 places): never floats
        money = pa.decimal128(38, 8)
        schema = pa.schema([(name, money if name in ("amount", "balance_after") else
                             pa.int64() if name in ("seq", "ts") else pa.string()) for name in _columns(result)])
        columns = {name: [r[name] for r in rows] for name in schema.names}
        for name in ("amount", "balance_after"):
            columns[name] = [Decimal(v) for v in columns[name]]
        table = pa.table(columns, schema=schema)
        summary = orjson.dumps({k: v for k, v in result.as_json().items() if k != "entries"})
        pq.write_table(table.replace_schema_metadata({"backstop.statement": summary}), target)
    else:
        raise ValueError(f"unknown format {fmt}")


# a stream a statement reads -> the summary.json field naming the hash of its last record
CHAIN_HEADS = {"fund-ledger.jsonl": "ledger_head_hash", "postings.jsonl": "postings_head_hash"}


def check_stream_chain(records: list[dict[str, Any]], stream: str, summary: dict[str, Any]) -> None:
    """Every record's hash holds, from the chain's start (the journal's, or the snapshot's head the replay resumed
    from), and the stream ends where summary.json says its chain does: a file altered anywhere, or cut short, is
    refused with StatementError rather than stated as if whole (hashing is cheap beside reading the file)."""
    key = CHAIN_HEADS[stream]
    first_prev = (summary.get("from_snapshot") or {}).get(key, GENESIS_HASH)
    problem = check_chain(stream.removesuffix(".jsonl"), records, first_prev=first_prev)
    if problem is not None:
        raise StatementError(f"{problem} (backstop audit verify checks the whole directory)")
    head = summary.get(key)  # None: a summary of a backstop before the field (no check)
    end = records[-1].get("hash") if records else first_prev
    if head is not None and end != head:
        raise StatementError(f"{stream} ends at hash {str(end)[:16]}..., summary.json says its chain ends at "
                             f"{str(head)[:16]}...: the file is cut short or altered (backstop audit verify says "
                             f"where)")


def check_fund_balance(entries: list[dict[str, Any]], fund_id: str, summary: dict[str, Any]) -> None:
    """The fund's entries, all of them, add up to the balance summary.json reports (StatementError if not)."""
    whole = statement(entries, fund_id, period_from=0, period_to=OPEN_END, opening=opening_balance(summary, fund_id))
    reported = Decimal(summary["funds"][fund_id]["balance"])
    if whole.closing_balance != reported:
        raise StatementError(f"fund {fund_id}: its entries in fund-ledger.jsonl add up to {whole.closing_balance}, "
                             f"summary.json reports {reported}: the file is incomplete or altered (backstop audit "
                             f"verify says where)")


def opening_balance(summary: dict[str, Any], fund_id: str) -> Decimal:
    """A fund's balance before the output's first entry: 0, or the snapshot's that the replay started from."""
    return Decimal((summary.get("from_snapshot") or {}).get("fund_balances", {}).get(fund_id, "0"))


def reconcile(out_dir: Path) -> tuple[list[str], list[str]]:
    """(lines of the report, problems): per fund, its opening balance (0, or the snapshot's) + flows by kind = the
    balance the summary reports = the balance its account ends at in the general ledger (postings.jsonl), and its
    bad debt that balance's; the general ledger sums to zero. Entries that do not add up are a problem too, as is
    a hash chain that does not hold or end where summary.json says (a file altered, or cut short)."""
    summary = read_summary(out_dir)
    entries = read_entries(out_dir)
    lines: list[str] = []
    problems: list[str] = []
    try:
        check_stream_chain(entries, "fund-ledger.jsonl", summary)
    except StatementError as error:
        problems.append(str(error))
    if summary.get("ledger_sum") != "0":
        problems.append(f"the general ledger does not balance: sum {summary.get('ledger_sum')}")
    posted = _posted_balances(out_dir, summary, problems)
    unlisted = sorted({str(entry["fund_id"]) for entry in entries} - summary["funds"].keys()
                      | {account.removeprefix("fund:") for account in posted or () if account.startswith("fund:")}
                      - summary["funds"].keys())
    problems.extend(f"fund {fund_id}: entries or postings of it, but summary.json does not list it"
                    for fund_id in unlisted)
    for fund_id, fund in sorted(summary["funds"].items()):
        reported = Decimal(fund["balance"])
        account = fund_account(fund_id)
        if posted is not None and posted.get(account, reported) != reported:
            problems.append(f"fund {fund_id}: its postings leave {account} at {posted[account]}, summary reports "
                            f"{reported}")
        try:
            result = statement(entries, fund_id, period_from=0, period_to=OPEN_END,
                               opening=opening_balance(summary, fund_id))
        except StatementError as error:
            problems.append(f"fund {fund_id}: {error}")
            continue
        lines.append(f"fund {fund_id}: opening {result.opening_balance}"
                     + (" (the snapshot's)" if summary.get("from_snapshot") else "")
                     + f", closing {result.closing_balance} {fund['settle_asset']}")
        for kind, amount in sorted(result.by_kind.items()):
            lines.append(f"  {kind:<18} {amount:>22}")
        for symbol, amount in sorted(result.by_symbol.items()):
            lines.append(f"  symbol {symbol:<11} {amount:>22}")
        if result.closing_balance != reported:
            problems.append(f"fund {fund_id}: entries add up to {result.closing_balance}, summary reports {reported}")
        if Decimal(fund["bad_debt"]) != bad_debt(reported):
            problems.append(f"fund {fund_id}: bad debt {fund['bad_debt']} does not match the balance {reported}")
    return lines, problems


def _posted_balances(out_dir: Path, summary: dict[str, Any], problems: list[str]) -> dict[str, Decimal] | None:
    """Each account's balance after the general ledger's last posting (an account a replay from a snapshot never
    posted to is left out: its balance is the snapshot's); None when postings.jsonl is missing or the postings do
    not follow (said in `problems`: every seq's postings must sum to 0, which is what makes the ledger's sum 0)."""
    if not (out_dir / "postings.jsonl").exists():
        problems.append("postings.jsonl is missing: the general ledger (each fund's account, its sum) is not there "
                        "to reconcile")
        return None
    start = summary.get("from_snapshot")
    postings = read_stream(out_dir, "postings.jsonl")
    try:
        check_stream_chain(postings, "postings.jsonl", summary)
    except StatementError as error:
        problems.append(str(error))
        return None
    problem, balances, _ = check_postings(postings, opening_known=not start)
    if problem is not None:
        problems.append(str(problem))
        return None
    return balances if start else {**{fund_account(f): Decimal(0) for f in summary["funds"]}, **balances}
