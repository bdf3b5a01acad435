//! [`Cx`]: what a codec masks with (the column's mask, its tally, reusable buffers).

use crate::mask::{Tally, ValueMask};

/// The masking context of one value.
pub struct Cx<'m> {
    /// What decides what is masked, and with which operator.
    pub mask: &'m dyn ValueMask,
    /// The column's counts per entity.
    pub tally: &'m mut Tally,
    /// Buffers reused across values (a masked value allocates only until they have grown).
    pub scratch: &'m mut Scratch,
    /// How deep in arrays and composites the value being masked is.
    pub(crate) depth: u8,
}

/// Deeper nesting than this (records in records..., which anonymous records allow to any
/// depth) is not followed: the value is masked to NULL, the stack stays bounded.
pub(crate) const MAX_NESTING: u8 = 32;

impl<'m> Cx<'m> {
    pub fn new(mask: &'m dyn ValueMask, tally: &'m mut Tally, scratch: &'m mut Scratch) -> Self {
        Cx {
            mask,
            tally,
            scratch,
            depth: 0,
        }
    }
}

/// A pool of byte buffers: [`Scratch::take`] one (empty), [`Scratch::put`] it back when done.
/// Nested values (an array of records of arrays...) take one each; they are kept across
/// values, so a steady stream of masked values allocates nothing.
#[derive(Debug, Default)]
pub struct Scratch {
    free: Vec<Vec<u8>>,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch::default()
    }

    /// An empty buffer.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    /// Gives `buf` back for reuse (cleared; very large ones are dropped, so one huge value
    /// does not pin its memory).
    pub fn put(&mut self, mut buf: Vec<u8>) {
        const KEEP: usize = 1 << 20;
        if buf.capacity() <= KEEP && self.free.len() < 16 {
            buf.clear();
            self.free.push(buf);
        }
    }
}
