//! float4 and float8: IEEE 754 big-endian in binary; in text the shortest decimal that reads
//! back exactly (the server's default, `extra_float_digits` > 0), `NaN`, `Infinity`,
//! `-Infinity`.  A content scan keeps them.  Under a column rule `replace`, `redact` and
//! `partial` give 0, `hash` a keyed number of the same sign and binary exponent (the same
//! magnitude), `null` NULL; NaN, the infinities and zero stay as they are.

use std::io::Write as _;

use super::{invalid, rule, Cx, Format};
use crate::mask::{Operator, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    F4,
    F8,
}

pub(super) fn mask(
    width: Width,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let Some(f) = rule(cx) else {
        return Outcome::Unchanged;
    };
    let Some(v) = decode(width, fmt, value) else {
        return invalid(cx);
    };
    let m = match f.operator {
        Operator::Null => return Outcome::Null,
        _ if !v.is_finite() || v == 0.0 => return Outcome::Unchanged,
        Operator::Replace(_) | Operator::Redact | Operator::Partial { .. } => 0.0,
        Operator::Hash(key) => match width {
            Width::F8 => {
                let bits = v.to_bits();
                let mut r = [0u8; 8];
                key.fill(b"float8", &bits.to_be_bytes(), &mut r);
                const MANTISSA: u64 = (1 << 52) - 1;
                f64::from_bits((bits & !MANTISSA) | (u64::from_be_bytes(r) & MANTISSA))
            }
            Width::F4 => {
                #[allow(clippy::cast_possible_truncation)] // decoded from a float4: exact
                let bits = (v as f32).to_bits();
                let mut r = [0u8; 4];
                key.fill(b"float4", &bits.to_be_bytes(), &mut r);
                const MANTISSA: u32 = (1 << 23) - 1;
                f64::from(f32::from_bits(
                    (bits & !MANTISSA) | (u32::from_be_bytes(r) & MANTISSA),
                ))
            }
        },
    };
    encode(width, fmt, m, out);
    Outcome::Written
}

pub(super) fn transcode(width: Width, from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(v) = decode(width, from, value) else {
        return false;
    };
    encode(width, from.other(), v, out);
    true
}

fn decode(width: Width, fmt: Format, value: &[u8]) -> Option<f64> {
    match (fmt, width) {
        (Format::Binary, Width::F8) => Some(f64::from_be_bytes(value.try_into().ok()?)),
        (Format::Binary, Width::F4) => Some(f32::from_be_bytes(value.try_into().ok()?).into()),
        (Format::Text, _) => {
            let text = std::str::from_utf8(value).ok()?;
            match text {
                "NaN" => return Some(f64::NAN),
                "Infinity" => return Some(f64::INFINITY),
                "-Infinity" => return Some(f64::NEG_INFINITY),
                _ => {}
            }
            // Only the characters of a decimal number (Rust would also read "inf", "nan").
            if !text
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
            {
                return None;
            }
            match width {
                Width::F8 => text.parse::<f64>().ok(),
                Width::F4 => text.parse::<f32>().ok().map(f64::from),
            }
        }
    }
}

fn encode(width: Width, fmt: Format, v: f64, out: &mut Vec<u8>) {
    match (fmt, width) {
        (Format::Binary, Width::F8) => out.extend_from_slice(&v.to_be_bytes()),
        #[allow(clippy::cast_possible_truncation)] // a float4 value: exact
        (Format::Binary, Width::F4) => out.extend_from_slice(&(v as f32).to_be_bytes()),
        (Format::Text, _) => render(width, v, out),
    }
}

/// The text the server writes (`float8out` / `float4out` with `extra_float_digits` > 0): the
/// shortest exact digits, fixed notation for decimal exponents from -4 below the type's digit
/// count (15 / 6), else `d.ddde+XX`.
fn render(width: Width, v: f64, out: &mut Vec<u8>) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    if v == 0.0 {
        out.extend_from_slice(if v.is_sign_negative() { b"-0" } else { b"0" });
        return;
    }
    // Rust's `{:e}` gives the shortest exact digits: "-1.2345e-7".
    let at = out.len();
    let fixed_below = match width {
        Width::F8 => {
            let _ = write!(out, "{v:e}");
            15
        }
        Width::F4 => {
            #[allow(clippy::cast_possible_truncation)] // a float4 value: exact
            let f = v as f32;
            let _ = write!(out, "{f:e}");
            6
        }
    };
    let sci = out.split_off(at);
    let neg = sci[0] == b'-';
    let body = &sci[usize::from(neg)..];
    let e = body
        .iter()
        .position(|&c| c == b'e')
        .expect("{:e} writes an exponent");
    let digits: Vec<u8> = body[..e]
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .collect();
    let exp: i32 = std::str::from_utf8(&body[e + 1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("{:e} writes an integer exponent");
    if neg {
        out.push(b'-');
    }
    let n = i32::try_from(digits.len()).expect("a few digits");
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            for _ in 0..(-exp - 1) {
                out.push(b'0');
            }
            out.extend_from_slice(&digits);
        } else if n <= exp + 1 {
            out.extend_from_slice(&digits);
            for _ in 0..(exp + 1 - n) {
                out.push(b'0');
            }
        } else {
            let point = usize::try_from(exp + 1).expect("a positive exponent");
            out.extend_from_slice(&digits[..point]);
            out.push(b'.');
            out.extend_from_slice(&digits[point..]);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
}
