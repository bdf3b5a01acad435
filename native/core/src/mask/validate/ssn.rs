//! US_SSN: `ddd-dd-dddd` or `ddd dd dddd` (one delimiter), with the SSA's never-issued ranges
//! rejected.  `123-45-6789` stays detectable: it is a classic test value people really store.

use super::Range;
use crate::mask::boundary::{token_left_ok, token_right_ok};

/// Numbers the SSA published as samples (an advertising card and a pamphlet): never real.
const PUBLISHED_SAMPLES: [&[u8; 9]; 2] = [b"078051120", b"219099999"];

pub fn validate(text: &[u8], (start, end): Range) -> Option<Range> {
    let c = &text[start..end];
    if c.len() != 11 || c[3] != c[6] || !token_left_ok(text, start) || !token_right_ok(text, end) {
        return None;
    }
    let mut d = [0u8; 9];
    d[..3].copy_from_slice(&c[..3]);
    d[3..5].copy_from_slice(&c[4..6]);
    d[5..].copy_from_slice(&c[7..]);
    let area = &d[..3];
    let ok = area != b"000"
        && area != b"666"
        && area[0] != b'9'
        && &d[3..5] != b"00"
        && &d[5..] != b"0000"
        && d.iter().any(|&x| x != d[0])
        && !PUBLISHED_SAMPLES.contains(&&d);
    ok.then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        validate(s.as_bytes(), (0, s.len())).is_some()
    }

    #[test]
    fn ssn() {
        assert!(ok("123-45-6789"));
        assert!(ok("536 22 1234"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "111-11-1111",
            "123-45 6789",
            "078-05-1120",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        let t = b"2026-123-45-6789";
        assert!(validate(t, (5, 16)).is_none());
    }
}
