//! The one error type of row rewriting.  Every variant means "this row cannot be proven masked":
//! the caller must not forward it (and closes the session).

use std::fmt;

use crate::datarow::DataRowError;

/// A row the rewriter refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RewriteError {
    /// A DataRow (or binary COPY tuple) that does not parse.
    Malformed(DataRowError),
    /// A row with another column count than the plan.
    ColumnCount { expected: usize, got: usize },
    /// A masked value or row too long for an Int32 length.
    TooLong,
    /// A binary jsonb value without its version byte.
    EmptyJsonb { column: usize },
    /// A text or CSV CopyData that does not end with a newline.
    UnterminatedRow,
    /// A CSV row that ends inside a quoted field.
    UnterminatedQuote,
    /// The binary COPY header is missing, cut short or unsupported.
    BadCopyHeader(&'static str),
    /// Bytes after the binary COPY trailer.
    AfterTrailer,
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "cannot mask a malformed row: {e}"),
            Self::ColumnCount { expected, got } => write!(
                f,
                "row has {got} columns but the masking plan has {expected}"
            ),
            Self::TooLong => write!(f, "masked row too long for the protocol"),
            Self::EmptyJsonb { column } => {
                write!(
                    f,
                    "binary jsonb value of column {column} has no version byte"
                )
            }
            Self::UnterminatedRow => write!(f, "COPY row does not end with a newline"),
            Self::UnterminatedQuote => write!(f, "CSV COPY row ends inside a quoted field"),
            Self::BadCopyHeader(why) => write!(f, "binary COPY header: {why}"),
            Self::AfterTrailer => write!(f, "binary COPY data after the trailer"),
        }
    }
}

impl std::error::Error for RewriteError {}

impl From<DataRowError> for RewriteError {
    fn from(e: DataRowError) -> Self {
        RewriteError::Malformed(e)
    }
}
