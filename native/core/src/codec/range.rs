//! Ranges and multiranges over a subtype that can carry a detectable entity (`textrange`,
//! ranges over a domain over text...).  Ranges over types that cannot (`int4range`,
//! `tstzrange`, a range over float...) are [`super::Codec::Other`]: kept by a content scan.
//!
//! Each bound is scanned with the subtype's codec; a range in which nothing is found is kept
//! byte for byte.  A masked range is the **empty range** of its type (text `empty`, binary the
//! flags byte `0x01`): masking a bound on its own could leave a lower bound above the upper
//! one, which is not a value of the type; `empty` always is.  A multirange drops each masked
//! range (an empty range is no part of a multirange), so what remains is still ordered and
//! disjoint.  Under a column rule a range is `empty` and a multirange `{}` (`null`: NULL).
//!
//! Binary (`range_send`): flags byte, then the lower and the upper bound (Int32 length and
//! bytes) when present (not empty, not infinite, not NULL).  Text (`range_out`): `empty`, or
//! `[` / `(`, lower, `,`, upper, `]` / `)`, a bound quoted with `"` (doubled or backslashed
//! inside) when needed, an absent bound empty.  A multirange: binary Int32 count then each
//! range as an Int32 length and its binary form; text `{` ranges separated by `,` `}`.

use super::{be_i32, invalid, nested, read_field, rule, Codec, Cx, Format};
use crate::mask::{Operator, Outcome};

const EMPTY: u8 = 0x01;
const LB_INF: u8 = 0x08;
const UB_INF: u8 = 0x10;
const LB_NULL: u8 = 0x20;
const UB_NULL: u8 = 0x40;

pub(super) fn mask(
    sub: &Codec,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    if let Some(f) = rule(cx) {
        if matches!(f.operator, Operator::Null) {
            return Outcome::Null;
        }
        if parse(fmt, value).is_none() {
            return invalid(cx);
        }
        write_empty(fmt, out);
        return Outcome::Written;
    }
    nested(cx, |cx| {
        let found = scan(sub, fmt, value, cx)?;
        if found {
            write_empty(fmt, out);
        }
        Some(found)
    })
}

pub(super) fn mask_multi(
    sub: &Codec,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    if let Some(f) = rule(cx) {
        if matches!(f.operator, Operator::Null) {
            return Outcome::Null;
        }
        if split_multi(fmt, value).is_none() {
            return invalid(cx);
        }
        write_multi(fmt, &[], out);
        return Outcome::Written;
    }
    nested(cx, |cx| {
        let ranges = split_multi(fmt, value)?;
        let mut kept = Vec::with_capacity(ranges.len());
        for r in &ranges {
            if !scan(sub, fmt, r, cx)? {
                kept.push(*r);
            }
        }
        if kept.len() == ranges.len() {
            return Some(false);
        }
        write_multi(fmt, &kept, out);
        Some(true)
    })
}

/// Whether the subtype's codec finds anything to mask in either bound of one range (counted);
/// `None` when it is not a range.
fn scan(sub: &Codec, fmt: Format, value: &[u8], cx: &mut Cx<'_>) -> Option<bool> {
    let bounds = parse(fmt, value)?;
    let mut buf = cx.scratch.take();
    let mut found = false;
    for b in bounds.into_iter().flatten() {
        buf.clear();
        if sub.mask(fmt, &b, cx, &mut buf) != Outcome::Unchanged {
            found = true;
        }
    }
    cx.scratch.put(buf);
    Some(found)
}

/// The bounds of one range (decoded: text bounds unquoted), `None` for each absent one;
/// `None` when `value` is not a range.
fn parse(fmt: Format, value: &[u8]) -> Option<[Option<Vec<u8>>; 2]> {
    match fmt {
        Format::Binary => parse_binary(value),
        Format::Text => parse_text(value),
    }
}

fn parse_binary(value: &[u8]) -> Option<[Option<Vec<u8>>; 2]> {
    let (&flags, rest) = value.split_first()?;
    if flags & EMPTY != 0 {
        return rest.is_empty().then_some([None, None]);
    }
    let mut pos = 1;
    let mut bound = |absent: bool| -> Option<Option<Vec<u8>>> {
        if absent {
            return Some(None);
        }
        let n = usize::try_from(be_i32(value, pos)?).ok()?;
        let b = value.get(pos + 4..pos + 4 + n)?.to_vec();
        pos += 4 + n;
        Some(Some(b))
    };
    let lower = bound(flags & (LB_INF | LB_NULL) != 0)?;
    let upper = bound(flags & (UB_INF | UB_NULL) != 0)?;
    (pos == value.len()).then_some([lower, upper])
}

fn parse_text(value: &[u8]) -> Option<[Option<Vec<u8>>; 2]> {
    if value == b"empty" {
        return Some([None, None]);
    }
    if !matches!(value.first(), Some(b'[' | b'(')) {
        return None;
    }
    let (lower, pos) = text_bound(value, 1, b',')?;
    let (upper, pos) = text_bound(value, pos + 1, b']')?;
    (pos + 1 == value.len()).then_some([lower, upper])
}

/// One text bound from `pos` up to `end` (or `)` for the upper bound) outside quotes: the
/// bound (`None` when absent) and the position of its terminator.
fn text_bound(value: &[u8], pos: usize, end: u8) -> Option<(Option<Vec<u8>>, usize)> {
    let mut field = Vec::new();
    let (pos, quoted) = read_field(value, pos, &mut field, |c| {
        if c == end || (end == b']' && c == b')') {
            Some(true)
        } else if matches!(c, b',' | b'[' | b'(' | b']' | b')') {
            None
        } else {
            Some(false)
        }
    })?;
    let absent = field.is_empty() && !quoted;
    Some(((!absent).then_some(field), pos))
}

/// The ranges of a multirange, each as the bytes of its own form (binary: without the length
/// word); `None` when `value` is not a multirange.
fn split_multi(fmt: Format, value: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    match fmt {
        Format::Binary => {
            let n = usize::try_from(be_i32(value, 0)?).ok()?;
            if n > value.len() / 5 {
                return None;
            }
            let mut pos = 4;
            for _ in 0..n {
                let len = usize::try_from(be_i32(value, pos)?).ok()?;
                out.push(value.get(pos + 4..pos + 4 + len)?);
                pos += 4 + len;
            }
            (pos == value.len()).then_some(out)
        }
        Format::Text => {
            let inner = value.strip_prefix(b"{")?.strip_suffix(b"}")?;
            let mut pos = 0;
            while pos < inner.len() {
                let start = pos;
                // up to the range's closing bracket outside quotes
                let mut in_quotes = false;
                loop {
                    let c = *inner.get(pos)?;
                    pos += 1;
                    match c {
                        b'\\' => pos += 1,
                        b'"' => in_quotes = !in_quotes, // a doubled quote toggles twice
                        b']' | b')' if !in_quotes => break,
                        _ => {}
                    }
                }
                out.push(&inner[start..pos]);
                match inner.get(pos) {
                    None => break,
                    Some(b',') => pos += 1,
                    Some(_) => return None,
                }
            }
            Some(out)
        }
    }
}

fn write_empty(fmt: Format, out: &mut Vec<u8>) {
    match fmt {
        Format::Binary => out.push(EMPTY),
        Format::Text => out.extend_from_slice(b"empty"),
    }
}

fn write_multi(fmt: Format, ranges: &[&[u8]], out: &mut Vec<u8>) {
    match fmt {
        Format::Binary => {
            // lengths fit: each was read from an Int32 of a value no larger
            let int32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX).to_be_bytes();
            out.extend_from_slice(&int32(ranges.len()));
            for r in ranges {
                out.extend_from_slice(&int32(r.len()));
                out.extend_from_slice(r);
            }
        }
        Format::Text => {
            out.push(b'{');
            for (i, r) in ranges.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(r);
            }
            out.push(b'}');
        }
    }
}
