//! Composite values, attribute by attribute with each attribute type's codec.
//!
//! Binary: Int32 attribute count, then per attribute its type OID, Int32 length (-1 NULL) and
//! bytes.  Text: `(a,b,"c d",)`: an empty field is NULL, a field is quoted (with `"` and `\`
//! doubled) when it is empty, or holds a quote, backslash, parenthesis, comma or white space
//! (as `record_out`).
//!
//! A named composite (a table's row type) knows its attribute types from the catalog and
//! checks them against a binary value; an anonymous record (`ROW(...)`) takes each binary
//! attribute's codec from its OID ([`super::builtin`]; a type it does not know is
//! [`Codec::Unknown`]) and scans text attributes as text.  An attribute the mask nulls (or that
//! does not decode) becomes NULL; a value that does not parse is NULL.

use super::builtin::builtin_ref;
use super::{be_i32, nested, read_field, write_element, Codec, Cx, Format};
use crate::mask::Outcome;

/// One attribute of a named composite type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    pub oid: u32,
    pub codec: Codec,
}

pub(super) fn mask(
    attrs: Option<&[Attribute]>,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    nested(cx, |cx| match fmt {
        Format::Binary => mask_binary(attrs, value, cx, out),
        Format::Text => mask_text(attrs, value, cx, out),
    })
}

fn mask_binary(
    attrs: Option<&[Attribute]>,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Option<bool> {
    let natts = usize::try_from(be_i32(value, 0)?).ok()?;
    if attrs.is_some_and(|a| a.len() != natts) || natts > value.len() / 8 {
        return None;
    }
    out.extend_from_slice(&value[..4]);
    let mut pos = 4;
    let mut changed = false;
    for i in 0..natts {
        let oid = u32::from_be_bytes(value.get(pos..pos + 4)?.try_into().ok()?);
        let len = be_i32(value, pos + 4)?;
        let codec = match attrs {
            Some(a) => {
                if a[i].oid != 0 && a[i].oid != oid {
                    return None;
                }
                &a[i].codec
            }
            None => builtin_ref(oid).unwrap_or(&Codec::Unknown),
        };
        out.extend_from_slice(&value[pos..pos + 4]);
        pos += 8;
        if len == -1 {
            out.extend_from_slice(&len.to_be_bytes());
            continue;
        }
        let n = usize::try_from(len).ok()?;
        let v = value.get(pos..pos + n)?;
        pos += n;
        changed |= write_element(codec, v, cx, out)? != Outcome::Unchanged;
    }
    (pos == value.len()).then_some(changed)
}

fn mask_text(
    attrs: Option<&[Attribute]>,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Option<bool> {
    if value.first() != Some(&b'(') {
        return None;
    }
    let mut field = cx.scratch.take();
    let mut masked = cx.scratch.take();
    let res = walk_text(attrs, value, cx, out, (&mut field, &mut masked));
    cx.scratch.put(field);
    cx.scratch.put(masked);
    res
}

fn walk_text(
    attrs: Option<&[Attribute]>,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
    (field, masked): (&mut Vec<u8>, &mut Vec<u8>),
) -> Option<bool> {
    out.push(b'(');
    let mut pos = 1;
    let mut changed = false;
    let mut i = 0;
    loop {
        let codec = match attrs {
            Some(a) => &a.get(i)?.codec,
            None => &Codec::Text,
        };
        let start = pos;
        field.clear();
        // One field, up to a comma or the closing parenthesis outside quotes.
        let (end_at, was_quoted) = read_field(value, pos, field, |c| Some(c == b',' || c == b')'))?;
        pos = end_at;
        let end = value[pos];
        let raw = &value[start..pos];
        if raw.is_empty() && !was_quoted {
            // NULL: nothing to mask
        } else {
            masked.clear();
            match codec.mask(Format::Text, field, cx, masked) {
                Outcome::Unchanged => out.extend_from_slice(raw),
                Outcome::Null => changed = true, // an empty field is NULL
                Outcome::Written => {
                    quote(masked, out);
                    changed = true;
                }
            }
        }
        out.push(end);
        pos += 1;
        i += 1;
        if end == b')' {
            let count_ok = attrs.is_none_or(|a| a.len() == i);
            return (pos == value.len() && count_ok).then_some(changed);
        }
    }
}

/// Writes a field as `record_out` does.
fn quote(field: &[u8], out: &mut Vec<u8>) {
    let needs = field.is_empty()
        || field.iter().any(|&c| {
            matches!(
                c,
                b'"' | b'\\' | b'(' | b')' | b',' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c
            )
        });
    if !needs {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for &c in field {
        if c == b'"' || c == b'\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push(b'"');
}
