"""Fairness metrics of ADL rounds (docs/design.md §11.4): one record per round, and their sums over a run.

A round is one deleverage of one fund lot (or one spread of a fund's shortfall, under `socialized`). Its figures are
taken at the mark in force when it starts, before any counterparty is reduced: the deficit the lot brings, the part
of it the fund could not pay (needed), what the counterparties gave up against the mark (haircut), and who was hit
against who could have been. Sums and differences are exact; each ratio is one division, HALF_EVEN to 1e-12, and
every reported amount HALF_EVEN to 1e-8 (§9.4). `full` adds what needs every eligible position: rank inversions and
the eligible population's quantiles (O(N log N) a round).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

from backstop.core.numbers import CONTEXT, MONEY_QUANTUM, ZERO, money, ratio, share, text
from backstop.core.records import SCHEMA_VERSION

EPSILON = MONEY_QUANTUM  # the worst share's epsilon: x / (u + 1e-8), so that a profit of 0 divides
DECILES = (("p10", 1), ("p50", 5), ("p90", 9))


@dataclass(frozen=True, slots=True)
class Figures:
    """A position at the round's mark: its profit (uPnL, exact, signed), its leverage (size x mark / equity,
    HALF_EVEN 1e-12; None when its equity is <= 0) and its PnL% (uPnL / cost, HALF_EVEN 1e-12; 0 when cost is 0)."""

    account_id: str
    profit: Decimal
    leverage: Decimal | None
    pnl_pct: Decimal


def figures(account_id: str, cost: Decimal, profit: Decimal, equity: Decimal, notional: Decimal) -> Figures:
    """notional: the position's value at the mark (size x mark, or V(size, mark) for an inverse contract)."""
    leverage = ratio(notional, equity) if equity > 0 else None
    return Figures(account_id, profit, leverage, ratio(profit, cost) if cost != 0 else ZERO)


@dataclass(frozen=True, slots=True)
class Hit:
    """A counterparty a round took from: the qty closed (0 under `socialized`), and its haircut x (exact, signed):
    what it gave up against the mark (ADL: its proceeds against qty x mark; socialized: the amount taken)."""

    figures: Figures
    qty: Decimal
    haircut: Decimal


@dataclass(frozen=True, slots=True)
class Round:
    """One round's record (the adl-rounds.jsonl line) and the values a run pools from it."""

    record: dict[str, Any]
    deficit: Decimal  # exact, as are needed and haircut (the record holds them rounded)
    needed: Decimal
    haircut: Decimal
    # what a run sums: the deficit of the qty the round closed (the rest, retried, is counted when it is taken), and
    # its need
    counted_deficit: Decimal
    counted_needed: Decimal
    hits: tuple[Hit, ...]
    eligible: tuple[Figures, ...] | None  # full metrics only
    inversions: tuple[int, int, int] | None  # (by profit, by leverage, pairs), full metrics only


# --------------------------------------------------------------------------------------------------- quantiles
def quantiles(values: Sequence[Decimal]) -> dict[str, Any]:
    """p10, p50, p90 (nearest rank: the value at place ceil(k x n / 10) of the ascending order) and max."""
    ordered = sorted(values)
    count = len(ordered)
    result: dict[str, Any] = {"count": count}
    for name, tenths in DECILES:
        result[name] = ordered[(tenths * count + 9) // 10 - 1] if count else None
    result["max"] = ordered[-1] if count else None
    return result


def counted_quantiles(counts: Counter[Decimal]) -> dict[str, Any]:
    """quantiles() of a multiset given as value -> count."""
    count = sum(counts.values())
    result: dict[str, Any] = {"count": count}
    places = {name: (tenths * count + 9) // 10 - 1 for name, tenths in DECILES}
    seen = 0
    values = sorted(counts)
    for name, _ in DECILES:
        result[name] = None
    for value in values:
        seen += counts[value]
        for name, place in places.items():
            if result[name] is None and place < seen:
                result[name] = value
    result["max"] = values[-1] if values else None
    return result


def _distribution(population: Iterable[Figures]) -> tuple[dict[str, Any], dict[str, Any]]:
    members = list(population)
    leverage = quantiles([f.leverage for f in members if f.leverage is not None])
    leverage["unbounded"] = sum(1 for f in members if f.leverage is None)
    return leverage, quantiles([f.pnl_pct for f in members])


# --------------------------------------------------------------------------------------------------- inversions
def _greater_after(values: list[Any], hit_values: list[Any], sequential: bool) -> int:
    """Σ over hits k of #{eligible j after k: v_j > v_k}: after = not among the hits before and at k (sequential), or
    not hit at all (an allocation made at once)."""
    ordered = sorted(values)
    total = 0
    if sequential:
        seen: list[Any] = []
        for value in hit_values:
            bisect.insort(seen, value)
            total += len(ordered) - bisect.bisect_right(ordered, value) - (len(seen) - bisect.bisect_right(seen, value))
        return total
    hits_sorted = sorted(hit_values)
    for value in hit_values:
        total += (len(ordered) - bisect.bisect_right(ordered, value)) - (
            len(hits_sorted) - bisect.bisect_right(hits_sorted, value))
    return total


def _leverage_key(figures_: Figures) -> tuple[int, Decimal]:
    return (1, ZERO) if figures_.leverage is None else (0, figures_.leverage)  # no equity: above every leverage


def inversions(eligible: Sequence[Figures], hits: Sequence[Figures], *, sequential: bool) -> tuple[int, int, int]:
    """(pairs where the later or untouched one had the higher profit, ... the higher leverage, pairs): over pairs
    (i hit, j eligible and hit later or not at all). A position without equity counts as the highest leverage."""
    count, hit_count = len(eligible), len(hits)
    pairs = hit_count * count - hit_count * (hit_count + 1) // 2 if sequential else hit_count * (count - hit_count)
    by_profit = _greater_after([f.profit for f in eligible], [f.profit for f in hits], sequential)
    by_leverage = _greater_after([_leverage_key(f) for f in eligible], [_leverage_key(f) for f in hits], sequential)
    return by_profit, by_leverage, pairs


def share_of(count: int, pairs: int) -> Decimal | None:
    return ratio(Decimal(count), Decimal(pairs)) if pairs else None


# --------------------------------------------------------------------------------------------------- one round
@dataclass(frozen=True, slots=True)
class RoundStart:
    """What a round starts from: its trigger, the lot (None under `socialized`), the mark, the fund."""

    trigger: str
    fund_id: str
    symbol: str | None
    liquidation_id: str | None
    side: str | None
    qty: Decimal | None
    cost: Decimal | None
    mark: Decimal | None
    fund_balance: Decimal
    floor: Decimal
    bankruptcy_price: Decimal | None = None  # the lot part's reported BP (its cost's price, HALF_EVEN 1e-8)


def deficit(value_long: bool, cost: Decimal, value: Decimal) -> Decimal:
    """The lot's loss at the mark, value its value there: cost - value for a lot long in value space (a linear long,
    an inverse short), value - cost else, never < 0."""
    return max(cost - value if value_long else value - cost, ZERO)


def closed_share(deficit_: Decimal, wanted: Decimal | None, closed: Decimal) -> Decimal:
    """The deficit a run counts of a round: all of it, or of a round that closed part of the qty it asked for, that
    part's pro-rata share (§9.4; the rest is counted when it is taken)."""
    return deficit_ if wanted is None or closed == wanted or wanted <= 0 else share(deficit_, closed, wanted)


def needed(deficit_: Decimal, fund_balance: Decimal, floor: Decimal) -> Decimal:
    """The part of a deficit the fund could not pay from its balance above its floor."""
    return max(deficit_ - max(fund_balance - floor, ZERO), ZERO)


def build(*, round_id: str, seq: int, ts: int, policy: str, start: RoundStart, deficit_: Decimal,
          price_rule: str | None, closed: Decimal, hits: Sequence[Hit], eligible: Sequence[Figures] | None,
          eligible_count: int, sequential: bool) -> Round:
    """The round's record: every figure of docs/design.md §11.4."""
    need = needed(deficit_, start.fund_balance, start.floor)
    haircut = sum((max(h.haircut, ZERO) for h in hits), ZERO)
    worst = max((ratio(max(h.haircut, ZERO), max(h.figures.profit, ZERO) + EPSILON) for h in hits), default=ZERO)
    hit_leverage, hit_pnl = _distribution(h.figures for h in hits)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "id": round_id, "seq": seq, "ts": ts, "fund_id": start.fund_id,
        "symbol": start.symbol, "liquidation_id": start.liquidation_id, "policy": policy, "trigger": start.trigger,
        "side": start.side, "qty": start.qty, "closed": closed, "mark_price": start.mark,
        "bankruptcy_price": None, "price": price_rule, "fund_balance": start.fund_balance, "floor": start.floor,
        "deficit": money(deficit_), "needed": money(need), "haircut": money(haircut),
        "overshoot": money(max(haircut - need, ZERO)), "over_use": ratio(haircut, need) if need > 0 else None,
        "worst_share": worst, "counterparties": len(hits), "eligible": eligible_count,
        "leverage": {"hit": hit_leverage, "eligible": None}, "pnl_pct": {"hit": hit_pnl, "eligible": None},
        "inversions": None, "hits": None,
    }
    if start.bankruptcy_price is not None:
        record["bankruptcy_price"] = start.bankruptcy_price
    counted = None
    if eligible is not None:
        record["leverage"]["eligible"], record["pnl_pct"]["eligible"] = _distribution(eligible)
        counted = inversions(eligible, [h.figures for h in hits], sequential=sequential)
        record["inversions"] = {"profit": share_of(counted[0], counted[2]),
                                "leverage": share_of(counted[1], counted[2]), "pairs": counted[2]}
        record["hits"] = [{"account_id": h.figures.account_id, "qty": h.qty, "haircut": money(h.haircut),
                           "profit": money(h.figures.profit), "leverage": h.figures.leverage,
                           "pnl_pct": h.figures.pnl_pct} for h in hits]
    counted_deficit = closed_share(deficit_, start.qty, closed)
    counted_needed = needed(counted_deficit, start.fund_balance, start.floor)
    return Round(record, deficit_, need, haircut, counted_deficit, counted_needed, tuple(hits),
                 tuple(eligible) if eligible is not None else None, counted)


# --------------------------------------------------------------------------------------------------- a run
@dataclass(slots=True)
class FundTotals:
    """One fund's part of a run's sums: amounts of one settlement asset, which add up."""

    asset: str
    rounds: int = 0
    events: int = 0
    notional: Decimal = ZERO
    deficit: Decimal = ZERO
    needed: Decimal = ZERO
    haircut: Decimal = ZERO
    overshoot: Decimal = ZERO
    socialized: Decimal = ZERO

    def add_round(self, round_: Round) -> None:
        self.rounds += 1
        if round_.hits:
            self.deficit += round_.counted_deficit
            self.needed += round_.counted_needed
            self.haircut += round_.haircut
            self.overshoot += max(round_.haircut - round_.counted_needed, ZERO)
        if round_.record["trigger"] == "socialized":
            self.socialized += round_.haircut

    def sums(self) -> dict[str, Any]:
        return {"notional": money(self.notional), "deficit": money(self.deficit), "needed": money(self.needed),
                "haircut": money(self.haircut), "overshoot": money(self.overshoot),
                "over_use": ratio(self.haircut, self.needed) if self.needed > 0 else None,
                "socialized": money(self.socialized)}


@dataclass(slots=True)
class RunTotals:
    """The rounds, ADL events and fund postings of one replay, summed (summary.json's `adl`)."""

    full: bool = False
    rounds: int = 0
    # rounds nobody was taken from (a lot no position could take, retried at each later trigger): their deficit and
    # need are left out of the sums, which would count the same lot again at every retry
    rounds_without_takers: int = 0
    events: int = 0
    worst_share: Decimal = ZERO
    inverted_profit: int = 0
    inverted_leverage: int = 0
    pairs: int = 0
    accounts: set[str] = field(default_factory=set)
    populations: dict[str, Counter[Decimal]] = field(default_factory=dict)
    unbounded: Counter[str] = field(default_factory=Counter)
    fund_peak: dict[str, Decimal] = field(default_factory=dict)
    fund_drawdown: dict[str, Decimal] = field(default_factory=dict)
    # each fund's own sums: the run's money sums add only where every fund settles in one asset
    by_fund: dict[str, FundTotals] = field(default_factory=dict)

    def add_round(self, round_: Round, asset: str) -> None:
        """A round of the fund `round_.record["fund_id"]`, which settles in `asset`."""
        with localcontext(CONTEXT):  # exact sums, whoever calls
            self._add_round(round_, asset)

    def _add_round(self, round_: Round, asset: str) -> None:
        self.rounds += 1
        if not round_.hits:
            self.rounds_without_takers += 1
        self._fund(round_.record["fund_id"], asset).add_round(round_)
        self.worst_share = max(self.worst_share, round_.record["worst_share"])
        for hit in round_.hits:
            self.accounts.add(hit.figures.account_id)
        self._pool("hit", (h.figures for h in round_.hits))
        if round_.eligible is not None:
            self._pool("eligible", round_.eligible)
        if round_.inversions is not None:
            self.inverted_profit += round_.inversions[0]
            self.inverted_leverage += round_.inversions[1]
            self.pairs += round_.inversions[2]

    def _pool(self, population: str, members: Iterable[Figures]) -> None:
        leverage = self.populations.setdefault(f"leverage.{population}", Counter())
        pnl = self.populations.setdefault(f"pnl_pct.{population}", Counter())
        for member in members:
            pnl[member.pnl_pct] += 1
            if member.leverage is None:
                self.unbounded[population] += 1
            else:
                leverage[member.leverage] += 1

    def add_event(self, fund_id: str, asset: str, notional: Decimal) -> None:
        """An ADL event against a lot of `fund_id` (settling in `asset`), worth `notional` (qty x price, or
        V(qty, price) for an inverse contract)."""
        self.events += 1
        fund = self._fund(fund_id, asset)
        fund.events += 1
        fund.notional = CONTEXT.add(fund.notional, notional)

    def _fund(self, fund_id: str, asset: str) -> FundTotals:
        fund = self.by_fund.get(fund_id)
        if fund is None:
            fund = self.by_fund[fund_id] = FundTotals(asset)
        return fund

    def add_fund_entry(self, fund_id: str, amount: Decimal, balance_after: Decimal) -> None:
        peak = max(self.fund_peak.get(fund_id, CONTEXT.subtract(balance_after, amount)), balance_after)
        self.fund_peak[fund_id] = peak
        self.fund_drawdown[fund_id] = max(self.fund_drawdown.get(fund_id, ZERO), CONTEXT.subtract(peak, balance_after))

    def document(self) -> dict[str, Any]:
        def population(name: str) -> dict[str, Any] | None:
            if name.endswith("eligible") and not self.full:
                return None
            result = counted_quantiles(self.populations.get(name, Counter()))
            if name.startswith("leverage"):
                result["unbounded"] = self.unbounded[name.split(".")[1]]
            return texts(result)

        funds = sorted(self.by_fund.items())
        run = FundTotals("")  # the funds' sums added up: null where they settle in more than one asset
        for _, fund in funds:
            for name in ("notional", "deficit", "needed", "haircut", "overshoot", "socialized"):
                setattr(run, name, CONTEXT.add(getattr(run, name), getattr(fund, name)))
        sums = run.sums()
        if len({fund.asset for _, fund in funds}) > 1:
            sums = dict.fromkeys(sums)
        return texts({
            "metrics": "full" if self.full else "basic", "rounds": self.rounds,
            "rounds_without_takers": self.rounds_without_takers, "events": self.events,
            "notional": sums["notional"], "deficit": sums["deficit"], "needed": sums["needed"],
            "haircut": sums["haircut"], "overshoot": sums["overshoot"], "over_use": sums["over_use"],
            "worst_share": self.worst_share, "socialized": sums["socialized"],
            "inversions": {"profit": share_of(self.inverted_profit, self.pairs),
                           "leverage": share_of(self.inverted_leverage, self.pairs),
                           "pairs": self.pairs} if self.full else None,
            "accounts_affected": len(self.accounts),
            "leverage": {"hit": population("leverage.hit"), "eligible": population("leverage.eligible")},
            "pnl_pct": {"hit": population("pnl_pct.hit"), "eligible": population("pnl_pct.eligible")},
            "fund_max_drawdown": {fund_id: money(drawdown) for fund_id, drawdown in sorted(self.fund_drawdown.items())},
            "by_fund": {fund_id: {"asset": fund.asset, "rounds": fund.rounds, "events": fund.events, **fund.sums()}
                        for fund_id, fund in funds},
        })


def _text_tree(value: Any) -> Any:
    if isinstance(value, Decimal):
        return text(value)
    if isinstance(value, dict):
        return {key: _text_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_text_tree(item) for item in value]
    return value


def texts(document: dict[str, Any]) -> dict[str, Any]:
    """Decimals as canonical text, recursively (summary.json is written with orjson, not canonical_json)."""
    result: dict[str, Any] = _text_tree(document)
    return result
