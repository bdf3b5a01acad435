//! Arrays, element by element with the element type's codec.
//!
//! Binary: Int32 dimensions (0-6), Int32 has-nulls flag, element type OID, per dimension Int32
//! length and lower bound, then each element as Int32 length (-1 NULL) and bytes.  Text:
//! `[1:2]={...}` (bounds only when not 1), nested braces, elements separated by the element
//! type's delimiter, quoted with backslash escapes when they must be (as `array_out`).
//!
//! An element the mask nulls (or that does not decode) becomes a NULL element; the array keeps
//! its shape.  An array that does not parse is NULL.

use super::{be_i32, nested, write_element, Codec, Cx, Format};
use crate::mask::Outcome;

/// The codec of an array type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArrayCodec {
    pub elem: Codec,
    /// The element type's OID, which a binary value names (checked).
    pub elem_oid: u32,
    /// The element type's delimiter in the text format (`,`; `;` for box).
    pub delimiter: u8,
}

pub(super) fn mask(
    a: &ArrayCodec,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    if !a.elem.scannable() && cx.mask.whole().is_none() {
        return Outcome::Unchanged; // a content scan finds nothing in these elements
    }
    nested(cx, |cx| match fmt {
        Format::Binary => mask_binary(a, value, cx, out),
        Format::Text => mask_text(a, value, cx, out),
    })
}

/// `Some(changed)`, or `None` when `value` is not an array of this type.
fn mask_binary(a: &ArrayCodec, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Option<bool> {
    let ndim = usize::try_from(be_i32(value, 0)?).ok()?;
    let flags = be_i32(value, 4)?;
    let elem_oid = u32::from_be_bytes(value.get(8..12)?.try_into().ok()?);
    if ndim > 6 || !(0..=1).contains(&flags) || (a.elem_oid != 0 && elem_oid != a.elem_oid) {
        return None;
    }
    let mut pos = 12;
    let mut items: usize = usize::from(ndim > 0);
    for _ in 0..ndim {
        let len = usize::try_from(be_i32(value, pos)?).ok()?;
        be_i32(value, pos + 4)?;
        // Each element takes at least 4 bytes: more than the value holds is a lie.
        items = items.checked_mul(len).filter(|&n| n <= value.len() / 4)?;
        pos += 8;
    }
    let head = out.len();
    out.extend_from_slice(&value[..pos]);
    let (mut changed, mut has_null) = (false, flags == 1);
    for _ in 0..items {
        let len = be_i32(value, pos)?;
        pos += 4;
        if len == -1 {
            out.extend_from_slice(&len.to_be_bytes());
            continue;
        }
        let n = usize::try_from(len).ok()?;
        let elem = value.get(pos..pos + n)?;
        pos += n;
        match write_element(&a.elem, elem, cx, out)? {
            Outcome::Unchanged => {}
            Outcome::Written => changed = true,
            Outcome::Null => (changed, has_null) = (true, true),
        }
    }
    if pos != value.len() {
        return None;
    }
    out[head + 4..head + 8].copy_from_slice(&i32::from(has_null).to_be_bytes());
    Some(changed)
}

/// Whether `c` is what `array_isspace` skips.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn mask_text(a: &ArrayCodec, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Option<bool> {
    let mut pos = 0;
    if value.first() == Some(&b'[') {
        let eq = value.iter().position(|&c| c == b'=')?;
        if !value[..eq]
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'[' | b']' | b':' | b'-'))
        {
            return None;
        }
        pos = eq + 1;
        out.extend_from_slice(&value[..pos]);
    }
    if value.get(pos) != Some(&b'{') {
        return None;
    }
    let mut elem = cx.scratch.take();
    let mut masked = cx.scratch.take();
    let res = walk_text(a, value, pos, cx, out, (&mut elem, &mut masked));
    cx.scratch.put(elem);
    cx.scratch.put(masked);
    res
}

/// The braces and elements of a text array from `pos` (at the first `{`) to the end.
fn walk_text(
    a: &ArrayCodec,
    value: &[u8],
    mut pos: usize,
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
    (elem, masked): (&mut Vec<u8>, &mut Vec<u8>),
) -> Option<bool> {
    let delim = a.delimiter;
    let mut depth = 0usize;
    let mut changed = false;
    loop {
        let c = *value.get(pos)?;
        match c {
            b'{' => {
                depth += 1;
                if depth > 6 {
                    return None;
                }
                out.push(c);
                pos += 1;
            }
            b'}' => {
                depth = depth.checked_sub(1)?;
                out.push(c);
                pos += 1;
                if depth == 0 {
                    return (pos == value.len()).then_some(changed);
                }
            }
            c if c == delim => {
                out.push(c);
                pos += 1;
            }
            _ => {
                // One element: quoted, or up to the next delimiter or brace.
                let start = pos;
                elem.clear();
                let quoted = c == b'"';
                if quoted {
                    pos += 1;
                    loop {
                        match *value.get(pos)? {
                            b'"' => {
                                pos += 1;
                                break;
                            }
                            b'\\' => {
                                elem.push(*value.get(pos + 1)?);
                                pos += 2;
                            }
                            o => {
                                elem.push(o);
                                pos += 1;
                            }
                        }
                    }
                } else {
                    while let Some(&o) = value.get(pos) {
                        if o == delim || matches!(o, b'}' | b'{' | b'"') {
                            break;
                        }
                        if o == b'\\' {
                            elem.push(*value.get(pos + 1)?);
                            pos += 2;
                        } else {
                            elem.push(o);
                            pos += 1;
                        }
                    }
                }
                let raw = &value[start..pos];
                if !quoted && elem.eq_ignore_ascii_case(b"NULL") {
                    out.extend_from_slice(raw);
                    continue;
                }
                masked.clear();
                match a.elem.mask(Format::Text, elem, cx, masked) {
                    Outcome::Unchanged => out.extend_from_slice(raw),
                    Outcome::Null => {
                        out.extend_from_slice(b"NULL");
                        changed = true;
                    }
                    Outcome::Written => {
                        quote(masked, delim, out);
                        changed = true;
                    }
                }
            }
        }
    }
}

/// Writes an element as `array_out` does: quoted (with `"` and `\` escaped) when it is empty,
/// spells NULL, or holds a brace, quote, backslash, the delimiter or white space.
fn quote(elem: &[u8], delim: u8, out: &mut Vec<u8>) {
    let needs = elem.is_empty()
        || elem.eq_ignore_ascii_case(b"NULL")
        || elem
            .iter()
            .any(|&c| matches!(c, b'{' | b'}' | b'"' | b'\\') || c == delim || is_space(c));
    if !needs {
        out.extend_from_slice(elem);
        return;
    }
    out.push(b'"');
    for &c in elem {
        if c == b'"' || c == b'\\' {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}
