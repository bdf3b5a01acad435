//! Text-likes (text, varchar, bpchar, name, citext, enums, domains over them): the binary
//! format is the text itself, so both formats are masked as text by the column's mask.
//! Also types the engine cannot read ([`super::Codec::Unknown`]).

use super::{findings, unknown_type, Cx, Format};
use crate::mask::Outcome;

pub(super) fn mask(value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    cx.mask.mask_value(value, out, cx.tally)
}

/// A value of a type the engine cannot read.  Binary: NULL (it cannot be looked into).
/// Text: a content scan keeps it when it finds nothing in the text; otherwise (or under a
/// column rule) NULL, since a masked text might not be a valid value of the type.
pub(super) fn mask_unknown(fmt: Format, value: &[u8], cx: &mut Cx<'_>) -> Outcome {
    if fmt == Format::Binary || cx.mask.whole().is_some() {
        cx.tally.add(unknown_type(), 1);
        return Outcome::Null;
    }
    let mut found = Vec::new();
    findings(cx, value, &mut found);
    if found.is_empty() {
        return Outcome::Unchanged;
    }
    for f in &found {
        cx.tally.add(f.entity, 1);
    }
    Outcome::Null
}
