//! Input records of the wire contract (docs/design.md sections 5 and 9.2): decoding and strict validation that
//! accept and reject exactly what the pydantic models of `backstop.wire.inputs` accept and reject, with the same
//! canonical reason (`backstop.wire.decode.describe`: the first error, in pydantic's order).
//!
//! pydantic's order of errors in a model: every key that is not a field (in input order), then the fields in
//! declaration order; inside a field, the first check that fails. A tuple field: more valid items than allowed
//! is the only error; otherwise the first item's error, then too few valid items.

use crate::json::{self, Dialect, Value};
use crate::numbers::{self, Kind, LEVERAGE, MONEY, PRICE, QTY, RATE};
use std::borrow::Cow;
use std::fmt::Write;

pub const MAX_RECORD_BYTES: usize = 1 << 20;
pub const MAX_TIMESTAMP: u64 = 1 << 53;
/// How much of a bad input a reason quotes (characters, as Python slices).
const QUOTE_CHARS: usize = 40;
pub const TYPES: [&str; 7] = ["fund", "instrument", "transfer", "fill", "mark", "funding", "liquidation"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarginMode {
    Cross,
    Isolated,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surplus {
    Fund,
    Trader,
}
/// docs/design.md section 7: `both` is one-way mode, `long` and `short` are the sides of hedge mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PositionSide {
    Both,
    Long,
    Short,
}

impl PositionSide {
    pub fn name(self) -> &'static str {
        match self {
            PositionSide::Both => "both",
            PositionSide::Long => "long",
            PositionSide::Short => "short",
        }
    }
}

const POSITION_SIDES: &[&str] = &["both", "long", "short"];

/// docs/design.md section 7: a linear contract (the default) is valued qty x price in its settle asset, an inverse
/// one qty x contract_size / price in its coin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractType {
    Linear,
    Inverse,
}

impl ContractType {
    pub fn name(self) -> &'static str {
        match self {
            ContractType::Linear => "linear",
            ContractType::Inverse => "inverse",
        }
    }
}

const CONTRACT_TYPES: &[&str] = &["linear", "inverse"];

/// A decimal as the wire gave it: its value at the kind's scale, and how many fraction digits it was written
/// with (Python's Decimal keeps them, and a reason that prints the Decimal shows them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dec {
    pub value: i128,
    pub places: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub max_notional: Dec,
    pub mmr: Dec,
    /// None: derived from the brackets (docs/design.md section 7)
    pub maint_amount: Option<Dec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    pub qty: Dec,
    pub price: Dec,
}

/// A string of a record, borrowed from the input unless it held an escape.
pub type Str<'a> = Cow<'a, str>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    Fund { fund_id: Str<'a>, settle_asset: Str<'a>, surplus: Surplus, max_inventory_ratio: Dec },
    Instrument {
        symbol: Str<'a>,
        settle_asset: Str<'a>,
        tick_size: Dec,
        lot_size: Dec,
        tiers: Vec<Tier>,
        liquidation_fee_rate: Dec,
        fund_id: Str<'a>,
        mark_tolerance: Option<Dec>,
        contract_type: ContractType,
        contract_size: Option<Dec>,
    },
    Transfer { transfer_id: Str<'a>, account_id: Str<'a>, asset: Str<'a>, amount: Dec },
    Fill {
        fill_id: Str<'a>,
        account_id: Str<'a>,
        symbol: Str<'a>,
        side: Side,
        qty: Dec,
        price: Dec,
        fee: Dec,
        margin_mode: MarginMode,
        leverage: Dec,
        position_side: PositionSide,
    },
    Mark { symbol: Str<'a>, mark_price: Dec, index_price: Option<Dec> },
    Funding { symbol: Str<'a>, rate: Dec, mark_price: Dec },
    Liquidation {
        liquidation_id: Str<'a>,
        account_id: Str<'a>,
        symbol: Str<'a>,
        qty: Dec,
        mark_price: Dec,
        bankruptcy_price: Option<Dec>,
        executions: Vec<Execution>,
        position_side: PositionSide,
    },
}

/// A validated input record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub ts: u64,
    pub body: Body<'a>,
}

impl Record<'_> {
    pub fn type_name(&self) -> &'static str {
        match self.body {
            Body::Fund { .. } => "fund",
            Body::Instrument { .. } => "instrument",
            Body::Transfer { .. } => "transfer",
            Body::Fill { .. } => "fill",
            Body::Mark { .. } => "mark",
            Body::Funding { .. } => "funding",
            Body::Liquidation { .. } => "liquidation",
        }
    }
}

// ------------------------------------------------------------------------------------------------ the models

#[derive(Clone, Copy, Debug)]
enum Sign {
    Any,
    Positive,
    NonNegative,
    /// leverage: 0.01 to 1000
    LeverageRange,
}

#[derive(Clone, Copy, Debug)]
struct Text {
    max: usize,
    pattern: &'static str,
    allowed: fn(u8) -> bool,
}

const IDENTIFIER: Text = Text {
    max: 128,
    pattern: "^[A-Za-z0-9_.:@/-]+$",
    allowed: |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-'),
};
const SYMBOL: Text = Text {
    max: 32,
    pattern: "^[A-Z0-9_-]+$",
    allowed: |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-',
};
const ASSET: Text =
    Text { max: 16, pattern: "^[A-Z0-9]+$", allowed: |b| b.is_ascii_uppercase() || b.is_ascii_digit() };

#[derive(Clone, Copy, Debug)]
enum Check {
    Tag,
    Timestamp,
    Text(Text),
    Literal(&'static [&'static str]),
    /// a literal with a default, the first option, when the key is absent (not when it is null)
    OptionalLiteral(&'static [&'static str]),
    Decimal(Kind, Sign),
    OptionalDecimal(Kind, Sign),
    Tuple(&'static Model, usize, usize),
    OptionalTuple(&'static Model, usize),
}

#[derive(Debug)]
struct Model {
    fields: &'static [(&'static str, Check)],
}

const TYPE: (&str, Check) = ("type", Check::Tag);
const TS: (&str, Check) = ("ts", Check::Timestamp);
static TIER: Model = Model {
    fields: &[
        ("max_notional", Check::Decimal(MONEY, Sign::Positive)),
        ("mmr", Check::Decimal(RATE, Sign::Positive)),
        ("maint_amount", Check::OptionalDecimal(MONEY, Sign::NonNegative)),
    ],
};
static EXECUTION: Model = Model {
    fields: &[("qty", Check::Decimal(QTY, Sign::Positive)), ("price", Check::Decimal(PRICE, Sign::Positive))],
};
static FUND: Model = Model {
    fields: &[
        TYPE,
        TS,
        ("fund_id", Check::Text(IDENTIFIER)),
        ("settle_asset", Check::Text(ASSET)),
        ("surplus", Check::Literal(&["fund", "trader"])),
        ("max_inventory_ratio", Check::Decimal(RATE, Sign::NonNegative)),
    ],
};
static INSTRUMENT: Model = Model {
    fields: &[
        TYPE,
        TS,
        ("symbol", Check::Text(SYMBOL)),
        ("settle_asset", Check::Text(ASSET)),
        ("tick_size", Check::Decimal(PRICE, Sign::Positive)),
        ("lot_size", Check::Decimal(QTY, Sign::Positive)),
        ("tiers", Check::Tuple(&TIER, 1, 64)),
        ("liquidation_fee_rate", Check::Decimal(RATE, Sign::NonNegative)),
        ("fund_id", Check::Text(IDENTIFIER)),
        ("mark_tolerance", Check::OptionalDecimal(RATE, Sign::NonNegative)),
        ("contract_type", Check::OptionalLiteral(CONTRACT_TYPES)),
        ("contract_size", Check::OptionalDecimal(PRICE, Sign::Positive)),
    ],
};
static TRANSFER: Model = Model {
    fields: &[
        TYPE,
        TS,
        ("transfer_id", Check::Text(IDENTIFIER)),
        ("account_id", Check::Text(IDENTIFIER)),
        ("asset", Check::Text(ASSET)),
        ("amount", Check::Decimal(MONEY, Sign::Any)),
    ],
};
static FILL: Model = Model {
    fields: &[
        TYPE,
        TS,
        ("fill_id", Check::Text(IDENTIFIER)),
        ("account_id", Check::Text(IDENTIFIER)),
        ("symbol", Check::Text(SYMBOL)),
        ("side", Check::Literal(&["buy", "sell"])),
        ("qty", Check::Decimal(QTY, Sign::Positive)),
        ("price", Check::Decimal(PRICE, Sign::Positive)),
        ("fee", Check::Decimal(MONEY, Sign::Any)),
        ("margin_mode", Check::Literal(&["cross", "isolated"])),
        ("leverage", Check::Decimal(LEVERAGE, Sign::LeverageRange)),
        ("position_side", Check::OptionalLiteral(POSITION_SIDES)),
    ],
};
static MARK: Model = Model {
    fields: &[
        TYPE,
        TS,
        ("symbol", Check::Text(SYMBOL)),
        ("mark_price", Check::Decimal(PRICE, Sign::Positive)),
        ("index_price", Check::OptionalDecimal(PRICE, Sign::Positive)),
    ],
};
static FUNDING: Model = Model {
    fields: &[
        TYPE,
        TS,
        ("symbol", Check::Text(SYMBOL)),
        ("rate", Check::Decimal(RATE, Sign::Any)),
        ("mark_price", Check::Decimal(PRICE, Sign::Positive)),
    ],
};
static LIQUIDATION: Model = Model {
    fields: &[
        TYPE,
        TS,
        ("liquidation_id", Check::Text(IDENTIFIER)),
        ("account_id", Check::Text(IDENTIFIER)),
        ("symbol", Check::Text(SYMBOL)),
        ("qty", Check::Decimal(QTY, Sign::Positive)),
        ("mark_price", Check::Decimal(PRICE, Sign::Positive)),
        ("bankruptcy_price", Check::OptionalDecimal(PRICE, Sign::Positive)),
        ("executions", Check::OptionalTuple(&EXECUTION, 1024)),
        ("position_side", Check::OptionalLiteral(POSITION_SIDES)),
    ],
};

fn model_of(tag: &str) -> Option<&'static Model> {
    Some(match tag {
        "fund" => &FUND,
        "instrument" => &INSTRUMENT,
        "transfer" => &TRANSFER,
        "fill" => &FILL,
        "mark" => &MARK,
        "funding" => &FUNDING,
        "liquidation" => &LIQUIDATION,
        _ => return None,
    })
}

// ------------------------------------------------------------------------------------------------ reasons

/// Python's str[:40] of a string, quoted as orjson writes a string.
fn quote(text: &str) -> String {
    let cut = text.char_indices().nth(QUOTE_CHARS).map_or(text.len(), |(i, _)| i);
    let mut out = Vec::with_capacity(cut + 2);
    json::write_string(&mut out, &text[..cut]);
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

fn loc_part(text: &str) -> &str {
    &text[..text.char_indices().nth(QUOTE_CHARS).map_or(text.len(), |(i, _)| i)]
}

/// A field's location and what is wrong with it.
struct Error {
    loc: Vec<String>,
    message: String,
}

impl Error {
    fn at(name: &str, message: impl Into<String>) -> Error {
        Error { loc: vec![loc_part(name).to_string()], message: message.into() }
    }
    fn inside(mut self, outer: &str) -> Error {
        self.loc.insert(0, loc_part(outer).to_string());
        self
    }
    fn reason(&self) -> String {
        if self.loc.is_empty() { self.message.clone() } else { format!("{}: {}", self.loc.join("."), self.message) }
    }
}

fn json_kind(value: &Value<'_>) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(true) => "true",
        Value::Bool(false) => "false",
        Value::Int(_) | Value::Float => "a number",
        Value::Str(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn described(value: &Value<'_>) -> String {
    match value {
        Value::Str(text) => quote(text),
        other => json_kind(other).to_string(),
    }
}

// ------------------------------------------------------------------------------------------------ validation

/// A validated field value.
enum Field<'v, 'a> {
    Absent,
    Int(u64),
    Text(&'v Str<'a>),
    Choice(usize),
    Decimal(Dec, &'v str),
    Items(Vec<Vec<Field<'v, 'a>>>),
}

fn last<'v, 'a>(entries: &'v [(Cow<'a, str>, Value<'a>)], name: &str) -> Option<&'v Value<'a>> {
    entries.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value)
}

/// Most fields a model has.
const MAX_FIELDS: usize = 16;

fn validate_model<'v, 'a>(model: &Model, value: &'v Value<'a>) -> Result<Vec<Field<'v, 'a>>, Error> {
    let Value::Object(entries) = value else {
        return Err(Error { loc: vec![], message: "Input should be an object".into() });
    };
    // one pass over the entries: each key's field (the last entry of a duplicated key counts), or the first extra
    let mut slots: [Option<&'v Value<'a>>; MAX_FIELDS] = [None; MAX_FIELDS];
    for (key, entry) in entries {
        match model.fields.iter().position(|(name, _)| name.len() == key.len() && *name == key) {
            Some(index) => slots[index] = Some(entry),
            None => return Err(Error::at(key, "Extra inputs are not permitted")),
        }
    }
    let mut out = Vec::with_capacity(model.fields.len());
    for ((name, check), slot) in model.fields.iter().zip(slots) {
        let field = match slot {
            None => match check {
                Check::Tag | Check::OptionalDecimal(..) | Check::OptionalTuple(..) | Check::OptionalLiteral(..) => {
                    Field::Absent
                }
                _ => return Err(Error::at(name, "Field required")),
            },
            Some(value) => validate_field(check, value).map_err(|error| error.inside(name))?,
        };
        out.push(field);
    }
    Ok(out)
}

fn validate_field<'v, 'a>(check: &Check, value: &'v Value<'a>) -> Result<Field<'v, 'a>, Error> {
    let fail = |message: String| Err(Error { loc: vec![], message });
    match *check {
        Check::Tag => Ok(Field::Absent),
        Check::Timestamp => match value {
            Value::Int(text) => {
                let (negative, digits) = match text {
                    [b'-', rest @ ..] => (true, rest),
                    _ => (false, *text),
                };
                let zero = digits.iter().all(|&d| d == b'0');
                if negative && !zero {
                    return fail("Input should be greater than or equal to 0".into());
                }
                let parsed = if digits.len() > 16 {
                    None
                } else {
                    std::str::from_utf8(digits).ok().and_then(|t| t.parse::<u64>().ok())
                };
                match parsed {
                    Some(ts) if ts <= MAX_TIMESTAMP => Ok(Field::Int(ts)),
                    _ => fail(format!("Input should be less than or equal to {MAX_TIMESTAMP}")),
                }
            }
            _ => fail("Input should be a valid integer".into()),
        },
        Check::Text(rule) => {
            let Value::Str(text) = value else { return fail("Input should be a valid string".into()) };
            let chars = if text.is_ascii() { text.len() } else { text.chars().count() };
            if chars < 1 {
                return fail("String should have at least 1 character".into());
            }
            if chars > rule.max {
                return fail(format!("String should have at most {} characters", rule.max));
            }
            if !text.bytes().all(rule.allowed) {
                return fail(format!("String should match pattern '{}'", rule.pattern));
            }
            Ok(Field::Text(text))
        }
        Check::Literal(options) | Check::OptionalLiteral(options) => {
            if let Value::Str(text) = value {
                if let Some(index) = options.iter().position(|option| option == text) {
                    return Ok(Field::Choice(index));
                }
            }
            // pydantic: 'a' or 'b'; 'a', 'b' or 'c'
            let listed: Vec<String> = options.iter().map(|option| format!("'{option}'")).collect();
            let (last, first) = listed.split_last().expect("options");
            let shown = if first.is_empty() { last.clone() } else { format!("{} or {last}", first.join(", ")) };
            fail(format!("Input should be {shown}"))
        }
        Check::Decimal(kind, sign) | Check::OptionalDecimal(kind, sign) => {
            if matches!(check, Check::OptionalDecimal(..)) && *value == Value::Null {
                return Ok(Field::Absent);
            }
            decimal(value, kind, sign)
        }
        Check::Tuple(model, min, max) => tuple(value, model, min, max),
        Check::OptionalTuple(model, max) => tuple(value, model, 0, max),
    }
}

fn decimal<'v, 'a>(value: &'v Value<'a>, kind: Kind, sign: Sign) -> Result<Field<'v, 'a>, Error> {
    let fail = |message: String| Err(Error { loc: vec![], message });
    let Value::Str(text) = value else {
        return fail("a decimal must be a JSON string such as \"50000.5\"".into());
    };
    let plain = match numbers::plain(text.as_bytes()) {
        Ok(plain) => plain,
        Err(_) => return fail(format!("not an exact plain decimal: {}", quote(text))),
    };
    let scaled = match plain.scaled(kind) {
        Ok(scaled) => scaled,
        Err(_) => {
            return fail(format!("at most {} integer and {} fraction digits: {}", kind.integer_digits,
                                kind.fraction_digits, quote(text)))
        }
    };
    match sign {
        Sign::Positive if scaled <= 0 => return fail("must be > 0".into()),
        Sign::NonNegative if scaled < 0 => return fail("must be >= 0".into()),
        Sign::LeverageRange if !(1_000_000..=100_000_000_000).contains(&scaled) => {
            return fail("must be >= 0.01 and <= 1000".into())
        }
        _ => {}
    }
    Ok(Field::Decimal(Dec { value: scaled, places: plain.fraction.len() as u8 }, text))
}

fn tuple<'v, 'a>(value: &'v Value<'a>, model: &Model, min: usize, max: usize) -> Result<Field<'v, 'a>, Error> {
    let Value::Array(items) = value else {
        return Err(Error { loc: vec![], message: "Input should be a valid array".into() });
    };
    let mut valid = Vec::with_capacity(items.len().min(max));
    let mut first_error: Option<Error> = None;
    for (index, item) in items.iter().enumerate() {
        match validate_model(model, item) {
            Ok(fields) => {
                valid.push(fields);
                if valid.len() > max {
                    let message = format!("Tuple should have at most {max} items after validation, not {}",
                                          items.len());
                    return Err(Error { loc: vec![], message });
                }
            }
            Err(error) => {
                if first_error.is_none() {
                    first_error = Some(error.inside(&index.to_string()));
                }
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    if valid.len() < min {
        let noun = if min == 1 { "item" } else { "items" };
        let message = format!("Tuple should have at least {min} {noun} after validation, not {}", valid.len());
        return Err(Error { loc: vec![], message });
    }
    Ok(Field::Items(valid))
}

// ------------------------------------------------------------------------------------------------ records

fn text<'a>(field: &Field<'_, 'a>) -> Str<'a> {
    match field {
        Field::Text(text) => (*text).clone(),
        _ => unreachable!("validated as text"),
    }
}
fn dec(field: &Field) -> Dec {
    match field {
        Field::Decimal(dec, _) => *dec,
        _ => unreachable!("validated as a decimal"),
    }
}
fn optional_dec(field: &Field) -> Option<Dec> {
    match field {
        Field::Decimal(dec, _) => Some(*dec),
        _ => None,
    }
}
fn choice(field: &Field) -> usize {
    match field {
        Field::Choice(index) => *index,
        _ => unreachable!("validated as a literal"),
    }
}
/// An optional literal's option, its first (the default) when absent.
fn choice_or_default(field: &Field) -> usize {
    match field {
        Field::Choice(index) => *index,
        _ => 0,
    }
}
fn position_side(field: &Field) -> PositionSide {
    [PositionSide::Both, PositionSide::Long, PositionSide::Short][choice_or_default(field)]
}
fn items<'f, 'v, 'a>(field: &'f Field<'v, 'a>) -> &'f [Vec<Field<'v, 'a>>] {
    match field {
        Field::Items(items) => items,
        _ => &[],
    }
}

/// pydantic's model_dump_json: fields in order, decimals as Python's str(Decimal).
fn dump(model: &Model, tag: Option<&str>, fields: &[Field], out: &mut String) {
    out.push('{');
    for (index, ((name, _), field)) in model.fields.iter().zip(fields).enumerate() {
        if index > 0 {
            out.push(',');
        }
        write!(out, "\"{name}\":").expect("a String");
        match field {
            Field::Absent if *name == "type" => write!(out, "\"{}\"", tag.unwrap_or_default()).expect("a String"),
            Field::Absent if matches!(model.fields[index].1, Check::OptionalTuple(..)) => out.push_str("[]"),
            Field::Absent if matches!(model.fields[index].1, Check::OptionalLiteral(..)) => {
                let Check::OptionalLiteral(options) = model.fields[index].1 else { unreachable!() };
                write!(out, "\"{}\"", options[0]).expect("a String")
            }
            Field::Absent => out.push_str("null"),
            Field::Int(value) => write!(out, "{value}").expect("a String"),
            Field::Text(text) => write!(out, "\"{text}\"").expect("a String"),
            Field::Choice(_) => {
                let (Check::Literal(options) | Check::OptionalLiteral(options)) = model.fields[index].1 else {
                    unreachable!()
                };
                write!(out, "\"{}\"", options[choice(field)]).expect("a String")
            }
            Field::Decimal(_, text) => write!(out, "\"{}\"", decimal_str(text)).expect("a String"),
            Field::Items(items) => {
                let (Check::Tuple(inner, ..) | Check::OptionalTuple(inner, ..)) = model.fields[index].1 else {
                    unreachable!()
                };
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    dump(inner, None, item, out);
                }
                out.push(']');
            }
        }
    }
    out.push('}');
}

/// Python's str(Decimal(text)) for a plain decimal text: plain unless the exponent is positive or the number is
/// smaller than 1e-6, then scientific ("1E-7", "1.0E-7", "0E-7").
pub fn decimal_str(text: &str) -> String {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (integer, fraction) = rest.split_once('.').unwrap_or((rest, ""));
    let joined = format!("{integer}{fraction}");
    let coefficient = joined.trim_start_matches('0');
    let coefficient = if coefficient.is_empty() { "0" } else { coefficient };
    let exponent = -(fraction.len() as i64);
    let adjusted = exponent + coefficient.len() as i64 - 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if exponent <= 0 && adjusted >= -6 {
        if exponent == 0 {
            out.push_str(coefficient);
        } else {
            let places = (-exponent) as usize;
            if coefficient.len() > places {
                let (head, tail) = coefficient.split_at(coefficient.len() - places);
                write!(out, "{head}.{tail}").expect("a String");
            } else {
                write!(out, "0.{}{coefficient}", "0".repeat(places - coefficient.len())).expect("a String");
            }
        }
    } else {
        let (head, tail) = coefficient.split_at(1);
        out.push_str(head);
        if !tail.is_empty() {
            write!(out, ".{tail}").expect("a String");
        }
        write!(out, "E{}{}", if adjusted >= 0 { "+" } else { "-" }, adjusted.abs()).expect("a String");
    }
    out
}

fn build<'a>(tag: &str, f: Vec<Field<'_, 'a>>) -> Record<'a> {
    let ts = match f[1] {
        Field::Int(ts) => ts,
        _ => unreachable!("ts validated"),
    };
    let body = match tag {
        "fund" => Body::Fund {
            fund_id: text(&f[2]),
            settle_asset: text(&f[3]),
            surplus: if choice(&f[4]) == 0 { Surplus::Fund } else { Surplus::Trader },
            max_inventory_ratio: dec(&f[5]),
        },
        "instrument" => Body::Instrument {
            symbol: text(&f[2]),
            settle_asset: text(&f[3]),
            tick_size: dec(&f[4]),
            lot_size: dec(&f[5]),
            tiers: items(&f[6])
                .iter()
                .map(|t| Tier { max_notional: dec(&t[0]), mmr: dec(&t[1]), maint_amount: optional_dec(&t[2]) })
                .collect(),
            liquidation_fee_rate: dec(&f[7]),
            fund_id: text(&f[8]),
            mark_tolerance: optional_dec(&f[9]),
            contract_type: [ContractType::Linear, ContractType::Inverse][choice_or_default(&f[10])],
            contract_size: optional_dec(&f[11]),
        },
        "transfer" => Body::Transfer {
            transfer_id: text(&f[2]),
            account_id: text(&f[3]),
            asset: text(&f[4]),
            amount: dec(&f[5]),
        },
        "fill" => Body::Fill {
            fill_id: text(&f[2]),
            account_id: text(&f[3]),
            symbol: text(&f[4]),
            side: if choice(&f[5]) == 0 { Side::Buy } else { Side::Sell },
            qty: dec(&f[6]),
            price: dec(&f[7]),
            fee: dec(&f[8]),
            margin_mode: if choice(&f[9]) == 0 { MarginMode::Cross } else { MarginMode::Isolated },
            leverage: dec(&f[10]),
            position_side: position_side(&f[11]),
        },
        "mark" => Body::Mark { symbol: text(&f[2]), mark_price: dec(&f[3]), index_price: optional_dec(&f[4]) },
        "funding" => Body::Funding { symbol: text(&f[2]), rate: dec(&f[3]), mark_price: dec(&f[4]) },
        "liquidation" => Body::Liquidation {
            liquidation_id: text(&f[2]),
            account_id: text(&f[3]),
            symbol: text(&f[4]),
            qty: dec(&f[5]),
            mark_price: dec(&f[6]),
            bankruptcy_price: optional_dec(&f[7]),
            executions: items(&f[8]).iter().map(|e| Execution { qty: dec(&e[0]), price: dec(&e[1]) }).collect(),
            position_side: position_side(&f[9]),
        },
        _ => unreachable!("a known tag"),
    };
    Record { ts, body }
}

const TAG_LIST: &str = "'fund', 'instrument', 'transfer', 'fill', 'mark', 'funding', 'liquidation'";

fn validate_document<'v, 'a>(document: &'v Value<'a>, topic_type: Option<&str>)
                     -> Result<(&'static str, &'static Model, Vec<Field<'v, 'a>>), String> {
    let Value::Object(entries) = document else { return Err("Input should be an object".into()) };
    let tag: &str = match (last(entries, "type"), topic_type) {
        (None, Some(topic_type)) => topic_type,
        (None, None) => return Err("Unable to extract tag using discriminator 'type'".into()),
        (Some(Value::Str(tag)), _) if model_of(tag).is_some() => tag,
        (Some(other), None) => {
            return Err(format!("type: {} does not match any of the expected tags: {TAG_LIST}", described(other)))
        }
        (Some(_), Some(_)) => unreachable!("the topic's type was checked first"),
    };
    let tag = TYPES.into_iter().find(|known| *known == tag).expect("a known tag");
    let model = model_of(tag).expect("a known tag");
    let fields = validate_model(model, document).map_err(|error| error.inside(tag).reason())?;
    Ok((tag, model, fields))
}

/// The reason a record's JSON is refused (backstop.wire.decode).
fn refused(refusal: json::Refused) -> String {
    match refusal {
        json::Refused::Invalid => "invalid JSON".into(),
        json::Refused::RepeatedKey(key) => format!("duplicate key {}", quote(&key)),
    }
}

/// pydantic's model_dump_json of a valid journal line (tests compare it with the reference's).
pub fn line_dump(raw: &[u8]) -> Result<String, String> {
    if raw.len() > MAX_RECORD_BYTES {
        return Err(format!("record of {} bytes exceeds the limit of {MAX_RECORD_BYTES}", raw.len()));
    }
    let (document, _) = json::parse_record(raw, Dialect::File).map_err(refused)?;
    let (tag, model, fields) = validate_document(&document, None)?;
    let mut out = String::new();
    dump(model, Some(tag), &fields, &mut out);
    Ok(out)
}

/// A journal line (backstop.wire.decode.decode_record): the size limit, JSON, then the models.
pub fn decode_line(raw: &[u8]) -> Result<Record<'_>, String> {
    if raw.len() > MAX_RECORD_BYTES {
        return Err(format!("record of {} bytes exceeds the limit of {MAX_RECORD_BYTES}", raw.len()));
    }
    let (document, _) = json::parse_record(raw, Dialect::File).map_err(refused)?;
    let (tag, _, fields) = validate_document(&document, None)?;
    Ok(build(tag, fields))
}

/// A consumed value's event time as the service's merge orders it (backstop.pipeline.merge.event_time): its top-level
/// integer `ts` as orjson reads it (the last of duplicate keys), or -1 when it has none: no value, one over
/// MAX_RECORD_BYTES, not JSON orjson reads, not an object, a `ts` that is not an integer. Nothing is allocated but
/// the parse.
pub fn event_time(value: Option<&[u8]>) -> i128 {
    let Some(raw) = value.filter(|raw| !raw.is_empty() && raw.len() <= MAX_RECORD_BYTES) else { return -1 };
    let Ok((Value::Object(entries), _)) = json::parse_with_depth(raw, Dialect::Kafka) else { return -1 };
    match last(&entries, "ts") {
        // the Kafka dialect keeps as integers exactly orjson's: [-2^63, 2^64), which i128 holds
        Some(Value::Int(text)) => std::str::from_utf8(text).ok().and_then(|text| text.parse().ok()).unwrap_or(-1),
        _ => -1,
    }
}

/// A consumed Kafka value of the topic of `record_type` (backstop.pipeline.ingest.decode_consumed): the record and
/// its canonical JSON with its type (the journal payload).
pub fn decode_consumed<'a>(value: Option<&'a [u8]>, record_type: &str, topic: &str)
                           -> Result<(Record<'a>, Vec<u8>), String> {
    let mut payload = Vec::with_capacity(value.map_or(0, <[u8]>::len) + 16);
    let record = decode_consumed_into(value, record_type, topic, Some(&mut payload))?;
    Ok((record, payload))
}

/// `decode_consumed`'s record alone (what the service's identity lookup needs), its canonical JSON not written.
pub fn decode_consumed_record<'a>(value: Option<&'a [u8]>, record_type: &str, topic: &str)
                                  -> Result<Record<'a>, String> {
    decode_consumed_into(value, record_type, topic, None)
}

fn decode_consumed_into<'a>(value: Option<&'a [u8]>, record_type: &str, topic: &str, payload: Option<&mut Vec<u8>>)
                            -> Result<Record<'a>, String> {
    if model_of(record_type).is_none() {
        return Err(format!("not an input topic: {topic}"));
    }
    let raw = value.ok_or_else(|| "empty record (tombstone)".to_string())?;
    if raw.len() > MAX_RECORD_BYTES {
        return Err(format!("record of {} bytes exceeds the limit of {MAX_RECORD_BYTES}", raw.len()));
    }
    let (mut document, depth) = json::parse_record(raw, Dialect::Kafka).map_err(refused)?;
    let Value::Object(entries) = &mut document else { return Err("Input should be an object".into()) };
    match last(entries, "type") {
        None => {
            let at = entries.partition_point(|(key, _)| key.as_bytes() < b"type".as_slice());
            entries.insert(at, (Cow::Borrowed("type"), Value::Str(Cow::Owned(record_type.to_string()))));
        }
        Some(Value::Str(declared)) if declared == record_type => {}
        Some(other) => {
            return Err(format!("type: {} is not {record_type:?}, the type of the topic {topic}", described(other)))
        }
    }
    if depth > json::MAX_DEPTH {
        return Err("invalid JSON".into());
    }
    let (tag, _, fields) = validate_document(&document, Some(record_type))?;
    let record = build(tag, fields);
    if let Some(payload) = payload {
        write_canonical(&document, payload);
    }
    Ok(record)
}

/// Canonical JSON (orjson, sorted keys) of a valid record's document: strings, integers, null, arrays, objects.
fn write_canonical(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(text) => {
            let zero = text.iter().all(|&b| b == b'0' || b == b'-');
            out.extend_from_slice(if zero { b"0" } else { text })
        }
        Value::Float => unreachable!("a valid record holds no float"),
        Value::Str(text) => json::write_string(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(entries) => {
            out.push(b'{');
            for (index, (key, item)) in entries.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                json::write_string(out, key);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_sides_order_as_their_names_sort() {
        // the engine takes an account's first side in a symbol by this order (Engine::check_position_mode)
        let mut sides = [PositionSide::Short, PositionSide::Both, PositionSide::Long];
        sides.sort();
        let mut names = sides.map(PositionSide::name);
        names.sort();
        assert_eq!(sides.map(PositionSide::name), names);
    }

    const FILL_LINE: &str = r#"{"type":"fill","ts":1,"fill_id":"f1","account_id":"u1","symbol":"BTCUSDT","side":"buy","qty":"1.5","price":"50000.5","fee":"0","margin_mode":"cross","leverage":"10"}"#;

    fn reason(line: &str) -> String {
        decode_line(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_valid_fill() {
        let record = decode_line(FILL_LINE.as_bytes()).unwrap();
        assert_eq!(record.ts, 1);
        let Body::Fill { qty, price, side, .. } = record.body else { panic!() };
        assert_eq!((qty.value, price.value, side), (150_000_000, 5_000_050_000_000, Side::Buy));
    }

    #[test]
    fn reasons_are_the_first_error() {
        assert_eq!(reason("[1]"), "Input should be an object");
        assert_eq!(reason("{\"ts\":1}"), "Unable to extract tag using discriminator 'type'");
        assert!(reason("{\"type\":\"trade\"}").starts_with("type: \"trade\" does not match any"));
        assert!(reason("{\"type\":null}").starts_with("type: null does not match any"));
        assert_eq!(reason("{\"type\":\"fill\"}"), "fill.ts: Field required");
        assert_eq!(reason(&FILL_LINE.replace("\"ts\":1", "\"ts\":1.0")), "fill.ts: Input should be a valid integer");
        assert_eq!(reason(&FILL_LINE.replace("\"qty\":\"1.5\"", "\"qty\":\"5e4\"")),
                   "fill.qty: not an exact plain decimal: \"5e4\"");
        assert_eq!(reason(&FILL_LINE.replace("\"qty\":\"1.5\"", "\"qty\":\"-1\"")), "fill.qty: must be > 0");
        assert_eq!(reason(&FILL_LINE.replace("}", ",\"zz\":1}")), "fill.zz: Extra inputs are not permitted");
        assert_eq!(reason(&FILL_LINE.replace("\"side\":\"buy\"", "\"side\":1")),
                   "fill.side: Input should be 'buy' or 'sell'");
        assert_eq!(reason("{"), "invalid JSON");
    }

    #[test]
    fn decimal_str_is_pythons() {
        for (text, shown) in [("1.50", "1.50"), ("0.0000001", "1E-7"), ("0.00000010", "1.0E-7"), ("0.0000000", "0E-7"),
                              ("-0.000", "-0.000"), ("100", "100"), ("0.000001", "0.000001"), ("12.000000001", "12.000000001")] {
            assert_eq!(decimal_str(text), shown, "{text}");
        }
    }

    #[test]
    fn kafka_values_get_their_topics_type() {
        let raw = br#"{"ts":1,"symbol":"BTCUSDT","mark_price":"50000.0"}"#;
        let (record, payload) = decode_consumed(Some(raw), "mark", "backstop.marks").unwrap();
        assert_eq!(record.type_name(), "mark");
        assert_eq!(payload, br#"{"mark_price":"50000.0","symbol":"BTCUSDT","ts":1,"type":"mark"}"#);
        let wrong = decode_consumed(Some(br#"{"type":"fill"}"#), "mark", "backstop.marks").unwrap_err();
        assert_eq!(wrong, "type: \"fill\" is not \"mark\", the type of the topic backstop.marks");
    }
}
