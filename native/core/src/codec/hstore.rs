//! `hstore` (the extension: no fixed OID, the control plane names it by its type name): each
//! key and each value is masked as text, so a masked hstore is an hstore.
//!
//! Binary (`hstore_send`): Int32 pair count, then per pair the key (Int32 length and bytes)
//! and the value (Int32 length, -1 for NULL, and bytes).  Text (`hstore_out`):
//! `"key"=>"value"` pairs separated by `, `, a NULL value as `NULL`, `"` and `\` backslashed
//! inside the quotes.  A value that does not read as either is NULL (`INVALID_VALUE`).
//!
//! Two keys masked alike stay two pairs (a client reading it keeps the last; the server's
//! `hstore_in` would too).

use super::{be_i32, nested, rule, text, Cx, Format};
use crate::mask::{Operator, Outcome};

pub(super) fn mask(fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    if cx
        .mask
        .whole()
        .is_some_and(|f| matches!(f.operator, Operator::Null))
    {
        rule(cx);
        return Outcome::Null;
    }
    nested(cx, |cx| {
        let pairs = match fmt {
            Format::Binary => parse_binary(value)?,
            Format::Text => parse_text(value)?,
        };
        let mut masked: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(pairs.len());
        let mut changed = false;
        for (k, v) in pairs {
            let k = text_masked(&k, cx, &mut changed);
            let v = v.map(|v| text_masked(&v, cx, &mut changed));
            masked.push((k, v));
        }
        if !changed {
            return Some(false);
        }
        match fmt {
            Format::Binary => write_binary(&masked, out)?,
            Format::Text => write_text(&masked, out),
        }
        Some(true)
    })
}

/// `s` masked as text (NULL, for a key, is its empty masked form).
fn text_masked(s: &[u8], cx: &mut Cx<'_>, changed: &mut bool) -> Vec<u8> {
    let mut out = Vec::new();
    match text::mask(s, cx, &mut out) {
        Outcome::Unchanged => s.to_vec(),
        Outcome::Written => {
            *changed = true;
            out
        }
        Outcome::Null => {
            *changed = true;
            Vec::new()
        }
    }
}

type Pairs = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn parse_binary(value: &[u8]) -> Option<Pairs> {
    let n = usize::try_from(be_i32(value, 0)?).ok()?;
    if n > value.len() / 8 {
        return None;
    }
    let mut pos = 4;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kl = usize::try_from(be_i32(value, pos)?).ok()?;
        let k = value.get(pos + 4..pos + 4 + kl)?.to_vec();
        pos += 4 + kl;
        let vl = be_i32(value, pos)?;
        pos += 4;
        let v = if vl == -1 {
            None
        } else {
            let vl = usize::try_from(vl).ok()?;
            let v = value.get(pos..pos + vl)?.to_vec();
            pos += vl;
            Some(v)
        };
        out.push((k, v));
    }
    (pos == value.len()).then_some(out)
}

fn parse_text(value: &[u8]) -> Option<Pairs> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < value.len() {
        if !out.is_empty() {
            pos = expect(value, pos, b", ")?;
        }
        let (k, p) = quoted(value, pos)?;
        pos = expect(value, p, b"=>")?;
        if value[pos..].starts_with(b"NULL") {
            pos += 4;
            out.push((k, None));
        } else {
            let (v, p) = quoted(value, pos)?;
            pos = p;
            out.push((k, Some(v)));
        }
    }
    Some(out)
}

fn expect(value: &[u8], pos: usize, what: &[u8]) -> Option<usize> {
    value[pos..].starts_with(what).then_some(pos + what.len())
}

/// A `"..."` string at `pos`: its unescaped bytes and the position after it.
fn quoted(value: &[u8], mut pos: usize) -> Option<(Vec<u8>, usize)> {
    if value.get(pos) != Some(&b'"') {
        return None;
    }
    pos += 1;
    let mut s = Vec::new();
    loop {
        match *value.get(pos)? {
            b'"' => return Some((s, pos + 1)),
            b'\\' => {
                s.push(*value.get(pos + 1)?);
                pos += 2;
            }
            c => {
                s.push(c);
                pos += 1;
            }
        }
    }
}

fn write_binary(pairs: &[(Vec<u8>, Option<Vec<u8>>)], out: &mut Vec<u8>) -> Option<()> {
    out.extend_from_slice(&i32::try_from(pairs.len()).ok()?.to_be_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&i32::try_from(k.len()).ok()?.to_be_bytes());
        out.extend_from_slice(k);
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&i32::try_from(v.len()).ok()?.to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    Some(())
}

fn write_text(pairs: &[(Vec<u8>, Option<Vec<u8>>)], out: &mut Vec<u8>) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        write_quoted(k, out);
        out.extend_from_slice(b"=>");
        match v {
            None => out.extend_from_slice(b"NULL"),
            Some(v) => write_quoted(v, out),
        }
    }
}

fn write_quoted(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in s {
        if c == b'"' || c == b'\\' {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}
