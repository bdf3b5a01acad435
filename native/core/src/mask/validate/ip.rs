//! IP_ADDRESS: dotted-quad IPv4 with exact octets, and IPv6 as `std::net::Ipv6Addr` parses it.
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

pub fn validate_v4(text: &[u8], (start, end): Range) -> Option<Range> {
    let ok = token_left_ok(text, start)
        && token_right_ok(text, end)
        && text[start..end].split(|&b| b == b'.').all(octet_ok);
    ok.then_some((start, end))
}

pub fn validate_v6(text: &[u8], (start, mut end): Range) -> Option<Range> {
    if start > 0 && (is_word_byte(text[start - 1]) || matches!(text[start - 1], b':' | b'.')) {
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
    s.parse::<Ipv6Addr>().ok().map(|_| (start, end))
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
    }
}
