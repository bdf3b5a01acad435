//! PHONE: NANP numbers (`(415) 555-2671`, `415-555-2671`, `+1 415.555.2671`, with an optional
//! extension) and E.164 (`+14155552671`, `+44 20 7946 0958`).
//!
//! Bare ten-digit runs are not phones (order ids look the same); NANP needs separators, the
//! same one twice unless the area code is in parentheses.

use super::Range;
use crate::mask::boundary::{is_word_byte, token_left_ok, token_right_ok};

fn left_ok(text: &[u8], start: usize) -> bool {
    match text[start] {
        b'(' | b'+' => start == 0 || !(is_word_byte(text[start - 1]) || text[start - 1] == b'+'),
        _ => token_left_ok(text, start),
    }
}

pub fn validate_nanp(text: &[u8], (start, end): Range) -> Option<Range> {
    if !left_ok(text, start) || !token_right_ok(text, end) {
        return None;
    }
    let c = &text[start..end];
    let mut i = 0;
    if c.starts_with(b"+1") {
        i = 2;
    } else if c.starts_with(b"001") {
        i = 3;
    }
    if i > 0 && matches!(c[i], b' ' | b'.' | b'-') {
        i += 1;
    }
    if c[i] == b'(' {
        return Some((start, end));
    }
    // `ddd<sep>ddd<sep>dddd`: the two separators must agree.
    (c.get(i + 3) == c.get(i + 7)).then_some((start, end))
}

pub fn validate_e164(text: &[u8], (start, end): Range) -> Option<Range> {
    (left_ok(text, start) && token_right_ok(text, end)).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanp(s: &str) -> bool {
        validate_nanp(s.as_bytes(), (0, s.len())).is_some()
    }

    #[test]
    fn phones() {
        assert!(nanp("415-555-2671"));
        assert!(nanp("(415) 555-2671"));
        assert!(nanp("+1 415.555.2671"));
        assert!(!nanp("415-555.2671"));
        let t = b"SKU-415-555-2671";
        assert!(validate_nanp(t, (4, 16)).is_none());
        let t = b"415-555-2671-XL";
        assert!(validate_nanp(t, (0, 12)).is_none());
        assert!(validate_e164(b"+14155552671", (0, 12)).is_some());
        assert!(validate_e164(b"a+14155552671", (1, 13)).is_none());
    }
}
