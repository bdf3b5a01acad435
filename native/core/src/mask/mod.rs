//! Masking: PII/secret detectors and masking operators over byte values.
//!
//! - [`value`]: the [`ValueMask`] contract the row rewriters use, [`Tally`], entity ids

pub mod value;

pub use value::{entity_id, entity_name, EntityId, Outcome, Tally, ValueMask};
