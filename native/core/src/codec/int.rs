//! int2, int4, int8: big-endian two's complement in binary, decimal in text.  Masked in the
//! digit domain ([`super::decimal`]); a result too large for the type drops leading digits
//! until it fits (keyed digits of a 5-digit int2 may exceed 32767), so it stays an integer of
//! the same width.

use super::decimal::{is_canonical, mask_digits};
use super::{invalid, Cx, Format};
use crate::mask::Outcome;

/// The byte width of an integer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    W2,
    W4,
    W8,
}

impl Width {
    fn bytes(self) -> usize {
        match self {
            Width::W2 => 2,
            Width::W4 => 4,
            Width::W8 => 8,
        }
    }

    fn range(self) -> (i128, i128) {
        match self {
            Width::W2 => (i16::MIN.into(), i16::MAX.into()),
            Width::W4 => (i32::MIN.into(), i32::MAX.into()),
            Width::W8 => (i64::MIN.into(), i64::MAX.into()),
        }
    }
}

pub(super) fn mask(
    width: Width,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let Some(v) = decode(width, fmt, value) else {
        return invalid(cx);
    };
    let mut buf = [0u8; 24];
    let text = render(v, &mut buf);
    let at = out.len();
    let outcome = mask_digits(text, cx, out);
    if outcome != Outcome::Written {
        return outcome;
    }
    let fitted = fit(width, &mut out[at..]);
    out.truncate(at);
    encode(width, fmt, fitted, out);
    Outcome::Written
}

pub(super) fn transcode(width: Width, from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(v) = decode(width, from, value) else {
        return false;
    };
    encode(width, from.other(), v, out);
    true
}

fn decode(width: Width, fmt: Format, value: &[u8]) -> Option<i64> {
    match fmt {
        Format::Binary => match (width, value.len()) {
            (Width::W2, 2) => Some(i16::from_be_bytes([value[0], value[1]]).into()),
            (Width::W4, 4) => Some(i32::from_be_bytes(value.try_into().ok()?).into()),
            (Width::W8, 8) => Some(i64::from_be_bytes(value.try_into().ok()?)),
            _ => None,
        },
        Format::Text => {
            if !is_canonical(value) || value.contains(&b'.') {
                return None;
            }
            let v: i128 = std::str::from_utf8(value).ok()?.parse().ok()?;
            let (lo, hi) = width.range();
            if v < lo || v > hi {
                return None;
            }
            i64::try_from(v).ok()
        }
    }
}

fn encode(width: Width, fmt: Format, v: i64, out: &mut Vec<u8>) {
    match fmt {
        Format::Text => {
            let mut buf = [0u8; 24];
            out.extend_from_slice(render(v, &mut buf));
        }
        Format::Binary => {
            let bytes = v.to_be_bytes();
            out.extend_from_slice(&bytes[8 - width.bytes()..]);
        }
    }
}

/// The decimal text of `v` in `buf`.
pub(crate) fn render(v: i64, buf: &mut [u8; 24]) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + u8::try_from(n % 10).expect("a digit");
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// The canonical masked decimal `text` as an integer of `width`: leading digits dropped while
/// it does not fit.
fn fit(width: Width, text: &mut [u8]) -> i64 {
    let (lo, hi) = width.range();
    let neg = text.first() == Some(&b'-');
    let digits = &text[usize::from(neg)..];
    let mut skip = 0;
    loop {
        let mut v: i128 = 0;
        for &d in &digits[skip..] {
            v = v * 10 + i128::from(d - b'0');
        }
        if neg {
            v = -v;
        }
        if (lo..=hi).contains(&v) {
            return i64::try_from(v).expect("within the type's range");
        }
        skip += 1;
    }
}
