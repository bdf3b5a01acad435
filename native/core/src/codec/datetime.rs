//! date, time, timetz, timestamp, timestamptz.  Binary: days (Int32) or microseconds (Int64)
//! since 2000-01-01 (UTC for timestamptz), microseconds of the day for times, plus the zone
//! (seconds west of UTC) for timetz.  Text: ISO (`DateStyle` ISO, the default):
//! `2024-03-05`, `2024-03-05 10:11:12.5+01`, `0044-03-15 BC`, `infinity`; a text value in
//! another `DateStyle` does not decode, so it becomes NULL when a rule masks it.
//!
//! A content scan keeps these types.  Under a column rule (for timestamptz, "year" is the
//! UTC year, so both formats agree):
//!
//! | operator | date | timestamp(tz) | time(tz) |
//! |---|---|---|---|
//! | `replace`, `redact` | 1970-01-01 | 1970-01-01 00:00:00 (UTC) | 00:00:00 (zone kept) |
//! | `partial` | January 1st of the same year | January 1st 00:00:00 of the same year | the hour kept |
//! | `hash` | a keyed day of the same year | a keyed second of the same year | a keyed second of the day |
//! | `null` | NULL | NULL | NULL |
//!
//! `infinity` and `-infinity` are kept (except by `null`).

use std::io::Write as _;

use super::{invalid, rule, Cx, Format};
use crate::mask::{HashKey, Operator, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
}

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// 2000-01-01 in days since 1970-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
/// The earliest date the server accepts: 4714-11-24 BC (Julian day 0), in days since
/// 2000-01-01.
const MIN_DAY: i64 = -2_451_545;

/// A decoded value.  `offset` is the text form's UTC offset (seconds east) of a timestamptz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    Date(i32),
    Time(i64),
    TimeTz { usecs: i64, zone: i32 },
    Stamp { usecs: i64, offset: i32 },
}

pub(super) fn mask(
    kind: Kind,
    fmt: Format,
    value: &[u8],
    cx: &mut Cx<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let Some(f) = rule(cx) else {
        return Outcome::Unchanged;
    };
    let Some(v) = decode(kind, fmt, value) else {
        return invalid(cx);
    };
    let m = match (f.operator, v) {
        (Operator::Null, _) => return Outcome::Null,
        (_, Value::Date(i32::MIN | i32::MAX))
        | (
            _,
            Value::Stamp {
                usecs: i64::MIN | i64::MAX,
                ..
            },
        ) => return Outcome::Unchanged,
        (op, Value::Date(d)) => Value::Date(mask_day(kind, op, i64::from(d))),
        (op, Value::Stamp { usecs, offset }) => Value::Stamp {
            usecs: mask_stamp(kind, op, usecs),
            offset,
        },
        (op, Value::Time(usecs)) => Value::Time(mask_time(op, usecs, 0)),
        (op, Value::TimeTz { usecs, zone }) => Value::TimeTz {
            usecs: mask_time(op, usecs, zone),
            zone,
        },
    };
    encode(kind, fmt, m, out);
    Outcome::Written
}

pub(super) fn transcode(kind: Kind, from: Format, value: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(v) = decode(kind, from, value) else {
        return false;
    };
    encode(kind, from.other(), v, out);
    true
}

fn hashed(key: &HashKey, kind: Kind, value: &[u8], n: u64) -> i64 {
    let domain: &[u8] = match kind {
        Kind::Date => b"date",
        Kind::Time => b"time",
        Kind::TimeTz => b"timetz",
        Kind::Timestamp => b"timestamp",
        Kind::TimestampTz => b"timestamptz",
    };
    i64::try_from(key.below(domain, value, n)).expect("below a year of seconds")
}

/// Days since 2000-01-01 of January 1st of the year `day` falls in, and that year's length.
fn year_of(day: i64) -> (i64, i64) {
    let (y, _, _) = civil_from_days(day + PG_EPOCH_DAYS);
    let start = days_from_civil(y, 1, 1) - PG_EPOCH_DAYS;
    let next = days_from_civil(y + 1, 1, 1) - PG_EPOCH_DAYS;
    (start, next - start)
}

fn mask_day(kind: Kind, op: &Operator, day: i64) -> i32 {
    let (start, len) = year_of(day);
    let m = match op {
        Operator::Replace(_) | Operator::Redact => -PG_EPOCH_DAYS,
        Operator::Partial { .. } => start,
        Operator::Hash(key) => {
            let n = u64::try_from(len).expect("a year has days");
            start + hashed(key, kind, &day.to_be_bytes(), n)
        }
        Operator::Null => unreachable!("handled by the caller"),
    };
    i32::try_from(m.max(MIN_DAY)).expect("within the year of a valid date")
}

fn mask_stamp(kind: Kind, op: &Operator, usecs: i64) -> i64 {
    let day = usecs.div_euclid(USECS_PER_DAY);
    let (start, len) = year_of(day);
    let m = match op {
        Operator::Replace(_) | Operator::Redact => -PG_EPOCH_DAYS * USECS_PER_DAY,
        Operator::Partial { .. } => start * USECS_PER_DAY,
        Operator::Hash(key) => {
            let n = u64::try_from(len * 86_400).expect("a year has seconds");
            start * USECS_PER_DAY + hashed(key, kind, &usecs.to_be_bytes(), n) * USECS_PER_SEC
        }
        Operator::Null => unreachable!("handled by the caller"),
    };
    m.max(MIN_DAY * USECS_PER_DAY)
}

fn mask_time(op: &Operator, usecs: i64, zone: i32) -> i64 {
    match op {
        Operator::Replace(_) | Operator::Redact => 0,
        Operator::Partial { .. } => usecs - usecs.rem_euclid(3600 * USECS_PER_SEC),
        Operator::Hash(key) => {
            let mut canon = [0u8; 12];
            canon[..8].copy_from_slice(&usecs.to_be_bytes());
            canon[8..].copy_from_slice(&zone.to_be_bytes());
            hashed(key, Kind::Time, &canon, 86_400) * USECS_PER_SEC
        }
        Operator::Null => unreachable!("handled by the caller"),
    }
}

fn decode(kind: Kind, fmt: Format, value: &[u8]) -> Option<Value> {
    match fmt {
        Format::Binary => match (kind, value.len()) {
            (Kind::Date, 4) => Some(Value::Date(i32::from_be_bytes(value.try_into().ok()?))),
            (Kind::Time, 8) => {
                let usecs = i64::from_be_bytes(value.try_into().ok()?);
                (0..=USECS_PER_DAY)
                    .contains(&usecs)
                    .then_some(Value::Time(usecs))
            }
            (Kind::TimeTz, 12) => {
                let usecs = i64::from_be_bytes(value[..8].try_into().ok()?);
                let zone = i32::from_be_bytes(value[8..].try_into().ok()?);
                ((0..=USECS_PER_DAY).contains(&usecs) && zone.unsigned_abs() <= 16 * 3600)
                    .then_some(Value::TimeTz { usecs, zone })
            }
            (Kind::Timestamp | Kind::TimestampTz, 8) => Some(Value::Stamp {
                usecs: i64::from_be_bytes(value.try_into().ok()?),
                offset: 0,
            }),
            _ => None,
        },
        Format::Text => parse_text(kind, value),
    }
}

fn encode(kind: Kind, fmt: Format, v: Value, out: &mut Vec<u8>) {
    match fmt {
        Format::Binary => match v {
            Value::Date(d) => out.extend_from_slice(&d.to_be_bytes()),
            Value::Time(u) => out.extend_from_slice(&u.to_be_bytes()),
            Value::TimeTz { usecs, zone } => {
                out.extend_from_slice(&usecs.to_be_bytes());
                out.extend_from_slice(&zone.to_be_bytes());
            }
            Value::Stamp { usecs, .. } => out.extend_from_slice(&usecs.to_be_bytes()),
        },
        Format::Text => render(kind, v, out),
    }
}

// -- text ------------------------------------------------------------------------------------

/// A cursor over ASCII text.
struct Text<'a> {
    s: &'a [u8],
    i: usize,
}

impl Text<'_> {
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, w: &[u8]) -> bool {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    /// `min..=max` digits as a number.
    fn num(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.i;
        let mut v: i64 = 0;
        while self.i - start < max {
            match self.s.get(self.i) {
                Some(&c) if c.is_ascii_digit() => {
                    v = v * 10 + i64::from(c - b'0');
                    self.i += 1;
                }
                _ => break,
            }
        }
        (self.i - start >= min).then_some(v)
    }

    fn done(&self) -> bool {
        self.i == self.s.len()
    }
}

fn parse_text(kind: Kind, value: &[u8]) -> Option<Value> {
    let mut t = Text { s: value, i: 0 };
    match kind {
        Kind::Date | Kind::Timestamp | Kind::TimestampTz => {
            match value {
                b"infinity" => return Some(infinite(kind, true)),
                b"-infinity" => return Some(infinite(kind, false)),
                _ => {}
            }
            let day = parse_date(&mut t)?;
            if kind == Kind::Date {
                let day = bc(&mut t, day)?;
                return if t.done() {
                    i32::try_from(day).ok().map(Value::Date)
                } else {
                    None
                };
            }
            if !t.eat(b' ') {
                return None;
            }
            let usecs = parse_time(&mut t)?;
            let offset = if kind == Kind::TimestampTz {
                parse_offset(&mut t)?
            } else {
                0
            };
            let day = bc(&mut t, day)?;
            if !t.done() {
                return None;
            }
            let local = day.checked_mul(USECS_PER_DAY)?.checked_add(usecs)?;
            Some(Value::Stamp {
                usecs: local.checked_sub(i64::from(offset) * USECS_PER_SEC)?,
                offset,
            })
        }
        Kind::Time | Kind::TimeTz => {
            let usecs = parse_time(&mut t)?;
            if kind == Kind::Time {
                return t.done().then_some(Value::Time(usecs));
            }
            let offset = parse_offset(&mut t)?;
            t.done().then_some(Value::TimeTz {
                usecs,
                zone: -offset,
            })
        }
    }
}

fn infinite(kind: Kind, positive: bool) -> Value {
    match (kind, positive) {
        (Kind::Date, true) => Value::Date(i32::MAX),
        (Kind::Date, false) => Value::Date(i32::MIN),
        (_, true) => Value::Stamp {
            usecs: i64::MAX,
            offset: 0,
        },
        (_, false) => Value::Stamp {
            usecs: i64::MIN,
            offset: 0,
        },
    }
}

/// `YYYY-MM-DD` (year at least 4 digits; the era is read by [`bc`]): the date as written.
fn parse_date(t: &mut Text<'_>) -> Option<(i64, u32, u32)> {
    let y = t.num(4, 7)?;
    if !t.eat(b'-') {
        return None;
    }
    let m = u32::try_from(t.num(2, 2)?).ok()?;
    if !t.eat(b'-') {
        return None;
    }
    let d = u32::try_from(t.num(2, 2)?).ok()?;
    // The day is checked against the month once the era (AD / BC) is known.
    if y == 0 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some((y, m, d))
}

/// The day number of a parsed date, after an optional ` BC` (year 1 BC is year 0).
fn bc(t: &mut Text<'_>, (y, m, d): (i64, u32, u32)) -> Option<i64> {
    let y = if t.eat_str(b" BC") { 1 - y } else { y };
    if !(1..=12).contains(&m) || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) - PG_EPOCH_DAYS)
}

/// `HH:MM:SS[.ffffff]`: microseconds of the day (24:00:00 allowed).
fn parse_time(t: &mut Text<'_>) -> Option<i64> {
    let h = t.num(2, 2)?;
    if !t.eat(b':') {
        return None;
    }
    let mi = t.num(2, 2)?;
    if !t.eat(b':') {
        return None;
    }
    let s = t.num(2, 2)?;
    let mut frac = 0;
    if t.eat(b'.') {
        let start = t.i;
        let f = t.num(1, 6)?;
        let n = u32::try_from(t.i - start).expect("at most 6 digits");
        frac = f * 10i64.pow(6 - n);
    }
    let usecs = ((h * 60 + mi) * 60 + s) * USECS_PER_SEC + frac;
    (mi < 60 && s < 60 && usecs <= USECS_PER_DAY).then_some(usecs)
}

/// `+HH[:MM[:SS]]`: seconds east of UTC.
fn parse_offset(t: &mut Text<'_>) -> Option<i32> {
    let sign = if t.eat(b'+') {
        1
    } else if t.eat(b'-') {
        -1
    } else {
        return None;
    };
    let h = t.num(2, 2)?;
    let mut secs = h * 3600;
    if t.eat(b':') {
        secs += t.num(2, 2)? * 60;
        if t.eat(b':') {
            secs += t.num(2, 2)?;
        }
    }
    i32::try_from(sign * secs).ok()
}

fn render(kind: Kind, v: Value, out: &mut Vec<u8>) {
    match v {
        Value::Date(i32::MAX)
        | Value::Stamp {
            usecs: i64::MAX, ..
        } => {
            out.extend_from_slice(b"infinity");
        }
        Value::Date(i32::MIN)
        | Value::Stamp {
            usecs: i64::MIN, ..
        } => {
            out.extend_from_slice(b"-infinity");
        }
        Value::Date(d) => {
            let year = render_date(i64::from(d), out);
            if year <= 0 {
                out.extend_from_slice(b" BC");
            }
        }
        Value::Stamp { usecs, offset } => {
            let offset = if kind == Kind::TimestampTz { offset } else { 0 };
            let local = usecs + i64::from(offset) * USECS_PER_SEC;
            let year = render_date(local.div_euclid(USECS_PER_DAY), out);
            out.push(b' ');
            render_time(local.rem_euclid(USECS_PER_DAY), out);
            if kind == Kind::TimestampTz {
                render_offset(offset, out);
            }
            if year <= 0 {
                out.extend_from_slice(b" BC");
            }
        }
        Value::Time(usecs) => render_time(usecs, out),
        Value::TimeTz { usecs, zone } => {
            render_time(usecs, out);
            render_offset(-zone, out);
        }
    }
}

/// Writes the date of `day` (days since 2000-01-01) as `YYYY-MM-DD` (the year as shown: 1 BC
/// is 0001); returns the astronomical year.
fn render_date(day: i64, out: &mut Vec<u8>) -> i64 {
    let (y, m, d) = civil_from_days(day + PG_EPOCH_DAYS);
    let shown = if y <= 0 { 1 - y } else { y };
    let _ = write!(out, "{shown:04}-{m:02}-{d:02}");
    y
}

fn render_time(usecs: i64, out: &mut Vec<u8>) {
    let secs = usecs / USECS_PER_SEC;
    let frac = usecs % USECS_PER_SEC;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let mut digits = [0u8; 6];
        let mut f = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + u8::try_from(f % 10).expect("a digit");
            f /= 10;
        }
        let n = 6 - digits.iter().rev().take_while(|&&c| c == b'0').count();
        out.push(b'.');
        out.extend_from_slice(&digits[..n]);
    }
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` for an offset in seconds east (as the server writes it).
fn render_offset(east: i32, out: &mut Vec<u8>) {
    let a = east.unsigned_abs();
    out.push(if east < 0 { b'-' } else { b'+' });
    let _ = write!(out, "{:02}", a / 3600);
    if !a.is_multiple_of(60) {
        let _ = write!(out, ":{:02}:{:02}", a / 60 % 60, a % 60);
    } else if !(a / 60).is_multiple_of(60) {
        let _ = write!(out, ":{:02}", a / 60 % 60);
    }
}

// -- the proleptic Gregorian calendar (Howard Hinnant's algorithms) --------------------------

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date (astronomical year: 1 BC is 0).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("a day of the month");
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("a month");
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
