//! Per-column views over a DataRow body (the postgres-protocol `DataRowRanges` design).
//!
//! A DataRow body is an Int16 column count, then per column an Int32 length (-1 for SQL NULL)
//! and that many bytes.  [`DataRowRanges`] yields, per column, `None` for NULL or the byte range
//! of the value within the body, so masking can rewrite values in place through `&mut [u8]`.
//! Malformed bodies give explicit errors, never a panic or a silent truncation.

use std::fmt;
use std::ops::Range;

/// A malformed DataRow body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataRowError {
    /// The body is shorter than the Int16 column count.
    MissingColumnCount,
    /// The body ends inside the Int32 length of `column`.
    TruncatedLength { column: u16 },
    /// `column` has a length below -1.
    InvalidLength { column: u16, len: i32 },
    /// `column`'s value runs past the end of the body.
    ValueOverrun { column: u16, len: i32 },
    /// Bytes left over after the last column.
    Leftover { bytes: usize },
}

impl fmt::Display for DataRowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MissingColumnCount => write!(f, "DataRow body has no column count"),
            Self::TruncatedLength { column } => {
                write!(f, "DataRow ends inside the length of column {column}")
            }
            Self::InvalidLength { column, len } => {
                write!(f, "DataRow column {column} has invalid length {len}")
            }
            Self::ValueOverrun { column, len } => {
                write!(
                    f,
                    "DataRow column {column} of length {len} overruns the message"
                )
            }
            Self::Leftover { bytes } => {
                write!(
                    f,
                    "DataRow has {bytes} bytes left over after the last column"
                )
            }
        }
    }
}

impl std::error::Error for DataRowError {}

/// Iterator over the columns of a DataRow body: `Ok(None)` for NULL, `Ok(Some(range))` for a
/// value (offsets into the body).  After the last column, leftover bytes are reported as an
/// error; after any error the iterator is exhausted.
#[derive(Debug, Clone)]
pub struct DataRowRanges<'a> {
    body: &'a [u8],
    pos: usize,
    column: u16,
    columns: u16,
    done: bool,
}

impl<'a> DataRowRanges<'a> {
    /// Starts over a DataRow body (the message without its tag and length).
    #[inline]
    pub fn new(body: &'a [u8]) -> Result<Self, DataRowError> {
        let Some(count) = body.first_chunk::<2>() else {
            return Err(DataRowError::MissingColumnCount);
        };
        Ok(DataRowRanges {
            body,
            pos: 2,
            column: 0,
            columns: u16::from_be_bytes(*count),
            done: false,
        })
    }

    /// The column count the row declares.
    #[inline]
    pub fn columns(&self) -> u16 {
        self.columns
    }

    #[inline]
    fn fail(&mut self, e: DataRowError) -> Option<Result<Option<Range<usize>>, DataRowError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl Iterator for DataRowRanges<'_> {
    type Item = Result<Option<Range<usize>>, DataRowError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let column = self.column;
        if column == self.columns {
            self.done = true;
            let left = self.body.len() - self.pos;
            return (left != 0).then_some(Err(DataRowError::Leftover { bytes: left }));
        }
        let Some(head) = self.body[self.pos..].first_chunk::<4>() else {
            return self.fail(DataRowError::TruncatedLength { column });
        };
        let len = i32::from_be_bytes(*head);
        let start = self.pos + 4;
        let range = match len {
            -1 => None,
            _ => {
                let Ok(n) = usize::try_from(len) else {
                    return self.fail(DataRowError::InvalidLength { column, len });
                };
                if n > self.body.len() - start {
                    return self.fail(DataRowError::ValueOverrun { column, len });
                }
                Some(start..start + n)
            }
        };
        self.pos = range.as_ref().map_or(start, |r| r.end);
        self.column += 1;
        Some(Ok(range))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let left = usize::from(self.columns - self.column);
        (0, Some(left + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(cols: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = u16::try_from(cols.len()).unwrap().to_be_bytes().to_vec();
        for c in cols {
            match c {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    fn collect(body: &[u8]) -> Vec<Result<Option<Range<usize>>, DataRowError>> {
        DataRowRanges::new(body).unwrap().collect()
    }

    #[test]
    fn values_nulls_and_empties() {
        let body = row(&[Some(b"abc"), None, Some(b""), Some(b"xy")]);
        let it = DataRowRanges::new(&body).unwrap();
        assert_eq!(it.columns(), 4);
        let cols: Vec<_> = it.map(Result::unwrap).collect();
        assert_eq!(cols, vec![Some(6..9), None, Some(17..17), Some(21..23)]);
        assert_eq!(&body[6..9], b"abc");
        assert_eq!(&body[21..23], b"xy");
        assert_eq!(collect(&row(&[])), vec![]);
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(
            DataRowRanges::new(&[0]).unwrap_err(),
            DataRowError::MissingColumnCount
        );
        // Count says 2, one column present.
        let mut body = row(&[Some(b"a")]);
        body[1] = 2;
        assert_eq!(
            collect(&body),
            vec![
                Ok(Some(6..7)),
                Err(DataRowError::TruncatedLength { column: 1 })
            ]
        );
        // Value longer than the body.
        let mut body = row(&[Some(b"abc")]);
        body.truncate(8);
        assert_eq!(
            collect(&body),
            vec![Err(DataRowError::ValueOverrun { column: 0, len: 3 })]
        );
        // Length below -1.
        let mut body = row(&[None]);
        body[2..6].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(
            collect(&body),
            vec![Err(DataRowError::InvalidLength { column: 0, len: -2 })]
        );
        // Leftover bytes.
        let mut body = row(&[None]);
        body.extend_from_slice(b"zz");
        assert_eq!(
            collect(&body),
            vec![Ok(None), Err(DataRowError::Leftover { bytes: 2 })]
        );
        assert!(DataRowError::Leftover { bytes: 2 }
            .to_string()
            .contains("left over"));
    }

    #[test]
    fn masks_in_place_through_ranges() {
        let mut body = row(&[Some(b"123-45-6789"), None]);
        let ranges: Vec<_> = DataRowRanges::new(&body)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for r in ranges.into_iter().flatten() {
            body[r].fill(b'*');
        }
        assert_eq!(body, row(&[Some(b"***********"), None]));
    }

    proptest! {
        #[test]
        fn roundtrip(cols in prop::collection::vec(
            prop::option::of(prop::collection::vec(any::<u8>(), 0..40)), 0..20)
        ) {
            let refs: Vec<Option<&[u8]>> = cols.iter().map(|c| c.as_deref()).collect();
            let body = row(&refs);
            let got: Vec<Option<Vec<u8>>> = DataRowRanges::new(&body).unwrap()
                .map(|r| r.unwrap().map(|r| body[r].to_vec()))
                .collect();
            prop_assert_eq!(got, cols);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(it) = DataRowRanges::new(&body) {
                for item in it {
                    if let Ok(Some(r)) = item {
                        prop_assert!(r.end <= body.len());
                    }
                }
            }
        }
    }
}
