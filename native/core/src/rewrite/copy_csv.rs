//! CSV-format COPY rows: quoted fields may hold delimiters, quotes (escaped) and newlines; an
//! unquoted field equal to the NULL string is NULL; a row ends at a newline outside quotes.

use std::ops::Range;

use crate::codec::Scratch;
use crate::mask::{Outcome, Tally};
use crate::rewrite::column::{mask_text, ColumnAction};
use crate::rewrite::error::RewriteError;

pub(crate) struct CsvOptions<'a> {
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
    pub null: &'a [u8],
}

/// One raw field of a row.
struct Field {
    raw: Range<usize>,
    quoted: bool,
}

/// How a field ended.
enum End {
    Delimiter,
    /// End of row; the line ending (`\n` or `\r\n`) spans this range.
    Row(Range<usize>),
}

impl CsvOptions<'_> {
    /// Scans the field at `pos`: returns it, how it ended and where the next one starts.
    fn scan(&self, body: &[u8], mut pos: usize) -> Result<(Field, End, usize), RewriteError> {
        let start = pos;
        let mut quoted = false;
        let mut in_quote = false;
        loop {
            let Some(&c) = body.get(pos) else {
                return Err(if in_quote {
                    RewriteError::UnterminatedQuote
                } else {
                    RewriteError::UnterminatedRow
                });
            };
            if in_quote {
                if c == self.escape
                    && body
                        .get(pos + 1)
                        .is_some_and(|&n| n == self.escape || n == self.quote)
                {
                    pos += 2;
                } else {
                    in_quote = c != self.quote;
                    pos += 1;
                }
                continue;
            }
            let raw = start..pos;
            if c == self.delimiter {
                return Ok((Field { raw, quoted }, End::Delimiter, pos + 1));
            }
            if c == b'\n' {
                return Ok((Field { raw, quoted }, End::Row(pos..pos + 1), pos + 1));
            }
            if c == b'\r' && body.get(pos + 1) == Some(&b'\n') {
                return Ok((Field { raw, quoted }, End::Row(pos..pos + 2), pos + 2));
            }
            if c == self.quote {
                quoted = true;
                in_quote = true;
            }
            pos += 1;
        }
    }

    /// The value of a raw field, quotes and escapes removed, into `out`.
    fn unquote(&self, raw: &[u8], out: &mut Vec<u8>) {
        let mut in_quote = false;
        let mut i = 0;
        while i < raw.len() {
            let c = raw[i];
            if in_quote
                && c == self.escape
                && raw
                    .get(i + 1)
                    .is_some_and(|&n| n == self.escape || n == self.quote)
            {
                out.push(raw[i + 1]);
                i += 2;
                continue;
            }
            if c == self.quote {
                in_quote = !in_quote;
            } else {
                out.push(c);
            }
            i += 1;
        }
    }

    /// Writes `value` as a CSV field: quoted when it must be (or `force`), as the server does.
    fn write(&self, value: &[u8], force: bool, single_column: bool, out: &mut Vec<u8>) {
        let must = force
            || value == self.null
            || (single_column && value == b"\\.")
            || value
                .iter()
                .any(|&c| c == self.delimiter || c == self.quote || c == b'\n' || c == b'\r');
        if !must {
            out.extend_from_slice(value);
            return;
        }
        out.push(self.quote);
        for &c in value {
            if c == self.quote || c == self.escape {
                out.push(self.escape);
            }
            out.push(c);
        }
        out.push(self.quote);
    }
}

/// Rewrites every row of a CSV-format CopyData body, appending them to `out`.  The first row
/// is kept as it is while `header_pending`.
pub(crate) fn rewrite_csv(
    body: &[u8],
    opts: &CsvOptions<'_>,
    header_pending: &mut bool,
    columns: &[ColumnAction],
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
    (value, masked, scratch): (&mut Vec<u8>, &mut Vec<u8>, &mut Scratch),
) -> Result<(), RewriteError> {
    let mut pos = 0;
    while pos < body.len() {
        let row_start = pos;
        // A row of a zero-column result is an empty line.
        if columns.is_empty() && !*header_pending {
            let rest = &body[pos..];
            let eol = [&b"\n"[..], b"\r\n"]
                .into_iter()
                .find(|e| rest.starts_with(e))
                .map_or(0, <[u8]>::len);
            if eol > 0 {
                out.extend_from_slice(&rest[..eol]);
                pos += eol;
                continue;
            }
        }
        let mut got = 0;
        loop {
            let (field, end, next) = opts.scan(body, pos)?;
            pos = next;
            if *header_pending {
                if let End::Row(_) = end {
                    *header_pending = false;
                    out.extend_from_slice(&body[row_start..pos]);
                    break;
                }
                continue;
            }
            let i = got;
            got += 1;
            if let (Some(action), Some(tally)) = (columns.get(i), tallies.get_mut(i)) {
                let raw = &body[field.raw.clone()];
                let is_null = !field.quoted && raw == opts.null;
                if action.is_keep() || is_null {
                    out.extend_from_slice(raw);
                } else {
                    value.clear();
                    opts.unquote(raw, value);
                    masked.clear();
                    match mask_text(action, value, masked, tally, scratch) {
                        Outcome::Unchanged => out.extend_from_slice(raw),
                        Outcome::Null => out.extend_from_slice(opts.null),
                        Outcome::Written => {
                            opts.write(masked, field.quoted, columns.len() == 1, out);
                        }
                    }
                }
            }
            match end {
                End::Delimiter => out.push(opts.delimiter),
                End::Row(eol) => {
                    if got != columns.len() {
                        return Err(RewriteError::ColumnCount {
                            expected: columns.len(),
                            got,
                        });
                    }
                    out.extend_from_slice(&body[eol]);
                    break;
                }
            }
        }
    }
    Ok(())
}
