//! Rewriting result rows (DataRow, CopyData) through a column plan of [`crate::mask::ValueMask`]s.
//!
//! The control plane compiles one plan per result set (from RowDescription, or from the COPY
//! statement); the engine applies it to every row without building anything per row but the
//! output bytes.  Anything that does not parse, or does not have the plan's column count, is an
//! error: a row is never forwarded unmasked because the rewriter could not read it.
//!
//! - [`column`]: [`ColumnAction`], what to do with one column, and applying it to one value
//! - [`error`]: the [`RewriteError`] type
//! - [`fields`]: the Int16 count + (Int32 length, bytes) field list shared by DataRow and
//!   binary COPY tuples
//! - [`row`]: [`RowPlan`] and [`rewrite_datarow`]
//! - [`copy`]: [`CopyPlan`] and [`CopyRewriter`] (text, csv and binary COPY TO STDOUT rows), with
//!   one file per format: `copy_text`, `copy_csv`, `copy_binary`
//! - [`rewriter`]: [`Rewriter`], the active plan of a server stream (what the receive buffer holds)

pub mod column;
pub mod copy;
mod copy_binary;
mod copy_csv;
mod copy_text;
pub mod error;
pub mod fields;
pub mod rewriter;
pub mod row;

pub use column::{ColumnAction, TypedColumn};
pub use copy::{CopyFormat, CopyPlan, CopyRewriter};
pub use error::RewriteError;
pub use rewriter::Rewriter;
pub use row::{rewrite_datarow, rewrite_datarow_with, RowPlan};

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
