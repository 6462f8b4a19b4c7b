"""ADL policies (docs/design.md §11): how a round picks its counterparties, at what price, and when it happens.

A policy is part of the engine state (its state document's `adl_policy`), so a journal replays to its own hashes
under its own policy. The default writes only {"rule": "bitmex", "price": "bankruptcy"}; every other key is written
only when it differs from its default, so the default's state hash never moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, get_args

from backstop.core.numbers import CONTEXT, MAX_MONEY, MONEY_QUANTUM, ZERO, text

Rule = Literal["bitmex", "binance", "pro_rata", "capped_pro_rata", "min_max_leverage", "socialized"]
Price = Literal["bankruptcy", "mark", "floor"]
RULES: tuple[Rule, ...] = get_args(Rule)
PRICES: tuple[Price, ...] = get_args(Price)
HOUR_MS = 3_600_000
MAX_WINDOW_MS = 1_000_000 * HOUR_MS  # a drawdown window: more than a century, far inside both engines' integers
# the queue walks: counterparties are reduced one after another in ranking order (the others allocate at once)
SEQUENTIAL_RULES = frozenset({"bitmex", "binance"})


def _at_quantum(value: Decimal) -> bool:
    """A finite decimal with at most 8 decimals (a bounded one: the caller checked its size)."""
    return CONTEXT.remainder(value, MONEY_QUANTUM) == 0  # exact: no rounding to trap


@dataclass(frozen=True, slots=True)
class Drawdown:
    """Bybit's trigger (Dec 2025): ADL when a symbol's fund PnL falls more than `ratio` of the pool's max balance
    below its max PnL over `window_ms` of event time; it stops once the fall is back under `stop`."""

    ratio: Decimal = Decimal("0.3")
    stop: Decimal = Decimal("0.25")
    window_ms: int = 8 * HOUR_MS


@dataclass(frozen=True, slots=True)
class AdlPolicy:
    """What-if replays change it; the default is docs/design.md §4 (BitMEX's queue at the lot's bankruptcy price)."""

    rule: Rule = "bitmex"
    price: Price = "bankruptcy"
    floor: Decimal = ZERO  # the fund's balance floor (OKX): it accepts inventory only above it
    drawdown: Drawdown | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown ADL rule {self.rule!r}")
        if self.price not in PRICES:
            raise ValueError(f"unknown ADL price {self.price!r}")
        # amounts and ratios at the ledger's quantum (both engines read them at 1e-8), within the money bound
        if not (self.floor.is_finite() and 0 <= self.floor < MAX_MONEY):
            raise ValueError(f"the fund floor must be >= 0 and below 1e16, not {self.floor}")
        if not _at_quantum(self.floor):
            raise ValueError(f"the fund floor must have at most 8 decimals, not {self.floor}")
        drawdown = self.drawdown
        if drawdown is not None:
            if self.rule == "socialized":
                raise ValueError("the drawdown trigger decides when to deleverage; socialized never deleverages")
            if not (0 < drawdown.ratio <= 1 and 0 <= drawdown.stop <= drawdown.ratio):
                raise ValueError(f"drawdown: 0 < ratio <= 1 and 0 <= stop <= ratio, not ratio {drawdown.ratio} and "
                                 f"stop {drawdown.stop} (a stop given alone is held to the ratio's default)")
            if not (_at_quantum(drawdown.ratio) and _at_quantum(drawdown.stop)):
                raise ValueError(f"drawdown: the ratios must have at most 8 decimals, not {drawdown.ratio} and "
                                 f"{drawdown.stop}")
            if not 0 < drawdown.window_ms <= MAX_WINDOW_MS:
                raise ValueError(f"drawdown: the window must be > 0 ms and at most {MAX_WINDOW_MS // HOUR_MS} hours")

    @property
    def sequential(self) -> bool:
        return self.rule in SEQUENTIAL_RULES

    @property
    def name(self) -> str:
        """The preset this policy is (or starts from): queue, binance, ..., bybit, okx; Bybit's drawdown trigger over
        another rule than the queue is that rule's name with +drawdown."""
        if self.drawdown is not None:
            return "bybit" if self.rule == "bitmex" else f"{self.rule}+drawdown"
        if self.price == "floor" and self.rule == "bitmex":
            return "okx"
        return "queue" if self.rule == "bitmex" else self.rule


# `backstop replay --adl-policy NAME`, `backstop whatif --policies a,b,...`: a preset each; --adl-price, --adl-floor
# and the drawdown parameters adjust it.
PRESETS: dict[str, AdlPolicy] = {
    "queue": AdlPolicy(),
    "binance": AdlPolicy(rule="binance"),
    "pro_rata": AdlPolicy(rule="pro_rata"),
    "capped_pro_rata": AdlPolicy(rule="capped_pro_rata"),
    "min_max_leverage": AdlPolicy(rule="min_max_leverage"),
    "socialized": AdlPolicy(rule="socialized"),
    "bybit": AdlPolicy(drawdown=Drawdown()),
    "okx": AdlPolicy(price="floor"),
}
ALIASES = {"bitmex": "queue"}  # the rule's own name, as --adl-rule spelled it


def preset(name: str) -> AdlPolicy:
    """The named policy; ValueError names the choices."""
    found = PRESETS.get(ALIASES.get(name, name))
    if found is None:
        raise ValueError(f"unknown ADL policy {name!r}: choose from {', '.join(PRESETS)}")
    return found


def document(policy: AdlPolicy) -> dict[str, Any]:
    """The policy as the state document holds it: rule and price, and each other key only when not its default."""
    result: dict[str, Any] = {"rule": policy.rule, "price": policy.price}
    if policy.floor != 0:
        result["floor"] = text(policy.floor)
    if policy.drawdown is not None:
        drawdown = policy.drawdown
        result["drawdown"] = {"ratio": text(drawdown.ratio), "stop": text(drawdown.stop),
                              "window_ms": drawdown.window_ms}
    return result


def from_document(document_: dict[str, Any]) -> AdlPolicy:
    drawdown = document_.get("drawdown")
    return AdlPolicy(
        rule=document_.get("rule", "bitmex"), price=document_.get("price", "bankruptcy"),
        floor=Decimal(document_.get("floor", "0")),
        drawdown=None if drawdown is None else Drawdown(Decimal(drawdown["ratio"]), Decimal(drawdown["stop"]),
                                                        int(drawdown["window_ms"])))


def configured(name: str, *, price: str | None = None, floor: Decimal | None = None,
               drawdown_ratio: Decimal | None = None, stop_ratio: Decimal | None = None,
               window_hours: int | None = None) -> AdlPolicy:
    """A preset with the options a command line or a parameter file gives (None keeps the preset's); ValueError says
    what is wrong. The drawdown options turn Bybit's trigger on with the others at their defaults."""
    policy = preset(name)
    drawdown = policy.drawdown
    if drawdown_ratio is not None or stop_ratio is not None or window_hours is not None:
        base = drawdown or Drawdown()
        drawdown = Drawdown(drawdown_ratio if drawdown_ratio is not None else base.ratio,
                            stop_ratio if stop_ratio is not None else min(base.stop, drawdown_ratio or base.stop),
                            window_hours * HOUR_MS if window_hours is not None else base.window_ms)
    return AdlPolicy(rule=policy.rule, price=price if price is not None else policy.price,  # type: ignore[arg-type]
                     floor=floor if floor is not None else policy.floor, drawdown=drawdown)
