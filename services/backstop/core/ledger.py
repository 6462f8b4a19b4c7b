"""The double-entry general ledger: every money movement is one posting between two ledger accounts.

A posting moves `amount` from one account to another, so the sum of all balances is zero by construction;
`check_conservation` re-derives that sum (switch it on per event with Engine(check_conservation=True)): in full
on the first call and every FULL_CHECK_EVERY calls, and in between from the accounts posted to since the previous
call, whose changes must sum to zero, so a check after every event costs what the event touched, not the size of
the ledger. Every balance stays below BALANCE_BOUND in magnitude (docs/design.md §9.3: a 256-bit integer in the
compiled engine); no input within the bounds can reach it, so a posting that would is a broken invariant.

Ledger account names:
  wallet:<account>:<asset>        a trader's wallet (cross margin lives here)
  isolated:<account>:<symbol>     a position's isolated margin (:long or :short appended for a hedge-mode side)
  fund:<fund_id>                  an insurance fund
  fees:<asset>                    the exchange's fee income
  settlement:<symbol>             the market's side of realized PnL (trades between traders)
  funding:<symbol>                funding clearing
  external:<asset>                outside the venue: deposits come from here, withdrawals go here
"""

from __future__ import annotations

from decimal import Decimal

from backstop.core.errors import InvariantViolation
from backstop.core.numbers import BALANCE_BOUND, ZERO, is_money


def wallet(account_id: str, asset: str) -> str:
    return f"wallet:{account_id}:{asset}"


def wallet_owner(name: str) -> str | None:
    """The trader behind a wallet:<account>:<asset> name (None for any other ledger account)."""
    parts = wallet_parts(name)
    return None if parts is None else parts[0]


def wallet_parts(name: str) -> tuple[str, str] | None:
    """(account, asset) of a wallet:<account>:<asset> name (None for any other ledger account); an account id may
    hold a colon, an asset never does."""
    if not name.startswith("wallet:"):
        return None
    end = name.rindex(":")
    return name[7:end], name[end + 1:]


def isolated(account_id: str, symbol: str, position_side: str = "both") -> str:
    """A position's isolated margin: `isolated:<account>:<symbol>` in one-way mode (version 1's name), with `:long`
    or `:short` after the symbol for a hedge-mode side (a symbol is upper case, so the name stays unambiguous)."""
    return f"isolated:{account_id}:{symbol}" if position_side == "both" else \
        f"isolated:{account_id}:{symbol}:{position_side}"


def isolated_owner(name: str) -> str:
    """The trader behind an isolated:<account>:<symbol>[:<side>] name."""
    end = name.rindex(":")
    if name.endswith((":long", ":short")):
        end = name.rindex(":", 0, end)
    return name[9:end]


def fund(fund_id: str) -> str:
    return f"fund:{fund_id}"


def bad_debt(balance: Decimal) -> Decimal:
    """A fund's bad debt: the negative part of its balance, exact in any decimal context (copy_negate does not
    round, where unary minus rounds in the current context)."""
    return balance.copy_negate() if balance < 0 else ZERO


def fees(asset: str) -> str:
    return f"fees:{asset}"


def settlement(symbol: str) -> str:
    return f"settlement:{symbol}"


def funding(symbol: str) -> str:
    return f"funding:{symbol}"


def external(asset: str) -> str:
    return f"external:{asset}"


FULL_CHECK_EVERY = 10_000


class Ledger:
    __slots__ = ("_checked", "_checks", "_unchecked", "balances", "strict", "touched")

    def __init__(self, *, strict: bool = False) -> None:
        self.balances: dict[str, Decimal] = {}
        self.touched: set[str] = set()  # accounts posted to since the last drain_touched()
        self.strict = strict  # also check that every posting is quantized money (tests, audits)
        self._checked: dict[str, Decimal] = {}  # balances as of the last conservation check
        self._unchecked: set[str] | None = None  # accounts posted to since then (None: no check yet)
        self._checks = 0

    def balance(self, account: str) -> Decimal:
        return self.balances.get(account, ZERO)

    def post(self, source: str, destination: str, amount: Decimal) -> None:
        """Move amount (already quantized money) from source to destination; a negative amount reverses. In
        backstop.core.numbers.CONTEXT, which Engine.apply makes current."""
        if self.strict and not is_money(amount):
            raise InvariantViolation(f"unquantized posting {amount} {source} -> {destination}")
        touched = self.touched
        touched.add(source)
        touched.add(destination)
        unchecked = self._unchecked
        if unchecked is not None:
            unchecked.add(source)
            unchecked.add(destination)
        if amount == 0:
            return
        balances = self.balances
        # A balance back at zero holds the shared ZERO instead of a Decimal of its own (104 bytes): a wallet that
        # funded its isolated margins, a margin account whose position closed.
        source_after = (balances.get(source, ZERO) - amount) or ZERO
        destination_after = (balances.get(destination, ZERO) + amount) or ZERO
        if not (-BALANCE_BOUND < source_after < BALANCE_BOUND and -BALANCE_BOUND < destination_after < BALANCE_BOUND):
            raise InvariantViolation(f"posting {amount} {source} -> {destination} takes a balance beyond the bound "
                                     f"10^68")
        balances[source] = source_after
        balances[destination] = destination_after

    def drain_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched

    def check_conservation(self) -> None:
        balances, checked, unchecked = self.balances, self._checked, self._unchecked
        self._checks += 1
        if unchecked is None or self._checks % FULL_CHECK_EVERY == 0:
            total = sum(balances.values(), ZERO)
            if total != 0:
                raise InvariantViolation(f"ledger does not balance: sum of balances is {total}")
            self._checked, self._unchecked = dict(balances), set()
            return
        change = ZERO
        for account in sorted(unchecked):
            now = balances.get(account, ZERO)
            change += now - checked.get(account, ZERO)
            checked[account] = now
        unchecked.clear()
        if change != 0:
            raise InvariantViolation(f"ledger does not balance: postings since the last check sum to {change}")
