//! uuid: 16 bytes in binary, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (lowercase) in text.
//! Cannot carry a detectable entity: a content scan keeps it.  Under a column rule:
//! `replace` / `redact` give the nil uuid, `partial` keeps the first `keep_first` and last
//! `keep_last` hex digits (the others `0`), `hash` gives a keyed uuid, `null` NULL.

use super::{invalid, rule, Cx, Format};
use crate::mask::{Operator, Outcome};

pub(super) fn mask(fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    let Some(f) = rule(cx) else {
        return Outcome::Unchanged;
    };
    let Some(u) = decode(fmt, value) else {
        return invalid(cx);
    };
    let mut m = [0u8; 16];
    match f.operator {
        Operator::Null => return Outcome::Null,
        Operator::Replace(_) | Operator::Redact => {}
        Operator::Partial {
            keep_first,
            keep_last,
            ..
        } => {
            // By hex digit (nibble), as the text shows them.
            let tail_from = 32usize.saturating_sub(*keep_last);
            for n in (0..32).filter(|&n| n < *keep_first || n >= tail_from) {
                let shift = if n % 2 == 0 { 4 } else { 0 };
                m[n / 2] |= u[n / 2] & (0x0f << shift);
            }
        }
        Operator::Hash(key) => key.fill(b"uuid", &u, &mut m),
    }
    encode(&m, fmt, out);
    Outcome::Written
}

pub(super) fn transcode(from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(u) = decode(from, value) else {
        return false;
    };
    encode(&u, from.other(), out);
    true
}

fn decode(fmt: Format, value: &[u8]) -> Option<[u8; 16]> {
    match fmt {
        Format::Binary => value.try_into().ok(),
        Format::Text => {
            if value.len() != 36 {
                return None;
            }
            let mut u = [0u8; 16];
            let mut n = 0;
            for (i, &c) in value.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    if c != b'-' {
                        return None;
                    }
                    continue;
                }
                let d = char::from(c).to_digit(16)?;
                let d = u8::try_from(d).expect("a hex digit");
                u[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
                n += 1;
            }
            Some(u)
        }
    }
}

fn encode(u: &[u8; 16], fmt: Format, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match fmt {
        Format::Binary => out.extend_from_slice(u),
        Format::Text => {
            for (i, &b) in u.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
    }
}
