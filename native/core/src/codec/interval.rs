//! interval: Int64 microseconds, Int32 days, Int32 months in binary; in text the `postgres`
//! IntervalStyle (the default): `1 year 2 mons -3 days +04:05:06.5`.  A text value in another
//! IntervalStyle does not decode (NULL when a rule masks it).  A content scan keeps intervals;
//! under a column rule `replace`, `redact` and `partial` give `00:00:00`, `hash` a keyed
//! duration under a day, `null` NULL.

use std::io::Write as _;

use super::{invalid, rule, Cx, Format};
use crate::mask::{Operator, Outcome};

const USECS_PER_SEC: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Interval {
    usecs: i64,
    days: i32,
    months: i32,
}

pub(super) fn mask(fmt: Format, value: &[u8], cx: &mut Cx<'_>, out: &mut Vec<u8>) -> Outcome {
    let Some(f) = rule(cx) else {
        return Outcome::Unchanged;
    };
    let Some(v) = decode(fmt, value) else {
        return invalid(cx);
    };
    let usecs = match f.operator {
        Operator::Null => return Outcome::Null,
        Operator::Replace(_) | Operator::Redact | Operator::Partial { .. } => 0,
        Operator::Hash(key) => {
            let mut canon = [0u8; 16];
            canon[..8].copy_from_slice(&v.usecs.to_be_bytes());
            canon[8..12].copy_from_slice(&v.days.to_be_bytes());
            canon[12..].copy_from_slice(&v.months.to_be_bytes());
            let secs = key.below(b"interval", &canon, 86_400);
            i64::try_from(secs).expect("under a day") * USECS_PER_SEC
        }
    };
    encode(
        Interval {
            usecs,
            days: 0,
            months: 0,
        },
        fmt,
        out,
    );
    Outcome::Written
}

pub(super) fn transcode(from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(v) = decode(from, value) else {
        return false;
    };
    encode(v, from.other(), out);
    true
}

fn decode(fmt: Format, value: &[u8]) -> Option<Interval> {
    match fmt {
        Format::Binary => {
            if value.len() != 16 {
                return None;
            }
            Some(Interval {
                usecs: i64::from_be_bytes(value[..8].try_into().ok()?),
                days: i32::from_be_bytes(value[8..12].try_into().ok()?),
                months: i32::from_be_bytes(value[12..].try_into().ok()?),
            })
        }
        Format::Text => parse(std::str::from_utf8(value).ok()?),
    }
}

fn parse(text: &str) -> Option<Interval> {
    let mut v = Interval {
        usecs: 0,
        days: 0,
        months: 0,
    };
    let mut words = text.split(' ');
    let mut any = false;
    while let Some(w) = words.next() {
        any = true;
        if w.contains(':') {
            v.usecs = parse_time(w)?;
            // The time is the last part.
            return words.next().is_none().then_some(v);
        }
        let n: i64 = w.strip_prefix('+').unwrap_or(w).parse().ok()?;
        let n32 = i32::try_from(n).ok()?;
        match words.next()? {
            "year" | "years" => v.months = v.months.checked_add(n32.checked_mul(12)?)?,
            "mon" | "mons" => v.months = v.months.checked_add(n32)?,
            "day" | "days" => v.days = v.days.checked_add(n32)?,
            _ => return None,
        }
    }
    any.then_some(v)
}

/// `[+-]H+:MM:SS[.f{1,6}]` as microseconds.
fn parse_time(w: &str) -> Option<i64> {
    let (neg, body) = match w.as_bytes().first() {
        Some(b'-') => (true, &w[1..]),
        Some(b'+') => (false, &w[1..]),
        _ => (false, w),
    };
    let mut parts = body.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || m.len() != 2 {
        return None;
    }
    let (s, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(h) || !digits(m) || s.len() != 2 || !digits(s) || frac.len() > 6 {
        return None;
    }
    if !frac.is_empty() && !digits(frac) {
        return None;
    }
    let (h, m, s): (i64, i64, i64) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    if m > 59 || s > 59 {
        return None;
    }
    let f = if frac.is_empty() {
        0
    } else {
        let n = u32::try_from(frac.len()).expect("at most 6 digits");
        frac.parse::<i64>().ok()? * 10i64.pow(6 - n)
    };
    let usecs = h
        .checked_mul(3600)?
        .checked_add(m * 60 + s)?
        .checked_mul(USECS_PER_SEC)?
        .checked_add(f)?;
    Some(if neg { -usecs } else { usecs })
}

fn encode(v: Interval, fmt: Format, out: &mut Vec<u8>) {
    match fmt {
        Format::Binary => {
            out.extend_from_slice(&v.usecs.to_be_bytes());
            out.extend_from_slice(&v.days.to_be_bytes());
            out.extend_from_slice(&v.months.to_be_bytes());
        }
        Format::Text => render(v, out),
    }
}

/// The `postgres` IntervalStyle, as the server's `EncodeInterval` writes it.
fn render(v: Interval, out: &mut Vec<u8>) {
    let mut is_zero = true;
    let mut is_before = false;
    let mut part = |value: i64, unit: &str, out: &mut Vec<u8>| {
        if value == 0 {
            return;
        }
        let _ = write!(
            out,
            "{}{}{} {}{}",
            if is_zero { "" } else { " " },
            if is_before && value > 0 { "+" } else { "" },
            value,
            unit,
            if value == 1 { "" } else { "s" }
        );
        is_before = value < 0;
        is_zero = false;
    };
    part(i64::from(v.months / 12), "year", out);
    part(i64::from(v.months % 12), "mon", out);
    part(i64::from(v.days), "day", out);
    let t = v.usecs;
    let hour = t / (3600 * USECS_PER_SEC);
    let min = t / (60 * USECS_PER_SEC) % 60;
    let sec = t / USECS_PER_SEC % 60;
    let frac = t % USECS_PER_SEC;
    if is_zero || t != 0 {
        let minus = t < 0;
        let _ = write!(
            out,
            "{}{}{:02}:{:02}:{:02}",
            if is_zero { "" } else { " " },
            if minus {
                "-"
            } else if is_before {
                "+"
            } else {
                ""
            },
            hour.unsigned_abs(),
            min.unsigned_abs(),
            sec.unsigned_abs()
        );
        if frac != 0 {
            let mut f = frac.unsigned_abs();
            let mut digits = [0u8; 6];
            for d in digits.iter_mut().rev() {
                *d = b'0' + u8::try_from(f % 10).expect("a digit");
                f /= 10;
            }
            let n = 6 - digits.iter().rev().take_while(|&&c| c == b'0').count();
            out.push(b'.');
            out.extend_from_slice(&digits[..n]);
        }
    }
}
