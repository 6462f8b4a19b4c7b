//! Fixed-point numbers of docs/design.md section 9: every wire decimal is an integer at its kind's scale, every
//! product is exact in 128 or 256 bits (512 for values derived from a balance: `Wide`), and every division rounds
//! exactly once from the exact rational value.
//!
//! A value is a plain integer and a scale `s` (the value times 10^s); the scale is fixed per quantity (money and
//! prices at 8, exact products at 16, rates at 18, scores at 12), so it is carried by names, not at run time.
//! Overflow is a bug, never an input's fault (section 9.3 bounds every input so that nothing reachable
//! overflows): every operation here is checked and panics with "arithmetic overflow", which the caller's
//! boundary turns into an invariant violation.

use ethnum::I256;
use std::fmt;
use std::sync::OnceLock;

/// Scale of quantities, prices, leverages and money (1e-8).
pub const S8: u32 = 8;
/// Scale of ADL scores and explain-only ratios (1e-12).
pub const S12: u32 = 12;
/// Scale of exact qty x price products: values, costs, notionals, uPnL (1e-16).
pub const S16: u32 = 16;
/// Scale of rates (1e-18).
pub const S18: u32 = 18;

/// How a division rounds its exact rational value to the quantum: banker's rounding, toward +inf, toward -inf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    HalfEven,
    Ceiling,
    Floor,
}

const POW10_I128: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// 10^n as i128 (n <= 38).
#[inline]
pub fn pow10_i128(n: u32) -> i128 {
    POW10_I128[n as usize]
}

/// 10^n as I256 (n <= 76).
pub fn pow10(n: u32) -> I256 {
    static TABLE: OnceLock<[I256; 77]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [I256::ONE; 77];
        for i in 1..77 {
            table[i] = table[i - 1] * 10;
        }
        table
    })[n as usize]
}

#[cold]
#[inline(never)]
fn overflow() -> ! {
    panic!("arithmetic overflow")
}

/// Checked arithmetic on I256 (ethnum's operators wrap in release builds).
#[inline]
pub fn add(a: I256, b: I256) -> I256 {
    a.checked_add(b).unwrap_or_else(|| overflow())
}
#[inline]
pub fn sub(a: I256, b: I256) -> I256 {
    a.checked_sub(b).unwrap_or_else(|| overflow())
}
#[inline]
pub fn mul(a: I256, b: I256) -> I256 {
    a.checked_mul(b).unwrap_or_else(|| overflow())
}
/// The exact product of two i128 in 256 bits (it cannot overflow).
#[inline]
pub fn wide_mul(a: i128, b: i128) -> I256 {
    I256::new(a) * I256::new(b)
}
/// A 256-bit value that must fit 128 bits.
#[inline]
pub fn narrow(value: I256) -> i128 {
    i128::try_from(value).unwrap_or_else(|_| overflow())
}
/// Checked i128 product.
#[inline]
pub fn mul128(a: i128, b: i128) -> i128 {
    a.checked_mul(b).unwrap_or_else(|| overflow())
}
/// Checked i128 sum.
#[inline]
pub fn add128(a: i128, b: i128) -> i128 {
    a.checked_add(b).unwrap_or_else(|| overflow())
}
/// Checked i128 difference.
#[inline]
pub fn sub128(a: i128, b: i128) -> i128 {
    a.checked_sub(b).unwrap_or_else(|| overflow())
}

/// numerator / denominator rounded once to an integer, from the exact rational value.
pub fn div_round(numerator: I256, denominator: I256, rounding: Rounding) -> I256 {
    if denominator == I256::ZERO {
        panic!("division by zero");
    }
    if let (Ok(n), Ok(d)) = (i128::try_from(numerator), i128::try_from(denominator)) {
        if n != i128::MIN && d != i128::MIN {
            return I256::new(div_round_i128(n, d, rounding));
        }
    }
    let negative = (numerator < 0) != (denominator < 0);
    let n = numerator.unsigned_abs();
    let d = denominator.unsigned_abs();
    let quotient = n / d;
    let remainder = n % d;
    let up = round_up(remainder != 0, remainder.cmp(&(d - remainder)), quotient.as_u64() & 1 == 1, negative,
                      rounding);
    let magnitude = if up { quotient + 1 } else { quotient };
    let magnitude = I256::try_from(magnitude).unwrap_or_else(|_| overflow());
    if negative { -magnitude } else { magnitude }
}

/// Whether the truncated magnitude moves one away from zero. `half`: the remainder against the rest of the
/// denominator (Less: below one half).
#[inline]
fn round_up(inexact: bool, half: std::cmp::Ordering, odd: bool, negative: bool, rounding: Rounding) -> bool {
    if !inexact {
        return false;
    }
    match rounding {
        Rounding::HalfEven => match half {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => odd,
            std::cmp::Ordering::Less => false,
        },
        Rounding::Ceiling => !negative,
        Rounding::Floor => negative,
    }
}

/// div_round on i128 (both operands above i128::MIN).
pub fn div_round_i128(numerator: i128, denominator: i128, rounding: Rounding) -> i128 {
    let negative = (numerator < 0) != (denominator < 0);
    let n = numerator.unsigned_abs();
    let d = denominator.unsigned_abs();
    let quotient = n / d;
    let remainder = n % d;
    let up = round_up(remainder != 0, remainder.cmp(&(d - remainder)), quotient & 1 == 1, negative, rounding);
    let magnitude = (if up { quotient + 1 } else { quotient }) as i128;
    if negative { -magnitude } else { magnitude }
}

/// The exact value numerator x 10^-num_scale / (denominator x 10^-den_scale), rounded once to 10^-out_scale.
pub fn ratio(numerator: I256, num_scale: u32, denominator: I256, den_scale: u32, out_scale: u32,
             rounding: Rounding) -> I256 {
    // result x 10^-out = N 10^-a / (D 10^-b)  =>  result = N 10^(out - a + b) / D
    let shift = out_scale as i64 - num_scale as i64 + den_scale as i64;
    if shift >= 0 {
        div_round(mul(numerator, pow10(shift as u32)), denominator, rounding)
    } else {
        div_round(numerator, mul(denominator, pow10((-shift) as u32)), rounding)
    }
}

/// A value at scale `from` rounded once to scale `to` (exact when `to` >= `from`).
pub fn rescale(value: I256, from: u32, to: u32, rounding: Rounding) -> I256 {
    if to >= from {
        mul(value, pow10(to - from))
    } else {
        div_round(value, pow10(from - to), rounding)
    }
}

/// rescale on i128 values whose result fits i128.
pub fn rescale128(value: i128, from: u32, to: u32, rounding: Rounding) -> i128 {
    if to >= from {
        mul128(value, pow10_i128(to - from))
    } else if from - to <= 38 {
        div_round_i128(value, pow10_i128(from - to), rounding)
    } else {
        narrow(div_round(I256::new(value), pow10(from - to), rounding))
    }
}

// ------------------------------------------------------------------------------------------------ 512 bits

/// A value derived from a ledger balance, or a product or quotient with one as an operand (docs/design.md section
/// 9.3): TNC, equity shares, the equity behind a liquidated qty, a bankruptcy price and its distance to the mark, a
/// lot's cost, a liquidation price, an ADL score. A balance is bounded only by BALANCE_BOUND, so these need up to
/// 340 bits and their products up to 446: 512-bit integers (bnum), every operation checked. Each operation takes
/// the narrower path (i128, then I256) when its operands fit; both paths round the same exact value the same way.
pub type Wide = bnum::types::I512;
type WideMagnitude = bnum::types::U512;

/// An i128 as a Wide.
#[inline]
pub fn wide(value: i128) -> Wide {
    Wide::from(value)
}

/// An I256 as a Wide (sign-extended).
#[inline]
pub fn wide256(value: I256) -> Wide {
    let (hi, lo) = value.into_words();
    let (hi, lo) = (hi as u128, lo as u128);
    let extension = if value < 0 { u64::MAX } else { 0 };
    Wide::from_bits(WideMagnitude::from_digits([
        lo as u64, (lo >> 64) as u64, hi as u64, (hi >> 64) as u64, extension, extension, extension, extension,
    ]))
}

/// The value as an I256, if it fits.
#[inline]
pub fn fit256(value: Wide) -> Option<I256> {
    let bits = value.to_bits();
    let digits = bits.digits();
    let extension = if digits[3] >> 63 == 1 { u64::MAX } else { 0 };
    if digits[4..].iter().any(|&digit| digit != extension) {
        return None;
    }
    let hi = (digits[3] as u128) << 64 | digits[2] as u128;
    let lo = (digits[1] as u128) << 64 | digits[0] as u128;
    Some(I256::from_words(hi as i128, lo as i128))
}

/// The value as an i128, if it fits.
#[inline]
pub fn fit128(value: Wide) -> Option<i128> {
    i128::try_from(value).ok()
}

/// A Wide that must fit 256 bits (a ledger amount).
#[inline]
pub fn narrow_wide(value: Wide) -> I256 {
    fit256(value).unwrap_or_else(|| overflow())
}

#[inline]
pub fn wadd(a: Wide, b: Wide) -> Wide {
    a.checked_add(b).unwrap_or_else(|| overflow())
}
#[inline]
pub fn wsub(a: Wide, b: Wide) -> Wide {
    a.checked_sub(b).unwrap_or_else(|| overflow())
}
/// The exact product; in 256 bits when both factors fit 128.
#[inline]
pub fn wmul(a: Wide, b: Wide) -> Wide {
    if let (Some(a), Some(b)) = (fit128(a), fit128(b)) {
        return wide256(wide_mul(a, b));
    }
    a.checked_mul(b).unwrap_or_else(|| overflow())
}

/// 10^n as Wide (n <= 153).
pub fn wpow10(n: u32) -> Wide {
    static TABLE: OnceLock<[Wide; 154]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [Wide::ONE; 154];
        for i in 1..154 {
            table[i] = table[i - 1] * Wide::from(10u8);
        }
        table
    })[n as usize]
}

/// numerator / denominator rounded once to an integer, from the exact rational value (div_round in 512 bits; in
/// 256 or 128 when both operands fit).
pub fn wdiv_round(numerator: Wide, denominator: Wide, rounding: Rounding) -> Wide {
    if let (Some(n), Some(d)) = (fit256(numerator), fit256(denominator)) {
        if n != I256::MIN {
            return wide256(div_round(n, d, rounding));
        }
    }
    div_round_512(numerator, denominator, rounding)
}

/// wdiv_round always in 512 bits (the path wide operands take; the tests hold it to the narrow ones).
pub fn div_round_512(numerator: Wide, denominator: Wide, rounding: Rounding) -> Wide {
    if denominator == Wide::ZERO {
        panic!("division by zero");
    }
    let negative = numerator.is_negative() != denominator.is_negative();
    let n = numerator.unsigned_abs();
    let d = denominator.unsigned_abs();
    let quotient = n / d;
    let remainder = n % d;
    let up = round_up(remainder != WideMagnitude::ZERO, remainder.cmp(&(d - remainder)),
                      quotient.digits()[0] & 1 == 1, negative, rounding);
    let magnitude = if up { quotient + WideMagnitude::ONE } else { quotient };
    if magnitude.leading_zeros() == 0 {
        overflow(); // beyond 2^511 - 1
    }
    let magnitude = Wide::from_bits(magnitude);
    if negative { -magnitude } else { magnitude }
}

/// ratio on Wide values: numerator x 10^-num_scale / (denominator x 10^-den_scale), rounded once to 10^-out_scale.
pub fn wratio(numerator: Wide, num_scale: u32, denominator: Wide, den_scale: u32, out_scale: u32,
              rounding: Rounding) -> Wide {
    let shift = out_scale as i64 - num_scale as i64 + den_scale as i64;
    if shift >= 0 {
        wdiv_round(wmul(numerator, wpow10(shift as u32)), denominator, rounding)
    } else {
        wdiv_round(numerator, wmul(denominator, wpow10((-shift) as u32)), rounding)
    }
}

/// rescale on a Wide value.
pub fn wrescale(value: Wide, from: u32, to: u32, rounding: Rounding) -> Wide {
    if to >= from {
        wmul(value, wpow10(to - from))
    } else {
        wdiv_round(value, wpow10(from - to), rounding)
    }
}

/// write_scaled for a Wide value.
pub fn write_scaled_512(out: &mut Vec<u8>, value: Wide, scale: u32) {
    if let Some(narrow) = fit256(value) {
        return write_scaled_wide(out, narrow, scale);
    }
    if value.is_negative() {
        out.push(b'-');
    }
    write_digits(out, value.unsigned_abs().to_string().as_bytes(), scale);
}

/// The canonical text of a Wide value as a String.
pub fn text_512(value: Wide, scale: u32) -> String {
    let mut out = Vec::with_capacity(48);
    write_scaled_512(&mut out, value, scale);
    String::from_utf8(out).expect("ASCII")
}

// ------------------------------------------------------------------------------------------------ wire text

/// The kind of a wire decimal (section 9.2): how many integer and fraction digits it may have, and its scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub name: &'static str,
    pub integer_digits: u32,
    pub fraction_digits: u32,
    pub scale: u32,
}

pub const QTY: Kind = Kind { name: "QTY", integer_digits: 12, fraction_digits: 8, scale: S8 };
pub const PRICE: Kind = Kind { name: "PRICE", integer_digits: 10, fraction_digits: 8, scale: S8 };
pub const MONEY: Kind = Kind { name: "MONEY", integer_digits: 16, fraction_digits: 8, scale: S8 };
pub const RATE: Kind = Kind { name: "RATE", integer_digits: 4, fraction_digits: 18, scale: S18 };
pub const LEVERAGE: Kind = Kind { name: "LEVERAGE", integer_digits: 4, fraction_digits: 8, scale: S8 };

/// Why a wire decimal's text was refused, before its sign or domain is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    /// Not `-?(0|[1-9][0-9]*)(\.[0-9]+)?`: an exponent, a space, a `+`, a leading zero, NaN...
    Syntax,
    /// Plain, but more integer or fraction digits than the kind allows.
    Bounds,
}

/// A plain decimal's parts: sign, integer digits, fraction digits (ASCII, already checked).
#[derive(Clone, Copy, Debug)]
pub struct Plain<'a> {
    pub negative: bool,
    pub integer: &'a [u8],
    pub fraction: &'a [u8],
}

/// Split `text` into a plain decimal, or say it is not one.
pub fn plain(text: &[u8]) -> Result<Plain<'_>, TextError> {
    let (negative, rest) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let int_end = rest.iter().position(|b| !b.is_ascii_digit()).unwrap_or(rest.len());
    let integer = &rest[..int_end];
    if integer.is_empty() || (integer.len() > 1 && integer[0] == b'0') {
        return Err(TextError::Syntax);
    }
    let fraction = match &rest[int_end..] {
        [] => &rest[int_end..],
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => digits,
        _ => return Err(TextError::Syntax),
    };
    Ok(Plain { negative, integer, fraction })
}

impl Plain<'_> {
    /// Whether the value is zero ("0", "-0.000").
    pub fn is_zero(&self) -> bool {
        self.integer == b"0" && self.fraction.iter().all(|&b| b == b'0')
    }

    /// The value at the kind's scale, if its digits fit the kind.
    pub fn scaled(&self, kind: Kind) -> Result<i128, TextError> {
        if self.integer.len() as u32 > kind.integer_digits || self.fraction.len() as u32 > kind.fraction_digits {
            return Err(TextError::Bounds);
        }
        let mut value: i128 = 0;
        for &digit in self.integer.iter().chain(self.fraction) {
            value = value * 10 + (digit - b'0') as i128;
        }
        value *= pow10_i128(kind.scale - self.fraction.len() as u32);
        Ok(if self.negative { -value } else { value })
    }
}

/// Parse wire text of a kind to its scaled integer (sign not checked here).
pub fn parse(text: &[u8], kind: Kind) -> Result<i128, TextError> {
    plain(text)?.scaled(kind)
}

/// Append the canonical text of value x 10^-scale (section 9.5: plain, no trailing fraction zeros, "0", never
/// "-0"), as backstop.core.numbers.text writes it.
pub fn write_scaled(out: &mut Vec<u8>, value: i128, scale: u32) {
    if value < 0 {
        out.push(b'-');
    }
    write_magnitude(out, value.unsigned_abs(), scale);
}

/// The decimal digits of 00 to 99, two by two.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
                                  5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// The decimal digits of a magnitude, most significant first, at the end of `buffer`; where they start.
fn decimal_digits(magnitude: u128, buffer: &mut [u8; 40]) -> usize {
    let mut at = buffer.len();
    // 128-bit division is a library call: split off 19-digit chunks once, then divide in 64 bits, two digits at a time
    const CHUNK: u128 = 10_000_000_000_000_000_000;
    let mut rest = magnitude;
    while rest > u128::from(u64::MAX) {
        let mut chunk = (rest % CHUNK) as u64;
        rest /= CHUNK;
        for _ in 0..19 {
            at -= 1;
            buffer[at] = b'0' + (chunk % 10) as u8;
            chunk /= 10;
        }
    }
    let mut rest = rest as u64;
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&DIGIT_PAIRS[rest as usize * 2..rest as usize * 2 + 2]);
    } else {
        at -= 1;
        buffer[at] = b'0' + rest as u8;
    }
    at
}

fn write_magnitude(out: &mut Vec<u8>, magnitude: u128, scale: u32) {
    let mut buffer = [0u8; 40];
    let start = decimal_digits(magnitude, &mut buffer);
    let digits = &buffer[start..];
    let scale = scale as usize;
    // the fraction's digits less its trailing zeros: `kept` of them
    let (integer, fraction, zeros) = match digits.len().checked_sub(scale) {
        Some(whole) if whole > 0 => (&digits[..whole], &digits[whole..], 0),
        _ => (&b"0"[..], digits, scale - digits.len()),
    };
    out.extend_from_slice(integer);
    let kept = fraction.iter().rposition(|&digit| digit != b'0').map_or(0, |last| last + 1);
    if kept > 0 {
        out.push(b'.');
        out.extend(std::iter::repeat_n(b'0', zeros));
        out.extend_from_slice(&fraction[..kept]);
    }
}

/// write_scaled for a 256-bit value.
pub fn write_scaled_wide(out: &mut Vec<u8>, value: I256, scale: u32) {
    if let Ok(small) = i128::try_from(value) {
        if small != i128::MIN {
            return write_scaled(out, small, scale);
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    write_digits(out, value.unsigned_abs().to_string().as_bytes(), scale);
}

/// Append a magnitude's decimal digits (most significant first) as value x 10^-scale, canonically.
fn write_digits(out: &mut Vec<u8>, digits: &[u8], scale: u32) {
    let scale = scale as usize;
    let (integer, fraction) = if digits.len() > scale {
        (&digits[..digits.len() - scale], digits[digits.len() - scale..].to_vec())
    } else {
        let mut padded = vec![b'0'; scale - digits.len()];
        padded.extend_from_slice(digits);
        (&b"0"[..], padded)
    };
    out.extend_from_slice(integer);
    let kept = fraction.iter().rposition(|&b| b != b'0').map_or(0, |i| i + 1);
    if kept > 0 {
        out.push(b'.');
        out.extend_from_slice(&fraction[..kept]);
    }
}

/// The canonical text as a String.
pub fn text(value: i128, scale: u32) -> String {
    let mut out = Vec::with_capacity(24);
    write_scaled(&mut out, value, scale);
    String::from_utf8(out).expect("ASCII")
}

/// The canonical text of a 256-bit value as a String.
pub fn text_wide(value: I256, scale: u32) -> String {
    let mut out = Vec::with_capacity(48);
    write_scaled_wide(&mut out, value, scale);
    String::from_utf8(out).expect("ASCII")
}

/// A value with its scale, displayed canonically (for reasons and findings).
#[derive(Clone, Copy, Debug)]
pub struct Shown(pub i128, pub u32);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text(self.0, self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(v: i128) -> I256 {
        I256::new(v)
    }

    #[test]
    fn canonical_text() {
        assert_eq!(text(0, 8), "0");
        assert_eq!(text(-0, 8), "0");
        assert_eq!(text(150_000_000, 8), "1.5");
        assert_eq!(text(-5, 8), "-0.00000005");
        assert_eq!(text(10_000_000_000, 8), "100");
        assert_eq!(text(12, 0), "12");
        assert_eq!(text(i128::MAX, 16), "17014118346046923173168.7303715884105727");
        assert_eq!(text_wide(pow10(70) * -3 + 1, 34), "-2999999999999999999999999999999999999.9999999999999999999999999999999999");
        assert_eq!(text_wide(pow10(70), 70), "1");
    }

    /// The canonical text as the decimal digits of the magnitude, placed by the scale (the slow, obvious way).
    fn text_by_digits(value: i128, scale: u32) -> String {
        let digits = format!("{:0>width$}", value.unsigned_abs(), width = scale as usize + 1);
        let (whole, fraction) = digits.split_at(digits.len() - scale as usize);
        let fraction = fraction.trim_end_matches('0');
        let sign = if value < 0 { "-" } else { "" };
        if fraction.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{fraction}") }
    }

    #[test]
    fn text_matches_the_digits_around_every_power_of_ten() {
        let mut values = vec![0i128, 1, 9, u64::MAX as i128, u64::MAX as i128 - 1, i64::MAX as i128 + 1];
        for power in 0..20u32 {
            let p = 10i128.pow(power);
            values.extend([p - 1, p, p + 1, 7 * p, 123_456_789 * p % u64::MAX as i128]);
        }
        for value in values {
            for scale in 0..=19 {
                for signed in [value, -value] {
                    assert_eq!(text(signed, scale), text_by_digits(signed, scale), "{signed} at scale {scale}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn text_matches_the_digits(value in any::<i128>(), width in 0u32..4, zeros in 0u32..20, scale in 0u32..=40) {
            // any::<i128> is mostly huge: also cover values that fit 64 bits (where the fast path runs), short ones,
            // and ones ending in zeros (the fraction trimmed)
            let value = [value, value % (1i128 << 66), value % 1_000_000, value % 100][width as usize];
            let value = value.checked_mul(10i128.pow(zeros)).unwrap_or(value);
            prop_assume!(value != 0);
            prop_assert_eq!(text(value, scale), text_by_digits(value, scale));
        }
    }

    #[test]
    fn parsing_follows_the_kinds() {
        assert_eq!(parse(b"50000.5", PRICE), Ok(5_000_050_000_000));
        assert_eq!(parse(b"-0.00000001", MONEY), Ok(-1));
        assert_eq!(parse(b"1234567890123.5", QTY), Err(TextError::Bounds));
        assert_eq!(parse(b"1.000000000", QTY), Err(TextError::Bounds));
        assert_eq!(parse(b"9999.999999999999999999", RATE), Ok(9_999_999_999_999_999_999_999));
        for bad in [&b""[..], b"-", b"01", b"1.", b".5", b"1e5", b"+1", b" 1", b"1 ", b"NaN", b"1.2.3", b"--1", b"-.5"] {
            assert_eq!(parse(bad, MONEY), Err(TextError::Syntax), "{:?}", std::str::from_utf8(bad));
        }
        assert!(plain(b"-0.000").unwrap().is_zero());
    }

    #[test]
    fn division_rounds_once() {
        use Rounding::*;
        assert_eq!(div_round(w(5), w(2), HalfEven), w(2));
        assert_eq!(div_round(w(7), w(2), HalfEven), w(4));
        assert_eq!(div_round(w(-5), w(2), HalfEven), w(-2));
        assert_eq!(div_round(w(-7), w(2), HalfEven), w(-4));
        assert_eq!(div_round(w(-7), w(2), Ceiling), w(-3));
        assert_eq!(div_round(w(-7), w(2), Floor), w(-4));
        assert_eq!(div_round(w(7), w(-2), Floor), w(-4));
        assert_eq!(div_round(w(1), w(3), Ceiling), w(1));
        assert_eq!(div_round(w(-1), w(3), Floor), w(-1));
        assert_eq!(div_round(w(6), w(3), Ceiling), w(2));
        let big = pow10(60) + 1;
        assert_eq!(div_round(big, pow10(30), Ceiling), pow10(30) + 1);
        assert_eq!(div_round(-big, pow10(30), Ceiling), -pow10(30));
        assert_eq!(div_round(pow10(60) * 5 / 10, pow10(30) / 10 * 10, HalfEven), pow10(29) * 5);
        assert_eq!(ratio(w(300), 2, w(7), 0, 8, HalfEven), w(42_857_143));
    }

    #[test]
    #[should_panic(expected = "arithmetic overflow")]
    fn overflow_panics() {
        mul(pow10(40), pow10(40));
    }

    #[test]
    #[should_panic(expected = "arithmetic overflow")]
    fn wide_overflow_panics() {
        wmul(wpow10(80), wpow10(80));
    }

    #[test]
    fn wide_values_convert_at_the_edges() {
        for value in [I256::MIN, I256::MAX, I256::MINUS_ONE, I256::ZERO, I256::ONE, w(i128::MIN), w(i128::MAX)] {
            assert_eq!(fit256(wide256(value)), Some(value));
        }
        assert_eq!(fit256(wide256(I256::MAX) + Wide::ONE), None);
        assert_eq!(fit256(wide256(I256::MIN) - Wide::ONE), None);
        assert_eq!(fit128(wide256(w(i128::MAX)) + Wide::ONE), None);
        assert_eq!(wmul(wide(i128::MAX), wide(i128::MIN)), wide256(wide_mul(i128::MAX, i128::MIN)));
        assert_eq!(wpow10(153).to_string(), format!("1{}", "0".repeat(153)));
    }

    #[test]
    fn wide_division_rounds_once_beyond_256_bits() {
        use Rounding::*;
        let big = wpow10(120); // a denominator past 2^256 needs the 512-bit path
        let odd = wmul(big, wide(7)); // 7 x 10^120 / (2 x 10^120) = 3.5
        let two = wmul(big, wide(2));
        assert_eq!(wdiv_round(odd, two, HalfEven), wide(4));
        assert_eq!(wdiv_round(-odd, two, HalfEven), wide(-4));
        assert_eq!(wdiv_round(wmul(big, wide(5)), two, HalfEven), wide(2));
        assert_eq!(wdiv_round(-odd, two, Ceiling), wide(-3));
        assert_eq!(wdiv_round(-odd, two, Floor), wide(-4));
        assert_eq!(wdiv_round(odd + Wide::ONE, two, HalfEven), wide(4));
        assert_eq!(wdiv_round(wpow10(150) + Wide::ONE, wpow10(75), Ceiling), wpow10(75) + Wide::ONE);
        assert_eq!(wdiv_round(-(wpow10(150) + Wide::ONE), wpow10(75), Floor), -(wpow10(75) + Wide::ONE));
        assert_eq!(wratio(wpow10(100), 16, wide(3), 8, 8, Ceiling).to_string(), format!("{}4", "3".repeat(99)));
        assert_eq!(wrescale(wpow10(140) + wide(50), 16, 8, HalfEven), wpow10(132));
        assert_eq!(wrescale(wpow10(140) + wide(150_000_000), 16, 8, HalfEven), wpow10(132) + wide(2));
    }

    #[test]
    fn wide_text_is_canonical() {
        assert_eq!(text_512(wmul(wpow10(100), wide(-3)) + Wide::ONE, 34),
                   format!("-2{}.{}", "9".repeat(66), "9".repeat(34)));
        assert_eq!(text_512(wpow10(120), 120), "1");
        assert_eq!(text_512(wpow10(120), 121), "0.1");
        assert_eq!(text_512(wpow10(120) * wide(25), 122), "0.25");
        assert_eq!(text_512(wide(-5), 8), "-0.00000005");
    }

    fn exact_round(n: i128, d: i128, rounding: Rounding) -> i128 {
        // the slow way: floor and remainder of the positive-denominator form, then the rule
        let (n, d) = if d < 0 { (-n, -d) } else { (n, d) };
        let (floor, twice_rest) = (n.div_euclid(d), 2 * n.rem_euclid(d));
        match rounding {
            Rounding::Floor => floor,
            Rounding::Ceiling => floor + i128::from(twice_rest != 0),
            Rounding::HalfEven if twice_rest == d => floor + (floor & 1),
            Rounding::HalfEven => floor + i128::from(twice_rest > d),
        }
    }

    proptest! {
        #[test]
        fn div_round_matches_floor_arithmetic(n in -1_000_000_000_000i128..1_000_000_000_000,
                                              d in prop_oneof![-1_000_000i128..-1, 1i128..1_000_000]) {
            for rounding in [Rounding::HalfEven, Rounding::Ceiling, Rounding::Floor] {
                prop_assert_eq!(div_round(w(n), w(d), rounding), w(exact_round(n, d, rounding)));
            }
        }

        #[test]
        fn wide_division_agrees_with_narrow(n in any::<i64>(), d in 1i64..i64::MAX, k in 0u32..20) {
            // scale both by 10^k into 256 bits: the rounded quotient must not change
            let scale = pow10(k) * pow10(30);
            for rounding in [Rounding::HalfEven, Rounding::Ceiling, Rounding::Floor] {
                let narrow_q = div_round(w(n as i128), w(d as i128), rounding);
                prop_assert_eq!(div_round(w(n as i128) * scale, w(d as i128) * scale, rounding), narrow_q);
            }
        }

        #[test]
        fn text_round_trips(v in any::<i64>(), scale in 0u32..=18) {
            let shown = text(v as i128, scale);
            let kind = Kind { name: "T", integer_digits: 40, fraction_digits: scale, scale };
            prop_assert_eq!(parse(shown.as_bytes(), kind), Ok(v as i128));
            prop_assert!(!shown.ends_with('.') && shown != "-0");
            if shown.contains('.') { prop_assert!(!shown.ends_with('0')); }
            prop_assert_eq!(text_wide(w(v as i128), scale), shown);
        }

        #[test]
        fn the_512_bit_path_agrees_with_the_narrow_ones(n in any::<[u64; 4]>(), d in any::<[u64; 4]>(),
                                                         bits in 1u32..=255, negative in any::<(bool, bool)>()) {
            // operands of any width up to 256 bits: wdiv_round (narrow paths) and div_round_512 (always 512) agree
            let to_i256 = |limbs: [u64; 4], sign: bool| {
                let (hi, lo) = ((limbs[3] as u128) << 64 | limbs[2] as u128, (limbs[1] as u128) << 64 | limbs[0] as u128);
                let magnitude = ethnum::U256::from_words(hi, lo) >> (256 - bits);
                let value = I256::try_from(magnitude >> 1).expect("255 bits");
                if sign { -value } else { value }
            };
            let (n, d) = (to_i256(n, negative.0), to_i256(d, negative.1));
            prop_assume!(d != I256::ZERO);
            for rounding in [Rounding::HalfEven, Rounding::Ceiling, Rounding::Floor] {
                let narrow_q = div_round(n, d, rounding);
                prop_assert_eq!(wdiv_round(wide256(n), wide256(d), rounding), wide256(narrow_q));
                prop_assert_eq!(div_round_512(wide256(n), wide256(d), rounding), wide256(narrow_q));
            }
        }

        #[test]
        fn scaling_past_256_bits_keeps_the_quotient(n in any::<i64>(), d in any::<i64>(), k in 0u32..=30) {
            // n x 10^(100+k) / (d x 10^(100+k)) rounds like n / d, through the 512-bit path
            prop_assume!(d != 0);
            let scale = wpow10(100 + k);
            let (n, d) = (n as i128, d as i128);
            for rounding in [Rounding::HalfEven, Rounding::Ceiling, Rounding::Floor] {
                prop_assert_eq!(wdiv_round(wmul(wide(n), scale), wmul(wide(d), scale), rounding),
                                wide(div_round_i128(n, d, rounding)));
            }
        }

        #[test]
        fn wide_text_of_fitting_values_is_the_256_bit_text(v in any::<i128>(), shift in 0u32..=38, scale in 0u32..=76) {
            let value = mul(w(v), pow10(shift));
            prop_assert_eq!(text_512(wide256(value), scale), text_wide(value, scale));
            prop_assert_eq!(fit256(wide256(value)), Some(value));
        }

        #[test]
        fn wide_text_matches_narrow(v in any::<i128>(), scale in 0u32..=38) {
            let v = if v == i128::MIN { 0 } else { v };
            prop_assert_eq!(text_wide(w(v) * 10 + 0, scale + 1), text(v, scale));
        }
    }
}
