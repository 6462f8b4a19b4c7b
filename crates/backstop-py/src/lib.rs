//! The PyO3 module `backstop._engine`: a thin skin over `backstop_engine`. It converts at the boundary once per
//! batch, releases the GIL while a batch runs, and turns engine errors into typed Python exceptions.

use pyo3::prelude::*;

#[pymodule]
fn _engine(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("VERSION", backstop_engine::VERSION)?;
    Ok(())
}
