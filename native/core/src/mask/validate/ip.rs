//! IP_ADDRESS: dotted-quad IPv4 with exact octets, and IPv6 as `std::net::Ipv6Addr` parses it,
//! each with its CIDR prefix length when one is written (a port after `:` is not part of it).
//!
//! A four-part dotted number like `1.2.3.4` IS a valid IPv4 address and is masked: for masking,
//! leaking an address costs more than hiding a version number.  Version strings with a `v`
//! prefix (`v1.2.3.4`), with more or fewer parts (`1.2.3`, `1.2.3.4.5`) or with leading zeros
//! (`01.02.03.04`) are not addresses.

use std::net::Ipv6Addr;

use super::Range;
use crate::mask::boundary::{is_word_byte, token_left_ok, token_right_ok};

fn octet_ok(o: &[u8]) -> bool {
    match o {
        [d] => d.is_ascii_digit(),
        [b'0', ..] => false,
        _ => o.len() <= 3 && o.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0')) <= 255,
    }
}

/// The end of a CIDR prefix length (`/0` to `/max`) at `end`, if one is there: it is part of
/// the address's token (`10.1.0.0/16`, `2001:db8::/32`).
fn prefix_end(text: &[u8], end: usize, max: u32) -> Option<usize> {
    if text.get(end) != Some(&b'/') {
        return None;
    }
    let n = text[end + 1..]
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    let value = text[end + 1..end + 1 + n]
        .iter()
        .fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
    ((1..=3).contains(&n) && value <= max).then_some(end + 1 + n)
}

pub fn validate_v4(text: &[u8], (start, end): Range) -> Option<Range> {
    if !token_left_ok(text, start) || !text[start..end].split(|&b| b == b'.').all(octet_ok) {
        return None;
    }
    let end = prefix_end(text, end, 32).unwrap_or(end);
    token_right_ok(text, end).then_some((start, end))
}

/// True if an IPv6 address may start at `start` after `prev`: not inside a word, a version or
/// another address (`fe80:0:...` from its second group); after a key's `:` (`IP:2001:db8::1`,
/// or a full-width colon folded to one) it may.
pub fn v6_left_ok(text: &[u8], start: usize) -> bool {
    match start.checked_sub(1).map(|i| text[i]) {
        None => true,
        Some(b':') => start >= 2 && !text[start - 2].is_ascii_hexdigit() && text[start - 2] != b':',
        Some(b) => !(is_word_byte(b) || b == b'.'),
    }
}

pub fn validate_v6(text: &[u8], (start, mut end): Range) -> Option<Range> {
    if !v6_left_ok(text, start) {
        return None;
    }
    // The loose candidate may run into a sentence's full stop or a port separator.
    while end > start && matches!(text[end - 1], b'.' | b':') && !text[..end].ends_with(b"::") {
        end -= 1;
    }
    if text.get(end).is_some_and(|&b| is_word_byte(b)) {
        return None;
    }
    let cand = &text[start..end];
    // Hex-only words joined by `::` (`add::bed`, C++ paths) are not addresses: require a digit.
    if !cand.iter().any(u8::is_ascii_digit) {
        return None;
    }
    let s = std::str::from_utf8(cand).ok()?;
    s.parse::<Ipv6Addr>().ok()?;
    match prefix_end(text, end, 128) {
        Some(e) => {
            (!text.get(e).is_some_and(|&b| is_word_byte(b) || b == b'/')).then_some((start, e))
        }
        None => Some((start, end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> bool {
        validate_v4(s.as_bytes(), (0, s.len())).is_some()
    }

    fn v6(s: &str) -> Option<&str> {
        validate_v6(s.as_bytes(), (0, s.len())).map(|(a, b)| &s[a..b])
    }

    #[test]
    fn ipv4() {
        assert!(v4("192.168.0.1"));
        assert!(v4("10.0.0.255"));
        assert!(v4("1.2.3.4"));
        assert!(!v4("256.1.1.1"));
        assert!(!v4("01.2.3.4"));
        let t = b"v1.2.3.4";
        assert!(validate_v4(t, (1, 8)).is_none());
        let t = b"1.2.3.4.5";
        assert!(validate_v4(t, (0, 7)).is_none());
        let t = b"10.1.0.0/16 x";
        assert_eq!(validate_v4(t, (0, 8)), Some((0, 11)));
        let t = b"10.1.0.0/33";
        assert!(validate_v4(t, (0, 8)).is_none());
        let t = b"10.1.0.0:5432";
        assert_eq!(validate_v4(t, (0, 8)), Some((0, 8)));
    }

    #[test]
    fn ipv6() {
        assert_eq!(v6("2001:db8::1"), Some("2001:db8::1"));
        assert_eq!(v6("::1"), Some("::1"));
        assert_eq!(
            v6("fe80::1ff:fe23:4567:890a"),
            Some("fe80::1ff:fe23:4567:890a")
        );
        assert_eq!(v6("::ffff:192.0.2.1"), Some("::ffff:192.0.2.1"));
        assert_eq!(v6("2001:db8::1."), Some("2001:db8::1"));
        assert_eq!(v6("09:45:00"), None);
        assert_eq!(v6("add::bed"), None);
        assert_eq!(v6("00:1a:2b:3c:4d:5e"), None);
        let t = b"IP:2001:db8::1";
        assert_eq!(validate_v6(t, (3, t.len())), Some((3, t.len())));
        let t = b"fe80:0:0:0:0:0:0:1";
        assert_eq!(validate_v6(t, (5, t.len())), None);
        let t = b"2001:db8::/32,";
        assert_eq!(validate_v6(t, (0, 10)), Some((0, 13)));
    }
}
