//! What a position is worth in its settlement asset, linear or inverse (backstop.core.valuation, docs/design.md
//! section 7): the one place where the two contract types differ.
//!
//! Linear: the value of q contracts at P is q x P (exact). Inverse (coin-margined): |q| x s / P, s the quote value of
//! one contract, rounded HALF_EVEN to 1e-16 (the scale of linear's exact q x P): the only new division in value space.
//! Every rule about money uses `value` where linear uses q x P. In value space an inverse long is a short (its coin PnL
//! rises as its value at the mark falls), so a rule that says "long: X, short: Y" about money takes the formula of
//! `value_long`; a rule about contracts (the ADL queue's side, a lot's side, the funding payer) keeps the contract
//! side. A price is read back from a value with `price`.
//!
//! Widths (docs/design.md section 9.3): an inverse position's face |q| x s stays below MAX_FACE, so with P >= 1e-8
//! every value stays below 10^22, as a linear one does: at 1e-16 it fits an i128.

use crate::numbers::{mul128, narrow, ratio, wide, wide_mul, wmul, wratio, Rounding, Wide, S16, S8};
use ethnum::I256;

/// The largest PRICE, 9999999999.99999999 at 1e-8: the price of an inverse value <= 0.
pub const LARGEST_PRICE: i128 = 999_999_999_999_999_999;

/// docs/design.md section 9.3: an inverse position's |q| x s stays below 10^14 (at 1e-16).
pub const MAX_FACE: i128 = 100_000_000_000_000 * 10_000_000_000_000_000;

/// An instrument's valuation: linear, or inverse with its contract size (1e-8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Valuation {
    pub contract_size: Option<i128>,
}

pub const LINEAR: Valuation = Valuation { contract_size: None };

impl Valuation {
    pub fn inverse(self) -> bool {
        self.contract_size.is_some()
    }

    /// V(size, P) at 1e-16 of a size (>= 0) at a price, in 256 bits (a fill's value before its bounds are checked).
    pub fn value_wide(self, size: i128, price: i128) -> I256 {
        match self.contract_size {
            None => wide_mul(size, price),
            Some(contract_size) => {
                ratio(wide_mul(size, contract_size), S16, I256::new(price), S8, S16, Rounding::HalfEven)
            }
        }
    }

    /// V(size, P) at 1e-16 of a size within the bounds (a position, a lot): below 10^22. A fund's net in a symbol
    /// has no such bound (its lots leave one side at a time): value_wide.
    pub fn value(self, size: i128, price: i128) -> i128 {
        match self.contract_size {
            None => mul128(size, price),
            Some(_) => narrow(self.value_wide(size, price)),
        }
    }

    /// The value of a signed qty, signed as the qty (funding: a long pays when the rate is positive).
    pub fn signed_value(self, qty: i128, price: i128) -> i128 {
        let value = self.value(qty.abs(), price);
        if qty < 0 { -value } else { value }
    }

    /// |qty| x s at 1e-16: an inverse position's face value (the MAX_FACE bound); 0 for a linear one.
    pub fn face(self, qty: i128) -> I256 {
        wide_mul(qty.abs(), self.contract_size.unwrap_or(0))
    }

    /// Whether a position of this contract side gains in value space as its value at the mark rises: a linear long,
    /// an inverse short.
    pub fn value_long(self, long: bool) -> bool {
        long != self.inverse()
    }

    /// The price (1e-8) at which a size is worth `value` (1e-16): value / size, or size x s / value for an inverse
    /// contract, whose value <= 0 no price reaches (the largest PRICE stands for it).
    pub fn price(self, size: i128, value: Wide, rounding: Rounding) -> Wide {
        match self.contract_size {
            None => wratio(value, S16, wide(size), S8, S8, rounding),
            Some(_) if value <= Wide::ZERO => wide(LARGEST_PRICE),
            Some(contract_size) => wratio(wmul(wide(size), wide(contract_size)), S16, value, S16, S8, rounding),
        }
    }

    /// A reported price (an entry price, a lot's BP, an ADL fill price): HALF_EVEN to 1e-8; 0 for an inverse value
    /// of 0 (a cost that rounded away).
    pub fn reported_price(self, size: i128, value: Wide) -> Wide {
        if value == Wide::ZERO && self.inverse() {
            return Wide::ZERO;
        }
        self.price(size, value, Rounding::HalfEven)
    }

    /// A position's bankruptcy price from its value at bankruptcy (1e-16), to 1e-8 in the fund's favour: FLOOR for a
    /// long, CEILING for a short (the contract side). Inverse with a value <= 0 (a long bankrupt at every price, a
    /// short never): the largest PRICE.
    pub fn bankruptcy_price(self, value: Wide, size: i128, long: bool) -> Wide {
        self.price(size, value, if long { Rounding::Floor } else { Rounding::Ceiling })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E8: i128 = 100_000_000;
    const E16: i128 = E8 * E8;
    const INVERSE: Valuation = Valuation { contract_size: Some(100 * E8) };

    #[test]
    fn a_linear_value_is_the_exact_product() {
        assert_eq!(LINEAR.value(2 * E8, 50_000 * E8), 100_000 * E16);
        assert!(LINEAR.value_long(true) && !LINEAR.value_long(false));
        assert_eq!(LINEAR.price(2 * E8, wide(100_001 * E16), Rounding::HalfEven), wide(5_000_050_000_000));
    }

    #[test]
    fn an_inverse_value_rounds_half_even_to_1e16() {
        // 1 contract of 100 USD at 30000: 1/300 BTC = 0.00333333333333333|33 -> ...33
        assert_eq!(INVERSE.value(E8, 30_000 * E8), 33_333_333_333_333);
        // 3 x 100 / 0.00000008 = 3.75e9 exactly; a half quantum rounds to even
        assert_eq!(INVERSE.value(3 * E8, 8), 3_750_000_000 * E16);
        let half = Valuation { contract_size: Some(1) }; // 1e-8 x 1e-8 / 4e-8 = 0.25e-8... at 1e-16: 25e6 exactly
        assert_eq!(half.value(1, 4), 25_000_000);
        // 1e-8 x 1e-8 / 3: 1e-16 / 3 -> 0 at 1e-16; 2e-16 / 3 -> 1e-16 (0.67 rounds up)
        assert_eq!(half.value(1, 3 * E8), 0);
        assert_eq!(half.value(2, 3 * E8), 1);
        assert!(!INVERSE.value_long(true) && INVERSE.value_long(false));
        assert_eq!(INVERSE.signed_value(-E8, 50_000 * E8), -(E16 / 500));
    }

    #[test]
    fn a_harmonic_entry_reads_the_price_back() {
        // buy 1 at 40000 and 1 at 60000: C = 0.0025 + 0.0016666666666667 (HALF_EVEN at 1e-16), E = 200 / C =
        // 47999.9999999996..., HALF_EVEN to 1e-8
        let cost = INVERSE.value(E8, 40_000 * E8) + INVERSE.value(E8, 60_000 * E8);
        assert_eq!(cost, 25_000_000_000_000 + 16_666_666_666_667);
        assert_eq!(INVERSE.reported_price(2 * E8, wide(cost)), wide(48_000 * E8));
        assert_eq!(INVERSE.price(2 * E8, wide(cost), Rounding::Floor), wide(48_000 * E8 - 1));
        assert_eq!(INVERSE.reported_price(2 * E8, Wide::ZERO), Wide::ZERO);
        assert_eq!(INVERSE.reported_price(2 * E8, wide(-1)), wide(LARGEST_PRICE));
    }

    #[test]
    fn bankruptcy_prices_round_in_the_funds_favour_and_clamp() {
        // a long of 3 contracts: 300 / 0.007 = 42857.142857142857... FLOOR; a short CEILING
        let value = wide(7 * E16 / 1000);
        assert_eq!(INVERSE.bankruptcy_price(value, 3 * E8, true), wide(4_285_714_285_714));
        assert_eq!(INVERSE.bankruptcy_price(value, 3 * E8, false), wide(4_285_714_285_715));
        // a denominator <= 0: bankrupt at every price (long) or never (short): the largest PRICE
        assert_eq!(INVERSE.bankruptcy_price(Wide::ZERO, 3 * E8, true), wide(LARGEST_PRICE));
        assert_eq!(INVERSE.bankruptcy_price(wide(-5), 3 * E8, false), wide(LARGEST_PRICE));
        // linear: a negative value is a negative price, rounded the same ways
        assert_eq!(LINEAR.bankruptcy_price(wide(-E16 - 1), E8, true), wide(-E8 - 1));
    }

    #[test]
    fn every_value_within_max_face_fits_128_bits() {
        // |q| x s just below 10^14 at the smallest price: below 10^22 at 1e-16
        let largest = Valuation { contract_size: Some(9_999_999_999 * E8 + 99_999_999) };
        let size = 10_000 * E8 - 1; // face < 10^14
        assert!(largest.face(size) < I256::new(MAX_FACE));
        let value = largest.value(size, 1);
        assert!(value < 10_i128.pow(38));
    }
}
