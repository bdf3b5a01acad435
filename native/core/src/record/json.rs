//! The little JSON the record writer needs: escaped strings, integers, RFC 3339 timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes that need escaping inside a JSON string: `"`, `\\`, control characters and DEL.
const fn escape_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
}
static ESCAPE: [bool; 256] = escape_table();
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The two hex digits of every byte.
const fn hex_pairs() -> [[u8; 2]; 256] {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
}
static HEX_PAIRS: [[u8; 2]; 256] = hex_pairs();

/// The two decimal digits of 0..100.
const fn dec_pairs() -> [[u8; 2]; 100] {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        // i < 100: both digits fit a byte
        #[allow(clippy::cast_possible_truncation)]
        let pair = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        t[i] = pair;
        i += 1;
    }
    t
}
static DEC_PAIRS: [[u8; 2]; 100] = dec_pairs();

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is zero (exact: a borrow only ever flags bytes above a zero one).
#[inline]
fn has_zero(w: u64) -> bool {
    w.wrapping_sub(ONES) & !w & HIGHS != 0
}

/// Whether any byte of `w` needs escaping (see [`escape_table`]).
#[inline]
fn word_needs_escape(w: u64) -> bool {
    // bytes below 0x20 (bytes >= 0x80 never match: `!w` clears their high bit)
    w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0
        || has_zero(w ^ (ONES * u64::from(b'"')))
        || has_zero(w ^ (ONES * u64::from(b'\\')))
        || has_zero(w ^ (ONES * 0x7f))
}

/// Length of the prefix of `bytes` that needs no escaping, eight bytes at a time (then the
/// rest byte by byte from the first word that has one).
fn plain_prefix(bytes: &[u8]) -> usize {
    let mut i = 0;
    for c in bytes.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        if word_needs_escape(u64::from_le_bytes(w)) {
            break;
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .position(|&b| ESCAPE[usize::from(b)])
        .unwrap_or(bytes.len() - i)
}

/// Appends `s` as a JSON string (quotes included): runs without escapes are copied whole.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let plain = plain_prefix(bytes);
    if plain == bytes.len() {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(plain) {
        if !ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `"key":` (the key must need no escaping).
pub fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends `,"key":"value"`.
pub fn member_str(out: &mut Vec<u8>, k: &str, v: &str) {
    out.push(b',');
    key(out, k);
    string(out, v);
}

/// Appends `,"key":n`.
pub fn member_u64(out: &mut Vec<u8>, k: &str, v: u64) {
    out.push(b',');
    key(out, k);
    uint(out, v);
}

/// Appends `v` in decimal (two digits per division).
pub fn uint(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    while v >= 100 {
        // v % 100 < 100: the cast cannot truncate
        #[allow(clippy::cast_possible_truncation)]
        let d = (v % 100) as usize;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DEC_PAIRS[d]);
    }
    // v < 100
    #[allow(clippy::cast_possible_truncation)]
    let d = v as usize;
    if d >= 10 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DEC_PAIRS[d]);
    } else {
        i -= 1;
        buf[i] = DEC_PAIRS[d][1];
    }
    out.extend_from_slice(&buf[i..]);
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    hex_into(&mut out, bytes);
    // only ASCII hex digits were written
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the lower-case hex of `bytes` (two digits per byte written in place, no per-byte
/// capacity check).
pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let at = out.len();
    out.resize(at + bytes.len() * 2, 0);
    for (pair, &b) in out[at..].chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// Appends `,"key":"<hex>"` (empty for None).
pub fn member_hex(out: &mut Vec<u8>, k: &str, v: Option<&[u8]>) {
    out.push(b',');
    key(out, k);
    out.push(b'"');
    if let Some(v) = v {
        hex_into(out, v);
    }
    out.push(b'"');
}

/// Microseconds since the epoch (0 before it).
pub fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
pub fn timestamp(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(27);
    let mut cache = TimeCache::default();
    cache.append(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Formats timestamps, remembering the date-and-seconds part of the last one (records written
/// in one batch mostly share it).
#[derive(Debug, Default, Clone)]
pub struct TimeCache {
    secs: Option<u64>,
    prefix: [u8; 19],
}

fn two(out: &mut [u8], v: u64) {
    // v < 100 by construction
    #[allow(clippy::cast_possible_truncation)]
    let v = v as u8;
    out[0] = b'0' + v / 10;
    out[1] = b'0' + v % 10;
}

impl TimeCache {
    /// Appends `t` quoted as a JSON string.
    pub fn append_quoted(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        out.push(b'"');
        self.append(out, t);
        out.push(b'"');
    }

    /// Appends `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub fn append(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let us = micros(t);
        let secs = us / 1_000_000;
        if self.secs != Some(secs) {
            let days = secs / 86_400;
            let rem = secs % 86_400;
            let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
            let p = &mut self.prefix;
            let y = u64::try_from(y.clamp(0, 9999)).unwrap_or(0);
            two(&mut p[0..2], y / 100);
            two(&mut p[2..4], y % 100);
            p[4] = b'-';
            two(&mut p[5..7], u64::from(m));
            p[7] = b'-';
            two(&mut p[8..10], u64::from(d));
            p[10] = b'T';
            two(&mut p[11..13], rem / 3600);
            p[13] = b':';
            two(&mut p[14..16], (rem / 60) % 60);
            p[16] = b':';
            two(&mut p[17..19], rem % 60);
            self.secs = Some(secs);
        }
        out.extend_from_slice(&self.prefix);
        let mut frac = [b'.', 0, 0, 0, 0, 0, 0, b'Z'];
        let mut f = us % 1_000_000;
        for i in (1..7).rev() {
            // f % 10 < 10
            #[allow(clippy::cast_possible_truncation)]
            let digit = (f % 10) as u8;
            frac[i] = b'0' + digit;
            f /= 10;
        }
        out.extend_from_slice(&frac);
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d in 1..=31 and m in 1..=12 by construction
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\nd\\u0001é\""
        );
    }

    #[test]
    fn escaping_agrees_with_the_table_for_every_byte_at_every_position() {
        for b in 0u8..=255 {
            for pos in 0..17 {
                let mut bytes = vec![b'a'; 17];
                bytes[pos] = b;
                let want = (0..17)
                    .find(|&i| ESCAPE[usize::from(bytes[i])])
                    .unwrap_or(17);
                assert_eq!(plain_prefix(&bytes), want, "byte {b:#x} at {pos}");
            }
        }
        let mut out = Vec::new();
        string(
            &mut out,
            "plain text with no escapes, longer than a word: é",
        );
        assert_eq!(
            out,
            "\"plain text with no escapes, longer than a word: é\"".as_bytes()
        );
    }

    #[test]
    fn every_number_of_interest_in_decimal() {
        let mut probes: Vec<u64> = (0..=1000).collect();
        for k in 1..20u32 {
            let p = 10u64.pow(k);
            probes.extend([p - 1, p, p + 1]);
        }
        probes.extend([u64::MAX, u64::MAX - 1, 1 << 32, 12_345_678_901]);
        for v in probes {
            let mut out = Vec::new();
            uint(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), want);
    }

    #[test]
    fn numbers_and_hex() {
        let mut out = Vec::new();
        uint(&mut out, 0);
        out.push(b' ');
        uint(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000000Z");
    }
}
