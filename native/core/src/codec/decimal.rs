//! The digit domain of integer and numeric values: their canonical decimal text
//! (`-?[0-9]+(\.[0-9]+)?`) is what a content scan reads (a card number stored as a bigint is
//! still a card number), and operators rewrite digits into digits so that the result is a
//! number again:
//!
//! | operator | on the digits of a span (the whole value for a column rule) |
//! |---|---|
//! | `replace`, `redact` | every digit becomes `0` |
//! | `partial` | the first `keep_first` and last `keep_last` digits kept, the others `mask_char` if it is a digit, else `0` |
//! | `hash` | keyed digits ([`crate::mask::HashKey::shape`]): the same number gives the same digits in every format |
//! | `null` | the whole value becomes NULL |
//!
//! The sign and the decimal point are kept, then the result is made canonical (no leading
//! zeros, no negative zero); the caller fits it to its type.

use super::{findings, Cx};
use crate::mask::{Operator, Outcome};

/// Masks the canonical decimal `text`, appending the masked decimal (canonical, same number
/// of fraction digits) to `out` on [`Outcome::Written`].
pub(crate) fn mask_digits(text: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    let mut found = Vec::new();
    findings(cx, text, &mut found);
    if found.is_empty() {
        return Outcome::Unchanged;
    }
    let at = out.len();
    let mut pos = 0;
    for f in &found {
        out.extend_from_slice(&text[pos..f.start]);
        cx.tally.add(f.entity, 1);
        if !apply(f.operator, &text[f.start..f.end], out) {
            out.truncate(at);
            return Outcome::Null;
        }
        pos = f.end;
    }
    out.extend_from_slice(&text[pos..]);
    canonical(out, at);
    Outcome::Written
}

/// Appends `span` with its digits rewritten by `op` (other bytes kept); false for `null`.
fn apply(op: &Operator, span: &[u8], out: &mut Vec<u8>) -> bool {
    match op {
        Operator::Null => return false,
        Operator::Replace(_) | Operator::Redact => {
            out.extend(
                span.iter()
                    .map(|&c| if c.is_ascii_digit() { b'0' } else { c }),
            );
        }
        Operator::Partial {
            keep_first,
            keep_last,
            mask_char,
            ..
        } => {
            let fill = u8::try_from(*mask_char)
                .ok()
                .filter(u8::is_ascii_digit)
                .unwrap_or(b'0');
            let total = span.iter().filter(|c| c.is_ascii_digit()).count();
            let tail_from = total.saturating_sub(*keep_last);
            let mut k = 0;
            for &c in span {
                if c.is_ascii_digit() {
                    out.push(if k < *keep_first || k >= tail_from {
                        c
                    } else {
                        fill
                    });
                    k += 1;
                } else {
                    out.push(c);
                }
            }
        }
        // Digits to digits; '-' and '.' kept (a decimal has no letters).
        Operator::Hash(key) => key.shape(span, out),
    }
    true
}

/// Makes the decimal at `buf[at..]` canonical in place: leading zeros of the integer part
/// dropped (one kept before the point), and no sign on a zero value.
pub(crate) fn canonical(buf: &mut Vec<u8>, at: usize) {
    let neg = buf.get(at) == Some(&b'-');
    let digits_at = at + usize::from(neg);
    let int_end = buf[digits_at..]
        .iter()
        .position(|&c| c == b'.')
        .map_or(buf.len(), |p| digits_at + p);
    let zeros = buf[digits_at..int_end]
        .iter()
        .take_while(|&&c| c == b'0')
        .count()
        .min((int_end - digits_at).saturating_sub(1));
    buf.drain(digits_at..digits_at + zeros);
    if neg && buf[digits_at..].iter().all(|&c| c == b'0' || c == b'.') {
        buf.remove(at);
    }
}

/// Whether `text` is a canonical decimal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, not `-0...`.
pub(crate) fn is_canonical(text: &[u8]) -> bool {
    let body = text.strip_prefix(b"-").unwrap_or(text);
    let (int, frac) = match body.iter().position(|&c| c == b'.') {
        Some(p) => (&body[..p], Some(&body[p + 1..])),
        None => (body, None),
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(int) || (int.len() > 1 && int[0] == b'0') || frac.is_some_and(|f| !digits(f)) {
        return false;
    }
    let zero = int == b"0" && frac.is_none_or(|f| f.iter().all(|&c| c == b'0'));
    !(zero && text.first() == Some(&b'-'))
}
