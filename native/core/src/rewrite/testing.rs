//! Test value masks (the real detectors and operators live in [`crate::mask`]).

use std::sync::Arc;

use crate::mask::{entity_id, Outcome, Tally, ValueMask};
use crate::rewrite::column::ColumnAction;

/// Uppercases ASCII letters; counts one `TEST_UPPER` per value it changed.
pub(crate) struct Upper;

impl ValueMask for Upper {
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        if !value.iter().any(u8::is_ascii_lowercase) {
            return Outcome::Unchanged;
        }
        out.extend(value.iter().map(u8::to_ascii_uppercase));
        tally.add(entity_id("TEST_UPPER"), 1);
        Outcome::Written
    }
}

/// Every value becomes NULL.
pub(crate) struct Nuller;

impl ValueMask for Nuller {
    fn mask_value(&self, _: &[u8], _: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        tally.add(entity_id("TEST_NULL"), 1);
        Outcome::Null
    }
}

/// Wraps the value in characters every COPY format must escape or quote:
/// `<` + value + `\t,"\n\r\\|>`.
pub(crate) struct Lengthen;

pub(crate) const LENGTHEN_SUFFIX: &[u8] = b"\t,\"\n\r\\|>";

impl ValueMask for Lengthen {
    fn mask_value(&self, value: &[u8], out: &mut Vec<u8>, tally: &mut Tally) -> Outcome {
        out.push(b'<');
        out.extend_from_slice(value);
        out.extend_from_slice(LENGTHEN_SUFFIX);
        tally.add(entity_id("TEST_LONG"), 1);
        Outcome::Written
    }
}

/// What [`Lengthen`] makes of `value`.
pub(crate) fn lengthened(value: &[u8]) -> Vec<u8> {
    let mut v = vec![b'<'];
    v.extend_from_slice(value);
    v.extend_from_slice(LENGTHEN_SUFFIX);
    v
}

pub(crate) fn upper() -> ColumnAction {
    ColumnAction::Text(Arc::new(Upper))
}

pub(crate) fn nuller() -> ColumnAction {
    ColumnAction::Text(Arc::new(Nuller))
}

pub(crate) fn lengthen() -> ColumnAction {
    ColumnAction::Text(Arc::new(Lengthen))
}

/// A whole message.
pub(crate) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A field list (Int16 count, Int32 length + bytes per field): a DataRow body.
pub(crate) fn fields(cols: &[Option<&[u8]>]) -> Vec<u8> {
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

/// Parses a field list back (for assertions).
pub(crate) fn parse_fields(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    crate::DataRowRanges::new(body)
        .unwrap()
        .map(|r| r.unwrap().map(|r| body[r].to_vec()))
        .collect()
}
