//! [`ColumnAction`]: what a plan does with one column, and applying it to one value.

use std::fmt;
use std::sync::Arc;

use crate::codec::{Codec, Cx, Format, Scratch};
use crate::mask::{Outcome, Tally, ValueMask};
use crate::rewrite::error::RewriteError;

/// What to do with the values of one result column.
#[derive(Clone)]
pub enum ColumnAction {
    /// Forward the value unchanged.
    Keep,
    /// Replace every non-NULL value with NULL (type-agnostic: right for any binary type).
    Null,
    /// The value's bytes are text (a text-like column in either format: text, varchar,
    /// bpchar, name, citext, enums): mask them.  The fast path: no decoding.
    Text(Arc<dyn ValueMask>),
    /// A binary-format jsonb value: one version byte, then text.  The text is masked, the
    /// version byte kept.  (In text and CSV COPY, jsonb is plain text: same as [`Text`].)
    /// The planner uses [`Typed`] with the jsonb codec instead, which also keeps the result
    /// valid JSON.
    ///
    /// [`Text`]: ColumnAction::Text
    /// [`Typed`]: ColumnAction::Typed
    Jsonb(Arc<dyn ValueMask>),
    /// A value of any other type (or one that must stay valid JSON): decoded, masked and
    /// encoded again by its type's [`Codec`] in the column's format, so that a masked value is
    /// still a value of the type.
    Typed(Arc<TypedColumn>),
}

/// A typed column: its type's codec, its format (in a DataRow or binary COPY; text and CSV
/// COPY values are always text) and its mask.
pub struct TypedColumn {
    pub codec: Arc<Codec>,
    pub format: Format,
    pub mask: Arc<dyn ValueMask>,
}

impl TypedColumn {
    pub fn new(codec: Arc<Codec>, format: Format, mask: Arc<dyn ValueMask>) -> Self {
        TypedColumn {
            codec,
            format,
            mask,
        }
    }

    /// Masks one value in `format`; on [`Outcome::Written`] it was appended to `out`.
    #[inline]
    fn mask(
        &self,
        format: Format,
        value: &[u8],
        out: &mut Vec<u8>,
        tally: &mut Tally,
        scratch: &mut Scratch,
    ) -> Outcome {
        let mut cx = Cx::new(&*self.mask, tally, scratch);
        self.codec.mask(format, value, &mut cx, out)
    }
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
            ColumnAction::Typed(t) => return write!(f, "Typed({} {:?})", t.codec, t.format),
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
    scratch: &mut Scratch,
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
        ColumnAction::Typed(t) => {
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            let outcome = t.mask(t.format, value, out, tally, scratch);
            return finish_field(outcome, at, value, out);
        }
    };
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend(prefix);
    let outcome = mask.mask_value(text, out, tally);
    finish_field(outcome, at, value, out)
}

/// Completes the field started at `at` (a length placeholder, then what the mask wrote).
#[inline]
fn finish_field(
    outcome: Outcome,
    at: usize,
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RewriteError> {
    match outcome {
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
    scratch: &mut Scratch,
) -> Outcome {
    match action {
        ColumnAction::Keep => Outcome::Unchanged,
        ColumnAction::Typed(t) => t.mask(Format::Text, value, out, tally, scratch),
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
