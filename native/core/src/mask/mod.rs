//! Masking: PII/secret detectors and masking operators over byte values.
//!
//! - [`value`]: the [`ValueMask`] contract the row rewriters use, [`Tally`], entity ids
//! - [`entity`]: the built-in entities ([`Builtin`], [`BUILTIN_ENTITIES`])
//! - [`candidates`]: the combined candidate automaton of the built-in detectors
//! - [`validate`]: checksums, ranges and boundaries that candidates must pass
//! - [`classify`]: byte-class bit masks of 64-byte blocks (SIMD) for the prefilter
//! - [`prefilter`]: where a candidate may start (the automaton runs anchored only there)
//! - [`fold`]: full-width forms folded to ASCII before the built-in detectors run
//! - [`boundary`]: token and word boundary checks (the regex has no look-around)
//! - [`scan`]: [`Span`] finders (built-ins, custom regexes, dictionaries) and overlap resolution
//! - [`json`]: JSON-aware masking (string leaves decoded and re-encoded, numbers stay numbers,
//!   path rules), [`JsonMasker`]
//! - [`operator`]: [`Operator`] (replace, redact, partial, hash, null); [`hash`]: the keyed hash
//! - [`masker`]: [`Masker`] and [`ColumnOperator`], the two [`ValueMask`] implementations

pub mod boundary;
pub mod candidates;
pub mod classify;
pub mod entity;
pub mod fold;
pub mod hash;
pub mod json;
pub mod masker;
pub mod operator;
pub mod prefilter;
pub mod scan;
pub mod validate;
pub mod value;

pub use entity::{Builtin, BUILTIN_ENTITIES};
pub use hash::HashKey;
pub use json::{JsonMasker, JsonPath};
pub use masker::{ColumnOperator, Masker, MaskerConfig, MaskerError};
pub use operator::Operator;
pub use scan::Span;
pub use value::{entity_id, entity_name, EntityId, Finding, Outcome, Tally, ValueMask};

#[cfg(test)]
mod tests;
