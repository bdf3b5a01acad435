//! bytea: the binary format is the bytes; the text format is `\x` and two hex digits per byte
//! (`bytea_output = hex`, the default) or the escape format (printable ASCII as itself, `\\`,
//! `\ooo` octal).  The bytes are masked as text (any bytes are a valid bytea); a masked text
//! value is written back in the format it came in.

use super::{invalid, Cx, Format};
use crate::mask::Outcome;

pub(super) fn mask(fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    if fmt == Format::Binary {
        return cx.mask.mask_value(value, out, cx.tally);
    }
    let mut raw = cx.scratch.take();
    let outcome = match decode_text(value, &mut raw) {
        None => invalid(cx),
        Some(style) => {
            let mut masked = cx.scratch.take();
            let outcome = cx.mask.mask_value(&raw, &mut masked, cx.tally);
            if outcome == Outcome::Written {
                encode_text(style, &masked, out);
            }
            cx.scratch.put(masked);
            outcome
        }
    };
    cx.scratch.put(raw);
    outcome
}

pub(super) fn transcode(from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    match from {
        Format::Binary => {
            encode_text(Style::Hex, value, out);
            true
        }
        Format::Text => decode_text(value, out).is_some(),
    }
}

/// The text format a value came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Hex,
    Escape,
}

/// Decodes a text-format bytea into `out`; `None` when it is not one.
pub(crate) fn decode_text(text: &[u8], out: &mut Vec<u8>) -> Option<Style> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return None;
        }
        out.reserve(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            out.push(hex_val(pair[0])? << 4 | hex_val(pair[1])?);
        }
        return Some(Style::Hex);
    }
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        match text.get(i + 1..i + 4) {
            _ if text.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(&[a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7']) => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                i += 4;
            }
            _ => return None,
        }
    }
    Some(Style::Escape)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Encodes `bytes` as the server would in `style`.
pub(crate) fn encode_text(style: Style, bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match style {
        Style::Hex => {
            out.reserve(2 + 2 * bytes.len());
            out.extend_from_slice(b"\\x");
            for &b in bytes {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
        Style::Escape => {
            for &b in bytes {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    0x20..=0x7e => out.push(b),
                    _ => out.extend_from_slice(&[
                        b'\\',
                        b'0' + (b >> 6),
                        b'0' + ((b >> 3) & 7),
                        b'0' + (b & 7),
                    ]),
                }
            }
        }
    }
}
