//! [`CopyPlan`] and [`CopyRewriter`]: `COPY ... TO STDOUT` CopyData rows through a column plan.
//!
//! The server sends one row per CopyData (text and CSV end each row with a newline; a CSV row
//! may hold newlines inside quotes).  Binary COPY puts the file header in front of the first
//! tuple and sends the trailer (Int16 -1) on its own.  The rewriter accepts any number of rows
//! per CopyData, so it does not depend on that, and keeps the per-COPY state (the header still
//! to come) itself: a [`CopyPlan`] can be shared and reused.

use std::sync::Arc;

use crate::codec::Scratch;
use crate::header::HEADER_LEN;
use crate::mask::Tally;
use crate::rewrite::column::{int32_len, ColumnAction};
use crate::rewrite::copy_binary::{rewrite_binary, BinaryState};
use crate::rewrite::copy_csv::{rewrite_csv, CsvOptions};
use crate::rewrite::copy_text::{rewrite_text, TextOptions};
use crate::rewrite::error::RewriteError;
use crate::tags::backend::COPY_DATA_TAG;

/// The COPY format and its options (as the COPY statement gave them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab (or `delimiter`) separated, backslash escapes, `null` (default `\N`) for NULL.
    Text {
        delimiter: u8,
        null: Vec<u8>,
        header: bool,
    },
    /// `delimiter` (default `,`) separated, `quote`d fields with `escape` before a quote or
    /// escape inside quotes, `null` (default empty, never quoted) for NULL.
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        header: bool,
    },
    /// The binary file format: header, tuples like DataRow, Int16 -1 trailer.
    Binary,
}

impl CopyFormat {
    /// Text format with PostgreSQL's defaults.
    pub fn text() -> Self {
        CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            header: false,
        }
    }

    /// CSV format with PostgreSQL's defaults.
    pub fn csv() -> Self {
        CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: false,
        }
    }

    /// Checks the options the way the server does, so that a plan never misreads a row.
    pub fn validate(&self) -> Result<(), &'static str> {
        let bad_null = |null: &[u8]| null.iter().any(|&b| b == b'\n' || b == b'\r');
        match self {
            CopyFormat::Text {
                delimiter, null, ..
            } => {
                // As the server: these would read as escapes (`\n`, `\123`) or end markers.
                if matches!(delimiter, b'\\' | b'\n' | b'\r' | b'.' | b'a'..=b'z' | b'0'..=b'9')
                    || !delimiter.is_ascii()
                {
                    return Err("COPY delimiter cannot be a newline, carriage return, backslash, period, lowercase letter or digit in text format");
                }
                if bad_null(null) {
                    return Err("COPY null representation cannot use newline or carriage return");
                }
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                if matches!(delimiter, b'\n' | b'\r') || !delimiter.is_ascii() {
                    return Err("COPY delimiter must be one ASCII character other than newline or carriage return");
                }
                if !quote.is_ascii() || !escape.is_ascii() || matches!(quote, b'\n' | b'\r') {
                    return Err("COPY quote and escape must be one ASCII character each");
                }
                if delimiter == quote {
                    return Err("COPY delimiter and quote must be different");
                }
                if bad_null(null) {
                    return Err("COPY null representation cannot use newline or carriage return");
                }
            }
            CopyFormat::Binary => {}
        }
        Ok(())
    }

    /// Whether the first row is a header line (kept as it is).
    pub fn has_header(&self) -> bool {
        match self {
            CopyFormat::Text { header, .. } | CopyFormat::Csv { header, .. } => *header,
            CopyFormat::Binary => false,
        }
    }
}

/// The plan of one COPY TO STDOUT: its format and one action per column.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    pub format: CopyFormat,
    pub columns: Vec<ColumnAction>,
}

impl CopyPlan {
    /// A plan, after checking the format options.
    pub fn new(format: CopyFormat, columns: Vec<ColumnAction>) -> Result<Self, &'static str> {
        format.validate()?;
        Ok(CopyPlan { format, columns })
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// True when no column is ever changed.
    pub fn is_passthrough(&self) -> bool {
        self.columns.iter().all(ColumnAction::is_keep)
    }
}

/// One COPY's progress through a [`CopyPlan`]: the header still to come, the tallies.
#[derive(Debug)]
pub struct CopyRewriter {
    plan: Arc<CopyPlan>,
    header_pending: bool,
    binary: BinaryState,
    tallies: Vec<Tally>,
    /// Reused per value: the de-escaped field, the masker's output.
    value: Vec<u8>,
    masked: Vec<u8>,
    scratch: Scratch,
}

impl CopyRewriter {
    pub fn new(plan: Arc<CopyPlan>) -> Self {
        CopyRewriter {
            header_pending: plan.format.has_header(),
            binary: BinaryState::Header,
            tallies: vec![Tally::new(); plan.len()],
            plan,
            value: Vec::new(),
            masked: Vec::new(),
            scratch: Scratch::new(),
        }
    }

    pub fn plan(&self) -> &Arc<CopyPlan> {
        &self.plan
    }

    /// Per-column counts of what was masked so far.
    pub fn tallies(&self) -> &[Tally] {
        &self.tallies
    }

    pub fn tallies_mut(&mut self) -> &mut [Tally] {
        &mut self.tallies
    }

    /// Appends to `out` a whole CopyData message (tag, recomputed length, body) for the
    /// CopyData body `body` rewritten through the plan.  On error nothing is appended and the
    /// rewriter's position (header seen or not) is unchanged.
    pub fn rewrite_copydata(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let start = out.len();
        let (mut header_pending, mut binary) = (self.header_pending, self.binary);
        let res = self.write_copydata(body, out, &mut header_pending, &mut binary);
        match res {
            Ok(()) => {
                (self.header_pending, self.binary) = (header_pending, binary);
            }
            Err(_) => out.truncate(start),
        }
        res
    }

    fn write_copydata(
        &mut self,
        body: &[u8],
        out: &mut Vec<u8>,
        header_pending: &mut bool,
        binary: &mut BinaryState,
    ) -> Result<(), RewriteError> {
        let start = out.len();
        out.reserve(HEADER_LEN + body.len());
        out.push(COPY_DATA_TAG);
        out.extend_from_slice(&[0; 4]);
        let plan = &*self.plan;
        match &plan.format {
            CopyFormat::Text {
                delimiter, null, ..
            } => {
                let opts = TextOptions {
                    delimiter: *delimiter,
                    null,
                };
                rewrite_text(
                    body,
                    &opts,
                    header_pending,
                    &plan.columns,
                    out,
                    &mut self.tallies,
                    (&mut self.value, &mut self.masked, &mut self.scratch),
                )?;
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                let opts = CsvOptions {
                    delimiter: *delimiter,
                    quote: *quote,
                    escape: *escape,
                    null,
                };
                rewrite_csv(
                    body,
                    &opts,
                    header_pending,
                    &plan.columns,
                    out,
                    &mut self.tallies,
                    (&mut self.value, &mut self.masked, &mut self.scratch),
                )?;
            }
            CopyFormat::Binary => {
                rewrite_binary(
                    body,
                    binary,
                    &plan.columns,
                    out,
                    &mut self.tallies,
                    &mut self.scratch,
                )?;
            }
        }
        let len = int32_len(out.len() - start - 1)?;
        out[start + 1..start + HEADER_LEN].copy_from_slice(&len);
        Ok(())
    }
}
