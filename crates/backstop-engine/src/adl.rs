//! The ADL lab (docs/design.md section 11; backstop.core.adl_policy, adl_allocation, adl_rounds, adl_drawdown):
//! policies, how a round splits a lot among counterparties, the fairness metrics of a round and of a run, and the
//! state of Bybit's drawdown trigger. Quantities at 1e-8, exact products (uPnL, equity, proceeds, haircuts) at 1e-16,
//! ratios at 1e-12; every division rounds once, as the reference's. Values derived from a balance or a lot's cost
//! (equity shares, haircuts, deficits, leverage, the drawdown trigger's PnL) are 512-bit (docs/design.md section 9.3).

use crate::canonical::J;
use crate::json::Value;
use crate::numbers::{
    self, add, fit128, mul, narrow, ratio, sub, text_512, wadd, wdiv_round, wide, wide256, wide_mul, wmul, wpow10,
    wratio, wrescale, wsub, Rounding, Wide, S12, S16, S18, S8,
};
use ethnum::I256;
use std::collections::{BTreeMap, VecDeque};

pub const HOUR_MS: u64 = 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Bitmex,
    Binance,
    ProRata,
    CappedProRata,
    MinMaxLeverage,
    Socialized,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Bitmex => "bitmex",
            Rule::Binance => "binance",
            Rule::ProRata => "pro_rata",
            Rule::CappedProRata => "capped_pro_rata",
            Rule::MinMaxLeverage => "min_max_leverage",
            Rule::Socialized => "socialized",
        }
    }
    fn named(name: &str) -> Option<Rule> {
        [Rule::Bitmex, Rule::Binance, Rule::ProRata, Rule::CappedProRata, Rule::MinMaxLeverage, Rule::Socialized]
            .into_iter()
            .find(|rule| rule.name() == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Price {
    Bankruptcy,
    Mark,
    Floor,
}

impl Price {
    pub fn name(self) -> &'static str {
        match self {
            Price::Bankruptcy => "bankruptcy",
            Price::Mark => "mark",
            Price::Floor => "floor",
        }
    }
}

/// Bybit's trigger: ratios at 1e-18, the window in ms of event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drawdown {
    pub ratio: i128,
    pub stop: i128,
    pub window_ms: u64,
}

/// An ADL policy (backstop.core.adl_policy.AdlPolicy); the floor at 1e-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub rule: Rule,
    pub price: Price,
    pub floor: i128,
    pub drawdown: Option<Drawdown>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { rule: Rule::Bitmex, price: Price::Bankruptcy, floor: 0, drawdown: None }
    }
}

impl Policy {
    /// The queue walks reduce counterparties one after another; the other rules allocate at once.
    pub fn sequential(&self) -> bool {
        matches!(self.rule, Rule::Bitmex | Rule::Binance)
    }

    pub fn name(&self) -> &'static str {
        if self.drawdown.is_some() {
            // Bybit's trigger over the queue is Bybit's; over another rule, that rule with the trigger
            return match self.rule {
                Rule::Bitmex => "bybit",
                Rule::Binance => "binance+drawdown",
                Rule::ProRata => "pro_rata+drawdown",
                Rule::CappedProRata => "capped_pro_rata+drawdown",
                Rule::MinMaxLeverage => "min_max_leverage+drawdown",
                Rule::Socialized => "socialized+drawdown", // refused when read: never deleverages
            };
        }
        if self.price == Price::Floor && self.rule == Rule::Bitmex {
            return "okx";
        }
        if self.rule == Rule::Bitmex { "queue" } else { self.rule.name() }
    }

    /// The state document's `adl_policy`: rule and price, each other key only when not its default.
    pub fn document(&self) -> J<'static> {
        let mut entries = vec![("rule", J::Str(self.rule.name())), ("price", J::Str(self.price.name()))];
        if self.floor != 0 {
            entries.push(("floor", J::Dec(self.floor, S8)));
        }
        if let Some(drawdown) = self.drawdown {
            entries.push(("drawdown", J::Obj(vec![
                ("ratio", J::Dec(drawdown.ratio, S18)),
                ("stop", J::Dec(drawdown.stop, S18)),
                ("window_ms", J::Int(drawdown.window_ms as i128)),
            ])));
        }
        J::Obj(entries)
    }

    /// From a state document's `adl_policy` (written by either engine).
    pub fn from_document(value: &Value<'_>) -> Result<Policy, String> {
        let Value::Object(entries) = value else { return Err("adl_policy is not an object".into()) };
        let field = |name: &str| entries.iter().rev().find(|(key, _)| key == name).map(|(_, v)| v);
        let text = |value: Option<&Value<'_>>, default: &'static str| -> Result<String, String> {
            match value {
                None => Ok(default.to_string()),
                Some(Value::Str(text)) => Ok(text.to_string()),
                Some(_) => Err("an adl_policy field is not a string".into()),
            }
        };
        let decimal = |text: &str, scale: u32| -> Result<i128, String> {
            let kind = numbers::Kind { name: "STATE", integer_digits: 38 - scale, fraction_digits: scale, scale };
            numbers::parse(text.as_bytes(), kind).map_err(|_| format!("not a decimal at 1e-{scale}: {text}"))
        };
        let rule_name = text(field("rule"), "bitmex")?;
        let rule = Rule::named(&rule_name).ok_or_else(|| format!("unknown ADL rule {rule_name}"))?;
        let price = match text(field("price"), "bankruptcy")?.as_str() {
            "bankruptcy" => Price::Bankruptcy,
            "mark" => Price::Mark,
            "floor" => Price::Floor,
            other => return Err(format!("unknown ADL price {other}")),
        };
        let floor = decimal(&text(field("floor"), "0")?, S8)?;
        let drawdown = match field("drawdown") {
            None | Some(Value::Null) => None,
            Some(Value::Object(parts)) => {
                let part = |name: &str| parts.iter().rev().find(|(key, _)| key == name).map(|(_, v)| v);
                let window_ms = match part("window_ms") {
                    Some(Value::Int(digits)) => std::str::from_utf8(digits).ok().and_then(|t| t.parse().ok())
                        .ok_or("drawdown.window_ms is not a count")?,
                    _ => return Err("drawdown.window_ms is not a count".into()),
                };
                Some(Drawdown { ratio: decimal(&text(part("ratio"), "")?, S18)?,
                                stop: decimal(&text(part("stop"), "")?, S18)?, window_ms })
            }
            Some(_) => return Err("adl_policy.drawdown is not an object".into()),
        };
        Ok(Policy { rule, price, floor, drawdown })
    }
}

// ------------------------------------------------------------------------------------------------ allocation

/// An eligible counterparty: account, size (1e-8), profit = uPnL at the mark (1e-16) and equity share (1e-16).
#[derive(Clone, Debug)]
pub struct Candidate<'n> {
    pub account: u32,
    pub name: &'n str,
    pub size: i128,
    pub profit: i128,
    pub equity: Wide,
}

/// numerator x 10^-num_scale / (denominator x 10^-den_scale), FLOOR to a multiple of step (1e-8): whole_steps. Wide:
/// a cap over a tiny haircut can pass any qty (the caller takes the smaller of it and a size).
fn floor_steps_wide(numerator: Wide, num_scale: u32, denominator: Wide, den_scale: u32, step: i128) -> Wide {
    let units = wratio(numerator, num_scale, denominator, den_scale, S8, Rounding::Floor);
    wmul(wdiv_round(units, wide(step), Rounding::Floor), wide(step))
}

/// floor_steps_wide of a result no larger than a qty.
fn floor_steps(numerator: Wide, num_scale: u32, denominator: Wide, den_scale: u32, step: i128) -> i128 {
    fit128(floor_steps_wide(numerator, num_scale, denominator, den_scale, step)).expect("a take within a qty")
}

/// Give `left` away `step` at a time in `order`, pass after pass, no take beyond its cap; returns what is left.
pub fn hand_out(takes: &mut [i128], caps: &[i128], order: &[usize], mut left: i128, step: i128) -> i128 {
    while left > 0 {
        let mut moved = false;
        for &index in order {
            if left <= 0 {
                break;
            }
            let give = step.min(caps[index] - takes[index]).min(left);
            if give > 0 {
                takes[index] += give;
                left -= give;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    left
}

/// Pro rata by size (adl.pro_rata): FLOOR(size x total / held) to whole lots, the rest one lot at a time in order.
pub fn pro_rata(sizes: &[i128], total: i128, lot: i128) -> Vec<i128> {
    let held: i128 = sizes.iter().sum();
    if held <= total {
        return sizes.to_vec();
    }
    let mut takes: Vec<i128> =
        sizes.iter().map(|&size| floor_steps(wide256(wide_mul(size, total)), S16, wide(held), S8, lot)).collect();
    let order: Vec<usize> = (0..sizes.len()).collect();
    let left = total - takes.iter().sum::<i128>();
    hand_out(&mut takes, sizes, &order, left, lot);
    takes
}

fn by_profit(candidates: &[Candidate<'_>], among: &mut [usize]) {
    among.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        y.profit.cmp(&x.profit).then(y.size.cmp(&x.size)).then_with(|| x.name.cmp(y.name))
    });
}

/// Capped pro-rata on profit (adl_allocation.capped_pro_rata); full_haircut at 1e-16.
pub fn capped_pro_rata(candidates: &[Candidate<'_>], total: i128, lot: i128, full_haircut: Wide) -> Vec<i128> {
    let count = candidates.len();
    let mut caps = vec![0i128; count];
    for (index, candidate) in candidates.iter().enumerate() {
        if candidate.profit > 0 {
            let mut cap = candidate.size;
            if full_haircut > Wide::ZERO {
                let by_profit = floor_steps_wide(wide256(wide_mul(candidate.profit, total)), S16 + S8, full_haircut,
                                                 S16, lot);
                cap = fit128(by_profit.min(wide(cap))).expect("at most the size");
            }
            caps[index] = cap;
        }
    }
    let mut active: Vec<usize> = (0..count).filter(|&i| caps[i] > 0).collect();
    active.sort_by(|&a, &b| {
        // cap_a / u_a against cap_b / u_b, exactly
        wide_mul(caps[a], candidates[b].profit).cmp(&wide_mul(caps[b], candidates[a].profit))
            .then_with(|| candidates[a].name.cmp(candidates[b].name))
    });
    let mut takes = vec![0i128; count];
    let (mut rest_qty, mut rest_profit) = (total, I256::ZERO);
    for &index in &active {
        rest_profit = add(rest_profit, I256::new(candidates[index].profit));
    }
    let mut first_free = active.len();
    for (place, &index) in active.iter().enumerate() {
        if mul(I256::new(caps[index]), rest_profit) > wide_mul(rest_qty, candidates[index].profit) {
            first_free = place;
            break;
        }
        takes[index] = caps[index];
        rest_qty -= caps[index];
        rest_profit = sub(rest_profit, I256::new(candidates[index].profit));
    }
    for &index in &active[first_free..] {
        takes[index] =
            floor_steps(wide256(wide_mul(rest_qty, candidates[index].profit)), S8 + S16, wide256(rest_profit), S16, lot);
    }
    let mut order = active.clone();
    by_profit(candidates, &mut order);
    let left = total - takes.iter().sum::<i128>();
    hand_out(&mut takes, &caps, &order, left, lot);
    takes
}

/// Min-max leverage water-filling (adl_allocation.min_max_leverage); full_haircut at 1e-16. F = total x equity -
/// size x full_haircut, at 1e-24.
pub fn min_max_leverage(candidates: &[Candidate<'_>], total: i128, lot: i128, full_haircut: Wide) -> Vec<i128> {
    let count = candidates.len();
    let mut takes = vec![0i128; count];
    let weights: Vec<Wide> = candidates
        .iter()
        .map(|c| wsub(wmul(wide(total), c.equity), wmul(wide(c.size), full_haircut)))
        .collect();
    let mut solvent: Vec<usize> = (0..count).filter(|&i| weights[i] > Wide::ZERO).collect();
    solvent.sort_by(|&a, &b| {
        // size / F descending: s_b F_a against s_a F_b
        wmul(wide(candidates[b].size), weights[a]).cmp(&wmul(wide(candidates[a].size), weights[b]))
            .then(candidates[b].size.cmp(&candidates[a].size))
            .then_with(|| candidates[a].name.cmp(candidates[b].name))
    });
    let (mut sizes, mut phi, mut cut) = (0i128, Wide::ZERO, solvent.len());
    for (place, &index) in solvent.iter().enumerate() {
        sizes += candidates[index].size;
        phi = wadd(phi, weights[index]);
        if let Some(&following) = solvent.get(place + 1) {
            let excess = sizes - total;
            if excess > 0 && wmul(wide(excess), weights[following]) >= wmul(wide(candidates[following].size), phi) {
                cut = place + 1;
                break;
            }
        }
    }
    let top = &solvent[..cut];
    if sizes > total {
        let excess = wide(sizes - total);
        for &index in top {
            // (s x Phi - F x excess) at 1e-32, over Phi at 1e-24
            let numerator = wsub(wmul(wide(candidates[index].size), phi), wmul(weights[index], excess));
            takes[index] = floor_steps(numerator, S8 + S16 + S8, phi, S16 + S8, lot);
        }
        let sizes_of: Vec<i128> = candidates.iter().map(|c| c.size).collect();
        let left = total - takes.iter().sum::<i128>();
        hand_out(&mut takes, &sizes_of, top, left, lot);
        return takes;
    }
    for &index in top {
        takes[index] = candidates[index].size;
    }
    let mut left = total - sizes;
    for index in 0..count {
        if left <= 0 {
            break;
        }
        if weights[index] <= Wide::ZERO {
            takes[index] = candidates[index].size.min(left);
            left -= takes[index];
        }
    }
    takes
}

/// A shortfall (1e-8) spread over profits (1e-16) in proportion (adl_allocation.socialized_shares); amounts at 1e-8.
/// `keys`: (account name, symbol name) of each.
pub fn socialized_shares(profits: &[i128], keys: &[(&str, &str)], shortfall: I256) -> Vec<i128> {
    let caps: Vec<i128> =
        profits.iter().map(|&u| if u > 0 { numbers::rescale128(u, S16, S8, Rounding::Floor) } else { 0 }).collect();
    let mut total = I256::ZERO;
    for &u in profits.iter().filter(|&&u| u > 0) {
        total = add(total, I256::new(u));
    }
    // the shortfall derives from a balance: 512 bits (section 9.3)
    let shortfall = wide256(shortfall);
    if wide256(total) <= wmul(shortfall, wpow10(S16 - S8)) {
        return caps;
    }
    let mut shares: Vec<i128> = profits
        .iter()
        .map(|&u| if u > 0 {
            // at most u: the profits sum to more than the shortfall
            fit128(wratio(wmul(shortfall, wide(u)), S8 + S16, wide256(total), S16, S8, Rounding::Floor))
                .expect("a share within a profit")
        } else { 0 })
        .collect();
    let mut order: Vec<usize> = (0..profits.len()).filter(|&i| profits[i] > 0).collect();
    order.sort_by(|&a, &b| profits[b].cmp(&profits[a]).then_with(|| keys[a].cmp(&keys[b])));
    let left = fit128(shortfall).expect("a shortfall within the profits") - shares.iter().sum::<i128>();
    hand_out(&mut shares, &caps, &order, left, 1);
    shares
}

// ------------------------------------------------------------------------------------------------ metrics

/// A position at a round's mark: profit (uPnL, 1e-16), leverage (1e-12; None without equity), PnL% (1e-12). The
/// ratios are Wide: an equity or a cost can be as small as 1e-16 (section 9.3).
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub account: u32,
    pub profit: i128,
    pub leverage: Option<Wide>,
    pub pnl_pct: Wide,
}

impl Figures {
    /// notional: the position's value at the mark (1e-16).
    pub fn of(account: u32, cost: i128, profit: i128, equity: Wide, notional: i128) -> Figures {
        let leverage =
            (equity > Wide::ZERO).then(|| wratio(wide(notional), S16, equity, S16, S12, Rounding::HalfEven));
        let pnl_pct = if cost != 0 {
            wide256(ratio(I256::new(profit), S16, I256::new(cost), S16, S12, Rounding::HalfEven))
        } else {
            Wide::ZERO
        };
        Figures { account, profit, leverage, pnl_pct }
    }
    /// Leverage for ordering: no equity counts above every leverage.
    fn leverage_key(&self) -> (bool, Wide) {
        self.leverage.map_or((true, Wide::ZERO), |value| (false, value))
    }
}

/// A counterparty a round took from: qty (1e-8) and its haircut (1e-16, signed; from a lot's cost share: Wide).
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    pub figures: Figures,
    pub qty: i128,
    pub haircut: Wide,
}

/// What a round starts from (adl_rounds.RoundStart): the lot (None under socialized), balances at 1e-8.
#[derive(Clone, Debug)]
pub struct RoundStart<'a> {
    pub trigger: &'static str,
    pub fund: &'a str,
    pub symbol: Option<&'a str>,
    pub liquidation_id: Option<&'a str>,
    pub side: Option<&'static str>,
    pub qty: Option<i128>,
    pub cost: Option<Wide>,
    /// the lot's reported bankruptcy price (1e-8): the price of its cost
    pub bankruptcy_price: Option<Wide>,
    pub mark: Option<i128>,
    pub fund_balance: I256,
    pub floor: i128,
}

/// The nearest-rank deciles and the max of sorted values (at 1e-12), as (p10, p50, p90, max).
fn deciles<T: Copy>(sorted: &[T]) -> [Option<T>; 4] {
    let count = sorted.len();
    let at = |tenths: usize| (count > 0).then(|| sorted[(tenths * count).div_ceil(10) - 1]);
    [at(1), at(5), at(9), sorted.last().copied()]
}

fn quantile_document(count: u64, values: [Option<Wide>; 4], unbounded: Option<u64>) -> J<'static> {
    let value = |v: Option<Wide>| v.map_or(J::Null, |v| J::Owned(text_512(v, S12)));
    let mut entries = vec![
        ("count", J::Int(count as i128)),
        ("p10", value(values[0])),
        ("p50", value(values[1])),
        ("p90", value(values[2])),
        ("max", value(values[3])),
    ];
    if let Some(unbounded) = unbounded {
        entries.push(("unbounded", J::Int(unbounded as i128)));
    }
    J::Obj(entries)
}

fn distribution<'f>(members: impl Iterator<Item = &'f Figures>) -> (J<'static>, J<'static>) {
    let mut leverage = Vec::new();
    let mut pnl = Vec::new();
    let mut unbounded = 0u64;
    for member in members {
        pnl.push(member.pnl_pct);
        match member.leverage {
            Some(value) => leverage.push(value),
            None => unbounded += 1,
        }
    }
    leverage.sort_unstable();
    pnl.sort_unstable();
    (quantile_document(leverage.len() as u64, deciles(&leverage), Some(unbounded)),
     quantile_document(pnl.len() as u64, deciles(&pnl), None))
}

/// Σ over hits k of #{eligible j after k: v_j > v_k} (adl_rounds._greater_after).
fn greater_after<T: Ord + Copy>(mut values: Vec<T>, hits: &[T], sequential: bool) -> u64 {
    values.sort_unstable();
    let greater = |sorted: &[T], value: &T| (sorted.len() - sorted.partition_point(|x| x <= value)) as u64;
    let mut total = 0u64;
    if sequential {
        let mut seen: Vec<T> = Vec::with_capacity(hits.len());
        for value in hits {
            let at = seen.partition_point(|x| x <= value);
            seen.insert(at, *value);
            total += greater(&values, value) - greater(&seen, value);
        }
        return total;
    }
    let mut sorted_hits = hits.to_vec();
    sorted_hits.sort_unstable();
    for value in hits {
        total += greater(&values, value) - greater(&sorted_hits, value);
    }
    total
}

/// (inversions by profit, by leverage, pairs) of a round (adl_rounds.inversions).
pub fn inversions(eligible: &[Figures], hits: &[Figures], sequential: bool) -> (u64, u64, u64) {
    let (count, hit_count) = (eligible.len() as u64, hits.len() as u64);
    let pairs = if sequential { hit_count * count - hit_count * (hit_count + 1) / 2 } else { hit_count * (count - hit_count) };
    let profits: Vec<i128> = eligible.iter().map(|f| f.profit).collect();
    let hit_profits: Vec<i128> = hits.iter().map(|f| f.profit).collect();
    let leverages: Vec<(bool, Wide)> = eligible.iter().map(Figures::leverage_key).collect();
    let hit_leverages: Vec<(bool, Wide)> = hits.iter().map(Figures::leverage_key).collect();
    (greater_after(profits, &hit_profits, sequential), greater_after(leverages, &hit_leverages, sequential), pairs)
}

fn share_of(count: u64, pairs: u64) -> J<'static> {
    if pairs == 0 {
        return J::Null;
    }
    J::Dec(narrow(ratio(I256::new(count as i128), 0, I256::new(pairs as i128), 0, S12, Rounding::HalfEven)), S12)
}

/// An exact amount at 1e-16, HALF_EVEN to 1e-8, as canonical text.
fn money_text(value: Wide) -> J<'static> {
    J::Owned(text_512(wrescale(value, S16, S8, Rounding::HalfEven), S8))
}

const EPSILON_16: i128 = 100_000_000; // 1e-8 at 1e-16: the worst share's epsilon

/// The deficit of a lot at the mark (1e-16): cost - qty x mark for a long lot, the mirror for a short, never < 0.
pub fn deficit(long: bool, cost: Wide, value: Wide) -> Wide {
    let loss = if long { wsub(cost, value) } else { wsub(value, cost) };
    loss.max(Wide::ZERO)
}

/// The part of a deficit (1e-16) the fund could not pay above its floor (balance and floor at 1e-8).
pub fn needed(deficit: Wide, balance: I256, floor: i128) -> Wide {
    let room = sub(balance, I256::new(floor)).max(I256::ZERO);
    wsub(deficit, wmul(wide256(room), wpow10(S16 - S8))).max(Wide::ZERO)
}

/// A round's figures, and its record (the adl-rounds.jsonl line) written into `out`.
pub struct Round {
    pub deficit: Wide,
    pub needed: Wide,
    /// what a run sums: the deficit of the qty the round closed (the rest, retried, is counted when it is taken)
    /// and its need
    pub counted_deficit: Wide,
    pub counted_needed: Wide,
    pub haircut: Wide,
    pub worst_share: Wide,
    pub inversions: Option<(u64, u64, u64)>,
}

#[allow(clippy::too_many_arguments)]
pub fn write_round(out: &mut Vec<u8>, names: &crate::ledger::Names, id: &str, seq: u64, ts: u64, policy: &Policy,
                   start: &RoundStart<'_>, deficit: Wide, price_rule: Option<&str>, closed: i128, hits: &[Hit],
                   eligible: Option<&[Figures]>, eligible_count: usize) -> Round {
    let need = needed(deficit, start.fund_balance, start.floor);
    let mut haircut = Wide::ZERO;
    let mut worst = Wide::ZERO;
    for hit in hits {
        let taken = hit.haircut.max(Wide::ZERO);
        haircut = wadd(haircut, taken);
        let share = wratio(taken, S16, wide(hit.figures.profit.max(0) + EPSILON_16), S16, S12, Rounding::HalfEven);
        worst = worst.max(share);
    }
    let (hit_leverage, hit_pnl) = distribution(hits.iter().map(|h| &h.figures));
    let (mut eligible_leverage, mut eligible_pnl, mut inversion_doc, mut hits_doc) = (J::Null, J::Null, J::Null, J::Null);
    let mut counted = None;
    if let Some(eligible) = eligible {
        (eligible_leverage, eligible_pnl) = distribution(eligible.iter());
        let hit_figures: Vec<Figures> = hits.iter().map(|h| h.figures).collect();
        let result = inversions(eligible, &hit_figures, policy.sequential());
        inversion_doc = J::Obj(vec![("profit", share_of(result.0, result.2)), ("leverage", share_of(result.1, result.2)),
                                    ("pairs", J::Int(result.2 as i128))]);
        counted = Some(result);
        hits_doc = J::Arr(hits.iter().map(|h| J::Obj(vec![
            ("account_id", J::Str(names.name(h.figures.account))),
            ("qty", J::Dec(h.qty, S8)),
            ("haircut", money_text(h.haircut)),
            ("profit", money_text(wide(h.figures.profit))),
            ("leverage", h.figures.leverage.map_or(J::Null, |v| J::Owned(text_512(v, S12)))),
            ("pnl_pct", J::Owned(text_512(h.figures.pnl_pct, S12))),
        ])).collect());
    }
    fn optional<'v>(value: Option<&'v str>) -> J<'v> {
        value.map_or(J::Null, J::Str)
    }
    let over_use = if need > Wide::ZERO {
        J::Owned(text_512(wratio(haircut, S16, need, S16, S12, Rounding::HalfEven), S12))
    } else {
        J::Null
    };
    let record = J::Obj(vec![
        ("schema_version", J::Int(1)),
        ("id", J::Str(id)),
        ("seq", J::Int(seq as i128)),
        ("ts", J::Int(ts as i128)),
        ("fund_id", J::Str(start.fund)),
        ("symbol", optional(start.symbol)),
        ("liquidation_id", optional(start.liquidation_id)),
        ("policy", J::Str(policy.name())),
        ("trigger", J::Str(start.trigger)),
        ("side", optional(start.side)),
        ("qty", start.qty.map_or(J::Null, |q| J::Dec(q, S8))),
        ("closed", J::Dec(closed, S8)),
        ("mark_price", start.mark.map_or(J::Null, |m| J::Dec(m, S8))),
        ("bankruptcy_price", start.bankruptcy_price.map_or(J::Null, |price| J::Owned(text_512(price, S8)))),
        ("price", optional(price_rule)),
        ("fund_balance", J::Wide(start.fund_balance, S8)),
        ("floor", J::Dec(start.floor, S8)),
        ("deficit", money_text(deficit)),
        ("needed", money_text(need)),
        ("haircut", money_text(haircut)),
        ("overshoot", money_text(wsub(haircut, need).max(Wide::ZERO))),
        ("over_use", over_use),
        ("worst_share", J::Owned(text_512(worst, S12))),
        ("counterparties", J::Int(hits.len() as i128)),
        ("eligible", J::Int(eligible_count as i128)),
        ("leverage", J::Obj(vec![("hit", hit_leverage), ("eligible", eligible_leverage)])),
        ("pnl_pct", J::Obj(vec![("hit", hit_pnl), ("eligible", eligible_pnl)])),
        ("inversions", inversion_doc),
        ("hits", hits_doc),
    ]);
    crate::canonical::write(out, &record);
    out.push(b'\n');
    let counted_deficit = match start.qty {
        Some(wanted) if closed != wanted && wanted > 0 => crate::engine::share_wide(deficit, S16, closed, wanted),
        _ => deficit,
    };
    let counted_needed = needed(counted_deficit, start.fund_balance, start.floor);
    Round { deficit, needed: need, counted_deficit, counted_needed, haircut, worst_share: worst, inversions: counted }
}

// ------------------------------------------------------------------------------------------------ a run

/// One fund's part of a run's sums (adl_rounds.FundTotals): amounts of one settlement asset, which add up.
#[derive(Clone, Debug, Default)]
struct FundTotals {
    asset: String,
    rounds: u64,
    events: u64,
    notional: Wide,
    deficit: Wide,
    needed: Wide,
    haircut: Wide,
    overshoot: Wide,
    socialized: Wide,
}

impl FundTotals {
    fn add_round(&mut self, round: &Round, socialized: bool, taken: bool) {
        self.rounds += 1;
        if taken {
            self.deficit = wadd(self.deficit, round.counted_deficit);
            self.needed = wadd(self.needed, round.counted_needed);
            self.haircut = wadd(self.haircut, round.haircut);
            self.overshoot = wadd(self.overshoot, wsub(round.haircut, round.counted_needed).max(Wide::ZERO));
        }
        if socialized {
            self.socialized = wadd(self.socialized, round.haircut);
        }
    }

    fn add(&mut self, other: &FundTotals) {
        for (sum, part) in [(&mut self.notional, other.notional), (&mut self.deficit, other.deficit),
                            (&mut self.needed, other.needed), (&mut self.haircut, other.haircut),
                            (&mut self.overshoot, other.overshoot), (&mut self.socialized, other.socialized)] {
            *sum = wadd(*sum, part);
        }
    }

    /// notional, deficit, needed, haircut, overshoot, over_use, socialized: null each where `known` is false
    fn sums(&self, known: bool) -> [(&'static str, J<'static>); 7] {
        let over_use = if self.needed > Wide::ZERO {
            J::Owned(text_512(wratio(self.haircut, S16, self.needed, S16, S12, Rounding::HalfEven), S12))
        } else {
            J::Null
        };
        let figure = |value: J<'static>| if known { value } else { J::Null };
        [("notional", figure(money_text(self.notional))), ("deficit", figure(money_text(self.deficit))),
         ("needed", figure(money_text(self.needed))), ("haircut", figure(money_text(self.haircut))),
         ("overshoot", figure(money_text(self.overshoot))), ("over_use", figure(over_use)),
         ("socialized", figure(money_text(self.socialized)))]
    }
}

/// The rounds, ADL events and fund postings of one replay, summed (adl_rounds.RunTotals; summary.json's `adl`).
#[derive(Clone, Debug, Default)]
pub struct RunTotals {
    pub full: bool,
    rounds: u64,
    /// rounds nobody was taken from (a lot no position could take, retried at each later trigger): their deficit
    /// and need are left out of the sums, which would count the same lot again at every retry
    rounds_without_takers: u64,
    events: u64,
    worst_share: Wide,
    inverted_profit: u64,
    inverted_leverage: u64,
    pairs: u64,
    accounts: rustc_hash::FxHashSet<u32>,
    /// leverage of hits, of the eligible; PnL% of hits, of the eligible: value (1e-12) -> count
    populations: [BTreeMap<Wide, u64>; 4],
    unbounded: [u64; 2],
    fund_peak: BTreeMap<String, I256>,
    fund_drawdown: BTreeMap<String, I256>,
    /// each fund's own sums: the run's money sums add only where every fund settles in one asset
    by_fund: BTreeMap<String, FundTotals>,
}

impl RunTotals {
    /// A round of `fund`, which settles in `asset`.
    pub fn add_round(&mut self, fund: &str, asset: &str, round: &Round, socialized: bool, hits: &[Hit],
                     eligible: Option<&[Figures]>) {
        self.rounds += 1;
        if hits.is_empty() {
            self.rounds_without_takers += 1;
        }
        self.fund(fund, asset).add_round(round, socialized, !hits.is_empty());
        self.worst_share = self.worst_share.max(round.worst_share);
        for hit in hits {
            self.accounts.insert(hit.figures.account);
            self.pool(0, &hit.figures);
        }
        if let Some(eligible) = eligible {
            for member in eligible {
                self.pool(1, member);
            }
        }
        if let Some((profit, leverage, pairs)) = round.inversions {
            self.inverted_profit += profit;
            self.inverted_leverage += leverage;
            self.pairs += pairs;
        }
    }

    fn pool(&mut self, population: usize, member: &Figures) {
        *self.populations[2 + population].entry(member.pnl_pct).or_insert(0) += 1;
        match member.leverage {
            Some(value) => *self.populations[population].entry(value).or_insert(0) += 1,
            None => self.unbounded[population] += 1,
        }
    }

    /// An ADL event against a lot of `fund` (settling in `asset`), worth `notional` (1e-16: qty x price, or
    /// V(qty, price) for an inverse contract).
    pub fn add_event(&mut self, fund: &str, asset: &str, notional: Wide) {
        self.events += 1;
        let fund = self.fund(fund, asset);
        fund.events += 1;
        fund.notional = wadd(fund.notional, notional);
    }

    fn fund(&mut self, fund: &str, asset: &str) -> &mut FundTotals {
        if !self.by_fund.contains_key(fund) {
            self.by_fund.insert(fund.to_string(), FundTotals { asset: asset.to_string(), ..FundTotals::default() });
        }
        self.by_fund.get_mut(fund).expect("inserted above")
    }

    pub fn add_fund_entry(&mut self, fund: &str, amount: I256, balance_after: I256) {
        let start = sub(balance_after, amount);
        let peak = self.fund_peak.get(fund).copied().unwrap_or(start).max(balance_after);
        self.fund_peak.insert(fund.to_string(), peak);
        let drawdown = self.fund_drawdown.get(fund).copied().unwrap_or(I256::ZERO).max(sub(peak, balance_after));
        self.fund_drawdown.insert(fund.to_string(), drawdown);
    }

    fn population(&self, index: usize, unbounded: Option<u64>) -> J<'static> {
        let counts = &self.populations[index];
        let count: u64 = counts.values().sum();
        let places = [1u64, 5, 9].map(|tenths| (tenths * count).div_ceil(10).saturating_sub(1));
        let mut values = [None; 4];
        let mut seen = 0u64;
        for (&value, &times) in counts {
            seen += times;
            for (slot, &place) in places.iter().enumerate() {
                if values[slot].is_none() && place < seen {
                    values[slot] = Some(value);
                }
            }
        }
        values[3] = counts.keys().next_back().copied();
        quantile_document(count, values, unbounded)
    }

    pub fn document(&self) -> J<'_> {
        let eligible = |index: usize, unbounded: Option<u64>| {
            if self.full { self.population(index, unbounded) } else { J::Null }
        };
        let inversions = if self.full {
            J::Obj(vec![("profit", share_of(self.inverted_profit, self.pairs)),
                        ("leverage", share_of(self.inverted_leverage, self.pairs)),
                        ("pairs", J::Int(self.pairs as i128))])
        } else {
            J::Null
        };
        let mut run = FundTotals::default(); // the funds' sums added up: null where they settle in more than one asset
        for fund in self.by_fund.values() {
            run.add(fund);
        }
        let mut assets = self.by_fund.values().map(|fund| fund.asset.as_str());
        let first = assets.next();
        let one_asset = assets.all(|asset| Some(asset) == first);
        let [notional, deficit, needed, haircut, overshoot, over_use, socialized] = run.sums(one_asset);
        let drawdowns = self.fund_drawdown.iter().map(|(fund, drawdown)| (fund.as_str(), J::Wide(*drawdown, S8)));
        let by_fund = self.by_fund.iter().map(|(id, fund)| {
            let mut figures = vec![("asset", J::Str(fund.asset.as_str())), ("rounds", J::Int(fund.rounds as i128)),
                                   ("events", J::Int(fund.events as i128))];
            figures.extend(fund.sums(true));
            (id.as_str(), J::Obj(figures))
        });
        J::Obj(vec![
            ("metrics", J::Str(if self.full { "full" } else { "basic" })),
            ("rounds", J::Int(self.rounds as i128)),
            ("rounds_without_takers", J::Int(self.rounds_without_takers as i128)),
            ("events", J::Int(self.events as i128)),
            notional, deficit, needed, haircut, overshoot, over_use,
            ("worst_share", J::Owned(text_512(self.worst_share, S12))),
            socialized,
            ("inversions", inversions),
            ("accounts_affected", J::Int(self.accounts.len() as i128)),
            ("leverage", J::Obj(vec![("hit", self.population(0, Some(self.unbounded[0]))),
                                     ("eligible", eligible(1, Some(self.unbounded[1])))])),
            ("pnl_pct", J::Obj(vec![("hit", self.population(2, None)), ("eligible", eligible(3, None))])),
            ("fund_max_drawdown", J::Obj(drawdowns.collect())),
            ("by_fund", J::Obj(by_fund.collect())),
        ])
    }
}

// ------------------------------------------------------------------------------------------------ Bybit's trigger

/// A maximum over a sliding window of event time (adl_drawdown.WindowMax): (ts, value), values strictly
/// decreasing from the front.
#[derive(Clone, Debug, Default)]
pub struct WindowMax {
    pub entries: VecDeque<(u64, Wide)>,
}

impl WindowMax {
    pub fn add(&mut self, ts: u64, value: Wide, window_ms: u64) {
        while self.entries.front().is_some_and(|&(at, _)| at + window_ms <= ts) {
            self.entries.pop_front();
        }
        while self.entries.back().is_some_and(|&(_, last)| last <= value) {
            self.entries.pop_back();
        }
        self.entries.push_back((ts, value));
    }

    /// The largest of `current` and the values added within (ts - window_ms, ts].
    pub fn maximum(&self, ts: u64, window_ms: u64, current: Wide) -> Wide {
        self.entries.iter().find(|&&(at, _)| at + window_ms > ts).map_or(current, |&(_, value)| value.max(current))
    }
}

/// Bybit's trigger state (adl_drawdown.DrawdownState): balances at 1e-8 per fund, PnL at 1e-16 per symbol (with
/// its lots' costs: Wide), realized PnL at 1e-8 per symbol, the symbols whose ADL is on.
#[derive(Clone, Debug, Default)]
pub struct DrawdownState {
    pub balances: BTreeMap<u32, WindowMax>,
    pub pnls: BTreeMap<u32, WindowMax>,
    pub realized: BTreeMap<u32, I256>,
    pub triggered: std::collections::BTreeSet<u32>,
}

impl DrawdownState {
    pub fn document<'a>(&self, names: &'a crate::ledger::Names) -> J<'a> {
        let window = |w: &WindowMax, scale: u32| {
            J::Arr(w.entries.iter().map(|&(ts, v)| J::Arr(vec![J::Int(ts as i128), J::Owned(text_512(v, scale))]))
                .collect())
        };
        let mut triggered: Vec<&str> = self.triggered.iter().map(|&s| names.name(s)).collect();
        triggered.sort_unstable();
        J::Obj(vec![
            ("balances", J::Obj(self.balances.iter().map(|(&f, w)| (names.name(f), window(w, S8))).collect())),
            ("pnls", J::Obj(self.pnls.iter().map(|(&s, w)| (names.name(s), window(w, S16))).collect())),
            ("realized", J::Obj(self.realized.iter()
                .map(|(&s, &v)| (names.name(s), J::Owned(numbers::text_wide(v, S8)))).collect())),
            ("triggered", J::Arr(triggered.into_iter().map(J::Str).collect())),
        ])
    }
}

/// ratio (1e-18) x balance (1e-8), at 1e-26.
pub fn rate_of(rate: i128, balance: Wide) -> Wide {
    wmul(wide(rate), balance)
}

/// A value at 1e-16 as 1e-26 (to compare with rate_of).
pub fn at_26(value: Wide) -> Wide {
    wmul(value, wpow10(S18 + S8 - S16))
}

/// 1 at 1e-8.
pub const ONE_8: i128 = 100_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    const E8: i128 = 100_000_000;
    const E16: i128 = E8 * E8;

    /// examples/07-adl-lab.jsonl's counterparties at mark 85: (name, size, uPnL, equity) in queue order.
    fn lab() -> Vec<Candidate<'static>> {
        [("C2", 5, 75, 100), ("C1", 10, 350, 590), ("C3", 20, 100, 1000), ("C4", 5, -25, 15)]
            .into_iter()
            .enumerate()
            .map(|(account, (name, size, profit, equity))| Candidate {
                account: account as u32, name, size: size * E8, profit: profit * E16, equity: wide(equity * E16),
            })
            .collect()
    }

    fn lots(takes: Vec<i128>) -> Vec<i128> {
        takes.into_iter().map(|take| take / E8).collect()
    }

    #[test]
    fn allocations_of_the_lab_round() {
        // a lot of 6 at a haircut of 5 a unit: 30 for the whole lot (docs: tests/unit/test_adl_policies.py)
        let haircut = wide(30 * E16);
        let sizes: Vec<i128> = lab().iter().map(|c| c.size).collect();
        assert_eq!(lots(pro_rata(&sizes, 6 * E8, E8)), [1, 2, 3, 0]);
        assert_eq!(lots(capped_pro_rata(&lab(), 6 * E8, E8, haircut)), [0, 5, 1, 0]);
        assert_eq!(lots(min_max_leverage(&lab(), 6 * E8, E8, haircut)), [4, 0, 2, 0]);
    }

    #[test]
    fn min_max_leaves_the_bankrupt_for_last() {
        // a lot of 41 at 5 a unit: F = 41 x equity - size x 205 is -410 for C4 (bankrupt at the lot's price); the
        // solvent 35 close entirely, then C4 gives its 5, and 1 is left undeleveraged
        let haircut = wide(5 * 41 * E16);
        assert_eq!(lots(min_max_leverage(&lab(), 41 * E8, E8, haircut)), [5, 10, 20, 5]);
    }

    #[test]
    fn socialized_shares_floor_and_hand_out_the_rest() {
        let profits = [350 * E16, 75 * E16, 100 * E16, -25 * E16];
        let keys = [("C1", "X"), ("C2", "X"), ("C3", "X"), ("C4", "X")];
        assert_eq!(socialized_shares(&profits, &keys, I256::new(60 * E8)),
                   [4_000_000_001, 857_142_857, 1_142_857_142, 0]);
        // a shortfall beyond every profit takes all of each
        assert_eq!(socialized_shares(&profits, &keys, I256::new(1000 * E8)), [350 * E8, 75 * E8, 100 * E8, 0]);
    }

    #[test]
    fn a_window_maximum_forgets_what_left_the_window() {
        let mut window = WindowMax::default();
        window.add(0, wide(10), 100);
        window.add(50, wide(5), 100);
        assert_eq!(window.maximum(60, 100, wide(1)), wide(10));
        assert_eq!(window.maximum(100, 100, wide(1)), wide(5)); // ts 0 is out of (0, 100]
        window.add(120, wide(7), 100);
        assert_eq!(window.entries.len(), 1); // 10 expired, 5 dominated
    }

    #[test]
    fn deciles_by_nearest_rank() {
        assert_eq!(deciles(&[1, 2, 3, 4]), [Some(1), Some(2), Some(4), Some(4)]);
        assert_eq!(deciles::<i128>(&[]), [None; 4]);
    }
}
