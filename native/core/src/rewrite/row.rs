//! [`RowPlan`] and [`rewrite_datarow`]: DataRow messages through a column plan.

use crate::codec::Scratch;
use crate::datarow::DataRowError;
use crate::header::HEADER_LEN;
use crate::mask::Tally;
use crate::rewrite::column::{int32_len, ColumnAction};
use crate::rewrite::error::RewriteError;
use crate::rewrite::fields::rewrite_fields;
use crate::tags::backend::DATA_ROW_TAG;

/// One action per column of a result set, in RowDescription order.
#[derive(Debug, Clone, Default)]
pub struct RowPlan {
    pub columns: Vec<ColumnAction>,
}

impl RowPlan {
    pub fn new(columns: Vec<ColumnAction>) -> Self {
        RowPlan { columns }
    }

    /// Number of columns a row must have.
    #[inline]
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// True when no column is ever changed: rows can be forwarded without being read.
    pub fn is_passthrough(&self) -> bool {
        self.columns.iter().all(ColumnAction::is_keep)
    }

    /// One empty tally per column.
    pub fn new_tallies(&self) -> Vec<Tally> {
        vec![Tally::new(); self.len()]
    }
}

/// Appends to `out` a whole DataRow message (tag, recomputed Int32 length, body) for the
/// DataRow body `body` (the message without tag and length) rewritten through `plan`.
/// `tallies` has one entry per plan column and counts what was masked.
///
/// A malformed body or a column count other than the plan's is an error, and then nothing is
/// appended to `out`.
pub fn rewrite_datarow(
    body: &[u8],
    plan: &RowPlan,
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
) -> Result<(), RewriteError> {
    rewrite_datarow_with(body, plan, out, tallies, &mut Scratch::new())
}

/// [`rewrite_datarow`] with working space for typed values that is kept across rows.
pub fn rewrite_datarow_with(
    body: &[u8],
    plan: &RowPlan,
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
    scratch: &mut Scratch,
) -> Result<(), RewriteError> {
    let start = out.len();
    let res = write_datarow(body, plan, out, tallies, scratch);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn write_datarow(
    body: &[u8],
    plan: &RowPlan,
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
    scratch: &mut Scratch,
) -> Result<(), RewriteError> {
    let start = out.len();
    out.reserve(HEADER_LEN + body.len());
    out.push(DATA_ROW_TAG);
    out.extend_from_slice(&[0; 4]);
    let used = rewrite_fields(body, &plan.columns, out, tallies, scratch)?;
    if used != body.len() {
        return Err(DataRowError::Leftover {
            bytes: body.len() - used,
        }
        .into());
    }
    let len = int32_len(out.len() - start - 1)?;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&len);
    Ok(())
}
