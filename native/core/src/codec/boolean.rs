//! bool: one byte (0 / 1) in binary, `t` / `f` in text.  A content scan keeps it; under a
//! column rule `replace`, `redact` and `partial` give false, `hash` a keyed boolean, `null`
//! NULL.

use super::{invalid, rule, Cx, Format};
use crate::mask::{Operator, Outcome};

pub(super) fn mask(fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    let Some(f) = rule(cx) else {
        return Outcome::Unchanged;
    };
    let Some(b) = decode(fmt, value) else {
        return invalid(cx);
    };
    let m = match f.operator {
        Operator::Null => return Outcome::Null,
        Operator::Replace(_) | Operator::Redact | Operator::Partial { .. } => false,
        Operator::Hash(key) => key.below(b"bool", &[u8::from(b)], 2) == 1,
    };
    encode(m, fmt, out);
    Outcome::Written
}

pub(super) fn transcode(from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(b) = decode(from, value) else {
        return false;
    };
    encode(b, from.other(), out);
    true
}

fn decode(fmt: Format, value: &[u8]) -> Option<bool> {
    match (fmt, value) {
        (Format::Binary, [0]) | (Format::Text, b"f") => Some(false),
        (Format::Binary, [1]) | (Format::Text, b"t") => Some(true),
        _ => None,
    }
}

fn encode(b: bool, fmt: Format, out: &mut Vec<u8>) {
    out.push(match fmt {
        Format::Binary => u8::from(b),
        Format::Text if b => b't',
        Format::Text => b'f',
    });
}
