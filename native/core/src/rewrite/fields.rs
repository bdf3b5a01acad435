//! The field list of a DataRow body and of a binary COPY tuple: Int16 count, then per field an
//! Int32 length (-1 for NULL) and that many bytes.

use crate::codec::Scratch;
use crate::datarow::DataRowError;
use crate::mask::Tally;
use crate::rewrite::column::{write_field, ColumnAction};
use crate::rewrite::error::RewriteError;

/// Rewrites the field list at the start of `bytes` through `columns`, appending the new list
/// (count and fields, lengths recomputed) to `out`.  Returns the bytes of `bytes` it covered;
/// what follows is the caller's.  `tallies` has one entry per column; `scratch` is working
/// space for typed values.
///
/// A count other than `columns.len()` or a field running past `bytes` is an error (`out` may
/// then hold a partial list: the caller truncates it).
pub fn rewrite_fields(
    bytes: &[u8],
    columns: &[ColumnAction],
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
    scratch: &mut Scratch,
) -> Result<usize, RewriteError> {
    debug_assert_eq!(columns.len(), tallies.len());
    let Some(count) = bytes.first_chunk::<2>() else {
        return Err(DataRowError::MissingColumnCount.into());
    };
    let got = usize::from(u16::from_be_bytes(*count));
    if got != columns.len() {
        return Err(RewriteError::ColumnCount {
            expected: columns.len(),
            got,
        });
    }
    out.extend_from_slice(count);
    let mut pos = 2;
    for (i, (action, tally)) in columns.iter().zip(tallies.iter_mut()).enumerate() {
        // `got` fits a u16, and so does every index below it.
        #[allow(clippy::cast_possible_truncation)]
        let column = i as u16;
        let Some(head) = bytes[pos..].first_chunk::<4>() else {
            return Err(DataRowError::TruncatedLength { column }.into());
        };
        let len = i32::from_be_bytes(*head);
        pos += 4;
        let value = if len == -1 {
            None
        } else {
            let Ok(n) = usize::try_from(len) else {
                return Err(DataRowError::InvalidLength { column, len }.into());
            };
            if n > bytes.len() - pos {
                return Err(DataRowError::ValueOverrun { column, len }.into());
            }
            pos += n;
            Some(&bytes[pos - n..pos])
        };
        write_field(action, i, value, out, tally, scratch)?;
    }
    Ok(pos)
}
