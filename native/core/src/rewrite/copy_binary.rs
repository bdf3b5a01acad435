//! Binary-format COPY: an 11-byte signature, Int32 flags, Int32 header extension length and
//! the extension, then tuples (Int16 field count, fields as in DataRow), then Int16 -1.

use crate::codec::Scratch;
use crate::datarow::DataRowError;
use crate::mask::Tally;
use crate::rewrite::column::ColumnAction;
use crate::rewrite::error::RewriteError;
use crate::rewrite::fields::rewrite_fields;

/// The file signature every binary COPY starts with.
pub(crate) const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Signature, flags and extension length.
const FIXED_HEADER: usize = 19;

/// Where a binary COPY stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryState {
    /// The file header has not been seen yet (it comes in front of the first tuple).
    Header,
    Tuples,
    /// The trailer was seen: nothing may follow.
    Done,
}

/// The length of the file header at the start of `body`.
fn header_len(body: &[u8]) -> Result<usize, RewriteError> {
    let Some(fixed) = body.first_chunk::<FIXED_HEADER>() else {
        return Err(RewriteError::BadCopyHeader("cut short"));
    };
    if &fixed[..11] != SIGNATURE {
        return Err(RewriteError::BadCopyHeader("bad signature"));
    }
    let flags = u32::from_be_bytes([fixed[11], fixed[12], fixed[13], fixed[14]]);
    // Bits 16-31 are critical format changes (bit 16: a row OID in front of every tuple):
    // a reader must stop at any it does not know.
    if flags & 0xffff_0000 != 0 {
        return Err(RewriteError::BadCopyHeader("unsupported critical flags"));
    }
    let ext = i32::from_be_bytes([fixed[15], fixed[16], fixed[17], fixed[18]]);
    let Ok(ext) = usize::try_from(ext) else {
        return Err(RewriteError::BadCopyHeader("negative extension length"));
    };
    if ext > body.len() - FIXED_HEADER {
        return Err(RewriteError::BadCopyHeader("cut short"));
    }
    Ok(FIXED_HEADER + ext)
}

/// Rewrites the header (kept), tuples and trailer (kept) of one binary CopyData body, appending
/// them to `out`.
pub(crate) fn rewrite_binary(
    body: &[u8],
    state: &mut BinaryState,
    columns: &[ColumnAction],
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
    scratch: &mut Scratch,
) -> Result<(), RewriteError> {
    let mut pos = 0;
    if *state == BinaryState::Header {
        pos = header_len(body)?;
        out.extend_from_slice(&body[..pos]);
        *state = BinaryState::Tuples;
    }
    while pos < body.len() {
        if *state == BinaryState::Done {
            return Err(RewriteError::AfterTrailer);
        }
        let Some(count) = body[pos..].first_chunk::<2>() else {
            return Err(DataRowError::MissingColumnCount.into());
        };
        if i16::from_be_bytes(*count) == -1 {
            out.extend_from_slice(count);
            pos += 2;
            *state = BinaryState::Done;
            continue;
        }
        pos += rewrite_fields(&body[pos..], columns, out, tallies, scratch)?;
    }
    Ok(())
}
