//! [`Rewriter`]: the plan active on a server stream, with the tallies of what it masked.

use std::sync::Arc;

use crate::codec::Scratch;
use crate::header::HEADER_LEN;
use crate::mask::Tally;
use crate::rewrite::copy::{CopyPlan, CopyRewriter};
use crate::rewrite::error::RewriteError;
use crate::rewrite::row::{rewrite_datarow_with, RowPlan};
use crate::tags::backend::{COPY_DATA_TAG, DATA_ROW_TAG};

/// A result set's plan in use: DataRows through a [`RowPlan`], or one COPY's CopyData through
/// a [`CopyPlan`].
#[derive(Debug)]
pub enum Rewriter {
    Row {
        plan: Arc<RowPlan>,
        tallies: Vec<Tally>,
        scratch: Scratch,
    },
    Copy(CopyRewriter),
}

impl Rewriter {
    pub fn row(plan: Arc<RowPlan>) -> Self {
        Rewriter::Row {
            tallies: plan.new_tallies(),
            plan,
            scratch: Scratch::new(),
        }
    }

    pub fn copy(plan: Arc<CopyPlan>) -> Self {
        Rewriter::Copy(CopyRewriter::new(plan))
    }

    /// The message tag the plan rewrites: DataRow or CopyData.
    pub fn tag(&self) -> u8 {
        match self {
            Rewriter::Row { .. } => DATA_ROW_TAG,
            Rewriter::Copy(_) => COPY_DATA_TAG,
        }
    }

    /// True when the plan never changes a value (its rows need not be read).
    pub fn is_passthrough(&self) -> bool {
        match self {
            Rewriter::Row { plan, .. } => plan.is_passthrough(),
            Rewriter::Copy(c) => c.plan().is_passthrough(),
        }
    }

    /// Rewrites one whole message `frame` (tag, length, body) with the plan's tag, appending
    /// the new message to `out` (nothing on error).
    pub fn rewrite(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        debug_assert_eq!(frame.first(), Some(&self.tag()));
        let body = frame.get(HEADER_LEN..).unwrap_or_default();
        match self {
            Rewriter::Row {
                plan,
                tallies,
                scratch,
            } => rewrite_datarow_with(body, plan, out, tallies, scratch),
            Rewriter::Copy(c) => c.rewrite_copydata(body, out),
        }
    }

    /// Per-column counts of what was masked since the last [`Rewriter::drain_tallies`].
    pub fn tallies(&self) -> &[Tally] {
        match self {
            Rewriter::Row { tallies, .. } => tallies,
            Rewriter::Copy(c) => c.tallies(),
        }
    }

    /// Adds the counts into `sink` (grown to the column count) and resets them.
    pub fn drain_tallies(&mut self, sink: &mut Vec<Tally>) {
        let tallies = match self {
            Rewriter::Row { tallies, .. } => tallies.as_mut_slice(),
            Rewriter::Copy(c) => c.tallies_mut(),
        };
        if sink.len() < tallies.len() {
            sink.resize(tallies.len(), Tally::new());
        }
        for (s, t) in sink.iter_mut().zip(tallies.iter_mut()) {
            if !t.is_empty() {
                s.merge(t);
                t.clear();
            }
        }
    }
}
