//! [`ColumnAction`]: what a plan does with one column, and applying it to one value.

use std::fmt;
use std::sync::Arc;

use crate::mask::{Outcome, Tally, ValueMask};
use crate::rewrite::error::RewriteError;

/// What to do with the values of one result column.
#[derive(Clone)]
pub enum ColumnAction {
    /// Forward the value unchanged.
    Keep,
    /// Replace every non-NULL value with NULL (type-agnostic: right for any binary type).
    Null,
    /// The value's bytes are text (a text-format column, or a text-like binary one: text,
    /// varchar, bpchar, name, json): mask them.
    Text(Arc<dyn ValueMask>),
    /// A binary-format jsonb value: one version byte, then text.  The text is masked, the
    /// version byte kept.  (In text and CSV COPY, jsonb is plain text: same as [`Text`].)
    ///
    /// [`Text`]: ColumnAction::Text
    Jsonb(Arc<dyn ValueMask>),
}

impl ColumnAction {
    /// Whether this action never changes a value.
    #[inline]
    pub fn is_keep(&self) -> bool {
        matches!(self, ColumnAction::Keep)
    }
}

impl fmt::Debug for ColumnAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnAction::Keep => "Keep",
            ColumnAction::Null => "Null",
            ColumnAction::Text(_) => "Text",
            ColumnAction::Jsonb(_) => "Jsonb",
        })
    }
}

/// The Int32 length field for `n` bytes, or [`RewriteError::TooLong`].
#[inline]
pub(crate) fn int32_len(n: usize) -> Result<[u8; 4], RewriteError> {
    i32::try_from(n)
        .map(i32::to_be_bytes)
        .map_err(|_| RewriteError::TooLong)
}

const NULL_LEN: [u8; 4] = (-1i32).to_be_bytes();

/// Appends one protocol field (Int32 length, -1 for NULL, then the bytes) for `value` (`None`
/// for NULL, which stays NULL) of column `column`.
#[inline]
pub(crate) fn write_field(
    action: &ColumnAction,
    column: usize,
    value: Option<&[u8]>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Result<(), RewriteError> {
    let Some(value) = value else {
        out.extend_from_slice(&NULL_LEN);
        return Ok(());
    };
    let (mask, prefix, text) = match action {
        ColumnAction::Keep => {
            out.extend_from_slice(&int32_len(value.len())?);
            out.extend_from_slice(value);
            return Ok(());
        }
        ColumnAction::Null => {
            out.extend_from_slice(&NULL_LEN);
            return Ok(());
        }
        ColumnAction::Text(m) => (m, None, value),
        ColumnAction::Jsonb(m) => {
            let Some((&version, text)) = value.split_first() else {
                return Err(RewriteError::EmptyJsonb { column });
            };
            (m, Some(version), text)
        }
    };
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend(prefix);
    match mask.mask_value(text, out, tally) {
        Outcome::Written => {
            let len = int32_len(out.len() - at - 4)?;
            out[at..at + 4].copy_from_slice(&len);
        }
        Outcome::Unchanged => {
            out.truncate(at);
            out.extend_from_slice(&int32_len(value.len())?);
            out.extend_from_slice(value);
        }
        Outcome::Null => {
            out.truncate(at);
            out.extend_from_slice(&NULL_LEN);
        }
    }
    Ok(())
}

/// Masks one logical (de-escaped) text value for the text and CSV COPY formats, where jsonb
/// has no version byte.  On [`Outcome::Written`] the replacement is appended to `out`.
#[inline]
pub(crate) fn mask_text(
    action: &ColumnAction,
    value: &[u8],
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Outcome {
    match action {
        ColumnAction::Keep => Outcome::Unchanged,
        ColumnAction::Null => Outcome::Null,
        ColumnAction::Text(m) | ColumnAction::Jsonb(m) => {
            let at = out.len();
            let outcome = m.mask_value(value, out, tally);
            if outcome != Outcome::Written {
                // The contract says nothing was written; make sure of it.
                out.truncate(at);
            }
            outcome
        }
    }
}
