//! numeric.  Binary: Int16 ndigits, Int16 weight, UInt16 sign, UInt16 dscale, then ndigits
//! base-10000 digits (Int16); text: the decimal with exactly dscale fraction digits (as
//! `numeric_out` writes it), or `NaN`, `Infinity`, `-Infinity`.  Masked in the digit domain
//! ([`super::decimal`]) on that text, so both formats read and write the same decimal; the
//! scale is kept.  NaN and the infinities carry nothing: they are kept (except by `null`).

use super::decimal::{is_canonical, mask_digits};
use super::{invalid, rule, Cx, Format};
use crate::mask::{Operator, Outcome};

const POS: u16 = 0x0000;
const NEG: u16 = 0x4000;
const NAN: u16 = 0xC000;
const PINF: u16 = 0xD000;
const NINF: u16 = 0xF000;
/// The largest display scale the server accepts.
const MAX_DSCALE: u16 = 0x3FFF;

pub(super) fn mask(fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    let mut text = cx.scratch.take();
    let outcome = mask_decoded(fmt, value, &mut text, cx, out);
    cx.scratch.put(text);
    outcome
}

fn mask_decoded(
    fmt: Format,
    value: &[u8],
    text: &mut Vec<u8>,
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let special = match fmt {
        Format::Binary => match decode_binary(value, text) {
            Some(special) => special,
            None => return invalid(cx),
        },
        Format::Text => {
            if matches!(value, b"NaN" | b"Infinity" | b"-Infinity") {
                true
            } else if is_canonical(value) {
                text.extend_from_slice(value);
                false
            } else {
                return invalid(cx);
            }
        }
    };
    if special {
        // Nothing to find in NaN or an infinity; only a column rule's `null` changes it.
        return match rule(cx) {
            Some(f) if matches!(f.operator, Operator::Null) => Outcome::Null,
            _ => Outcome::Unchanged,
        };
    }
    let dscale = text
        .iter()
        .position(|&c| c == b'.')
        .map_or(0, |p| text.len() - p - 1);
    let at = out.len();
    let outcome = mask_digits(text, cx, out);
    if outcome == Outcome::Written && fmt == Format::Binary {
        let masked = out.split_off(at);
        let dscale = u16::try_from(dscale).expect("decoded from a u16 scale");
        encode_binary(&masked, dscale, out);
    }
    outcome
}

pub(super) fn transcode(from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    match from {
        Format::Binary => decode_binary(value, out).is_some(),
        Format::Text => {
            let special = match value {
                b"NaN" => Some(NAN),
                b"Infinity" => Some(PINF),
                b"-Infinity" => Some(NINF),
                _ => None,
            };
            if let Some(sign) = special {
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(&sign.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                return true;
            }
            if !is_canonical(value) {
                return false;
            }
            let dscale = value
                .iter()
                .position(|&c| c == b'.')
                .map_or(0, |p| value.len() - p - 1);
            let Ok(dscale) = u16::try_from(dscale) else {
                return false;
            };
            if dscale > MAX_DSCALE {
                return false;
            }
            encode_binary(value, dscale, out);
            true
        }
    }
}

/// Decodes a binary numeric into its text (as `numeric_out`) in `text`; `Some(true)` for NaN
/// and the infinities (whose text is also written), `None` when it is not a numeric.
fn decode_binary(value: &[u8], text: &mut Vec<u8>) -> Option<bool> {
    let head = value.get(..8)?;
    let ndigits = usize::try_from(i16::from_be_bytes([head[0], head[1]])).ok()?;
    let weight = i32::from(i16::from_be_bytes([head[2], head[3]]));
    let sign = u16::from_be_bytes([head[4], head[5]]);
    let dscale = u16::from_be_bytes([head[6], head[7]]);
    if value.len() != 8 + 2 * ndigits || dscale > MAX_DSCALE {
        return None;
    }
    let special: &[u8] = match sign {
        POS | NEG => b"",
        NAN => b"NaN",
        PINF => b"Infinity",
        NINF => b"-Infinity",
        _ => return None,
    };
    if !special.is_empty() {
        if ndigits != 0 {
            return None;
        }
        text.extend_from_slice(special);
        return Some(true);
    }
    let digit = |i: i32| -> Option<u16> {
        let Ok(i) = usize::try_from(i) else {
            return Some(0);
        };
        if i >= ndigits {
            return Some(0);
        }
        let d = u16::from_be_bytes([value[8 + 2 * i], value[9 + 2 * i]]);
        (d < 10000).then_some(d)
    };
    // Every digit must be valid, even those the scale hides.
    for i in 0..ndigits {
        digit(i32::try_from(i).ok()?)?;
    }
    if sign == NEG {
        text.push(b'-');
    }
    // The integer part: groups 0..=weight (none: "0").
    if weight < 0 {
        text.push(b'0');
    } else {
        for g in 0..=weight {
            let d = digit(g)?;
            if g == 0 {
                let mut buf = [0u8; 24];
                text.extend_from_slice(super::int::render(i64::from(d), &mut buf));
            } else {
                push4(d, text);
            }
        }
    }
    if dscale > 0 {
        text.push(b'.');
        let mut left = usize::from(dscale);
        let mut g = weight + 1;
        while left > 0 {
            let four = group(digit(g)?);
            let n = left.min(4);
            text.extend_from_slice(&four[..n]);
            left -= n;
            g += 1;
        }
    }
    if sign == NEG && text[1..].iter().all(|&c| c == b'0' || c == b'.') {
        text.remove(0); // the server never sends a negative zero; if it did, print it as zero
    }
    Some(false)
}

/// The four decimal digits of a base-10000 digit.
fn group(d: u16) -> [u8; 4] {
    let digit = |v: u16| b'0' + u8::try_from(v % 10).expect("a digit");
    [digit(d / 1000), digit(d / 100), digit(d / 10), digit(d)]
}

fn push4(d: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&group(d));
}

/// Encodes the canonical decimal `text` as a binary numeric with display scale `dscale`.
fn encode_binary(text: &[u8], dscale: u16, out: &mut Vec<u8>) {
    let neg = text.first() == Some(&b'-');
    let body = &text[usize::from(neg)..];
    let (int, frac) = match body.iter().position(|&c| c == b'.') {
        Some(p) => (&body[..p], &body[p + 1..]),
        None => (body, &body[body.len()..]),
    };
    // Base-10000 groups aligned on the decimal point.
    let lead = (4 - int.len() % 4) % 4;
    let int_groups = (int.len() + lead) / 4;
    let mut groups: Vec<u16> = Vec::with_capacity(int_groups + frac.len() / 4 + 1);
    let digit_at = |s: &[u8], i: usize| s.get(i).map_or(0, |&c| u16::from(c - b'0'));
    for g in 0..int_groups {
        let mut v = 0u16;
        for k in 0..4 {
            let pos = (g * 4 + k).checked_sub(lead);
            v = v * 10 + pos.map_or(0, |p| digit_at(int, p));
        }
        groups.push(v);
    }
    for g in 0..frac.len().div_ceil(4) {
        let mut v = 0u16;
        for k in 0..4 {
            v = v * 10 + digit_at(frac, g * 4 + k);
        }
        groups.push(v);
    }
    let mut weight = i32::try_from(int_groups).expect("a short decimal") - 1;
    let first = groups.iter().position(|&g| g != 0);
    let (digits, sign) = match first {
        None => {
            weight = 0;
            (&groups[..0], POS)
        }
        Some(first) => {
            weight -= i32::try_from(first).expect("a short decimal");
            let last = groups
                .iter()
                .rposition(|&g| g != 0)
                .expect("a non-zero group");
            (&groups[first..=last], if neg { NEG } else { POS })
        }
    };
    let ndigits = i16::try_from(digits.len()).unwrap_or(i16::MAX);
    let weight = i16::try_from(weight).unwrap_or(i16::MAX);
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
}
