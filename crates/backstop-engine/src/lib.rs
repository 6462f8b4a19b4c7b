//! backstop's compiled engine: the rules of docs/design.md sections 4 to 7 on the fixed-point numbers of
//! section 9, byte-identical to the Python reference engine (`services/backstop/core`). No Python here: the
//! PyO3 skin lives in `crates/backstop-py`.

/// The engine's version, as the Python side reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod numbers;
pub mod json;
pub mod wire;
pub mod canonical;
pub mod content;
pub mod decode_stage;
pub mod held_ids;
pub mod idtable;
pub mod journal_copy;
pub mod kafka_batch;
pub mod clock;
pub mod admission;
pub mod adl;
pub mod adl_index;
pub mod appender;
pub mod engine;
pub mod ledger;
pub mod outbox;
pub mod output_files;
pub mod parallel;
pub mod posting;
pub mod processor;
pub mod projection;
pub mod quantiles;
pub mod relay_rows;
pub mod simulation;
pub mod state;
pub mod valuation;
