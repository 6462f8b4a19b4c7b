"""Journals at the numeric bounds of docs/design.md §9, for the fuzz tests (hypothesis in tests/property, atheris in
tests/fuzz): every decimal at, just inside or just beyond its kind's bounds, and streams that push positions and
the fund's inventory to the state bounds. The builder takes its choices from a Chooser, so that hypothesis and a
coverage-guided fuzzer drive the same generator.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import orjson

from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.wire.decode import InvalidRecord, decode_record
from backstop.wire.inputs import LEVERAGE_RANGE, NON_NEGATIVE, POSITIVE, SIGNED, Kind, decimal_fields
from scenario import fill, fund, funding, instrument, liquidation, mark, transfer

T = TypeVar("T")
ACCOUNTS = ("x0", "x1", "x2", "x3")
FUND_ID = "F"
FINE, COARSE = "FINE", "COARSE"  # FINE: tick and lot 1e-8, so every 8-decimal value is a multiple
START_TS = 1_760_000_000_000


class Chooser(Protocol):
    def pick(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...


def boundary_values(kind: Kind, sign: str, *, beyond: bool = True) -> list[str]:
    """Values at the edges of a kind (largest, smallest, powers of ten) and, with beyond, one digit past them."""
    integer, fraction = kind.integer_digits, kind.fraction_digits
    largest = "9" * integer + "." + "9" * fraction
    smallest = "0." + "0" * (fraction - 1) + "1"
    values = [largest, "9" * integer, "1" + "0" * (integer - 1), smallest, "1", "0.5",
              "1." + "0" * (fraction - 1) + "1", "5" * integer + "." + "5" * fraction]
    if sign == LEVERAGE_RANGE:
        values = ["0.01", "1000", "999.99999999", "0.01000001", "1", "125"]
        if beyond:
            values += ["0.00999999", "1000.00000001", "0.000000000000000001", "10000"]
        return values
    if sign == SIGNED:
        values += ["-" + value for value in values]
    if sign in (SIGNED, NON_NEGATIVE):
        values += ["0", "-0"]
    if beyond:
        values += ["1" + "0" * integer, "0." + "0" * fraction + "1", largest + "9", "99999999999999999999"]
        if sign == POSITIVE:
            values += ["0", "-" + smallest]
    return values


@functools.cache
def _values(field: str, *, beyond: bool) -> tuple[str, ...]:
    kind, sign = decimal_fields()[field]
    return tuple(boundary_values(kind, sign, beyond=beyond))


def _pick_value(chooser: Chooser, field: str) -> str:
    """Mostly a value within the bounds; one in eight may be beyond them (a wire rejection in the stream)."""
    return chooser.pick(_values(field, beyond=chooser.integer(0, 7) == 0))


def _steps(chooser: Chooser, symbol: str, field: str, step: Decimal) -> str:
    """A quantity or price of a symbol: a bound value on the fine symbol, whole steps on the coarse one."""
    if symbol == FINE:
        return _pick_value(chooser, field)
    return str(step * chooser.pick([1, 2, 3, 10, 999, 10 ** 6]))


def build_journal(chooser: Chooser, events: int) -> list[dict[str, Any]]:
    return build(chooser, events)[0]


def build(chooser: Chooser, events: int) -> tuple[list[dict[str, Any]], Processor]:
    """A fund, a fine and a coarse instrument at extreme specs, deposits, then `events` records; and the
    conservation-checking processor that applied them while they were built (liquidations and the fund's own fills
    are sized against the state the records before them produce). Any exception but a wire rejection
    (InvalidRecord) propagates."""
    coarse_tick = Decimal(chooser.pick(["0.5", "1", "1000", "9999999999"]))
    coarse_lot = Decimal(chooser.pick(["1", "1000", "100000000000", "999999999999"]))
    tiers = chooser.pick([
        (("9999999999999999.99999999", "0.01", "0"),),
        (("10000000000", "0.000000000000000001", "0"), ("9999999999999999.99999999", "0.999999999999999999",
                                                        "9999999999.99999998")),
        (("9999999999999999", "0.00000001", "0"), ("9999999999999999.99999999", "0.99999999", None)),
        (("50000", "0.004", "0"), ("250000", "0.005", "50"), ("9999999999999999", "0.5", "123800")),
    ])
    setup = [
        fund(FUND_ID, surplus=chooser.pick(["fund", "trader"]),
             ratio=chooser.pick(["0", "1", "9999.999999999999999999", "0.000000000000000001"])),
        instrument(FINE, fund_id=FUND_ID, tick="0.00000001", lot="0.00000001", tiers=tiers,
                   fee_rate=chooser.pick(["0", "0.005", "9999.999999999999999999"])),
        instrument(COARSE, fund_id=FUND_ID, tick=str(coarse_tick), lot=str(coarse_lot), tiers=tiers),
        transfer("seed", f"fund:{FUND_ID}", chooser.pick(["0.00000001", "1000", "9999999999999999.99999999"])),
        *[transfer(f"d-{account}", account, chooser.pick(["1", "10000", "9999999999999999.99999999"]))
          for account in ACCOUNTS],
    ]
    steps = {FINE: (Decimal("0.00000001"), Decimal("0.00000001")), COARSE: (coarse_tick, coarse_lot)}
    processor = Processor(Engine(check_conservation=True))
    journal: list[dict[str, Any]] = []

    def take(record: dict[str, Any]) -> None:
        record["ts"] = START_TS + len(journal)
        journal.append(record)
        try:
            decoded = decode_record(orjson.dumps(record))
        except InvalidRecord:
            return  # beyond the wire bounds: a rejection, as a dead letter would be
        processor.process(decoded)  # applied, a duplicate or a rejection: anything raised is a failure

    for record in setup:
        take(record)
    for number in range(events):
        symbol = chooser.pick([FINE, FINE, COARSE])
        tick, lot = steps[symbol]
        action = chooser.pick(["fill", "fill", "grow", "mark", "funding", "liquidation", "liquidation", "transfer",
                               "fund_fill"])
        if action in ("fill", "grow"):
            account = chooser.pick(ACCOUNTS)
            qty = _steps(chooser, symbol, "fill.qty", lot)
            held = processor.engine.positions.get(account, symbol)
            side = chooser.pick(["buy", "sell"])
            if action == "grow" and held is not None:  # the same side again, towards the state bounds
                side = "buy" if held.qty > 0 else "sell"
            take(fill(f"f{number}", account, side, qty, _steps(chooser, symbol, "fill.price", tick), symbol=symbol,
                      mode=held.margin_mode if held is not None else chooser.pick(["cross", "isolated"]),
                      leverage=_pick_value(chooser, "fill.leverage"), fee=_pick_value(chooser, "fill.fee")))
        elif action == "mark":
            take(mark(_steps(chooser, symbol, "mark.mark_price", tick), symbol=symbol))
        elif action == "funding":
            take(funding(_pick_value(chooser, "funding.rate"), _steps(chooser, symbol, "funding.mark_price", tick),
                         symbol=symbol))
        elif action == "transfer":
            take(transfer(f"t{number}", chooser.pick([*ACCOUNTS, f"fund:{FUND_ID}"]),
                          _pick_value(chooser, "transfer.amount")))
        elif action == "liquidation":
            holders = sorted(processor.engine.by_symbol.get(symbol, {}))
            if not holders:
                continue
            position = processor.engine.by_symbol[symbol][chooser.pick(holders)]
            qty = position.size if chooser.integer(0, 1) else max(lot, (position.size / 2 // lot) * lot)
            executions = []
            left = qty
            for _ in range(chooser.integer(0, 2)):
                part = left if chooser.integer(0, 1) else max(lot, (left / 3 // lot) * lot)
                if part <= 0 or part > left:
                    break
                executions.append((str(part), _steps(chooser, symbol, "liquidation.executions[].price", tick)))
                left -= part
            venue_bp = chooser.pick([None, _steps(chooser, symbol, "liquidation.bankruptcy_price", tick)])
            take(liquidation(f"l{number}", position.account_id, str(qty),
                             _steps(chooser, symbol, "liquidation.mark_price", tick), symbol=symbol,
                             executions=executions, bankruptcy_price=venue_bp))
        else:
            lots = processor.engine.funds[FUND_ID].lots.get(symbol) if FUND_ID in processor.engine.funds else None
            if not lots:
                continue
            side = lots[0].side
            held_qty = sum((x.qty for x in lots if x.side == side), Decimal(0))
            qty = held_qty if chooser.integer(0, 1) else max(lot, (held_qty / 2 // lot) * lot)
            take(fill(f"ff{number}", f"fund:{FUND_ID}", "sell" if side == "long" else "buy", str(qty),
                      _steps(chooser, symbol, "fill.price", tick), symbol=symbol, fee=_pick_value(chooser, "fill.fee")))
    return journal, processor


def lines(journal: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in journal)


# The crash of issue #19 item 5: an isolated fill of qty = price = 10^20 - 1 at leverage 1e-18 passed the wire and
# raised decimal.InvalidOperation in the engine. Beyond the wire bounds now; its largest in-bound twin beside it.
ISSUE_19_POISON = fill("poison", "x0", "buy", "99999999999999999999", "99999999999999999999", symbol=FINE,
                       mode="isolated", leverage="0.000000000000000001")
IN_BOUND_POISON = fill("poison-in", "x0", "buy", "999999999999.99999999", "9999999999.99999999", symbol=FINE,
                       mode="isolated", leverage="0.01")
