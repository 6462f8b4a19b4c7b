//! The PyO3 module `backstop._engine`: a thin skin over `backstop_engine`. It converts at the boundary once per
//! batch, releases the GIL while a batch runs, and turns engine errors into typed Python exceptions.

use backstop_engine::{canonical, json, numbers, wire};
use ethnum::I256;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

fn wide(value: &str) -> PyResult<I256> {
    I256::from_str_radix(value, 10).map_err(|_| PyValueError::new_err(format!("not a 256-bit integer: {value}")))
}

fn rounding(name: &str) -> PyResult<numbers::Rounding> {
    match name {
        "HALF_EVEN" => Ok(numbers::Rounding::HalfEven),
        "CEILING" => Ok(numbers::Rounding::Ceiling),
        "FLOOR" => Ok(numbers::Rounding::Floor),
        _ => Err(PyValueError::new_err(format!("unknown rounding {name}"))),
    }
}

fn kind(name: &str) -> PyResult<numbers::Kind> {
    [numbers::QTY, numbers::PRICE, numbers::MONEY, numbers::RATE, numbers::LEVERAGE]
        .into_iter()
        .find(|kind| kind.name == name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown kind {name}")))
}

/// The canonical text of value x 10^-scale (value: a decimal integer string of at most 256 bits).
#[pyfunction]
fn numbers_text(value: &str, scale: u32) -> PyResult<String> {
    Ok(numbers::text_wide(wide(value)?, scale))
}

/// Wire text of a kind to its scaled integer (as a string); ValueError "syntax" or "bounds".
#[pyfunction]
fn numbers_parse(text: &str, kind_name: &str) -> PyResult<String> {
    numbers::parse(text.as_bytes(), kind(kind_name)?)
        .map(|value| value.to_string())
        .map_err(|error| PyValueError::new_err(format!("{error:?}").to_lowercase()))
}

/// numerator / denominator rounded once (HALF_EVEN, CEILING or FLOOR), integers as decimal strings.
#[pyfunction]
fn numbers_div(numerator: &str, denominator: &str, rounding_name: &str) -> PyResult<String> {
    let denominator = wide(denominator)?;
    if denominator == 0 {
        return Err(PyValueError::new_err("division by zero"));
    }
    Ok(numbers::div_round(wide(numerator)?, denominator, rounding(rounding_name)?).to_string())
}

/// A journal line through the compiled wire layer: (True, pydantic's model_dump_json) or (False, the reason).
#[pyfunction]
fn wire_decode_line(raw: &[u8]) -> (bool, String) {
    match wire::line_dump(raw) {
        Ok(dump) => (true, dump),
        Err(reason) => (false, reason),
    }
}

/// A consumed Kafka value: (True, the journal payload) or (False, the reason as bytes).
#[pyfunction]
fn wire_decode_consumed<'py>(py: Python<'py>, value: Option<&[u8]>, record_type: &str, topic: &str)
                             -> (bool, Bound<'py, PyBytes>) {
    match wire::decode_consumed(value, record_type, topic) {
        Ok((_, payload)) => (true, PyBytes::new(py, &payload)),
        Err(reason) => (false, PyBytes::new(py, reason.as_bytes())),
    }
}

fn parsed_json(raw: &[u8]) -> PyResult<json::Value<'_>> {
    json::parse(raw, json::Dialect::File).map_err(|_| PyValueError::new_err("invalid JSON"))
}

/// A JSON document written again canonically (compact, or orjson's indent of 2): tests compare it with orjson's.
#[pyfunction]
fn canonical_reencode<'py>(py: Python<'py>, raw: &[u8], pretty: bool) -> PyResult<Bound<'py, PyBytes>> {
    let document = parsed_json(raw)?;
    let value = canonical::from_json(&document).ok_or_else(|| PyValueError::new_err("a float"))?;
    let mut out = Vec::new();
    if pretty {
        canonical::write_pretty(&mut out, &value, 0);
    } else {
        canonical::write(&mut out, &value);
    }
    Ok(PyBytes::new(py, &out))
}

/// The chain hash of an output record written as JSON (its canonical JSON without `hash`).
#[pyfunction]
fn canonical_chain_hash(raw: &[u8]) -> PyResult<String> {
    let document = parsed_json(raw)?;
    let value = canonical::from_json(&document).ok_or_else(|| PyValueError::new_err("a float"))?;
    Ok(canonical::chain_hash_of(&value))
}

#[pymodule]
fn _engine(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("VERSION", backstop_engine::VERSION)?;
    module.add_function(wrap_pyfunction!(numbers_text, module)?)?;
    module.add_function(wrap_pyfunction!(numbers_parse, module)?)?;
    module.add_function(wrap_pyfunction!(numbers_div, module)?)?;
    module.add_function(wrap_pyfunction!(wire_decode_line, module)?)?;
    module.add_function(wrap_pyfunction!(wire_decode_consumed, module)?)?;
    module.add_function(wrap_pyfunction!(canonical_reencode, module)?)?;
    module.add_function(wrap_pyfunction!(canonical_chain_hash, module)?)?;
    Ok(())
}
