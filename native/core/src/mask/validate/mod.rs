//! Validation in code of the candidates the combined regex finds: checksums, number ranges,
//! lengths and boundaries.  Each validator gets the whole value and a candidate span and
//! answers with the span to mask (possibly trimmed), or `None`.

pub mod card;
pub mod email;
pub mod iban;
pub mod ip;
pub mod phone;
pub mod phone_plan;
pub mod secret;
pub mod ssn;

/// A candidate span `[start, end)` in the value.
pub type Range = (usize, usize);
