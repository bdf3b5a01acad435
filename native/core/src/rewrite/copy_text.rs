//! Text-format COPY rows: fields split on the delimiter, backslash escapes, a NULL marker
//! compared before de-escaping (as the server reads them), one row per line.

use crate::codec::Scratch;
use crate::mask::{Outcome, Tally};
use crate::rewrite::column::{mask_text, ColumnAction};
use crate::rewrite::error::RewriteError;

pub(crate) struct TextOptions<'a> {
    pub delimiter: u8,
    pub null: &'a [u8],
}

/// Rewrites every row of a text-format CopyData body (each row ends with `\n`, or `\r\n`),
/// appending them to `out`.  The first row is kept as it is while `header_pending`.
pub(crate) fn rewrite_text(
    body: &[u8],
    opts: &TextOptions<'_>,
    header_pending: &mut bool,
    columns: &[ColumnAction],
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
    (value, masked, scratch): (&mut Vec<u8>, &mut Vec<u8>, &mut Scratch),
) -> Result<(), RewriteError> {
    let mut rest = body;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(RewriteError::UnterminatedRow);
        };
        let (line, tail) = rest.split_at(nl + 1);
        rest = tail;
        if *header_pending {
            *header_pending = false;
            out.extend_from_slice(line);
            continue;
        }
        // The server escapes every CR in data, so a CR before the newline is the line end.
        let eol = if line.ends_with(b"\r\n") { 2 } else { 1 };
        let content = &line[..line.len() - eol];
        rewrite_row(
            content,
            opts,
            columns,
            out,
            tallies,
            (value, masked, scratch),
        )?;
        out.extend_from_slice(&line[line.len() - eol..]);
    }
    Ok(())
}

fn rewrite_row(
    content: &[u8],
    opts: &TextOptions<'_>,
    columns: &[ColumnAction],
    out: &mut Vec<u8>,
    tallies: &mut [Tally],
    (value, masked, scratch): (&mut Vec<u8>, &mut Vec<u8>, &mut Scratch),
) -> Result<(), RewriteError> {
    // A row of a zero-column result is an empty line.
    if columns.is_empty() && content.is_empty() {
        return Ok(());
    }
    let mut fields = Fields::new(content, opts.delimiter);
    let mut got = 0;
    for (i, raw) in fields.by_ref().enumerate() {
        got += 1;
        let (Some(action), Some(tally)) = (columns.get(i), tallies.get_mut(i)) else {
            continue; // counted, reported below
        };
        if i > 0 {
            out.push(opts.delimiter);
        }
        if action.is_keep() || raw == opts.null {
            out.extend_from_slice(raw);
            continue;
        }
        value.clear();
        unescape(raw, value);
        masked.clear();
        match mask_text(action, value, masked, tally, scratch) {
            Outcome::Unchanged => out.extend_from_slice(raw),
            Outcome::Null => out.extend_from_slice(opts.null),
            Outcome::Written => escape(masked, opts.delimiter, out),
        }
    }
    if got != columns.len() {
        return Err(RewriteError::ColumnCount {
            expected: columns.len(),
            got,
        });
    }
    Ok(())
}

/// The raw fields of a row: split on delimiters not preceded by an escaping backslash.
struct Fields<'a> {
    row: &'a [u8],
    pos: usize,
    delimiter: u8,
    done: bool,
}

impl<'a> Fields<'a> {
    fn new(row: &'a [u8], delimiter: u8) -> Self {
        Fields {
            row,
            pos: 0,
            delimiter,
            done: false,
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let start = self.pos;
        let mut i = start;
        while i < self.row.len() {
            match self.row[i] {
                b'\\' => i += 2,
                b if b == self.delimiter => {
                    self.pos = i + 1;
                    return Some(&self.row[start..i]);
                }
                _ => i += 1,
            }
        }
        self.done = true;
        Some(&self.row[start..])
    }
}

/// De-escapes a raw text-format field (as COPY FROM reads it) into `out`.
pub(crate) fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' || i == raw.len() {
            out.push(c);
            continue;
        }
        let e = raw[i];
        i += 1;
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                // As the server: the low byte of up to three octal digits.
                out.push(v.to_le_bytes()[0]);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u8;
                for _ in 0..2 {
                    match raw.get(i).and_then(|&d| char::from(d).to_digit(16)) {
                        Some(d) => {
                            // At most two hex digits: at most 0xff.
                            #[allow(clippy::cast_possible_truncation)]
                            let d = d as u8;
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v);
            }
            other => out.push(other),
        }
    }
}

/// Escapes a value for text-format COPY output, as the server does.
pub(crate) fn escape(value: &[u8], delimiter: u8, out: &mut Vec<u8>) {
    for &c in value {
        let escaped = match c {
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            0x0b => Some(b'v'),
            b'\\' => Some(b'\\'),
            c if c == delimiter => Some(c),
            _ => None,
        };
        match escaped {
            Some(e) => out.extend_from_slice(&[b'\\', e]),
            None => out.push(c),
        }
    }
}
